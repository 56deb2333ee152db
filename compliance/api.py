from rest_framework import generics, serializers

from audit.models import AuditEvent
from tenants.access import require
from tenants.api import TenantScopedMixin

from .filters import AuditEventFilter
from .selectors import events_visible_to


class AuditEventSerializer(serializers.ModelSerializer):
    position = serializers.IntegerField(source="leaf.position", read_only=True, default=None)

    class Meta:
        model = AuditEvent
        fields = ["id", "uuid", "occurred_at", "actor_type", "actor_name", "token_id", "tenant", "action",
                  "outcome", "target_type", "target_id", "data", "event_hash", "position"]
        read_only_fields = fields


class TenantAuditEventList(TenantScopedMixin, generics.ListAPIView):
    """The tenant's audit trail, newest first, for its auditors and admins."""

    serializer_class = AuditEventSerializer
    filterset_class = AuditEventFilter
    read_action = "audit"

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return AuditEvent.objects.none()
        require(self.request.user, self.tenant, "audit")
        return events_visible_to(self.request.user, tenant=self.tenant).select_related("leaf")


class AuditEventList(generics.ListAPIView):
    """Every audit event the caller may read (platform admins: all of them)."""

    serializer_class = AuditEventSerializer
    filterset_class = AuditEventFilter

    def get_queryset(self):
        return events_visible_to(self.request.user).select_related("leaf")
