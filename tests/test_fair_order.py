"""Fair order in the admission queue: priority (from a range platform admins set per tenant,
applied per workflow by tenant admins), then decayed usage relative to share, then age; and a
large run that backfill keeps passing gets its pool after ADMISSION_BACKFILL_LIMIT_SECONDS."""

from datetime import timedelta

import pytest
from django.db import transaction
from django.utils import timezone

from audit.models import AuditEvent
from runners.admission import admission_cycle, run_request
from runners.models import Run, UsageEntry
from runners.services import workflow_run_priority_set
from tenants.models import GpuFlavor
from workflows.models import WorkflowVersion
from workflows.services import workflow_version_register

from tests.support.people import make_tenant_people
from tests.support.governance import set_quota
from .test_admission import RUNS, ask, gate, gpus_step, node, state_of  # noqa: F401 (gate is a fixture)
from .test_api import assert_error
from .test_promotions import T



@pytest.mark.embedded
def test_priority_comes_from_the_workflow_within_the_tenants_range(gate, world, api):
    number = gate.version()
    admin, developer, operator = api(world.a.admin), gate.developer, api(world.platform_admin)
    assert_error(developer.put(f"{T}/workflows/fraud-detector/priority/", {"priority": 5}), 403, "permission_denied")
    assert_error(admin.put(f"{T}/workflows/fraud-detector/priority/", {"priority": 11}), 400, "invalid")
    assert_error(admin.put(f"{T}/run-priority/", {"minimum": 0, "maximum": 50}), 403, "permission_denied")
    assert_error(developer.post(RUNS, {"workflow": "fraud-detector", "version": number, "stage": "development",
                                       "priority": 9}), 400, "invalid")

    assert ask(gate, number).json()["priority"] == 0  # the range's lowest until an admin says otherwise
    response = admin.put(f"{T}/workflows/fraud-detector/priority/", {"priority": 7})
    assert response.status_code == 200 and response.json() == {"workflow": "fraud-detector", "priority": 7,
                                                               "effective": 7}
    assert ask(gate, number, parameters={"n": 1}).json()["priority"] == 7
    assert operator.put(f"{T}/run-priority/", {"minimum": 0, "maximum": 3}).status_code == 200
    assert ask(gate, number, parameters={"n": 2}).json()["priority"] == 3  # clamped into the new range
    assert developer.get(f"{T}/run-priority/").json() == {"minimum": 0, "maximum": 3}
    actions = set(AuditEvent.objects.using("owner").values_list("action", flat=True))
    assert {"workflow.run_priority_set", "tenant.run_priority_range_set"} <= actions


def one_place_for(*requests) -> list[Run]:
    """Make the runs in one transaction, so that no admission cycle (the session worker's
    included) sees some of them without the others; then add a node with room for one, and
    run a cycle. The runs as they stand after it, in the order asked."""
    with transaction.atomic():
        runs = [request() for request in requests]
    node("gpu-eu-1", "0,1")
    admission_cycle()
    return [Run.objects.using("owner").get(pk=run.pk) for run in runs]


def asked(person, tenant, version, **parameters):
    return lambda: run_request(actor=person, tenant=tenant, version=version, stage="development",
                               parameters=parameters)[0]


def test_a_higher_priority_run_is_admitted_before_an_older_one(gate, world):
    version = _fraud_detector(gate.version())

    def raise_the_priority():
        version.workflow = workflow_run_priority_set(actor=world.a.admin, workflow=version.workflow, priority=5)
        return asked(world.a.developer, world.a.tenant, version, urgent=True)()

    older, urgent = one_place_for(asked(world.a.developer, world.a.tenant, version), raise_the_priority)
    assert (older.priority, urgent.priority) == (0, 5)
    assert urgent.state in ("admitted", "dispatched") and older.state == "queued"


def _eu_neighbour(world):
    """A second EU tenant with a version of its own, sharing acme-bank's pool."""
    people = make_tenant_people("euro-insure", "eu")
    flavor = GpuFlavor.objects.get(name="h100-80gb")
    set_quota(world, people.tenant, flavor, nominal=2, borrowing_limit=2)
    version, _ = workflow_version_register(actor=people.developer, tenant=people.tenant, spec={
        "name": "claims",
        "steps": [{"name": "score", "command": ["true"], "gpu": {"flavor": "h100-80gb", "count": 2}}]})
    return people, version


def _used(*, tenant, requester, version, gpu_seconds, at):
    """A finished run of ``tenant`` that used ``gpu_seconds`` (2 GPUs), billed at ``at``."""
    history = Run.objects.using("owner").create(
        tenant=tenant, version=version, stage="development", requested_by=requester,
        flavor=GpuFlavor.objects.get(name="h100-80gb"), gpus=2, max_runtime_seconds=3600, state="succeeded",
        fencing_token=1)
    UsageEntry.objects.using("owner").create(
        tenant=tenant, flavor=history.flavor, run=history, fencing_token=1, month=at.date().replace(day=1), gpus=2,
        seconds=gpu_seconds // 2, gpu_seconds=gpu_seconds, weight=1, weighted_gpu_seconds=gpu_seconds, recorded_at=at)


def _fraud_detector(number):
    return WorkflowVersion.objects.using("owner").get(workflow__name="fraud-detector", number=number)


@pytest.mark.embedded
def test_the_tenant_that_used_less_of_its_share_goes_first(gate, world, api):
    neighbour, version = _eu_neighbour(world)
    mine = _fraud_detector(gate.version())
    # acme-bank used 4 GPU-hours in the last hour; euro-insure nothing.
    _used(tenant=world.a.tenant, requester=world.a.developer, version=mine, gpu_seconds=14400,
          at=timezone.now() - timedelta(hours=1))
    first, second = one_place_for(asked(world.a.developer, world.a.tenant, mine),  # older, same priority
                                  asked(neighbour.developer, neighbour.tenant, version))
    assert second.state in ("admitted", "dispatched") and first.state == "queued"


def test_at_equal_priority_and_usage_the_older_run_goes_first(gate, world):
    neighbour, version = _eu_neighbour(world)  # created after acme-bank: age, not tenant order, decides
    older, newer = one_place_for(asked(neighbour.developer, neighbour.tenant, version),
                                 asked(world.a.developer, world.a.tenant, _fraud_detector(gate.version())))
    assert older.state in ("admitted", "dispatched") and newer.state == "queued"


def test_usage_decays_by_its_half_life_and_counts_against_the_tenants_share(gate, world, settings):
    """acme-bank (share 8) used 8x the GPU-seconds of euro-insure (share 2), but two half-lives
    ago: decayed and divided by its share, its usage is half of euro-insure's, so its newer
    run goes first. Without the decay, or without the share, it would go second. (The
    configured half-life, not an override: the session worker's cycles must order alike.)"""
    from runners.admission import fair_share_usage

    half_life = timedelta(hours=settings.FAIR_SHARE_HALF_LIFE_HOURS)
    neighbour, version = _eu_neighbour(world)  # share 2
    flavor = GpuFlavor.objects.get(name="h100-80gb")
    set_quota(world, world.a.tenant, flavor, nominal=8, borrowing_limit=0)
    mine = _fraud_detector(gate.version())
    now = timezone.now()
    _used(tenant=world.a.tenant, requester=world.a.developer, version=mine, gpu_seconds=14400, at=now - 2 * half_life)
    _used(tenant=neighbour.tenant, requester=neighbour.developer, version=version, gpu_seconds=1800, at=now)
    usage = fair_share_usage(moment=now)
    assert usage[(world.a.tenant.pk, flavor.pk)] == pytest.approx(14400 * 0.25 / 8)  # 450
    assert usage[(neighbour.tenant.pk, flavor.pk)] == pytest.approx(1800 / 2)  # 900

    older, newer = one_place_for(asked(neighbour.developer, neighbour.tenant, version),
                                 asked(world.a.developer, world.a.tenant, mine))
    assert newer.state in ("admitted", "dispatched") and older.state == "queued"


def test_a_large_run_is_passed_by_runs_that_fit_until_it_has_waited_too_long(gate, world, settings):
    set_quota(world, world.a.tenant, GpuFlavor.objects.get(name="h100-80gb"), nominal=8, borrowing_limit=0)
    node("gpu-eu-1", "0,1,2,3")
    holder = ask(gate, gate.version(spec_changes=gpus_step(2))).json()["id"]
    admission_cycle()
    assert state_of(holder).state in ("admitted", "dispatched")  # 2 of the 4 devices are taken
    large = ask(gate, gate.version(spec_changes=gpus_step(4))).json()["id"]
    small_version = gate.version(spec_changes=gpus_step(1))
    small = ask(gate, small_version).json()["id"]
    admission_cycle()
    assert state_of(large).state == "queued" and state_of(small).state in ("admitted", "dispatched")  # backfill

    Run.objects.using("owner").filter(public_id=large).update(
        created_at=timezone.now() - timedelta(seconds=settings.ADMISSION_BACKFILL_LIMIT_SECONDS + 60))
    later = ask(gate, small_version, parameters={"again": True}).json()["id"]
    admission_cycle()
    assert state_of(later).state == "queued" and "Held back: a 4-GPU run ahead of it" in state_of(later).reason
    Run.objects.using("owner").filter(public_id__in=[holder, small]).update(state="succeeded", node=None,
                                                                          device_ids=[])
    admission_cycle()
    assert state_of(large).state in ("admitted", "dispatched") and state_of(later).state == "queued"
