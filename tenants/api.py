"""The tenant-scoped API base view: every route under /api/v1/tenants/<tenant>/ uses it."""

from django.db import transaction
from rest_framework import generics, status
from rest_framework.response import Response

from .access import tenant_for
from .db import tenant_reads


class TenantScopedMixin:
    """Base for everything under /api/v1/tenants/<tenant>/.

    Resolves the tenant through the choke point before anything else (so another
    tenant's URL answers 404 for every method), and restricts the queryset with
    ``Model.objects.restrict(user, action)``.
    """

    model = None
    read_action = "view"
    tenant = None

    def initial(self, request, *args, **kwargs):
        super().initial(request, *args, **kwargs)
        self.tenant = tenant_for(request.user, kwargs["tenant"], "view",
                                 context={"method": request.method, "path": request.path})

    def tenant_reads(self):
        """Reads in views that run outside the request's transaction (see tenants.db.tenant_reads)."""
        return tenant_reads(self.request.user, self.tenant)

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):  # schema generation: no request, no tenant
            return self.model.objects.none()
        return self.model.objects.restrict(self.request.user, self.read_action).filter(tenant=self.tenant)


class TenantScopedAPIView(TenantScopedMixin, generics.GenericAPIView):
    pass


def no_content():
    return Response(status=status.HTTP_204_NO_CONTENT)


def streaming(view_class):
    """A view that runs outside the request's transaction: it streams its body, or it
    commits work (a stored verification) that must stay even when it answers an error."""
    view = transaction.non_atomic_requests(view_class.as_view())
    view.streams_body = True
    return view


def committing(view_class):
    """A view that commits its own steps: a one-time password is spent in a transaction of
    its own, so it stays spent even when the decision that follows is refused."""
    return transaction.non_atomic_requests(view_class.as_view())

