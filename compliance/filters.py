import django_filters

from audit.catalog import ACTIONS, OUTCOMES
from audit.models import AuditEvent


class AuditEventFilter(django_filters.FilterSet):
    action = django_filters.ChoiceFilter(choices=[(a, a) for a in sorted(ACTIONS)])
    outcome = django_filters.ChoiceFilter(choices=[(o, o) for o in OUTCOMES])
    actor = django_filters.CharFilter(field_name="actor_name")
    tenant = django_filters.CharFilter(field_name="tenant")
    since = django_filters.IsoDateTimeFilter(field_name="occurred_at", lookup_expr="gte")
    until = django_filters.IsoDateTimeFilter(field_name="occurred_at", lookup_expr="lt")

    class Meta:
        model = AuditEvent
        fields = ["action", "outcome", "actor", "tenant", "since", "until"]
