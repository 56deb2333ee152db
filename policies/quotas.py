"""A tenant's GPU quotas, as a governed setting (policies/governance.py).

A quota is a fact of the promotion gate (``baseline.gpu_quota`` is hard-mandatory) and of
admission, so raising one lets through a request that was refused or held: it is loosening.
Platform admins set quotas and a tenant's own admins never do, so one platform admin proposes a
raise and a second one confirms it with a fresh one-time password; a cut applies at once.
"""

from dataclasses import dataclass

from django.db import transaction
from django.db.models import F
from django.utils import timezone

from audit.log import Target, record
from tenants.access import actor_for, require_platform_admin
from tenants.db import bind_rls
from tenants.errors import Invalid
from tenants.models import BudgetMode, GpuFlavor, Tenant, TenantQuota

from . import governance, loosening
from .models import GovernedChangeProposal as Proposal

SETTING = Proposal.Setting.QUOTAS
MAX_GPU_HOURS_BUDGET = 10_000_000
FIELDS = ("nominal", "borrowing_limit", "gpu_hours_budget", "budget_mode")


@dataclass(frozen=True)
class QuotasWritten:
    revision: int


def tenant_quota_set(*, actor, tenant: Tenant, flavor: GpuFlavor, nominal: int, borrowing_limit: int = 0,
                     gpu_hours_budget: int | None = None, budget_mode: str = BudgetMode.HARD) -> TenantQuota | Proposal:
    """Set a tenant's quota for one flavor and its monthly GPU-hour budget (none when
    ``gpu_hours_budget`` is None): the quota as written, or the proposal a second platform
    admin confirms when the change raises anything."""
    require_platform_admin(actor)
    wanted = _valid_quota(nominal=nominal, borrowing_limit=borrowing_limit, gpu_hours_budget=gpu_hours_budget,
                          budget_mode=budget_mode)
    with transaction.atomic():
        bind_rls(tenant_id=tenant.pk)
        before, revision = _current_quotas(tenant)
        after = before["quotas"] | {flavor.name: wanted}
        if after == before["quotas"]:
            return TenantQuota.objects.select_related("flavor").get(tenant=tenant, flavor=flavor)
        proposal = governance.propose_if_loosening(
            actor=actor, tenant=tenant, setting=SETTING, before=before, changes={"quotas": after},
            base_revision=revision, confirmers=Proposal.Confirmers.PLATFORM_ADMINS)
        if proposal is not None:
            return proposal
        _write_quotas(actor=actor, tenant=tenant, changes={"quotas": after}, comment="", proposal=None)
        return TenantQuota.objects.select_related("flavor").get(tenant=tenant, flavor=flavor)


def _valid_quota(**wanted) -> dict:
    for field in ("nominal", "borrowing_limit"):
        value = wanted[field]
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise Invalid(f"{field} must be a whole number of GPUs, 0 or more.", field=field)
    budget = wanted["gpu_hours_budget"]
    if budget is not None and (not isinstance(budget, int) or isinstance(budget, bool)
                               or not 0 <= budget <= MAX_GPU_HOURS_BUDGET):
        raise Invalid(f"gpu_hours_budget is a whole number of GPU-hours per month, 0 to {MAX_GPU_HOURS_BUDGET}, "
                      "or null for no budget.", field="gpu_hours_budget")
    if wanted["budget_mode"] not in BudgetMode.values:
        raise Invalid(f"budget_mode is one of {', '.join(BudgetMode.values)}.", field="budget_mode")
    return {field: wanted[field] for field in FIELDS}


def _current_quotas(tenant: Tenant) -> tuple[dict, int]:
    """Every quota of the tenant by flavor, and their revision, the tenant's row locked."""
    locked = Tenant.objects.select_for_update().get(pk=tenant.pk)
    quotas = {row["flavor__name"]: {field: row[field] for field in FIELDS}
              for row in TenantQuota.objects.filter(tenant=tenant).values("flavor__name", *FIELDS)}
    return {"quotas": quotas}, locked.quotas_revision


def _write_quotas(*, actor, tenant: Tenant, changes: dict, comment: str, proposal: Proposal | None) -> QuotasWritten:
    """Write each flavor's quota that differs (the tenant's row locked): a cut at once, or a
    raise a second platform admin confirmed (``proposal``)."""
    before, _ = _current_quotas(tenant)
    flavors = {f.name: f for f in GpuFlavor.objects.filter(name__in=list(changes["quotas"]))}
    for name, wanted in changes["quotas"].items():
        previous = before["quotas"].get(name)
        if wanted == previous:
            continue
        TenantQuota.objects.update_or_create(tenant=tenant, flavor=flavors[name],
                                             defaults={**wanted, "updated_at": timezone.now()})
        record(action="tenant_quota.set", actor=actor_for(actor), tenant=tenant.slug,
               target=Target("tenant_quota", name),
               data={"from": previous, "to": wanted, "proposal": proposal.pk if proposal else None})
    Tenant.objects.filter(pk=tenant.pk).update(quotas_revision=F("quotas_revision") + 1)
    revision = Tenant.objects.values_list("quotas_revision", flat=True).get(pk=tenant.pk)
    governance.settle(actor=actor, tenant=tenant, setting=SETTING, revision=revision, applied=proposal)
    return QuotasWritten(revision=revision)


GOVERNED_QUOTAS = governance.Governed(
    orders=loosening.QUOTAS, current=_current_quotas, write=_write_quotas, label="GPU quotas",
    revision=lambda tenant: Tenant.objects.values_list("quotas_revision", flat=True).get(pk=tenant.pk),
    why_platform_confirms=lambda proposal: "the platform admins set the GPU quotas, never the tenant's own admins")
