"""Read-side views: pools and their capacity, and a tenant's quota usage."""

from dataclasses import dataclass, field
from decimal import Decimal

from django.db.models import Count, Sum
from django.utils import timezone

from .ledger import month_of
from .models import HOLDING_STATES, BudgetAlert, WAITING_STATES, Run, RunnerNode, RunState, UsageEntry


@dataclass
class Pool:
    """The nodes sharing a flavor and a jurisdiction; capacity counts live nodes only."""

    flavor: str
    jurisdiction: str
    capacity: int = 0
    live_nodes: list = field(default_factory=list)
    other_nodes: list = field(default_factory=list)


def pools(moment=None) -> list[Pool]:
    moment = moment or timezone.now()
    found: dict[tuple[str, str], Pool] = {}
    for node in RunnerNode.objects.select_related("flavor"):
        pool = found.setdefault((node.flavor.name, node.jurisdiction), Pool(node.flavor.name, node.jurisdiction))
        if node.is_live(moment):
            pool.capacity += len(node.device_ids)
            pool.live_nodes.append(node.hostname)
        else:
            pool.other_nodes.append(node.hostname)
    return sorted(found.values(), key=lambda p: (p.flavor, p.jurisdiction))


@dataclass
class QuotaUsage:
    """One flavor of a tenant's quota as it stands now, and this month's GPU-hours against the
    budget: what the ledger billed plus what running runs have held so far."""

    in_use: int = 0
    borrowed: int = 0
    queued_runs: int = 0
    queued_gpus: int = 0
    gpu_hours_used: Decimal = Decimal(0)
    gpu_hours_remaining: Decimal | None = None
    budget_alerts: list = field(default_factory=list)  # soft-mode thresholds (percent) crossed this month


def quota_usage(quotas, moment=None) -> dict[int, QuotaUsage]:
    """Usage per quota id, for quotas of one tenant (reads go through the caller's tenant
    scope). Four queries, whatever the number of flavors."""
    moment = moment or timezone.now()
    quotas = list(quotas)
    if not quotas:
        return {}
    tenant_id = quotas[0].tenant_id
    usage = {q.flavor_id: QuotaUsage() for q in quotas}
    runs = Run.objects.filter(tenant_id=tenant_id, flavor_id__in=usage).order_by()
    for flavor_id, state, gpus, started_at in runs.filter(state__in=HOLDING_STATES).values_list(
            "flavor_id", "state", "gpus", "started_at"):
        usage[flavor_id].in_use += gpus
        if state == RunState.RUNNING and started_at:
            usage[flavor_id].gpu_hours_used += Decimal(gpus * (moment - started_at).total_seconds()) / 3600
    for row in runs.filter(state__in=WAITING_STATES).values("flavor_id").annotate(n=Count("id"), g=Sum("gpus")):
        usage[row["flavor_id"]].queued_runs, usage[row["flavor_id"]].queued_gpus = row["n"], row["g"] or 0
    billed = (UsageEntry.objects.filter(tenant_id=tenant_id, flavor_id__in=usage, month=month_of(moment)).order_by()
              .values("flavor_id").annotate(total=Sum("gpu_seconds")))
    for row in billed:
        usage[row["flavor_id"]].gpu_hours_used += row["total"] / 3600
    for flavor_id, threshold in (BudgetAlert.objects.filter(tenant_id=tenant_id, flavor_id__in=usage,
                                                            month=month_of(moment))
                                 .order_by("threshold").values_list("flavor_id", "threshold")):
        usage[flavor_id].budget_alerts.append(threshold)
    result = {}
    for quota in quotas:
        found = usage[quota.flavor_id]
        found.borrowed = max(0, found.in_use - quota.nominal)
        found.gpu_hours_used = found.gpu_hours_used.quantize(Decimal("0.001"))
        if quota.gpu_hours_budget is not None:
            found.gpu_hours_remaining = Decimal(quota.gpu_hours_budget) - found.gpu_hours_used
        result[quota.pk] = found
    return result
