"""The reaper without a worker: a run requeued the most times allowed is lost, billed once."""

from datetime import timedelta

import pytest
from django.utils import timezone

from audit.models import AuditEvent
from runners.dispatch import reap_expired
from runners.models import Run, UsageEntry

from .test_admission import ask, gate, node  # noqa: F401 (gate is a fixture)

pytestmark = pytest.mark.embedded


def test_a_run_past_its_requeues_is_lost_and_its_devices_come_back(gate, settings):
    host = node("gpu-eu-1", "0,1")
    run_id = ask(gate, gate.version()).json()["id"]
    started = timezone.now() - timedelta(minutes=5)
    Run.objects.using("owner").filter(public_id=run_id).update(
        state="running", node=host, device_ids=["0", "1"], fencing_token=3, started_at=started,
        requeues=settings.RUN_MAX_REQUEUES, lease_expires_at=started + timedelta(minutes=1))
    reap_expired()  # (the platform worker's own cycle, when one runs, may reap it first: same outcome)
    run = Run.objects.using("owner").get(public_id=run_id)
    assert run.state == "lost" and run.node is None and run.device_ids == [] and run.finished_at is not None
    assert f"requeued {settings.RUN_MAX_REQUEUES} time(s) already" in run.reason
    [entry] = UsageEntry.objects.using("owner").filter(run=run)
    assert entry.fencing_token == 3 and entry.seconds == 60 and entry.gpu_seconds == 120  # up to the lease's end
    assert reap_expired() == 0  # nothing twice
    lost = AuditEvent.objects.using("owner").get(action="run.lost", target_id=run_id)
    assert lost.data["was"] == "running" and lost.data["devices"] == ["0", "1"]
