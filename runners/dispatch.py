"""Dispatch through a transactional outbox, and the reaper that takes runs back.

Admission writes a ``DispatchOutbox`` row in the transaction that admits a run; after commit
the row is published to the queue of the node that holds the run's devices. If the process
dies between the commit and the publish, the next admission cycle publishes the row (the
sweep). A message may therefore arrive twice; the worker's claim, fenced by the run's token,
makes the second one a no-op.

The database, not the broker, is the recovery path: a run dispatched but not claimed within
RUN_CLAIM_TIMEOUT_SECONDS, or running with a lease nobody renewed, is reaped: its devices are
released, the time it held them (up to the lease's end) is billed once, and it is queued again
(through admission, which writes a new outbox row) up to RUN_MAX_REQUEUES times, then marked
lost. A run whose cancellation was asked for ends cancelled instead.
"""

import logging
from datetime import timedelta

from celery import current_app as celery_app
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from audit.log import Actor, Target, record
from tenants.db import PLATFORM_ALIAS

from .ledger import bill
from .models import HOLDING_STATES, DispatchOutbox, Run, RunState, RunStep, StepState

logger = logging.getLogger(__name__)

EXECUTE_RUN = "runners.execute_run"  # the task, sent by name: domain code never imports tasks
SWEEP_GRACE_SECONDS = 2  # a row this fresh is still being published by the process that wrote it


def outbox_add(run: Run) -> DispatchOutbox:
    """In the admitting transaction: the message to send once it commits."""
    row = DispatchOutbox.objects.using(PLATFORM_ALIAS).create(run=run, fencing_token=run.fencing_token,
                                                        queue=run.node.queue)
    transaction.on_commit(lambda: outbox_publish(ids=[row.pk]), using=PLATFORM_ALIAS)
    return row


def outbox_publish(*, ids=None, older_than_seconds: float | None = None) -> int:
    """Send unpublished rows to their node queues; mark each sent row, and its run dispatched."""
    rows = DispatchOutbox.objects.using(PLATFORM_ALIAS).filter(published_at__isnull=True).select_related("run")
    if ids is not None:
        rows = rows.filter(pk__in=ids)
    if older_than_seconds is not None:
        rows = rows.filter(created_at__lt=timezone.now() - timedelta(seconds=older_than_seconds))
    published = 0
    for row in rows.order_by("id"):
        try:
            celery_app.send_task(EXECUTE_RUN, kwargs={"run": str(row.run.public_id), "fencing_token": row.fencing_token,
                                                      "hostname": row.queue.removeprefix("runner.")},
                                 queue=row.queue, retry=False)
        except Exception:  # the broker is away: the row stays, and the sweep sends it later
            DispatchOutbox.objects.using(PLATFORM_ALIAS).filter(pk=row.pk).update(attempts=row.attempts + 1)
            logger.warning("could not publish run %s to %s; the sweep will retry", row.run.public_id, row.queue,
                           exc_info=True)
            continue
        now = timezone.now()
        DispatchOutbox.objects.using(PLATFORM_ALIAS).filter(pk=row.pk).update(published_at=now,
                                                                              attempts=row.attempts + 1)
        Run.objects.using(PLATFORM_ALIAS).filter(pk=row.run_id, fencing_token=row.fencing_token,
                                           state=RunState.ADMITTED).update(state=RunState.DISPATCHED)
        published += 1
    return published


def outbox_sweep() -> int:
    """Publish what a process committed but did not send."""
    return outbox_publish(older_than_seconds=SWEEP_GRACE_SECONDS)


def reap_expired(*, moment=None) -> int:
    """Take back every run whose claim window or lease has passed, one transaction each."""
    moment = moment or timezone.now()
    expired = (Run.objects.using(PLATFORM_ALIAS)
               .filter(state__in=HOLDING_STATES, lease_expires_at__lt=moment)
               .exclude(node__isnull=True).values_list("pk", flat=True))
    return sum(_reap(pk, moment=moment) for pk in list(expired))


def _reap(pk: int, *, moment) -> int:
    with transaction.atomic(using=PLATFORM_ALIAS):
        run = (Run.objects.using(PLATFORM_ALIAS).select_for_update(of=("self",), skip_locked=True)
               .select_related("tenant", "node", "flavor")
               .filter(pk=pk, lease_expires_at__lt=moment, state__in=HOLDING_STATES).first())
        if run is None:  # finished, renewed or reaped by someone else meanwhile
            return 0
        was_running = run.state == RunState.RUNNING
        if was_running:
            # Bill up to the lease's end: the devices were the tenant's, and no one else's, until then.
            bill(run, until=max(min(run.lease_expires_at, moment), run.started_at), using=PLATFORM_ALIAS)
            RunStep.objects.using(PLATFORM_ALIAS).filter(run=run, fencing_token=run.fencing_token,
                                                         state__in=(StepState.PENDING, StepState.RUNNING)).update(
                state=StepState.FAILED, reason="The worker stopped renewing the run's lease.", finished_at=moment)
        why = (f"Node {run.node.hostname} stopped renewing the lease at {run.lease_expires_at:%Y-%m-%d %H:%M:%S} UTC"
               if was_running else f"Node {run.node.hostname} did not claim the run within "
                                   f"{settings.RUN_CLAIM_TIMEOUT_SECONDS:g} s")
        data = {"node": run.node.hostname, "devices": run.device_ids, "fencing_token": run.fencing_token,
                "was": run.state}
        if run.cancel_requested_at is not None:  # someone asked it to stop: it ends, rather than runs again
            run.state, run.finished_at, action = RunState.CANCELLED, moment, "run.finish"
            run.reason = f"{run.reason} {why}; it was not run again.".strip()
        elif run.requeues < settings.RUN_MAX_REQUEUES:
            run.requeues += 1
            run.state, action = RunState.QUEUED, "run.requeue"
            run.reason = f"{why}; queued again ({run.requeues} of {settings.RUN_MAX_REQUEUES})."
        else:
            run.state, run.finished_at, action = RunState.LOST, moment, "run.lost"
            run.reason = f"{why}; it was requeued {settings.RUN_MAX_REQUEUES} time(s) already, so it is lost."
        # A preemption asked of the admission that died is moot for the next one.
        run.node, run.device_ids, run.lease_expires_at, run.preempt_requested_at = None, [], None, None
        run.save(using=PLATFORM_ALIAS, update_fields=["state", "reason", "finished_at", "requeues", "node",
                                                      "device_ids", "lease_expires_at", "preempt_requested_at"])
        record(action=action, actor=Actor.system("reaper"), tenant=run.tenant.slug,
               target=Target("run", run.public_id), using=PLATFORM_ALIAS,
               data={**data, "state": run.state, "reason": run.reason})
        return 1
