"""Tenant API views: thin, each calls the choke point and a domain function."""

from drf_spectacular.utils import extend_schema
from rest_framework import generics, status
from rest_framework.response import Response
from rest_framework.views import APIView

from . import catalogue, services
from .access import allowed_tenant_ids
from .api import TenantScopedAPIView, no_content
from .db import bind_rls
from .errors import NotFound
from .filters import ApiTokenFilter, MembershipFilter
from .models import ApiToken, GpuFlavor, Jurisdiction, Membership, Region, ServiceAccount, Tenant
from .serializers import (
    ApiTokenIssueSerializer,
    ApiTokenSerializer,
    GpuFlavorChangeSerializer,
    GpuFlavorSerializer,
    IssuedTokenSerializer,
    JurisdictionSerializer,
    RegionAcceptSerializer,
    RegionSerializer,
    MembershipGrantSerializer,
    MembershipRoleSerializer,
    MembershipSerializer,
    MeSerializer,
    ServiceAccountSerializer,
    TenantSerializer,
    TenantStatusSerializer,
)


class MeView(APIView):
    @extend_schema(responses=MeSerializer)
    def get(self, request):
        user = request.user
        bind_rls(user_id=user.pk)
        memberships = Membership.objects.filter(user=user).select_related("tenant")
        token = getattr(user, "api_token", None)
        if token is not None:
            memberships = memberships.filter(tenant_id=token.tenant_id)
        return Response(MeSerializer(user, context={"memberships": list(memberships)}).data)


class TenantListView(generics.ListCreateAPIView):
    serializer_class = TenantSerializer
    filterset_fields = ["status", "jurisdiction"]

    def get_queryset(self):
        return Tenant.objects.restrict(self.request.user, "view")

    def create(self, request, *args, **kwargs):
        serializer = self.get_serializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        tenant = services.tenant_create(actor=request.user, **serializer.validated_data)
        return Response(TenantSerializer(tenant).data, status=status.HTTP_201_CREATED)


class TenantDetailView(TenantScopedAPIView):
    serializer_class = TenantSerializer
    http_method_names = ["get", "patch", "head", "options"]

    def get(self, request, tenant):
        return Response(TenantSerializer(self.tenant).data)

    @extend_schema(request=TenantStatusSerializer, responses=TenantSerializer)
    def patch(self, request, tenant):
        serializer = TenantStatusSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        updated = services.tenant_set_status(actor=request.user, tenant=self.tenant, **serializer.validated_data)
        return Response(TenantSerializer(updated).data)


class MemberListView(TenantScopedAPIView, generics.ListAPIView):
    model = Membership
    serializer_class = MembershipSerializer
    filterset_class = MembershipFilter

    def get_queryset(self):
        return super().get_queryset().select_related("user", "tenant")

    @extend_schema(request=MembershipGrantSerializer, responses={201: MembershipSerializer})
    def post(self, request, tenant):
        serializer = MembershipGrantSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        user = services.user_by_username(serializer.validated_data["username"])
        membership = services.membership_grant(actor=request.user, tenant=self.tenant, user=user,
                                               role=serializer.validated_data["role"])
        return Response(MembershipSerializer(membership).data, status=status.HTTP_201_CREATED)


class MemberDetailView(TenantScopedAPIView):
    model = Membership
    serializer_class = MembershipSerializer
    http_method_names = ["get", "patch", "delete", "head", "options"]

    def get_object(self):
        membership = self.get_queryset().select_related("user", "tenant").filter(
            user__username=self.kwargs["username"]).first()
        if membership is None:
            raise NotFound("No such member.")
        return membership

    def get(self, request, tenant, username):
        return Response(MembershipSerializer(self.get_object()).data)

    @extend_schema(request=MembershipRoleSerializer, responses=MembershipSerializer)
    def patch(self, request, tenant, username):
        membership = self.get_object()
        serializer = MembershipRoleSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        membership = services.membership_grant(actor=request.user, tenant=self.tenant, user=membership.user,
                                               role=serializer.validated_data["role"])
        return Response(MembershipSerializer(membership).data)

    def delete(self, request, tenant, username):
        services.membership_revoke(actor=request.user, tenant=self.tenant, user=self.get_object().user)
        return no_content()


class ServiceAccountListView(TenantScopedAPIView, generics.ListAPIView):
    model = ServiceAccount
    serializer_class = ServiceAccountSerializer

    def get_queryset(self):
        return super().get_queryset().select_related("owner")

    def post(self, request, tenant):
        serializer = ServiceAccountSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        account = services.service_account_create(actor=request.user, tenant=self.tenant,
                                                  **serializer.validated_data)
        return Response(ServiceAccountSerializer(account).data, status=status.HTTP_201_CREATED)


class ServiceAccountDetailView(TenantScopedAPIView, generics.RetrieveAPIView):
    model = ServiceAccount
    serializer_class = ServiceAccountSerializer
    lookup_field = "name"
    lookup_url_kwarg = "account"

    def get_queryset(self):
        return super().get_queryset().select_related("owner")


class TokensMixin:
    """Your own tokens here; a tenant admin sees everyone's."""

    model = ApiToken
    serializer_class = ApiTokenSerializer

    def get_queryset(self):
        tokens = super().get_queryset().select_related("user", "service_account")
        if self.tenant is None:
            return tokens
        admin_of = allowed_tenant_ids(self.request.user, "admin")
        if admin_of is not None and self.tenant.pk not in admin_of:
            tokens = tokens.filter(user=self.request.user)
        return tokens


class TokenListView(TokensMixin, TenantScopedAPIView, generics.ListAPIView):
    filterset_class = ApiTokenFilter

    @extend_schema(request=ApiTokenIssueSerializer, responses={201: IssuedTokenSerializer})
    def post(self, request, tenant):
        serializer = ApiTokenIssueSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        account = services.service_account_named(actor=request.user, tenant=self.tenant,
                                                 name=data.get("service_account"))
        token, plaintext = services.token_issue(actor=request.user, tenant=self.tenant, name=data["name"],
                                                expires_in_days=data["expires_in_days"], service_account=account)
        token.token = plaintext
        return Response(IssuedTokenSerializer(token).data, status=status.HTTP_201_CREATED)


class TokenDetailView(TokensMixin, TenantScopedAPIView):
    http_method_names = ["get", "delete", "head", "options"]

    def get_object(self):
        token = self.get_queryset().filter(public_id=self.kwargs["token_id"]).first()
        if token is None:
            raise NotFound("No such token.")
        return token

    def get(self, request, tenant, token_id):
        return Response(ApiTokenSerializer(self.get_object()).data)

    def delete(self, request, tenant, token_id):
        services.token_revoke(actor=request.user, token=self.get_object())
        return no_content()



class GpuFlavorList(generics.ListAPIView):
    """The platform's GPU flavors; platform admins add them."""

    serializer_class = GpuFlavorSerializer
    queryset = GpuFlavor.objects.all()
    filterset_fields = ["is_active"]

    def post(self, request):
        serializer = GpuFlavorSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        flavor = services.gpu_flavor_create(actor=request.user, **serializer.validated_data)
        return Response(GpuFlavorSerializer(flavor).data, status=status.HTTP_201_CREATED)


class GpuFlavorDetail(APIView):
    serializer_class = GpuFlavorSerializer

    def _flavor(self, name):
        flavor = GpuFlavor.objects.filter(name=name).first()
        if flavor is None:
            raise NotFound("No such GPU flavor.")
        return flavor

    def get(self, request, flavor):
        return Response(GpuFlavorSerializer(self._flavor(flavor)).data)

    @extend_schema(request=GpuFlavorChangeSerializer, responses=GpuFlavorSerializer)
    def patch(self, request, flavor):
        serializer = GpuFlavorChangeSerializer(data=request.data, partial=True)
        serializer.is_valid(raise_exception=True)
        updated = services.gpu_flavor_update(actor=request.user, flavor=self._flavor(flavor), **serializer.validated_data)
        return Response(GpuFlavorSerializer(updated).data)


class JurisdictionList(generics.ListAPIView):
    """The platform's jurisdictions: exact entries that tenants and nodes name. Platform admins add them."""

    serializer_class = JurisdictionSerializer
    queryset = Jurisdiction.objects.all()

    def post(self, request):
        serializer = JurisdictionSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        jurisdiction = catalogue.jurisdiction_create(actor=request.user, **serializer.validated_data)
        return Response(JurisdictionSerializer(jurisdiction).data, status=status.HTTP_201_CREATED)


class RegionList(generics.ListAPIView):
    """The platform's regions, each with its jurisdiction. A platform admin proposes one with
    POST; it is in force once a second platform admin accepts it."""

    serializer_class = RegionSerializer
    queryset = Region.objects.select_related("proposed_by", "accepted_by")
    filterset_fields = ["jurisdiction"]

    def post(self, request):
        serializer = RegionSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        region = catalogue.region_create(actor=request.user, code=data["code"], name=data["name"],
                                         jurisdiction=data["jurisdiction_id"])
        return Response(RegionSerializer(region).data, status=status.HTTP_201_CREATED)


class RegionAccept(APIView):
    """A second platform admin (not its proposer) puts a proposed region in force, with a fresh one-time password."""

    serializer_class = RegionSerializer

    @extend_schema(request=RegionAcceptSerializer, responses={200: RegionSerializer})
    def post(self, request, code):
        serializer = RegionAcceptSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        region = catalogue.region_accept(actor=request.user, code=code, **serializer.validated_data)
        return Response(RegionSerializer(region).data)
