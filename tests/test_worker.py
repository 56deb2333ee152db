"""The audit sequencer in a real Celery worker process, driven by beat."""

from datetime import timedelta

import pytest
from django.core.management import call_command

from audit.models import AuditEvent, AuditLeaf
from audit.verify import verify_log

from tests.support.processes import wait_for

pytestmark = [pytest.mark.embedded, pytest.mark.worker]


def all_sequenced():
    events = AuditEvent.objects.using("owner")
    return events.exists() and not events.filter(leaf__isnull=True).exists()


def test_beat_and_worker_sequence_every_committed_event(celery_worker, world, api):
    admin = api(world.a.admin)
    for username in ("outsider", world.b.developer.username):
        assert admin.post(f"/api/v1/tenants/{world.a.tenant.slug}/members/",
                          {"username": username, "role": "developer"}).status_code == 201
    api(world.b.admin).get(f"/api/v1/tenants/{world.a.tenant.slug}/members/")  # a refusal, recorded too
    wait_for(all_sequenced, timeout=45, message="the worker to sequence every event")

    # Events first: a checkpoint the worker signs in between only adds a leaf (with its event).
    events = AuditEvent.objects.using("owner").count()
    leaves = list(AuditLeaf.objects.using("owner").order_by("position"))
    assert [leaf.position for leaf in leaves] == list(range(len(leaves))) and len(leaves) >= events
    acme = [leaf.tenant_position for leaf in leaves if leaf.tenant == "acme-bank"]
    assert acme == list(range(len(acme))) and len(acme) >= 2
    assert verify_log(using="owner", max_unsequenced=timedelta(seconds=60)).ok
    call_command("audit", "verify", "--max-unsequenced", "0")  # nothing left waiting
    _, log_path = celery_worker
    assert "audit.sequence_pending" in log_path.read_text()


def test_worker_keeps_sequencing_later_events(celery_worker, world, api):
    api(world.a.admin).post(f"/api/v1/tenants/{world.a.tenant.slug}/members/",
                            {"username": "outsider", "role": "auditor"})
    wait_for(all_sequenced, timeout=45, message="the first event to be sequenced")
    first = AuditLeaf.objects.using("owner").count()
    api(world.a.admin).delete(f"/api/v1/tenants/{world.a.tenant.slug}/members/outsider/")
    wait_for(lambda: all_sequenced() and AuditLeaf.objects.using("owner").count() > first, timeout=45,
             message="the later event to be sequenced")
    # A checkpoint the worker signs after it would be the last leaf, so leave those out.
    leaves = AuditLeaf.objects.using("owner").exclude(event__action="audit.checkpoint")
    assert leaves.order_by("-position").first().event.action == "membership.revoke"
