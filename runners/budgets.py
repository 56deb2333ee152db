"""GPU-hour budgets per tenant and flavor per calendar month (UTC).

Hard mode: admission admits a run only if the month's remaining budget covers its GPUs x its
maximum runtime, counting what the ledger billed and the worst case of what is held now; and
a running run is stopped when the budget runs out (possible only after an operator lowers
the budget). Soft mode: runs are admitted; crossing 80% and 100% raises an audited alert,
once per threshold per month, and the overrun shows in chargeback.
"""

from decimal import Decimal

from django.db import IntegrityError, transaction
from django.utils import timezone

from audit.log import Actor, Target, record
from tenants.db import PLATFORM_ALIAS
from tenants.models import BudgetMode, TenantQuota

from .ledger import gpu_seconds_used, month_of
from .models import HOLDING_STATES, BudgetAlert, Run, RunState

ALERT_THRESHOLDS = (80, 100)


def committed_gpu_seconds(*, tenant_id: int, flavor_id: int, moment) -> Decimal:
    """Billed this month, plus the worst case (GPUs x maximum runtime) of every run that holds
    devices now and is not billed yet: what hard-mode admission counts against the budget."""
    held = (Run.objects.using(PLATFORM_ALIAS).filter(tenant_id=tenant_id, flavor_id=flavor_id, state__in=HOLDING_STATES)
            .values_list("gpus", "max_runtime_seconds"))
    return (gpu_seconds_used(tenant_id=tenant_id, flavor_id=flavor_id, month=month_of(moment), using=PLATFORM_ALIAS)
            + sum((Decimal(gpus * seconds) for gpus, seconds in held), Decimal(0)))


def used_gpu_seconds(*, tenant_id: int, flavor_id: int, moment) -> Decimal:
    """Billed this month plus what running runs have held so far."""
    running = (Run.objects.using(PLATFORM_ALIAS)
               .filter(tenant_id=tenant_id, flavor_id=flavor_id, state=RunState.RUNNING)
               .values_list("gpus", "started_at"))
    return (gpu_seconds_used(tenant_id=tenant_id, flavor_id=flavor_id, month=month_of(moment), using=PLATFORM_ALIAS)
            + sum((Decimal(gpus * (moment - started).total_seconds()) for gpus, started in running), Decimal(0)))


def enforce(*, moment=None) -> None:
    """Part of every admission cycle: stop hard-mode runs past their budget, raise soft alerts."""
    moment = moment or timezone.now()
    for quota in (TenantQuota.objects.using(PLATFORM_ALIAS).filter(gpu_hours_budget__isnull=False)
                  .select_related("tenant", "flavor")):
        used = used_gpu_seconds(tenant_id=quota.tenant_id, flavor_id=quota.flavor_id, moment=moment)
        budget = Decimal(quota.gpu_hours_budget * 3600)
        if quota.budget_mode == BudgetMode.HARD and used >= budget:
            _stop_running(quota, used=used, moment=moment)
        elif quota.budget_mode == BudgetMode.SOFT and used > 0:
            for threshold in ALERT_THRESHOLDS:
                if used * 100 >= budget * threshold:
                    _alert(quota, threshold=threshold, used=used, moment=moment)


def _stop_running(quota, *, used, moment) -> None:
    reason = (f"The tenant's {quota.gpu_hours_budget} GPU-hour {quota.flavor.name} budget for "
              f"{moment:%B %Y} is used up.")
    with transaction.atomic(using=PLATFORM_ALIAS):
        runs = list(Run.objects.using(PLATFORM_ALIAS).select_for_update(of=("self",))
                    .filter(tenant_id=quota.tenant_id, flavor_id=quota.flavor_id, state=RunState.RUNNING,
                            cancel_requested_at__isnull=True).order_by("id"))
        for run in runs:
            run.cancel_requested_at, run.reason = moment, reason
            run.save(using=PLATFORM_ALIAS, update_fields=["cancel_requested_at", "reason"])
            record(action="run.budget_stop", actor=Actor.system("budget"), tenant=quota.tenant.slug,
                   target=Target("run", run.public_id), using=PLATFORM_ALIAS,
                   data={"flavor": quota.flavor.name, "gpu_hours_budget": quota.gpu_hours_budget,
                         "gpu_hours_used": str((used / 3600).quantize(Decimal("0.001")))})


def _alert(quota, *, threshold: int, used: Decimal, moment) -> None:
    hours = (used / 3600).quantize(Decimal("0.001"))
    try:
        with transaction.atomic(using=PLATFORM_ALIAS):
            BudgetAlert.objects.using(PLATFORM_ALIAS).create(
                tenant_id=quota.tenant_id, flavor_id=quota.flavor_id, month=month_of(moment), threshold=threshold,
                gpu_hours_used=hours, gpu_hours_budget=quota.gpu_hours_budget, raised_at=moment)
            record(action="quota.budget_alert", actor=Actor.system("budget"), tenant=quota.tenant.slug,
                   target=Target("tenant_quota", quota.flavor.name), using=PLATFORM_ALIAS,
                   data={"threshold": threshold, "gpu_hours_used": str(hours),
                         "gpu_hours_budget": quota.gpu_hours_budget, "month": f"{month_of(moment):%Y-%m}"})
    except IntegrityError:  # raised already this month
        pass

