"""Runs and admission: the run policy at the request, then the admission cycle reserving
devices on one node inside the tenant's quota and jurisdiction, never more, even with many
submitters and cycles at once."""

import threading

import pytest
from django.db import connections, transaction

from audit.models import AuditEvent
from runners.admission import admission_cycle, run_request
from runners.discovery import Discovery, parse_declared
from runners.models import HOLDING_STATES, Run
from runners.services import runner_register
from tenants.models import GpuFlavor
from workflows.models import WorkflowVersion

from tests.support.processes import wait_for
from tests.support.governance import set_quota
from .test_api import assert_error
from .test_promotions import SPEC, T, Gate


RUNS = f"{T}/runs/"


@pytest.fixture
def gate(world, api, tmp_path):
    return Gate(world, api, tmp_path)  # acme-bank (eu): h100-80gb quota 2 nominal + 2 borrowing


def node(hostname, devices, jurisdiction="eu"):
    return runner_register(hostname=hostname, flavor_name="h100-80gb",
                           discovery=Discovery("declared", parse_declared(devices)), region=jurisdiction,
                           jurisdiction=jurisdiction)


def gpus_step(count):
    return {"steps": [{"name": "train", "command": ["python", "train.py"], "timeout_seconds": 600, "retries": 1,
                       "gpu": {"flavor": "h100-80gb", "count": count}}]}


def ask(gate, number, stage="development", **extra):
    return gate.developer.post(RUNS, {"workflow": "fraud-detector", "version": number, "stage": stage}, **extra)


def state_of(run_id):
    return Run.objects.using("owner").select_related("node").get(public_id=run_id)


def dispatched(run_id):
    """The run once its admission is published: by this test's cycle, or by a cycle in the
    session's worker that the request woke, which may have admitted it first and publish a
    moment after its commit."""
    wait_for(lambda: state_of(run_id).state == "dispatched", timeout=10, message="the run to be dispatched")
    return state_of(run_id)


@pytest.mark.embedded
def test_a_run_is_recorded_pending_and_admitted_on_one_node_of_its_jurisdiction(gate):
    node("gpu-eu-1", "0,1,2,3")
    number = gate.version()
    response = ask(gate, number)
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["state"] == "pending" and body["gpus"] == 2 and body["max_runtime_seconds"] == 3600
    admission_cycle()  # (a worker's cycle, woken by the request, may have admitted it already)
    run = dispatched(body["id"])
    # Admitted, and at once dispatched through the outbox to the node's queue.
    assert run.state == "dispatched" and run.node.hostname == "gpu-eu-1" and run.device_ids == ["0", "1"]
    assert run.fencing_token == 1
    event = AuditEvent.objects.using("owner").get(action="run.admit")
    assert event.tenant == "acme-bank" and event.data["devices"] == ["0", "1"] and event.actor_type == "system"


@pytest.mark.embedded
def test_a_run_without_gpus_waits_for_a_live_node_of_its_jurisdiction_and_holds_no_device(gate):
    number = gate.version(spec_changes={"steps": [{"name": "report", "command": ["python", "report.py"],
                                                   "timeout_seconds": 600, "retries": 1}]})
    run_id = ask(gate, number).json()["id"]
    node("gpu-us-1", "0,1", jurisdiction="us")  # live, but outside acme-bank's jurisdiction
    admission_cycle()
    waiting = state_of(run_id)
    assert (waiting.state, waiting.reason) == ("queued", "No live runner node in eu.")
    node("gpu-eu-1", "0,1")
    admission_cycle()
    run = dispatched(run_id)
    assert run.node.hostname == "gpu-eu-1" and run.device_ids == [] and run.gpus == 0


def test_a_four_gpu_run_is_never_split_across_two_nodes(gate):
    node("gpu-eu-1", "0,1")
    node("gpu-eu-2", "0,1")
    number = gate.version(spec_changes=gpus_step(4))
    run_id = ask(gate, number).json()["id"]
    admission_cycle()
    run = state_of(run_id)
    assert run.state == "queued" and "4 free device(s) on one machine" in run.reason and run.device_ids == []
    admission_cycle()  # still waiting: entering the queue was audited once
    [queued] = AuditEvent.objects.using("owner").filter(action="run.queue")
    assert queued.actor_type == "system" and "4 free device(s)" in queued.data["reason"]
    node("gpu-eu-3", "0,1,2,3")
    admission_cycle()
    run = dispatched(run_id)
    assert (run.state, run.node.hostname, run.device_ids) == ("dispatched", "gpu-eu-3", ["0", "1", "2", "3"])


def test_an_eu_tenant_is_never_placed_on_a_us_node(gate):
    node("gpu-us-1", "0,1,2,3,4,5,6,7", jurisdiction="us")
    run_id = ask(gate, gate.version()).json()["id"]
    admission_cycle()
    assert state_of(run_id).state == "queued"
    node("gpu-eu-1", "0,1")
    admission_cycle()
    assert state_of(run_id).node.hostname == "gpu-eu-1"


@pytest.mark.embedded
def test_a_tenant_never_holds_more_than_its_nominal_quota_plus_borrowing(gate):
    node("gpu-eu-1", "0,1,2,3,4,5,6,7")
    number = gate.version()
    ids = [ask(gate, number, parameters={"seed": i}).json()["id"] for i in range(3)]
    admission_cycle()
    states = [dispatched(ids[0]), dispatched(ids[1]), state_of(ids[2])]
    assert states[2].state == "queued"
    assert "holds 4 of its 4 h100-80gb GPU(s)" in states[2].reason
    assert len({d for r in states[:2] for d in r.device_ids}) == 4  # distinct devices


def test_the_run_policy_refuses_at_the_request(gate, world):
    number = gate.version()
    assert_error(ask(gate, number, "staging"), 403, "run_policy_denied")
    assert_error(ask(gate, number, "production"), 403, "run_policy_denied")
    assert_error(ask(gate, gate.version(spec_changes=gpus_step(8))), 403, "run_policy_denied")
    images = gate.version(spec_changes={"steps": [{"name": "train", "image": "registry.example/train:1"}]})
    assert_error(ask(gate, images), 400, "images_not_supported")
    assert not Run.objects.using("owner").exists()


@pytest.mark.embedded
def test_a_production_run_needs_the_promoted_version_with_a_valid_attestation_and_nothing_revoked(gate, world):
    from workflows import signing
    from workflows.models import Promotion

    number = gate.version()
    for stage in ("development", "staging", "production"):
        gate.promote(number, stage)
    assert ask(gate, number, "production").status_code == 201
    promotion = Promotion.objects.using("owner").get(stage="production")
    good = promotion.attestation
    Promotion.objects.using("owner").filter(pk=promotion.pk).update(attestation=good.replace('"sig": "', '"sig": "A'))
    assert "attestation does not verify" in assert_error(ask(gate, number, "production"), 403,
                                                         "run_policy_denied")["detail"]
    Promotion.objects.using("owner").filter(pk=promotion.pk).update(attestation=good)
    _, other = signing.generate_key_pair()
    gate.put_governed("trust/", {"public_keys": {"ci-2027": other.decode()}})  # revokes ci-2026
    assert "no longer verified" in assert_error(ask(gate, number, "production"), 403, "run_policy_denied")["detail"]


@pytest.mark.embedded
def test_an_idempotency_key_returns_the_stored_run_and_refuses_another_payload(gate):
    number = gate.version()
    first = ask(gate, number, HTTP_IDEMPOTENCY_KEY="nightly-2026-11-29")
    again = ask(gate, number, HTTP_IDEMPOTENCY_KEY="nightly-2026-11-29")
    assert (first.status_code, again.status_code) == (201, 200) and first.json()["id"] == again.json()["id"]
    other = gate.developer.post(RUNS, {"workflow": "fraud-detector", "version": number, "stage": "development",
                                       "parameters": {"epochs": 9}}, HTTP_IDEMPOTENCY_KEY="nightly-2026-11-29")
    assert_error(other, 422, "idempotency_key_reused")
    assert Run.objects.using("owner").count() == 1


@pytest.mark.postgres
def test_a_duplicate_still_in_flight_gets_409_and_its_retry_the_first_run(gate, world):
    """The first request with a key has written its run but not committed; a duplicate sent
    meanwhile waits on the key's unique index, gets 409 once the first commits, and its retry
    answers with the first request's run."""
    number = gate.version()
    version = WorkflowVersion.objects.using("owner").get(workflow__tenant=world.a.tenant, workflow__name="fraud-detector",
                                                        number=number)
    first, written, release = {}, threading.Event(), threading.Event()

    def hold_the_first_open():
        try:
            with transaction.atomic():
                first["run"], _ = run_request(actor=world.a.developer, tenant=world.a.tenant, version=version,
                                              stage="development", idempotency_key="nightly-2026-11-30")
                written.set()
                release.wait(30)
        finally:
            connections.close_all()

    def send_the_duplicate():
        try:
            first["duplicate"] = ask(gate, number, HTTP_IDEMPOTENCY_KEY="nightly-2026-11-30")
        finally:
            connections.close_all()

    holder, sender = threading.Thread(target=hold_the_first_open), threading.Thread(target=send_the_duplicate)
    holder.start()
    assert written.wait(30)
    sender.start()
    with connections["owner"].cursor() as cursor:
        def duplicate_waits():
            cursor.execute("SELECT count(*) FROM pg_locks WHERE NOT granted")
            return cursor.fetchone()[0] > 0

        wait_for(duplicate_waits, message="the duplicate to wait on the first request's key")
    release.set()
    holder.join()
    sender.join()
    assert_error(first["duplicate"], 409, "idempotency_key_in_flight")
    retry = ask(gate, number, HTTP_IDEMPOTENCY_KEY="nightly-2026-11-30")
    assert retry.status_code == 200 and retry.json()["id"] == str(first["run"].public_id)
    assert Run.objects.using("owner").count() == 1


def test_another_tenants_run_is_not_found(gate, world, api):
    run_id = ask(gate, gate.version()).json()["id"]
    assert_error(api(world.b.admin).get(f"{RUNS}{run_id}/"), 404, "not_found")
    assert gate.developer.get(f"{RUNS}{run_id}/").json()["state"] in ("pending", "queued")


def held_runs():
    return list(Run.objects.using("owner").filter(state__in=HOLDING_STATES).select_related("node"))


def assert_no_device_handed_out_twice(held, devices_per_node):
    for hostname in {run.node.hostname for run in held}:
        devices = [d for run in held if run.node.hostname == hostname for d in run.device_ids]
        assert len(devices) == len(set(devices)) <= devices_per_node


def all_at_once(count, work):
    """Run ``work(index)`` in ``count`` threads released together; the errors they raised."""
    barrier, errors = threading.Barrier(count), []

    def body(index):
        try:
            barrier.wait()
            work(index)
        except Exception as exc:  # reported by the caller, with the thread's own message
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=body, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return errors


@pytest.mark.postgres
def test_no_over_admission_with_16_concurrent_submitters_and_cycles(gate, world, api):
    """Sixteen developers' pipelines ask for 2-GPU runs at once, each then running an admission
    cycle. First the tenant's limit binds (4 GPUs, where the nodes could take 8); then, with
    the limit raised past the nodes, 16 cycles at once fill the nodes' devices and no more."""
    node("gpu-eu-1", "0,1,2,3")
    node("gpu-eu-2", "0,1,2,3")
    number = gate.version()

    def submit(index):
        response = api(world.a.developer).post(RUNS, {"workflow": "fraud-detector", "version": number,
                                                      "stage": "development", "parameters": {"shard": index}})
        assert response.status_code == 201, response.content
        admission_cycle()

    assert not all_at_once(16, submit)
    admission_cycle()
    held = held_runs()
    assert sum(r.gpus for r in held) == 4 and len(held) == 2  # the tenant's 2 + 2, and no more
    assert_no_device_handed_out_twice(held, 4)
    assert Run.objects.using("owner").filter(state="queued").count() == 14

    set_quota(world, world.a.tenant, GpuFlavor.objects.get(name="h100-80gb"), nominal=16, borrowing_limit=16)
    assert not all_at_once(16, lambda index: admission_cycle())
    held = held_runs()
    assert len(held) == 4 and sum(r.gpus for r in held) == 8  # every device of both nodes, and no more
    assert_no_device_handed_out_twice(held, 4)
    assert Run.objects.using("owner").filter(state="queued").count() == 12
