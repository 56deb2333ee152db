"""Runs executing on real runner processes (`manage.py runner start`) with the platform worker
admitting and reaping: dispatch through the outbox, the fenced claim, steps in the bubblewrap
sandbox, logs, retries, timeouts, cancellation, a worker killed mid-run, and the usage ledger."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path

import pytest
from django.conf import settings
from django.utils import timezone

from audit.models import AuditEvent
from runners.dispatch import SWEEP_GRACE_SECONDS
from runners.discovery import Discovery, parse_declared
from runners.execution import run_cancel
from runners.executor import execute
from runners.models import DispatchOutbox, Run, UsageEntry
from runners.services import runner_register, runner_set_state
from tenants.models import GpuFlavor

from tests.support.governance import put_quota
from tests.support.processes import wait_for
from .test_promotions import T, Gate

pytestmark = pytest.mark.worker

RUNS = f"{T}/runs/"
FINISHED = ("succeeded", "failed", "cancelled", "lost")


@pytest.fixture
def gate(world, api, tmp_path, celery_worker):
    return Gate(world, api, tmp_path)  # acme-bank (eu): h100-80gb quota 2 nominal + 2 borrowing


def spec_with(steps, gpus=2, inputs=None):
    for step in steps:
        step.setdefault("gpu", {"flavor": "h100-80gb", "count": gpus})
    return {"steps": steps, "inputs": inputs or []}


def sh(name, script, **extra):
    return {"name": name, "command": ["sh", "-c", script], **extra}


def py(name, code, **extra):
    return {"name": name, "command": ["python3", "-c", code], **extra}


def start_run(gate, spec, **extra):
    number = gate.version(spec_changes=spec)
    response = gate.developer.post(RUNS, {"workflow": "fraud-detector", "version": number,
                                          "stage": "development", **extra})
    assert response.status_code == 201, response.content
    return response.json()["id"]


def run_of(run_id) -> Run:
    return Run.objects.using("owner").select_related("node").get(public_id=run_id)


def wait_state(run_id, states, timeout=60):
    states = (states,) if isinstance(states, str) else states
    wait_for(lambda: run_of(run_id).state in states, timeout=timeout, message=f"run to reach {states}")
    return run_of(run_id)


def log_of(gate, run_id) -> str:
    body = gate.developer.get(f"{RUNS}{run_id}/logs/").json()
    return "".join(chunk["text"] for chunk in body["chunks"])


def detail(gate, run_id) -> dict:
    response = gate.developer.get(f"{RUNS}{run_id}/")
    assert response.status_code == 200, response.content
    return response.json()


@pytest.mark.embedded
def test_a_run_executes_on_its_node_with_only_its_devices_and_is_billed(gate, start_runner):
    start_runner("gpu-eu-1", "0,1,2,3")
    dataset = gate.push("training-data", b"amount,label\n10,0\n99999,1\n", kind="dataset", sign=False)
    run_id = start_run(gate, spec_with(
        [sh("prepare", "wc -l < inputs/transactions > rows.txt; echo prepared", retries=0),
         sh("train", 'echo "devices=$CUDA_VISIBLE_DEVICES uid=$(id -u) rows=$(cat rows.txt)"; '
                     'cat parameters.json; sleep 1', depends_on=["prepare"])],
        inputs=[{"name": "transactions", "region": "eu-west1", "uri": "store", "digest": dataset}]),
        parameters={"learning_rate": 0.01})
    run = wait_state(run_id, FINISHED)
    body = detail(gate, run_id)
    assert run.state == "succeeded", (run.reason, log_of(gate, run_id))
    assert run.node.hostname == "gpu-eu-1" and run.device_ids == ["0", "1"]
    assert [(s["name"], s["state"], s["exit_code"], s["attempts"]) for s in body["steps"]] == [
        ("prepare", "succeeded", 0, 1), ("train", "succeeded", 0, 1)]
    log = log_of(gate, run_id)
    assert f"devices=0,1 uid={settings.RUNNER_SANDBOX_UID if os.geteuid() == 0 else os.geteuid()} rows=3" in log
    assert '"learning_rate": 0.01' in log and "==> step prepare, attempt 1 of 1" in log

    [entry] = UsageEntry.objects.using("owner").filter(run=run)
    seconds = Decimal(str((run.finished_at - run.started_at).total_seconds())).quantize(Decimal("0.001"))
    assert entry.gpus == 2 and entry.seconds == seconds and entry.gpu_seconds == seconds * 2 >= Decimal("2")
    assert entry.weighted_gpu_seconds == entry.gpu_seconds * entry.weight and entry.fencing_token == 1
    assert entry.month == run.finished_at.date().replace(day=1)
    actions = list(AuditEvent.objects.using("owner").filter(target_id=run_id).values_list("action", flat=True))
    assert {"run.request", "run.admit", "run.start", "run.finish"} <= set(actions)
    finish = AuditEvent.objects.using("owner").get(target_id=run_id, action="run.finish")
    assert finish.data["state"] == "succeeded" and finish.data["gpu_seconds"] == str(entry.gpu_seconds)
    [row] = DispatchOutbox.objects.using("owner").filter(run=run)
    assert row.published_at is not None and row.queue == "runner.gpu-eu-1"

    # A second delivery of the same message, and one to the wrong node, change nothing.
    assert execute(run_id=run_id, fencing_token=1, hostname="gpu-eu-1") is None
    assert execute(run_id=run_id, fencing_token=1, hostname="gpu-eu-9") is None
    refused = AuditEvent.objects.using("owner").get(target_id=run_id, action="run.claim_refused")
    assert refused.data["node"] == "gpu-eu-9" and refused.data["reserved_on"] == "gpu-eu-1"
    assert UsageEntry.objects.using("owner").filter(run=run).count() == 1
    assert AuditEvent.objects.using("owner").filter(target_id=run_id, action="run.start").count() == 1


def test_an_approved_production_run_executes_pinned_and_billed_and_a_forged_attestation_is_refused(gate,
                                                                                                    start_runner):
    from workflows.models import Promotion

    start_runner("gpu-eu-1", "0,1,2,3")
    number = gate.version(spec_changes=spec_with([sh("serve-eval", 'echo "pinned=$CUDA_VISIBLE_DEVICES"')]))
    for stage in ("development", "staging", "production"):
        gate.promote(number, stage)
    promotion = Promotion.objects.using("owner").get(stage="production")
    good = promotion.attestation
    Promotion.objects.using("owner").filter(pk=promotion.pk).update(attestation=good.replace('"sig": "', '"sig": "A'))
    refused = gate.developer.post(RUNS, {"workflow": "fraud-detector", "version": number, "stage": "production"})
    assert refused.status_code == 403 and refused.json()["code"] == "run_policy_denied"
    assert "attestation does not verify" in refused.json()["detail"]
    Promotion.objects.using("owner").filter(pk=promotion.pk).update(attestation=good)

    response = gate.developer.post(RUNS, {"workflow": "fraud-detector", "version": number, "stage": "production"})
    assert response.status_code == 201, response.content
    run = wait_state(response.json()["id"], FINISHED)
    assert run.state == "succeeded" and run.stage == "production" and run.device_ids == ["0", "1"]
    assert "pinned=0,1" in log_of(gate, response.json()["id"])
    [entry] = UsageEntry.objects.using("owner").filter(run=run)
    assert entry.gpus == 2 and entry.gpu_seconds > 0 and entry.tenant_id == gate.world.a.tenant.pk


def test_a_second_broker_delivery_while_the_run_runs_changes_nothing(gate, start_runner):
    """The run's message published again to the node's queue while its steps run: the runner
    takes it from the broker, its claim finds the run already running, and nothing happens
    twice (one start, one set of steps, one bill)."""
    from runners.models import RunStep
    from runners.tasks import execute_run_task

    runner = start_runner("gpu-eu-1", "0,1,2,3")
    run_id = start_run(gate, spec_with([sh("train", "echo started; sleep 2; echo done")]))
    wait_for(lambda: "started" in log_of(gate, run_id), timeout=60, message="the step to start")
    execute_run_task.apply_async(kwargs={"run": run_id, "fencing_token": 1, "hostname": "gpu-eu-1"},
                                 queue="runner.gpu-eu-1")
    wait_for(lambda: "is stale or a duplicate" in runner.log(), timeout=30, message="the runner to take the duplicate")
    run = wait_state(run_id, FINISHED)
    assert run.state == "succeeded" and log_of(gate, run_id).count("started") == 1
    assert AuditEvent.objects.using("owner").filter(target_id=run_id, action="run.start").count() == 1
    assert RunStep.objects.using("owner").filter(run=run).count() == 1
    assert UsageEntry.objects.using("owner").filter(run=run).count() == 1


SANDBOX_PROBE = r"""
import json, os, socket, sys
from pathlib import Path
seen = {"uid": os.getuid(), "env": sorted(os.environ), "cwd": os.getcwd()}
port, paths = int(sys.argv[1]), sys.argv[2:]
for path in paths:
    try:
        content = Path(path).read_bytes()
        # An environ file: the names in it (what a step could learn of another process).
        seen[path] = sorted(v.split(b"=")[0].decode() for v in content.split(b"\0") if v) if path.endswith(
            "environ") else "readable"
    except OSError as exc:
        seen[path] = type(exc).__name__
for target in ("/workspace/written.txt", "/usr/written.txt", "/etc/written.txt", "/written.txt", "/tmp/written.txt"):
    try:
        Path(target).write_text("x")
        seen[target] = "written"
    except OSError as exc:
        seen[target] = type(exc).__name__
try:
    socket.create_connection(("127.0.0.1", port), timeout=2).close()
    seen["network"] = "reached"
except OSError as exc:
    seen["network"] = type(exc).__name__
print("PROBE " + json.dumps(seen))
"""


def probe_of(log: str) -> dict:
    return json.loads(next(line for line in log.splitlines() if line.startswith("PROBE "))[6:])


def test_a_step_cannot_read_other_runs_or_platform_secrets_nor_write_outside_its_directory(gate, start_runner):
    start_runner("gpu-eu-1", "0,1,2,3")
    neighbour = Path(settings.RUNNER_WORK_DIR) / "another-tenants-run"
    neighbour.mkdir(parents=True, exist_ok=True)
    (neighbour / "weights.bin").write_bytes(b"secret weights")
    os.chmod(neighbour / "weights.bin", 0o644)  # readable on the host: only the sandbox keeps it out
    platform_secret = Path(settings.DATA_DIR) / "platform-secret-for-the-sandbox-test"
    platform_secret.write_text("the platform's")
    os.chmod(platform_secret, 0o644)
    keyring = str(platform_secret)
    listener = socket.create_server(("127.0.0.1", 0))  # on the host: reachable only with the network on
    # The platform's own key files (the KEK and the encrypted keyring) exist on the host.
    key_files = [str(path) for path in (settings.PLATFORM_KEK_FILE, settings.PLATFORM_KEYRING_FILE) if path.exists()]
    assert len(key_files) == 2
    argv = ["python3", "-c", SANDBOX_PROBE, str(listener.getsockname()[1]), str(neighbour / "weights.bin"), keyring,
            *key_files, "/proc/1/environ", "/proc/self/environ"]
    run_id = start_run(gate, spec_with([{"name": "probe", "command": argv}]))
    run = wait_state(run_id, FINISHED)
    log = log_of(gate, run_id)
    assert run.state == "succeeded", (run.reason, log)
    seen = probe_of(log)
    assert seen[str(neighbour / "weights.bin")] == "FileNotFoundError"  # not even in its mount namespace
    assert seen[keyring] == "FileNotFoundError"
    assert [seen[path] for path in key_files] == ["FileNotFoundError"] * 2
    assert seen["/workspace/written.txt"] == "written" and seen["cwd"] == "/workspace"
    assert seen["/tmp/written.txt"] == "written"  # /tmp is inside the run's directory
    assert {seen[path] for path in ("/usr/written.txt", "/etc/written.txt", "/written.txt")} <= {
        "OSError", "PermissionError", "FileNotFoundError"}
    assert seen["network"] != "reached"  # no network: the host's listening port is not there
    step_names = {"PATH", "HOME", "TMPDIR", "LANG", "CUDA_VISIBLE_DEVICES", "NEOCLOUD_RUN_ID", "NEOCLOUD_STEP",
                  "NEOCLOUD_PARAMETERS", "PWD"}
    assert set(seen["env"]) <= step_names and "DATABASE_URL" in os.environ  # the worker has it; the step not
    assert set(seen["/proc/self/environ"]) <= step_names
    # PID 1 of the step's namespace is the sandbox's own init, started with an empty environment.
    assert seen["/proc/1/environ"] in ([], "PermissionError")
    # As root the worker runs steps as the sandbox user; otherwise as itself, never root.
    assert seen["uid"] == (settings.RUNNER_SANDBOX_UID if os.geteuid() == 0 else os.geteuid()) != 0

    with_network = start_run(gate, spec_with([{"name": "probe", "command": argv[:4], "network": True}]))
    run = wait_state(with_network, FINISHED)
    listener.close()
    assert run.state == "succeeded" and probe_of(log_of(gate, with_network))["network"] == "reached"


def test_a_failing_step_is_retried_then_fails_the_run_and_later_steps_are_skipped(gate, start_runner):
    start_runner("gpu-eu-1", "0,1,2,3")
    run_id = start_run(gate, spec_with([sh("train", "echo trying; exit 3", retries=2),
                                        sh("evaluate", "echo never", depends_on=["train"])]))
    run = wait_state(run_id, FINISHED)
    assert run.state == "failed"
    assert run.reason == "Step train failed after 3 attempt(s): the last exited with code 3."
    steps = {s["name"]: s for s in detail(gate, run_id)["steps"]}
    assert (steps["train"]["state"], steps["train"]["attempts"], steps["train"]["exit_code"]) == ("failed", 3, 3)
    assert steps["evaluate"]["state"] == "skipped"
    log = log_of(gate, run_id)
    assert log.count("trying") == 3 and "attempt 3 of 3" in log and "never" not in log
    train = gate.developer.get(f"{RUNS}{run_id}/logs/?step=train").json()["chunks"]
    assert {c["step"] for c in train} == {"train"} and "".join(c["text"] for c in train).count("trying") == 3
    assert gate.developer.get(f"{RUNS}{run_id}/logs/?step=evaluate").json()["chunks"] == []
    assert UsageEntry.objects.using("owner").filter(run=run).count() == 1  # failed runs are billed too


def test_a_step_past_its_timeout_is_killed(gate, start_runner):
    start_runner("gpu-eu-1", "0,1,2,3")
    run_id = start_run(gate, spec_with([sh("train", "echo started; sleep 30.375", timeout_seconds=2)]))
    run = wait_state(run_id, FINISHED, timeout=40)
    assert run.state == "failed" and "timed out after 2 s" in run.reason
    assert (run.finished_at - run.started_at).total_seconds() < 20
    wait_for(lambda: not _processes("sleep 30.375"), timeout=10, message="the timed-out step to be killed")


@pytest.mark.embedded
def test_cancel_while_running_kills_the_whole_process_group(gate, start_runner):
    start_runner("gpu-eu-1", "0,1,2,3")
    run_id = start_run(gate, spec_with([sh("train", "sleep 61.25 & echo started; wait")]))
    wait_for(lambda: "started" in log_of(gate, run_id), timeout=60, message="the step to start")
    assert _processes("sleep 61.25")
    response = gate.developer.post(f"{RUNS}{run_id}/cancel/")
    assert response.status_code == 200 and response.json()["cancel_requested_at"]
    run = wait_state(run_id, FINISHED, timeout=20)
    assert run.state == "cancelled" and run.reason == f"Cancelled by {gate.world.a.developer.username}."
    wait_for(lambda: not _processes("sleep 61.25"), timeout=10, message="the step's children to be gone")
    assert detail(gate, run_id)["steps"][0]["state"] == "cancelled"
    assert gate.developer.post(f"{RUNS}{run_id}/cancel/").json()["code"] == "run_finished"
    assert AuditEvent.objects.using("owner").filter(target_id=run_id, action="run.cancel").count() == 1


def test_a_waiting_run_is_cancelled_at_once(gate):
    run_id = start_run(gate, spec_with([sh("train", "true")]))  # no runner node: it waits
    wait_state(run_id, "queued")
    assert gate.developer.post(f"{RUNS}{run_id}/cancel/").json()["state"] == "cancelled"
    assert run_of(run_id).state == "cancelled"


def test_a_run_whose_input_is_missing_from_the_store_fails_before_any_step(gate, start_runner):
    from workflows.store import get_store

    start_runner("gpu-eu-1", "0,1,2,3")
    dataset = gate.push("training-data", b"amount,label\n10,0\n", kind="dataset", sign=False)
    get_store().path_for(dataset).unlink()  # the tenant's artifact, whose bytes the store lost
    run_id = start_run(gate, spec_with([sh("train", "echo never")], inputs=[
        {"name": "transactions", "region": "eu-west1", "uri": "store", "digest": dataset}]))
    run = wait_state(run_id, FINISHED)
    assert run.state == "failed"
    assert run.reason == f"Input transactions ({dataset}) is not in the artifact store."
    assert "never" not in log_of(gate, run_id)


def test_an_input_whose_stored_bytes_changed_fails_the_run_before_any_step(gate, start_runner):
    from workflows.store import get_store

    start_runner("gpu-eu-1", "0,1,2,3")
    dataset = gate.push("training-data", b"amount,label\n10,0\n", kind="dataset", sign=False)
    get_store().path_for(dataset).write_bytes(b"tampered\n")
    run_id = start_run(gate, spec_with([sh("train", "echo never")], inputs=[
        {"name": "transactions", "region": "eu-west1", "uri": "store", "digest": dataset}]))
    run = wait_state(run_id, FINISHED)
    assert run.state == "failed" and run.reason.startswith("Input transactions: the stored bytes hash to sha256:")
    assert run.reason.endswith(f"not {dataset}.") and "never" not in log_of(gate, run_id)


def test_logs_are_capped_with_the_cap_shown(gate, start_runner, settings):
    start_runner("gpu-eu-1", "0,1,2,3")
    cap = settings.RUN_LOG_MAX_BYTES
    run_id = start_run(gate, spec_with([py("chatty", f"import sys; sys.stdout.write('x' * {cap + 5000})")]))
    run = wait_state(run_id, FINISHED)
    assert run.state == "succeeded" and run.log_bytes == cap and run.log_dropped_bytes > 5000
    log = log_of(gate, run_id)
    assert f"[log capped at {cap} bytes: {run.log_dropped_bytes} bytes were not kept]" in log
    streamed = b"".join(gate.developer.client.get(f"{RUNS}{run_id}/logs/?follow=1",
                                                  **gate.developer.headers).streaming_content)
    assert streamed.decode() == log


ADMIT_ON_A_DOWN_NODE = """  # admission as a cycle does it, in its own process
import os, sys, django
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "neocloud.settings")
django.setup()
from django.db import transaction
from django.utils import timezone
from runners.admission import _admit
from runners.models import Run, RunnerNode

with transaction.atomic(using="platform"):
    run = (Run.objects.using("platform").select_for_update(of=("self",)).select_related("flavor", "tenant")
           .get(public_id=sys.argv[1]))
    assert run.state == "queued", run.state
    if sys.argv[2] == "crash":
        transaction.on_commit(lambda: os._exit(17), using="platform")  # dies after the commit, before the publish
    _admit(run, tenant=run.tenant, node=RunnerNode.objects.using("platform").get(hostname="gpu-eu-1"),
           devices=["0", "1"], moment=timezone.now())
"""


def test_a_crash_between_admission_commit_and_publish_loses_nothing(gate, start_runner):
    # The node is down, so the platform worker's own cycles leave the run waiting; the
    # "crashing" process admits it there as a cycle would have before the node went down.
    node = runner_register(hostname="gpu-eu-1", flavor_name="h100-80gb", region="eu", jurisdiction="eu",
                           discovery=Discovery("declared", parse_declared("0,1,2,3")))
    runner_set_state(actor=gate.world.platform_admin, node=node, state="down")
    run_id = start_run(gate, spec_with([sh("train", "echo ran")]))
    wait_state(run_id, "queued")
    crashed = subprocess.run([sys.executable, "-c", ADMIT_ON_A_DOWN_NODE, run_id, "crash"], cwd=settings.BASE_DIR,
                             capture_output=True, text=True)
    assert crashed.returncode == 17, crashed.stderr
    assert run_of(run_id).state in ("admitted", "dispatched")

    runner_set_state(actor=gate.world.platform_admin, node=node, state="ready")
    start_runner("gpu-eu-1", "0,1,2,3")  # the sweep in the platform worker's next cycle publishes it
    run = wait_state(run_id, FINISHED)
    assert run.state == "succeeded" and "ran" in log_of(gate, run_id)
    row = DispatchOutbox.objects.using("owner").get(run=run)
    # Published by the sweep, which leaves a fresh row to its writer for SWEEP_GRACE_SECONDS.
    assert (row.published_at - row.created_at).total_seconds() >= SWEEP_GRACE_SECONDS


def test_a_worker_killed_mid_run_gives_its_gpus_back_and_the_run_is_requeued(gate, start_runner):
    runner = start_runner("gpu-eu-1", "0,1")
    run_id = start_run(gate, spec_with([sh("train", "echo started; sleep 9.125; echo done")]))
    wait_for(lambda: "started" in log_of(gate, run_id), timeout=60, message="the step to start")
    os.kill(runner.process.pid, signal.SIGKILL)
    runner.process.wait()
    # Lease (3 s) + reaper interval (1 s), with slack for a loaded machine. The node's heartbeat
    # is not stale yet, so the next cycle may admit the run to it again (a higher token).
    wait_for(lambda: run_of(run_id).requeues == 1, timeout=20, message="the reaper to take the run back")
    [requeue] = AuditEvent.objects.using("owner").filter(target_id=run_id, action="run.requeue")
    assert requeue.data["was"] == "running" and requeue.data["fencing_token"] == 1
    assert "stopped renewing the lease" in requeue.data["reason"]
    wait_for(lambda: not _processes("sleep 9.125"), timeout=2,
             message=f"the orphaned step to die with its worker: {_processes('sleep 9.125')}")
    [billed] = UsageEntry.objects.using("owner").filter(run__public_id=run_id)
    assert billed.fencing_token == 1 and Decimal(0) < billed.seconds < Decimal(10)

    start_runner("gpu-eu-1", "0,1")  # the node comes back; the run is admitted again and finishes
    run = wait_state(run_id, FINISHED, timeout=60)
    assert run.state == "succeeded" and run.fencing_token == 2
    entries = list(UsageEntry.objects.using("owner").filter(run=run).order_by("fencing_token"))
    assert [e.fencing_token for e in entries] == [1, 2]  # each admission billed once


def _processes(pattern: str) -> list[str]:
    found = subprocess.run(["pgrep", "-af", pattern], capture_output=True, text=True)
    return [line for line in found.stdout.splitlines() if line.strip() and int(line.split()[0]) != os.getpid()]



def test_the_quota_shows_what_is_held_borrowed_queued_and_the_gpu_hours_used(gate, start_runner, world, api):
    put_quota(api, world, {"nominal": 2, "borrowing_limit": 2, "gpu_hours_budget": 100, "budget_mode": "soft"})
    start_runner("gpu-eu-1", "0,1,2,3")
    held = [start_run(gate, spec_with([sh("train", "echo started; sleep 60")])) for _ in range(2)]
    waiting = start_run(gate, spec_with([sh("train", "true")]))  # 2 + 2 held: the borrowing limit is reached
    for run_id in held:
        wait_for(lambda: "started" in log_of(gate, run_id), timeout=60, message="the held runs to start")
    wait_state(waiting, "queued")
    [quota] = gate.developer.get(f"{T}/quota/").json()["results"]
    assert (quota["nominal"], quota["in_use"], quota["borrowed"]) == (2, 4, 2)
    assert (quota["queued_runs"], quota["queued_gpus"]) == (1, 2)
    assert Decimal(quota["gpu_hours_used"]) > 0  # the running runs' time so far
    assert Decimal(quota["gpu_hours_remaining"]) == 100 - Decimal(quota["gpu_hours_used"])
    for run_id in held:
        gate.developer.post(f"{RUNS}{run_id}/cancel/")
    for run_id in held:
        wait_state(run_id, "cancelled", timeout=20)
    billed = sum(e.gpu_seconds for e in UsageEntry.objects.using("owner").filter(run__public_id__in=held))
    assert billed > 0
    detail_quota = gate.developer.get(f"{T}/quota/h100-80gb/").json()
    assert Decimal(detail_quota["gpu_hours_used"]) >= (billed / 3600).quantize(Decimal("0.001"))


def set_budget(world, api, hours, mode):
    response = put_quota(api, world, {"nominal": 2, "borrowing_limit": 2, "gpu_hours_budget": hours,
                                      "budget_mode": mode})
    assert response.status_code == 200, response.content


def billed_earlier(gate, number, *, gpu_seconds, history=None) -> Run:
    """acme-bank's ledger gets ``gpu_seconds`` this month, billed to a finished run of version
    ``number`` (made here unless ``history`` is given): usage from before the test."""
    if history is None:
        version = gate.world.a.tenant.workflows.get(name="fraud-detector").versions.get(number=number)
        history = Run.objects.using("owner").create(
            tenant=gate.world.a.tenant, version=version, stage="development", requested_by=gate.world.a.developer,
            flavor=GpuFlavor.objects.get(name="h100-80gb"), gpus=2, max_runtime_seconds=3600, state="succeeded",
            fencing_token=0)
    history.fencing_token += 1
    history.save(update_fields=["fencing_token"], using="owner")
    UsageEntry.objects.using("owner").create(
        tenant=history.tenant, flavor=history.flavor, run=history, fencing_token=history.fencing_token,
        month=timezone.now().date().replace(day=1), gpus=2, seconds=gpu_seconds // 2, gpu_seconds=gpu_seconds,
        weight=1, weighted_gpu_seconds=gpu_seconds)
    return history


@pytest.mark.embedded
def test_hard_budget_admits_only_what_it_covers_and_stops_runs_when_it_runs_out(gate, start_runner, world, api):
    set_budget(world, api, 1, "hard")
    start_runner("gpu-eu-1", "0,1,2,3")
    too_long = start_run(gate, spec_with([sh("train", "true", timeout_seconds=3600)]))  # 2 GPU-hours at worst
    fits = start_run(gate, spec_with([sh("train", "echo started; sleep 50", timeout_seconds=60)]))  # 2 x 60 s
    run = wait_state(too_long, "queued")
    assert re.search(r"GPU-hour budget has (1\.00|0\.9\d) GPU-hour\(s\) left; this run may take 2\.00", run.reason)
    wait_for(lambda: "started" in log_of(gate, fits), timeout=60, message="the run the budget covers to start")

    # Usage billed meanwhile (say, a run that ended elsewhere) leaves 10 GPU-seconds: the running
    # run's own 2 GPUs use them up within seconds, and it is stopped.
    billed_earlier(gate, run_of(fits).version.number, gpu_seconds=3590)
    run = wait_state(fits, FINISHED, timeout=30)
    assert run.state == "cancelled" and "GPU-hour h100-80gb budget" in run.reason and "is used up" in run.reason
    stop = AuditEvent.objects.using("owner").get(target_id=fits, action="run.budget_stop")
    assert stop.actor_type == "system" and stop.data["gpu_hours_budget"] == 1
    assert Decimal(stop.data["gpu_hours_used"]) >= 1  # 3590 billed + the running run's own time
    assert UsageEntry.objects.using("owner").filter(run=run).count() == 1  # billed for what it held
    assert run_of(too_long).state == "queued"


def test_soft_budget_admits_past_the_budget_and_alerts_at_80_and_100_percent_once(gate, start_runner, world, api):
    set_budget(world, api, 1, "soft")
    number = gate.version(spec_changes=spec_with([sh("train", "true", timeout_seconds=3600)]))
    history = billed_earlier(gate, number, gpu_seconds=3000)
    wait_for(lambda: AuditEvent.objects.using("owner").filter(action="quota.budget_alert").count() == 1,
             timeout=20, message="the 80% alert")
    start_runner("gpu-eu-1", "0,1,2,3")
    response = gate.developer.post(RUNS, {"workflow": "fraud-detector", "version": number, "stage": "development"})
    run = wait_state(response.json()["id"], FINISHED)  # admitted although 2 GPU-hours exceed what is left
    assert run.state == "succeeded"
    billed_earlier(gate, number, gpu_seconds=700, history=history)
    wait_for(lambda: AuditEvent.objects.using("owner").filter(action="quota.budget_alert").count() == 2,
             timeout=20, message="the 100% alert")
    alerts = AuditEvent.objects.using("owner").filter(action="quota.budget_alert").order_by("id")
    assert [a.data["threshold"] for a in alerts] == [80, 100] and all(a.tenant == "acme-bank" for a in alerts)
    [quota] = gate.developer.get(f"{T}/quota/").json()["results"]
    assert quota["budget_alerts"] == [80, 100] and Decimal(quota["gpu_hours_remaining"]) < 0


@pytest.mark.embedded
def test_a_tenant_reclaims_its_lent_quota_by_preempting_the_borrower_with_a_grace_period(gate, start_runner, world):
    from runners.admission import run_request
    from tests.test_fair_order import _eu_neighbour

    neighbour, _ = _eu_neighbour(world)  # euro-insure: nominal 2, borrowing 2, same EU pool
    from workflows.services import workflow_version_register

    borrower, _ = workflow_version_register(actor=neighbour.developer, tenant=neighbour.tenant, spec={
        "name": "claims", "steps": [sh("score", "trap 'echo got TERM; exit 143' TERM; echo started; "
                                                "sleep 120 & wait", gpu={"flavor": "h100-80gb", "count": 4})]})
    start_runner("gpu-eu-1", "0,1,2,3")
    borrowed, _ = run_request(actor=neighbour.developer, tenant=neighbour.tenant, version=borrower,
                              stage="development")
    wait_state(borrowed.public_id, "running")  # all four devices: two of them acme-bank's
    wait_for(lambda: "started" in "".join(Run.objects.using("owner").get(pk=borrowed.pk).log_chunks.using("owner")
                                          .values_list("text", flat=True)), timeout=30, message="the borrower to start")

    mine = start_run(gate, spec_with([sh("train", "echo mine")]))  # 2 GPUs, within acme-bank's nominal 2
    run = wait_state(mine, FINISHED, timeout=60)
    assert run.state == "succeeded" and "mine" in log_of(gate, mine)

    back = Run.objects.using("owner").get(pk=borrowed.pk)
    assert back.preemptions == 1 and back.requeues == 0  # a preemption is not a failure
    preempt = AuditEvent.objects.using("owner").get(action="run.preempt", target_id=str(borrowed.public_id))
    assert preempt.data["for_tenant"] == "acme-bank" and preempt.data["was"] == "running"
    log = "".join(Run.objects.using("owner").get(pk=borrowed.pk).log_chunks.using("owner")
                  .values_list("text", flat=True))
    assert "preempted: SIGTERM" in log and "got TERM" in log  # the step had its grace period
    first = UsageEntry.objects.using("owner").get(run=back, fencing_token=1)
    assert first.gpus == 4 and first.gpu_seconds > 0  # the preempted admission billed once
    # Requeued, it gets the devices again once acme-bank's run is done, under a new token.
    def started_again():
        again = Run.objects.using("owner").get(pk=borrowed.pk)
        return again.fencing_token == 2 and "".join(
            again.log_chunks.using("owner").values_list("text", flat=True)).count("started") == 2

    wait_for(started_again, timeout=30, message="the requeued borrower to start again")
    run_cancel(actor=neighbour.developer, run=Run.objects.using("owner").get(pk=borrowed.pk))
    assert wait_state(borrowed.public_id, FINISHED, timeout=20).state == "cancelled"


def test_a_staging_runs_outputs_get_platform_signed_provenance_and_its_metrics_judge_production(gate, start_runner):
    from workflows import attestations
    from workflows.models import Promotion, RunOutput
    from workflows.outputs import PROVENANCE_PREDICATE
    from audit.keys import platform_public_keys

    start_runner("gpu-eu-1", "0,1,2,3")
    dataset = gate.push("training-data", b"amount,label\n10,0\n", kind="dataset", sign=False)
    number = gate.version(spec_changes={
        **spec_with([sh("train", 'head -c 2048 /dev/urandom > model.bin; echo \'{"accuracy": 0.93}\' > metrics.json')],
                    inputs=[{"name": "transactions", "region": "eu-west1", "uri": "store", "digest": dataset}]),
        "outputs": [{"name": "scorer-trained", "kind": "model", "path": "model.bin"},
                    {"name": "staging-eval", "kind": "metrics", "path": "metrics.json"}]})
    gate.promote(number, "development")
    gate.promote(number, "staging")
    response = gate.developer.post(RUNS, {"workflow": "fraud-detector", "version": number, "stage": "staging"})
    run = wait_state(response.json()["id"], FINISHED)
    assert run.state == "succeeded", (run.reason, log_of(gate, response.json()["id"]))

    outputs = {o.output_name: o for o in RunOutput.objects.using("owner").select_related("artifact", "version")
               .filter(run_id=run.public_id)}
    assert set(outputs) == {"scorer-trained", "staging-eval"}
    model = outputs["scorer-trained"]
    assert model.artifact.kind == "model" and model.artifact.size_bytes == 2048 and model.stage == "staging"
    statement = attestations.verify_attestation(model.provenance, platform_public_keys(),
                                                predicate_type=PROVENANCE_PREDICATE)
    assert statement["subject"][0]["digest"]["sha256"] == model.artifact.digest[7:]
    predicate = statement["predicate"]
    assert predicate["version_digest"] == model.version.digest and predicate["runner"] == "gpu-eu-1"
    assert predicate["devices"] == ["0", "1"] and predicate["inputs"] == [{"name": "transactions", "digest": dataset}]

    gate.accuracy.pop(number)  # production must take the run's metrics, not a made-up staging run
    body = gate.request(number, "production").json()
    promotion = Promotion.objects.using("owner").get(stage="production")
    assert promotion.metrics_artifact.digest == outputs["staging-eval"].artifact.digest
    assert "baseline.metrics_thresholds" not in {v["rule"] for v in body["violations"]}, body["violations"]


def test_an_output_outside_the_runs_directory_fails_the_run(gate, start_runner):
    start_runner("gpu-eu-1", "0,1,2,3")
    run_id = start_run(gate, {**spec_with([sh("train", "ln -s /etc/hostname leak.txt")]),
                              "outputs": [{"name": "leak", "kind": "other", "path": "leak.txt"}]})
    run = wait_state(run_id, FINISHED)
    assert run.state == "failed" and run.reason == "Output leak: there is no file at leak.txt in the run's directory."


# The runner's broker is a throwaway redis-server on another port, never the shared one.
def test_a_broker_restart_during_a_run_loses_nothing(gate, start_runner, tmp_path):
    port = _free_port()
    broker = _redis_server(port, tmp_path)
    url = f"redis://127.0.0.1:{port}/0"
    try:
        # Runs are admitted onto a node the platform worker (on the shared broker) leaves alone,
        # by a process publishing to the throwaway broker, where this node's runner listens.
        node = runner_register(hostname="gpu-eu-7", flavor_name="h100-80gb", region="eu", jurisdiction="eu",
                               discovery=Discovery("declared", parse_declared("0,1,2,3")))
        runner_set_state(actor=gate.world.platform_admin, node=node, state="down")
        start_runner("gpu-eu-7", "0,1,2,3", env={"CELERY_BROKER_URL": url})
        first = _admitted_through(gate, url, sh("train", "echo started; sleep 4; echo finished"))
        wait_for(lambda: "started" in log_of(gate, first), timeout=60, message="the first run to start")
        broker.kill()  # the broker goes away mid-run...
        broker.wait()
        wait_for(lambda: run_of(first).state in FINISHED, timeout=30, message="the run to end without its broker")
        assert run_of(first).state == "succeeded" and "finished" in log_of(gate, first)
        broker = _redis_server(port, tmp_path)  # ...and comes back empty
        second = _admitted_through(gate, url, sh("train", "echo second"))
        run = wait_state(second, FINISHED, timeout=60)  # the runner reconnected and takes new work
        assert run.state == "succeeded" and "second" in log_of(gate, second)
    finally:
        broker.kill()
        broker.wait()


def _admitted_through(gate, broker_url, step):
    run_id = start_run(gate, spec_with([step]))
    wait_state(run_id, "queued")
    admitted = subprocess.run([sys.executable, "-c", ADMIT_ON_A_DOWN_NODE.replace("gpu-eu-1", "gpu-eu-7"), run_id,
                               "publish"], cwd=settings.BASE_DIR, capture_output=True, text=True,
                              env={**os.environ, "CELERY_BROKER_URL": broker_url})
    assert admitted.returncode == 0, admitted.stderr
    return run_id


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _redis_server(port: int, workdir: Path) -> subprocess.Popen:
    import shutil

    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is not installed; the broker restart test starts its own (Debian redis-server).")
    process = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly",
                                "no", "--dir", str(workdir)], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    import redis

    deadline = time.monotonic() + 10
    while True:
        try:
            redis.Redis(port=port, socket_connect_timeout=1).ping()
            return process
        except redis.RedisError:
            if time.monotonic() > deadline:
                process.kill()
                pytest.fail(f"redis-server did not start on port {port}.")
            time.sleep(0.1)


def test_fair_order_on_the_worker_the_tenant_that_used_less_runs_first(gate, start_runner, world):
    from runners.admission import run_request
    from tests.test_fair_order import _eu_neighbour

    neighbour, _ = _eu_neighbour(world)
    from workflows.services import workflow_version_register

    theirs, _ = workflow_version_register(actor=neighbour.developer, tenant=neighbour.tenant, spec={
        "name": "claims", "steps": [sh("score", "sleep 1", gpu={"flavor": "h100-80gb", "count": 2})]})
    start_runner("gpu-eu-1", "0,1")  # room for one 2-GPU run at a time
    holder = start_run(gate, spec_with([sh("train", "echo started; sleep 4")]))  # acme-bank uses the node first
    wait_for(lambda: "started" in log_of(gate, holder), timeout=60, message="the first run to start")
    mine = start_run(gate, spec_with([sh("train", "sleep 1")]))  # older, but acme-bank has used more
    time.sleep(0.5)
    other, _ = run_request(actor=neighbour.developer, tenant=neighbour.tenant, version=theirs, stage="development")
    for run_id in (holder, mine, other.public_id):
        assert wait_state(run_id, FINISHED, timeout=90).state == "succeeded"
    assert run_of(other.public_id).started_at < run_of(mine).started_at
