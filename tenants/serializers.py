from django.contrib.auth import get_user_model
from drf_spectacular.utils import extend_schema_field, inline_serializer
from rest_framework import serializers

from tenants import strict

from .models import (
    ApiToken,
    GpuFlavor,
    Jurisdiction,
    Membership,
    Region,
    ServiceAccount,
    Tenant,
    TenantQuota,
    jurisdiction_validator,
    region_validator,
    slug_validator,
)
from .roles import SERVICE_ACCOUNT_ROLE_CHOICES, Role

User = get_user_model()


class TenantSerializer(strict.ModelSerializer):
    class Meta:
        model = Tenant
        fields = ["slug", "name", "jurisdiction", "status", "created_at"]
        read_only_fields = ["status", "created_at"]
        # Uniqueness is the domain function's to decide (a 409, not a 400).
        extra_kwargs = {"slug": {"validators": [slug_validator]}}


class TenantStatusSerializer(serializers.Serializer):
    status = serializers.ChoiceField(choices=Tenant.Status.choices)


class MembershipSerializer(strict.ModelSerializer):
    username = strict.CharField(source="user.username", read_only=True)
    tenant = strict.CharField(source="tenant.slug", read_only=True)

    class Meta:
        model = Membership
        fields = ["tenant", "username", "role", "created_at"]


class MembershipGrantSerializer(serializers.Serializer):
    username = strict.CharField(max_length=150)
    role = serializers.ChoiceField(choices=Role.choices)


class MembershipRoleSerializer(serializers.Serializer):
    role = serializers.ChoiceField(choices=Role.choices)


class MeSerializer(strict.ModelSerializer):
    memberships = serializers.SerializerMethodField()
    platform_admin = serializers.BooleanField(source="is_superuser", read_only=True)
    token = serializers.SerializerMethodField()

    # Empty when none is on record, so not documented as an address.
    email = strict.CharField(read_only=True, help_text="The person's email address, or empty.")

    class Meta:
        model = User
        fields = ["username", "email", "platform_admin", "memberships", "token"]

    @extend_schema_field(inline_serializer("MeMembership", {"tenant": strict.CharField(),
                                                            "role": strict.CharField()}, many=True))
    def get_memberships(self, user):
        return [{"tenant": m.tenant.slug, "role": m.role} for m in self.context["memberships"]]

    @extend_schema_field(inline_serializer("MeToken", {
        "id": strict.CharField(), "tenant": strict.CharField(), "role": strict.CharField(),
        "expires_at": serializers.DateTimeField()}, allow_null=True))
    def get_token(self, user):
        token = getattr(user, "api_token", None)
        if token is None:
            return None
        return {"id": token.public_id, "tenant": token.tenant.slug, "role": token.role, "expires_at": token.expires_at}


class ServiceAccountSerializer(strict.ModelSerializer):
    owner = strict.CharField(source="owner.username", read_only=True)
    role = serializers.ChoiceField(choices=SERVICE_ACCOUNT_ROLE_CHOICES)

    class Meta:
        model = ServiceAccount
        fields = ["name", "role", "owner", "is_active", "created_at"]
        read_only_fields = ["is_active", "created_at"]
        extra_kwargs = {"name": {"validators": [slug_validator]}}


class ApiTokenSerializer(strict.ModelSerializer):
    id = strict.CharField(source="public_id", read_only=True)
    owner = strict.CharField(source="user.username", read_only=True)
    service_account = strict.CharField(source="service_account.name", read_only=True, default=None)
    state = strict.CharField(read_only=True)

    class Meta:
        model = ApiToken
        fields = ["id", "name", "role", "owner", "service_account", "state", "created_at", "expires_at", "revoked_at"]
        read_only_fields = fields


class ApiTokenIssueSerializer(serializers.Serializer):
    name = strict.CharField(max_length=100)
    expires_in_days = serializers.IntegerField(min_value=1, max_value=365, default=90)
    service_account = strict.CharField(max_length=64, required=False, allow_blank=False)


class IssuedTokenSerializer(ApiTokenSerializer):
    token = strict.CharField(read_only=True, help_text="The secret. Shown once; store it now.")

    class Meta(ApiTokenSerializer.Meta):
        fields = [*ApiTokenSerializer.Meta.fields, "token"]
        read_only_fields = fields


class GpuFlavorSerializer(strict.ModelSerializer):
    class Meta:
        model = GpuFlavor
        fields = ["name", "description", "memory_gb", "billing_weight", "is_active", "created_at"]
        read_only_fields = ["is_active", "created_at"]
        extra_kwargs = {"name": {"validators": []}}


class GpuFlavorChangeSerializer(strict.ModelSerializer):
    class Meta:
        model = GpuFlavor
        fields = ["description", "billing_weight", "is_active"]
        extra_kwargs = {field: {"required": False} for field in fields}


class JurisdictionSerializer(strict.ModelSerializer):
    class Meta:
        model = Jurisdiction
        fields = ["code", "name", "created_at"]
        read_only_fields = ["created_at"]
        extra_kwargs = {"code": {"validators": [jurisdiction_validator]}}


class RegionSerializer(strict.ModelSerializer):
    jurisdiction = strict.CharField(source="jurisdiction_id", max_length=16,
                                    help_text="The catalogue jurisdiction this region is in, exactly.")

    in_force = serializers.SerializerMethodField(
        help_text="Whether the region counts: a second platform admin accepted it (or the install put it there).")
    proposed_by = strict.CharField(source="proposed_by.username", read_only=True, allow_null=True, default=None)
    accepted_by = strict.CharField(source="accepted_by.username", read_only=True, allow_null=True, default=None)

    class Meta:
        model = Region
        fields = ["code", "name", "jurisdiction", "created_at", "in_force", "proposed_by", "accepted_by", "accepted_at"]
        read_only_fields = ["created_at", "accepted_at"]
        extra_kwargs = {"code": {"validators": [region_validator]}}

    def get_in_force(self, region) -> bool:
        return region.accepted_at is not None


class RegionAcceptSerializer(serializers.Serializer):
    otp_token = strict.CharField(max_length=8, help_text="A fresh one-time password from your own device.")


class TenantQuotaSerializer(strict.ModelSerializer):
    flavor = strict.CharField(source="flavor.name", read_only=True)

    class Meta:
        model = TenantQuota
        fields = ["flavor", "nominal", "borrowing_limit", "gpu_hours_budget", "budget_mode", "updated_at"]
        read_only_fields = ["updated_at"]
