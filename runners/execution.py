"""The state changes of a run while it executes: claim, lease, steps, logs, finish, cancel.

A runner works through the platform role (it executes every tenant's runs). Every write it
makes is conditional on the run's fencing token and state, so a worker that lost its run to
the reaper (its lease expired, the run was admitted again with a higher token) can change
nothing any more, and notices that at its next lease renewal.
"""

import logging
import threading
from dataclasses import dataclass, field
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from audit.log import Actor, Target, record
from tenants.access import actor_for, require, require_one_of
from tenants.db import PLATFORM_ALIAS, bind_rls
from tenants.errors import Conflict
from tenants.catalogue import region_jurisdictions
from workflows.models import Artifact
from workflows.spec import step_order

from .ledger import bill
from .models import FINISHED_STATES, UNCLAIMED_STATES, WAITING_STATES, Run, RunLogChunk, RunState, RunStep, StepState

logger = logging.getLogger(__name__)

RUNNER = Actor.system("runner")


@dataclass
class Lease:
    """What a worker holds while it executes one admission of a run."""

    run: Run
    fencing_token: int
    hostname: str
    lost: bool = False  # set when a renewal is refused: the reaper owns the run now
    step: str = ""  # the step whose output is being logged
    done: threading.Event = field(default_factory=threading.Event)

    def fenced(self):
        return Run.objects.using(PLATFORM_ALIAS).filter(pk=self.run.pk, fencing_token=self.fencing_token,
                                                  state=RunState.RUNNING)


def _record(action: str, run: Run, **data) -> None:
    record(action=action, actor=RUNNER, tenant=run.tenant.slug, target=Target("run", run.public_id),
           using=PLATFORM_ALIAS, data=data)


def run_claim(*, run_id: str, fencing_token: int, hostname: str) -> Lease | None:
    """The first transaction of a delivery: take the run if this message is still the one
    that counts. A duplicate or stale delivery returns None and changes nothing; a message
    for devices reserved on another node, or for a node outside the tenant's jurisdiction, is
    refused (and audited)."""
    now = timezone.now()
    with transaction.atomic(using=PLATFORM_ALIAS):
        run = (Run.objects.using(PLATFORM_ALIAS).select_for_update(of=("self",))
               .select_related("tenant", "node", "flavor", "version__workflow", "requested_by")
               .filter(public_id=run_id).first())
        if run is None:
            logger.warning("run %s does not exist; message dropped", run_id)
            return None
        if run.node is None or run.node.hostname != hostname:
            _record("run.claim_refused", run, node=hostname, fencing_token=fencing_token,
                    reserved_on=run.node.hostname if run.node else "")
            return None
        if run.node.jurisdiction != run.tenant.jurisdiction:  # whatever put it there, it does not run here
            _record("run.claim_refused", run, node=hostname, fencing_token=fencing_token, reserved_on=hostname,
                    reason=f"The node is in {run.node.jurisdiction}, outside {run.tenant.slug}'s jurisdiction "
                           f"({run.tenant.jurisdiction}).")
            return None
        if run.fencing_token != fencing_token or run.state not in UNCLAIMED_STATES:
            logger.info("run %s: delivery with token %s is stale or a duplicate (token %s, %s); no effect",
                        run_id, fencing_token, run.fencing_token, run.state)
            return None
        run.state, run.reason, run.started_at = RunState.RUNNING, "", now
        run.lease_expires_at = now + timedelta(seconds=settings.RUNNER_LEASE_SECONDS)
        run.save(using=PLATFORM_ALIAS, update_fields=["state", "reason", "started_at", "lease_expires_at"])
        RunStep.objects.using(PLATFORM_ALIAS).bulk_create([
            RunStep(tenant_id=run.tenant_id, run=run, fencing_token=fencing_token, position=position, name=step["name"])
            for position, step in enumerate(step_order(run.version.spec))])
        _record("run.start", run, node=hostname, devices=run.device_ids, fencing_token=fencing_token)
    return Lease(run=run, fencing_token=fencing_token, hostname=hostname)


CANCEL, PREEMPT = "cancel", "preempt"


def lease_renew(lease: Lease) -> bool:
    """Extend the lease; False when the reaper has taken the run back."""
    expires = timezone.now() + timedelta(seconds=settings.RUNNER_LEASE_SECONDS)
    return bool(lease.fenced().update(lease_expires_at=expires))


def stop_requested(lease: Lease) -> str | None:
    """What the run was asked to do while running: CANCEL, PREEMPT, or nothing."""
    asked = lease.fenced().values_list("cancel_requested_at", "preempt_requested_at").first()
    if asked is None:
        return None
    return CANCEL if asked[0] else PREEMPT if asked[1] else None


def step_update(lease: Lease, name: str, **changes) -> None:
    RunStep.objects.using(PLATFORM_ALIAS).filter(run_id=lease.run.pk, fencing_token=lease.fencing_token,
                                           name=name).update(**changes)


def log_append(lease: Lease, text: str) -> None:
    """Keep the run's output up to RUN_LOG_MAX_BYTES; count what is dropped beyond it."""
    if not text:
        return
    data = text.encode("utf-8", "replace")
    room = max(0, settings.RUN_LOG_MAX_BYTES - lease.run.log_bytes)
    kept = data[:room].decode("utf-8", "ignore")
    kept_bytes = len(kept.encode("utf-8"))
    with transaction.atomic(using=PLATFORM_ALIAS):
        if not lease.fenced().update(log_bytes=F("log_bytes") + kept_bytes,
                                     log_dropped_bytes=F("log_dropped_bytes") + len(data) - kept_bytes):
            return
        if kept:
            RunLogChunk.objects.using(PLATFORM_ALIAS).create(tenant_id=lease.run.tenant_id, run_id=lease.run.pk,
                                                       step=lease.step, text=kept)
    lease.run.log_bytes += kept_bytes
    lease.run.log_dropped_bytes += len(data) - kept_bytes


def input_artifact(lease: Lease, *, name: str, digest: str) -> tuple[Artifact | None, str]:
    """The stored artifact of the run's tenant behind one input, or why the runner must not copy
    it (audited in the run's tenant): a digest alone grants no bytes, and bytes leave their
    jurisdiction for no node."""
    run, node = lease.run, lease.run.node
    held = list(Artifact.objects.using(PLATFORM_ALIAS)
                .filter(tenant_id=run.tenant_id, digest=digest, stored_at__isnull=False).order_by("id"))
    where = region_jurisdictions({a.region for a in held}, using=PLATFORM_ALIAS)
    resident = [a for a in held if where.get(a.region) == node.jurisdiction]
    if resident:
        return resident[0], ""
    if not held:
        reason = f"Input {name} ({digest}) is not an artifact of {run.tenant.slug}."
    else:
        reason = (f"Input {name} ({digest}) is stored in region {held[0].region}, outside this node's "
                  f"jurisdiction ({node.jurisdiction}).")
    with transaction.atomic(using=PLATFORM_ALIAS):
        _record("run.input_refused", run, input=name, digest=digest, node=lease.hostname, reason=reason)
    return None, reason


def run_finish(lease: Lease, *, state: str, reason: str = "") -> bool:
    """End the admission: record the outcome, release the devices, bill the GPU time once."""
    now = timezone.now()
    with transaction.atomic(using=PLATFORM_ALIAS):
        run = (lease.fenced().select_for_update(of=("self",)).select_related("tenant", "flavor").first())
        if run is None:  # the reaper took it back meanwhile; it billed what this admission used
            return False
        if run.log_dropped_bytes:
            RunLogChunk.objects.using(PLATFORM_ALIAS).create(
                tenant_id=run.tenant_id, run_id=run.pk,
                text=f"\n[log capped at {settings.RUN_LOG_MAX_BYTES} bytes: {run.log_dropped_bytes} bytes "
                     f"were not kept]\n")
        if state == RunState.CANCELLED and run.reason:  # who or what cancelled it, not how the worker saw it
            reason = run.reason
        run.state, run.reason, run.finished_at, run.lease_expires_at = state, reason[:1000], now, None
        run.save(using=PLATFORM_ALIAS, update_fields=["state", "reason", "finished_at", "lease_expires_at"])
        RunStep.objects.using(PLATFORM_ALIAS).filter(run=run, fencing_token=lease.fencing_token,
                                               state=StepState.PENDING).update(state=StepState.SKIPPED)
        entry = bill(run, until=now, using=PLATFORM_ALIAS)
        _record("run.finish", run, state=state, reason=run.reason, node=lease.hostname, devices=run.device_ids,
                gpu_seconds=str(entry.gpu_seconds) if entry else "0")
    return True


def run_preempted(lease: Lease) -> bool:
    """The steps stopped for a preemption: bill this admission, give the devices back, and
    queue the run again (not counted as a failure)."""
    from .admission import requeue_preempted

    now = timezone.now()
    with transaction.atomic(using=PLATFORM_ALIAS):
        run = lease.fenced().select_for_update(of=("self",)).select_related("tenant", "flavor").first()
        if run is None:
            return False
        entry = bill(run, until=now, using=PLATFORM_ALIAS)
        RunStep.objects.using(PLATFORM_ALIAS).filter(run=run, fencing_token=lease.fencing_token,
                                               state__in=(StepState.PENDING, StepState.RUNNING)).update(
            state=StepState.CANCELLED, reason="Preempted.", finished_at=now)
        requeue_preempted(run, reason="Preempted to return borrowed devices.", using=PLATFORM_ALIAS)
        _record("run.requeue", run, node=lease.hostname, fencing_token=lease.fencing_token, was="running",
                reason=run.reason, gpu_seconds=str(entry.gpu_seconds) if entry else "0")
    return True


def run_cancel(*, actor, run: Run) -> Run:
    """A member cancels a run. One that waits, or holds devices but has not started, ends
    now; a running one is marked, and its runner kills the steps at its next check."""
    now = timezone.now()
    with transaction.atomic():
        # Developers, and the tenant admins who answer for the quota a runaway run spends.
        require_one_of(actor, run.tenant, ("develop", "admin"))
        bind_rls(tenant_id=run.tenant_id)
        run = Run.objects.select_for_update(of=("self",)).select_related("tenant").get(pk=run.pk)
        if run.state in FINISHED_STATES:
            raise Conflict(f"The run already ended ({run.state}).", code="run_finished")
        if run.cancel_requested_at is None:
            run.cancel_requested_at, run.reason = now, f"Cancelled by {actor.username}."
            fields = ["cancel_requested_at", "reason"]
            if run.state in (*WAITING_STATES, *UNCLAIMED_STATES):
                run.state, run.finished_at = RunState.CANCELLED, now
                run.node, run.device_ids, run.lease_expires_at = None, [], None
                fields += ["state", "finished_at", "node", "device_ids", "lease_expires_at"]
            run.save(update_fields=fields)
            record(action="run.cancel", actor=actor_for(actor), tenant=run.tenant.slug,
                   target=Target("run", run.public_id), data={"state": run.state})
    return run

