import hashlib
import secrets
from decimal import Decimal

from django.conf import settings
from django.core.validators import MinValueValidator, RegexValidator
from django.db import models
from django.utils import timezone

from .querysets import TenantOwnedQuerySet, TenantQuerySet
from .roles import SERVICE_ACCOUNT_ROLE_CHOICES, Role

# \A and \Z: a whole value; "$" would also match before a final newline ("acme-bank\n").
slug_validator = RegexValidator(r"\A[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?\Z",
                                "Use 1 to 64 lowercase letters, digits and inner hyphens.")
jurisdiction_validator = RegexValidator(r"\A[a-z]{2}(?:-[a-z0-9]{1,8})?\Z",
                                        "Use a lowercase region code such as eu, us, uk or ch-zh.")


region_validator = RegexValidator(r"\A[a-z0-9](?:[a-z0-9-]{0,14}[a-z0-9])?\Z",
                                  "Use 1 to 16 lowercase letters, digits and inner hyphens, like eu-west1.")


class Jurisdiction(models.Model):
    """A legal area that data must stay inside (eu, us, uk, ch): an entry of the platform's
    catalogue, managed by platform admins. Tenants and nodes name one exactly."""

    code = models.CharField(max_length=16, unique=True, validators=[jurisdiction_validator])
    name = models.CharField(max_length=100)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["code"]

    def __str__(self):
        return self.code


class RegionQuerySet(models.QuerySet):
    def in_force(self):
        return self.filter(accepted_at__isnull=False)


class Region(models.Model):
    """Where bytes are stored and nodes run. Each region is in exactly one jurisdiction, and
    that catalogue entry, never the shape of the code, says which. A new region lets data and
    work into its jurisdiction, so it is in force only once a second platform admin accepted
    it (tenants/catalogue.py); the regions a platform is installed with are accepted by the install."""

    code = models.CharField(max_length=16, unique=True, validators=[region_validator])
    name = models.CharField(max_length=100)
    jurisdiction = models.ForeignKey(Jurisdiction, on_delete=models.PROTECT, related_name="regions",
                                     to_field="code", db_column="jurisdiction")
    created_at = models.DateTimeField(default=timezone.now)
    proposed_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+", null=True,
                                    blank=True)  # none: a region the platform was installed with
    accepted_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+", null=True,
                                    blank=True)
    accepted_at = models.DateTimeField(null=True, blank=True)

    objects = RegionQuerySet.as_manager()

    class Meta:
        ordering = ["code"]

    def __str__(self):
        return self.code


class Tenant(models.Model):
    class Status(models.TextChoices):
        ACTIVE = "active", "Active"
        SUSPENDED = "suspended", "Suspended"

    slug = models.CharField(max_length=64, unique=True, validators=[slug_validator])
    name = models.CharField(max_length=200)
    jurisdiction = models.CharField(max_length=16, validators=[jurisdiction_validator],
                                    help_text="Data-residency jurisdiction: where this tenant's data and runs may live.")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.ACTIVE)
    # The run priorities this tenant's admins may give its workflows; platform admins set it.
    run_priority_min = models.IntegerField(default=0)
    run_priority_max = models.IntegerField(default=10)
    # Counts every change of who is a tenant admin: the revision admin proposals are made against.
    admins_revision = models.PositiveIntegerField(default=0)
    quotas_revision = models.PositiveIntegerField(default=0)  # of its GPU quotas, a governed setting
    created_at = models.DateTimeField(default=timezone.now)

    objects = TenantQuerySet.as_manager()

    class Meta:
        ordering = ["slug"]
        permissions = [
            ("develop_tenant", "Register and run work in the tenant"),
            ("approve_tenant", "Decide promotions in the tenant"),
            ("audit_tenant", "Read the tenant's audit trail"),
            ("admin_tenant", "Administer the tenant's members and data"),
        ]

    def __str__(self):
        return self.slug

    @property
    def is_active(self):
        return self.status == self.Status.ACTIVE


class Membership(models.Model):
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="memberships")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=32, choices=Role.choices)
    created_at = models.DateTimeField(default=timezone.now)
    # When the member took the role they hold: an approval or a confirmation given before it
    # no longer counts, so a role changed and changed back, or a membership revoked and
    # granted again, never revives one.
    role_since = models.DateTimeField(default=timezone.now)

    objects = TenantOwnedQuerySet.as_manager()

    class Meta:
        ordering = ["tenant__slug", "user__username"]
        constraints = [models.UniqueConstraint(fields=["tenant", "user"], name="one_role_per_tenant")]

    def __str__(self):
        return f"{self.user} as {self.role} in {self.tenant}"


class ServiceAccount(models.Model):
    """A tenant's machine identity (a CI pipeline). What it does counts as its owner's."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="service_accounts")
    name = models.CharField(max_length=64, validators=[slug_validator])
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="service_accounts")
    role = models.CharField(max_length=32, choices=SERVICE_ACCOUNT_ROLE_CHOICES)
    is_active = models.BooleanField(default=True)
    created_at = models.DateTimeField(default=timezone.now)

    objects = TenantOwnedQuerySet.as_manager()

    class Meta:
        ordering = ["name"]
        constraints = [models.UniqueConstraint(fields=["tenant", "name"], name="service_account_name_unique")]

    def __str__(self):
        return f"{self.tenant}/{self.name}"


TOKEN_PREFIX = "nct"


def hash_token_secret(plaintext: str) -> str:
    # Tokens carry 256 random bits, so a plain SHA-256 is enough; no slow KDF is needed.
    return hashlib.sha256(plaintext.encode()).hexdigest()


def new_token_plaintext() -> tuple[str, str]:
    """Return (public id, plaintext). The public id is shown in lists and audit events."""
    public_id = secrets.token_hex(6)
    return public_id, f"{TOKEN_PREFIX}_{public_id}_{secrets.token_urlsafe(32)}"


class ApiToken(models.Model):
    """A bearer token, scoped to one tenant and one role, stored only as a hash."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="tokens")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens",
                             help_text="The person the token acts for (a service account's owner).")
    service_account = models.ForeignKey(ServiceAccount, on_delete=models.CASCADE, null=True, blank=True,
                                        related_name="tokens")
    name = models.CharField(max_length=100)
    role = models.CharField(max_length=32, choices=Role.choices)
    public_id = models.CharField(max_length=16, unique=True)
    key_hash = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField()
    revoked_at = models.DateTimeField(null=True, blank=True)

    objects = TenantOwnedQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]

    def __str__(self):
        return f"token {self.public_id}"

    @property
    def is_live(self):
        return self.revoked_at is None and self.expires_at > timezone.now()

    @property
    def state(self):
        if self.revoked_at:
            return "revoked"
        return "live" if self.expires_at > timezone.now() else "expired"


class GpuFlavor(models.Model):
    """A kind of GPU the platform offers: a whole device (h100-80gb) or a MIG slice
    (h100-1g.10gb). Platform-wide; managed by platform admins."""

    name = models.CharField(max_length=64, unique=True, validators=[RegexValidator(
        r"\A[a-z0-9](?:[a-z0-9.-]{0,62}[a-z0-9])?\Z", "Use lowercase letters, digits, '.' and '-', like h100-1g.10gb.")])
    description = models.CharField(max_length=200, blank=True)
    memory_gb = models.PositiveIntegerField(help_text="Device memory per unit, in GB.")
    billing_weight = models.DecimalField(max_digits=8, decimal_places=3,
                                         validators=[MinValueValidator(Decimal("0.001"))], help_text="Chargeback weight per GPU-hour relative to 1.0.")
    is_active = models.BooleanField(default=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["name"]
        constraints = [models.CheckConstraint(condition=models.Q(billing_weight__gt=0), name="gpu_flavor_weight_positive")]

    def __str__(self):
        return self.name


class BudgetMode(models.TextChoices):
    HARD = "hard"  # a run is admitted only if the month's remaining GPU-hours cover it
    SOFT = "soft"  # runs are admitted; alerts at 80% and 100%, overruns show in chargeback


class TenantQuota(models.Model):
    """A tenant's GPU quota for one flavor, as Kueue models it: ``nominal`` devices are the
    tenant's own; up to ``borrowing_limit`` more may be borrowed from idle capacity. On top,
    what Kueue lacks: a budget of GPU-hours per calendar month (none when empty)."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="quotas")
    flavor = models.ForeignKey(GpuFlavor, on_delete=models.PROTECT, related_name="quotas")
    nominal = models.PositiveIntegerField()
    borrowing_limit = models.PositiveIntegerField(default=0)
    gpu_hours_budget = models.PositiveIntegerField(null=True, blank=True)
    budget_mode = models.CharField(max_length=8, choices=BudgetMode.choices, default=BudgetMode.HARD)
    updated_at = models.DateTimeField(default=timezone.now)

    objects = TenantOwnedQuerySet.as_manager()

    class Meta:
        ordering = ["flavor__name"]
        constraints = [models.UniqueConstraint(fields=["tenant", "flavor"], name="one_quota_per_tenant_flavor")]

    def __str__(self):
        return f"{self.tenant} {self.flavor}: {self.nominal}+{self.borrowing_limit}"


class PersonName(models.Model):
    """The identity a person's username claims: its UTS #39 skeleton (as a digest), unique, so
    that no two accounts have usernames that look alike (tenants/usernames.py). Written with
    the username by every path that creates or renames a person."""

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, primary_key=True,
                                related_name="person_name")
    skeleton_sha256 = models.CharField(max_length=64, unique=True)

    def __str__(self):
        return f"{self.user} ({self.skeleton_sha256[:12]})"
