"""The reaper without a worker: a run requeued the most times allowed is lost, billed once."""

from datetime import timedelta

import pytest
from django.utils import timezone

from audit.models import AuditEvent
from runners.dispatch import reap_expired
from runners.models import Run, UsageEntry

from tests.support.processes import wait_for
from .test_admission import ask, gate, node  # noqa: F401 (gate is a fixture)

pytestmark = pytest.mark.embedded


def reap_and_wait(run_id):
    """Reap here; the platform worker's own cycle, when one runs, may hold the row and reap it
    first (same outcome), so wait for its commit."""
    reap_expired()
    wait_for(lambda: Run.objects.using("owner").get(public_id=run_id).state != "running", timeout=10,
             message="the reaper to take the run")


def test_a_run_past_its_requeues_is_lost_and_its_devices_come_back(gate, settings):
    host = node("gpu-eu-1", "0,1")
    run_id = ask(gate, gate.version()).json()["id"]
    started = timezone.now() - timedelta(minutes=5)
    Run.objects.using("owner").filter(public_id=run_id).update(
        state="running", node=host, device_ids=["0", "1"], fencing_token=3, started_at=started,
        requeues=settings.RUN_MAX_REQUEUES, lease_expires_at=started + timedelta(minutes=1))
    reap_and_wait(run_id)
    run = Run.objects.using("owner").get(public_id=run_id)
    assert run.state == "lost" and run.node is None and run.device_ids == [] and run.finished_at is not None
    assert f"requeued {settings.RUN_MAX_REQUEUES} time(s) already" in run.reason
    [entry] = UsageEntry.objects.using("owner").filter(run=run)
    assert entry.fencing_token == 3 and entry.seconds == 60 and entry.gpu_seconds == 120  # up to the lease's end
    assert reap_expired() == 0  # nothing twice
    lost = AuditEvent.objects.using("owner").get(action="run.lost", target_id=run_id)
    assert lost.data["was"] == "running" and lost.data["devices"] == ["0", "1"]


def _expired_running(gate, host, **changes):
    run_id = ask(gate, gate.version()).json()["id"]
    started = timezone.now() - timedelta(minutes=5)
    Run.objects.using("owner").filter(public_id=run_id).update(
        state="running", node=host, device_ids=["0", "1"], fencing_token=1, started_at=started,
        lease_expires_at=started + timedelta(minutes=1), **changes)
    reap_and_wait(run_id)
    return Run.objects.using("owner").get(public_id=run_id)


def test_a_run_whose_cancellation_was_asked_for_ends_cancelled_when_its_worker_dies(gate):
    run = _expired_running(gate, node("gpu-eu-1", "0,1"), cancel_requested_at=timezone.now(),
                           reason="Cancelled by someone.")
    assert run.state == "cancelled" and run.requeues == 0 and run.node is None and run.finished_at is not None
    assert run.reason.startswith("Cancelled by someone. Node gpu-eu-1 stopped renewing the lease")
    assert UsageEntry.objects.using("owner").filter(run=run).count() == 1


def test_a_preemption_asked_of_a_dead_worker_does_not_follow_the_run_into_its_next_admission(gate):
    run = _expired_running(gate, node("gpu-eu-1", "0,1"), preempt_requested_at=timezone.now())
    assert run.requeues == 1 and run.preempt_requested_at is None
    assert run.state in ("queued", "admitted", "dispatched")  # a cycle may already have admitted it again
