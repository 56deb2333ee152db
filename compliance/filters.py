import django_filters

from audit.catalog import ACTIONS, OUTCOMES
from audit.models import AuditEvent


class AuditEventFilter(django_filters.FilterSet):
    """Each filter is an equality or range on an indexed column (see AuditEvent.Meta.indexes)."""

    tenant = django_filters.CharFilter(field_name="tenant")
    actor = django_filters.CharFilter(field_name="actor_name", label="Actor")
    action = django_filters.ChoiceFilter(choices=[(a, a) for a in sorted(ACTIONS)])
    outcome = django_filters.ChoiceFilter(choices=[(o, o) for o in OUTCOMES])
    target_type = django_filters.CharFilter(field_name="target_type", label="Target type")
    target = django_filters.CharFilter(field_name="target_id", label="Target id")
    since = django_filters.IsoDateTimeFilter(field_name="occurred_at", lookup_expr="gte", label="Since (ISO time)")
    until = django_filters.IsoDateTimeFilter(field_name="occurred_at", lookup_expr="lt", label="Until (ISO time)")

    class Meta:
        model = AuditEvent
        fields = ["tenant", "actor", "action", "outcome", "target_type", "target", "since", "until"]
