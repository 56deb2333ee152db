import django_filters

from .models import ApiToken, Membership
from .roles import Role


class MembershipFilter(django_filters.FilterSet):
    role = django_filters.ChoiceFilter(choices=Role.choices)
    username = django_filters.CharFilter(field_name="user__username", lookup_expr="icontains")

    class Meta:
        model = Membership
        fields = ["role", "username"]


class ApiTokenFilter(django_filters.FilterSet):
    owner = django_filters.CharFilter(field_name="user__username")
    active = django_filters.BooleanFilter(field_name="revoked_at", lookup_expr="isnull")

    class Meta:
        model = ApiToken
        fields = ["owner", "active"]
