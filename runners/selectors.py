"""Read-side views: pools and their capacity, a tenant's quota usage and daily GPU-hours,
node utilisation and chargeback (the last two are platform-wide, on the platform role)."""

from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal

from django.db.models import Count, Sum
from django.db.models.functions import TruncDate
from django.utils import timezone

from tenants.db import PLATFORM_ALIAS
from tenants.models import TenantQuota

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


def daily_gpu_hours(*, tenant, days: int, moment=None) -> list[tuple]:
    """(day, GPU-hours billed that day) for the tenant's last ``days`` days, oldest first."""
    moment = moment or timezone.now()
    first = (moment - timedelta(days=days - 1)).date()
    billed = dict(UsageEntry.objects.filter(tenant=tenant, recorded_at__date__gte=first).order_by()
                  .annotate(day=TruncDate("recorded_at")).values("day").annotate(total=Sum("gpu_seconds"))
                  .values_list("day", "total"))
    return [(day, (billed.get(day, Decimal(0)) / 3600).quantize(Decimal("0.01")))
            for day in (first + timedelta(days=n) for n in range(days))]


def bar_chart(days: list[tuple], *, width=600, height=120) -> list[dict]:
    """Bars for an inline SVG: one per day, scaled to the busiest day."""
    top = max((hours for _, hours in days), default=Decimal(0)) or Decimal(1)
    step = width / max(len(days), 1)
    return [{"x": round(i * step, 1), "width": round(step * 0.8, 1), "day": day, "hours": hours,
             "height": round(float(hours / top) * height, 1), "y": round(height - float(hours / top) * height, 1)}
            for i, (day, hours) in enumerate(days)]


@dataclass
class NodeUse:
    node: RunnerNode
    live: bool
    devices_held: int
    runs: int


def node_utilisation(moment=None) -> list[NodeUse]:
    """Every node with how many of its devices runs hold now (platform admins' view)."""
    moment = moment or timezone.now()
    held: dict[int, list] = {}
    for node_id, device_ids in (Run.objects.using(PLATFORM_ALIAS).filter(state__in=HOLDING_STATES, node__isnull=False)
                                .values_list("node_id", "device_ids")):
        held.setdefault(node_id, []).append(device_ids)
    return [NodeUse(node=node, live=node.is_live(moment), devices_held=sum(len(d) for d in held.get(node.pk, [])),
                    runs=len(held.get(node.pk, [])))
            for node in RunnerNode.objects.select_related("flavor")]


CHARGEBACK_COLUMNS = ["month", "tenant", "flavor", "gpu_hours", "weighted_gpu_hours", "gpu_hours_budget",
                      "budget_mode", "overrun_gpu_hours"]


def chargeback(month) -> list[dict]:
    """GPU-hours per tenant and flavor billed in ``month`` (the ledger, every tenant: the
    platform role), weighted by the flavor's billing weight, with the budget and any overrun."""
    quotas = {(q.tenant_id, q.flavor_id): q for q in TenantQuota.objects.using(PLATFORM_ALIAS).all()}
    rows = []
    for row in (UsageEntry.objects.using(PLATFORM_ALIAS).filter(month=month).order_by()
                .values("tenant_id", "tenant__slug", "flavor_id", "flavor__name")
                .annotate(seconds=Sum("gpu_seconds"), weighted=Sum("weighted_gpu_seconds"))
                .order_by("tenant__slug", "flavor__name")):
        quota = quotas.get((row["tenant_id"], row["flavor_id"]))
        hours = (row["seconds"] / 3600).quantize(Decimal("0.001"))
        budget = quota.gpu_hours_budget if quota else None
        rows.append({"month": f"{month:%Y-%m}", "tenant": row["tenant__slug"], "flavor": row["flavor__name"],
                     "gpu_hours": hours, "weighted_gpu_hours": (row["weighted"] / 3600).quantize(Decimal("0.001")),
                     "gpu_hours_budget": "" if budget is None else budget,
                     "budget_mode": quota.budget_mode if quota and budget is not None else "",
                     "overrun_gpu_hours": max(Decimal(0), hours - budget) if budget is not None else Decimal(0)})
    return rows

