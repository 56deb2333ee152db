"""The usage ledger: GPU-seconds x the flavor's billing weight, one row per admission of a run.

A row is written once, when that admission ends (the run finished, was cancelled, or was
reaped), and never changed (database triggers; the app role cannot write it at all). The
unique (run, fencing token) pair means a race between a worker finishing and the reaper
reaping bills the time once.
"""

from decimal import Decimal

from django.db import IntegrityError, transaction
from django.db.models import Sum

from .models import Run, UsageEntry

MILLI = Decimal("0.001")


def month_of(moment):
    return moment.date().replace(day=1)


def bill(run: Run, *, until, using: str) -> UsageEntry | None:
    """Bill the run's current admission from its start up to ``until``; None if it held no
    GPU, never started, or was billed already."""
    if not run.gpus or run.flavor_id is None or run.started_at is None:
        return None
    seconds = max(Decimal(0), Decimal(str((until - run.started_at).total_seconds()))).quantize(MILLI)
    gpu_seconds = (seconds * run.gpus).quantize(MILLI)
    weight = run.flavor.billing_weight
    try:
        with transaction.atomic(using=using):
            return UsageEntry.objects.using(using).create(
                tenant_id=run.tenant_id, flavor_id=run.flavor_id, run=run, fencing_token=run.fencing_token,
                month=month_of(until), gpus=run.gpus, seconds=seconds, gpu_seconds=gpu_seconds, weight=weight,
                weighted_gpu_seconds=(gpu_seconds * weight).quantize(MILLI))
    except IntegrityError:
        return None


def gpu_seconds_used(*, tenant_id: int, flavor_id: int, month, using: str) -> Decimal:
    return (UsageEntry.objects.using(using).filter(tenant_id=tenant_id, flavor_id=flavor_id, month=month)
            .aggregate(total=Sum("gpu_seconds"))["total"] or Decimal(0))
