"""The worker's side of a run: fetch inputs, run the steps in the sandbox, stream their output.

``execute`` is what the run task calls on the node that holds the run's devices. The run's
state lives in the database (runners.execution); this module only drives processes. Each
step runs in its own process group, so a timeout, a cancellation or a lost lease kills the
step and everything it started.
"""

import hashlib
import json
import logging
import os
import queue
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings
from django.db import close_old_connections
from django.utils import timezone

from tenants.db import PLATFORM_ALIAS
from workflows.outputs import run_output_register
from workflows.spec import step_order, step_timeout
from workflows.store import UploadRefused, get_store

from . import sandbox
from .execution import (CANCEL, PREEMPT, Lease, input_artifact, lease_renew, log_append, run_claim, run_finish,
                        run_preempted, step_update, stop_requested)
from .models import RunState, StepState

logger = logging.getLogger(__name__)

LOG_FLUSH_SECONDS = 0.5
LOG_FLUSH_BYTES = 64 * 1024
CANCEL_CHECK_SECONDS = 1.0
PREEMPTED = "preempted"  # outcomes, not states: the run goes back to the queue,
LEASE_LOST = "lease_lost"  # or the reaper owns it already


class StepsStopped(Exception):
    """The run must stop: cancelled, or its lease was lost to the reaper."""

    def __init__(self, outcome: str, reason: str):
        super().__init__(reason)
        self.outcome, self.reason = outcome, reason


class InputRefused(Exception):
    pass


@dataclass
class Attempt:
    exit_code: int | None
    timed_out: bool


def execute(*, run_id: str, fencing_token: int, hostname: str) -> str | None:
    """Claim the run and execute it; return the state it ended in, or None if this delivery
    had nothing to do (a duplicate, a stale token, another node's run)."""
    lease = run_claim(run_id=run_id, fencing_token=fencing_token, hostname=hostname)
    if lease is None:
        return None
    workdir = Path(settings.RUNNER_WORK_DIR) / f"{lease.run.public_id}-{fencing_token}"
    keeper = threading.Thread(target=_keep_lease, args=(lease,), daemon=True, name=f"lease-{run_id}")
    keeper.start()
    try:
        state, reason = _execute(lease, workdir)
    except StepsStopped as stop:
        state, reason = stop.outcome, stop.reason
    except Exception as exc:  # the platform's own failure: the run fails with it, the worker lives on
        logger.exception("run %s failed inside the runner", run_id)
        state, reason = RunState.FAILED, f"The runner failed: {exc}"
    finally:
        lease.done.set()
        keeper.join()
        shutil.rmtree(workdir, ignore_errors=True)
    if state == LEASE_LOST or lease.lost:  # the reaper owns the run now; nothing of ours may be written
        return None
    if state == PREEMPTED:
        run_preempted(lease)
        return PREEMPTED
    run_finish(lease, state=state, reason=reason)
    return state


def _keep_lease(lease: Lease) -> None:
    """Renew the lease every third of its length for as long as the run executes (inputs,
    steps, outputs); a refused renewal means the reaper took the run: the steps are stopped."""
    try:
        while not lease.done.wait(settings.RUNNER_LEASE_SECONDS / 3):
            if not lease_renew(lease):
                lease.lost = True
                return
    finally:
        close_old_connections()


def _execute(lease: Lease, workdir: Path) -> tuple[str, str]:
    run = lease.run
    sandbox.bwrap_path()  # refuse to run anything without the sandbox
    _prepare(run, workdir)
    try:
        _fetch_inputs(lease, workdir)
    except InputRefused as exc:
        log_append(lease, f"{exc}\n")
        return RunState.FAILED, str(exc)
    for step in step_order(run.version.spec):
        lease.step = step["name"]
        try:
            ok, reason = _run_step(lease, step, workdir)
        finally:
            lease.step = ""
        if not ok:
            return RunState.FAILED, reason
    if lease.lost:
        raise StepsStopped(LEASE_LOST, "The lease was lost to the reaper.")
    try:
        _register_outputs(lease, workdir)
    except OutputRefused as exc:
        log_append(lease, f"{exc}\n")
        return RunState.FAILED, str(exc)
    return RunState.SUCCEEDED, ""


class OutputRefused(Exception):
    pass


def _register_outputs(lease: Lease, workdir: Path) -> None:
    """Every declared output with a path becomes an artifact with platform-signed provenance."""
    run, spec = lease.run, lease.run.version.spec
    facts = {"run": str(run.public_id), "workflow": run.version.workflow.name, "version": run.version.number,
             "version_digest": run.version.digest, "stage": run.stage, "tenant": run.tenant.slug,
             "parameters": run.parameters, "inputs": [{"name": i["name"], "digest": i["digest"]}
                                                      for i in spec.get("inputs", [])],
             "runner": lease.hostname, "devices": run.device_ids, "flavor": run.flavor.name if run.flavor else "",
             "fencing_token": lease.fencing_token, "started_at": run.started_at.isoformat()}
    root = workdir.resolve()
    for output in spec.get("outputs", []):
        if not output.get("path"):
            continue
        path = (workdir / output["path"]).resolve()
        if not path.is_relative_to(root) or not path.is_file():
            raise OutputRefused(f"Output {output['name']}: there is no file at {output['path']} in the run's "
                                "directory.")
        try:
            run_output_register(tenant=run.tenant, version=run.version, stage=run.stage, run_id=str(run.public_id),
                                name=output["name"], kind=output["kind"], path=path, region=run.node.region,
                                created_by=run.requested_by, facts=facts, using=PLATFORM_ALIAS)
        except UploadRefused as exc:
            raise OutputRefused(f"Output {output['name']} was refused: {exc}") from None
        log_append(lease, f"<== output {output['name']} registered\n")


def _prepare(run, workdir: Path) -> None:
    workdir.mkdir(parents=True, mode=0o700)
    (workdir / "inputs").mkdir()
    (workdir / sandbox.SCRATCH).mkdir()
    parameters = {**run.version.spec.get("parameters", {}), **run.parameters}
    (workdir / "parameters.json").write_text(json.dumps(parameters, indent=2, sort_keys=True))
    if os.geteuid() == 0:  # the steps run as the sandbox user, who must own only this directory
        for path in (workdir, workdir / "inputs", workdir / sandbox.SCRATCH, workdir / "parameters.json"):
            os.chown(path, settings.RUNNER_SANDBOX_UID, settings.RUNNER_SANDBOX_GID)


def _fetch_inputs(lease: Lease, workdir: Path) -> None:
    """Copy each declared input from the artifact store: only an artifact of the run's tenant,
    stored in this node's jurisdiction, and only bytes that hash to its digest."""
    store = get_store()
    for item in lease.run.version.spec.get("inputs", []):
        target = workdir / "inputs" / item["name"]
        artifact, refusal = input_artifact(lease, name=item["name"], digest=item["digest"])
        if artifact is None:
            raise InputRefused(refusal)
        if not store.exists(item["digest"]):
            raise InputRefused(f"Input {item['name']} ({item['digest']}) is not in the artifact store.")
        hasher = hashlib.sha256()
        with store.open(item["digest"]) as source, open(target, "wb") as out:
            while chunk := source.read(1024 * 1024):
                hasher.update(chunk)
                out.write(chunk)
        if "sha256:" + hasher.hexdigest() != item["digest"]:
            target.unlink()
            raise InputRefused(f"Input {item['name']}: the stored bytes hash to sha256:{hasher.hexdigest()}, "
                               f"not {item['digest']}.")
        if os.geteuid() == 0:
            os.chown(target, settings.RUNNER_SANDBOX_UID, settings.RUNNER_SANDBOX_GID)
        os.chmod(target, 0o400)


def _run_step(lease: Lease, step: dict, workdir: Path) -> tuple[bool, str]:
    name = step["name"]
    if "command" not in step:
        step_update(lease, name, state=StepState.FAILED, reason="Image steps need a container backend.")
        return False, f"Step {name} is an image step; runs of them wait for a container backend."
    attempts = 1 + int(step.get("retries", 0))
    timeout = step_timeout(step)
    step_update(lease, name, state=StepState.RUNNING, started_at=timezone.now())
    for number in range(1, attempts + 1):
        step_update(lease, name, attempts=number)
        log_append(lease, f"==> step {name}, attempt {number} of {attempts}\n")
        result = _attempt(lease, step, workdir)
        if result.timed_out:
            why = f"timed out after {timeout} s"
        elif result.exit_code == 0:
            log_append(lease, f"<== step {name} succeeded\n")
            step_update(lease, name, state=StepState.SUCCEEDED, exit_code=0, finished_at=timezone.now())
            return True, ""
        else:
            why = f"exited with code {result.exit_code}"
        log_append(lease, f"<== step {name} {why}\n")
        step_update(lease, name, exit_code=result.exit_code, reason=f"Attempt {number}: {why}.")
    reason = f"Step {name} failed after {attempts} attempt(s): the last {why}."
    step_update(lease, name, state=StepState.FAILED, reason=reason, finished_at=timezone.now())
    return False, reason


def _attempt(lease: Lease, step: dict, workdir: Path) -> Attempt:
    """One attempt at a step: start it in its own process group, stream its output, and kill
    the group on timeout, cancellation or a lost lease."""
    run = lease.run
    env = {**step.get("env", {}), "CUDA_VISIBLE_DEVICES": ",".join(run.device_ids),
           "NEOCLOUD_RUN_ID": str(run.public_id), "NEOCLOUD_STEP": step["name"],
           "NEOCLOUD_PARAMETERS": f"{sandbox.WORKSPACE}/parameters.json"}
    argv = sandbox.command(argv=step["command"], workdir=workdir, env=env, network=bool(step.get("network")),
                           device_ids=run.device_ids)
    process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               env={}, cwd=workdir, **sandbox.popen_options())
    output: queue.Queue = queue.Queue()
    reader = threading.Thread(target=_read_into, args=(process.stdout, output), daemon=True)
    reader.start()
    started = time.monotonic()
    deadline = started + step_timeout(step)
    next_cancel_check = started + CANCEL_CHECK_SECONDS
    pending, last_flush = [], started
    try:
        while True:
            try:
                chunk = output.get(timeout=0.2)
            except queue.Empty:
                chunk = b""
            if chunk is None:  # the pipe closed: every process of the step has exited
                break
            pending.append(chunk)
            now = time.monotonic()
            if now - last_flush >= LOG_FLUSH_SECONDS or sum(map(len, pending)) >= LOG_FLUSH_BYTES:
                log_append(lease, b"".join(pending).decode("utf-8", "replace"))
                pending, last_flush = [], now
            if now >= deadline:
                _kill(process)
                return Attempt(exit_code=None, timed_out=True)
            if now >= next_cancel_check:
                asked = stop_requested(lease)
                next_cancel_check = now + CANCEL_CHECK_SECONDS
                if lease.lost:
                    _kill(process)
                    raise StepsStopped(LEASE_LOST, "The lease was lost to the reaper.")
                if asked == CANCEL:
                    _kill(process)
                    log_append(lease, b"".join(pending).decode("utf-8", "replace") + "<== cancelled\n")
                    pending = []
                    step_update(lease, step["name"], state=StepState.CANCELLED, reason="Cancelled while running.")
                    raise StepsStopped(RunState.CANCELLED, "Cancelled while running.")
                if asked == PREEMPT:
                    log_append(lease, b"".join(pending).decode("utf-8", "replace") + "<== preempted: SIGTERM, "
                               f"then SIGKILL after {settings.RUN_PREEMPTION_GRACE_SECONDS:g} s\n")
                    pending = []
                    _terminate(process, output, lambda text: log_append(lease, text))
                    raise StepsStopped(PREEMPTED, "Preempted to return borrowed devices.")
        return Attempt(exit_code=process.wait(), timed_out=False)
    finally:
        if pending:
            log_append(lease, b"".join(pending).decode("utf-8", "replace"))
        if process.poll() is None:
            _kill(process)
        reader.join(timeout=5)
        close_old_connections()


def _terminate(process: subprocess.Popen, output: queue.Queue, log) -> None:
    """SIGTERM to every process of the step (they are in the sandbox's own session, so the
    signal goes to each by its host pid), their output still logged, then SIGKILL to the group
    after the grace period."""
    for pid in _descendants(process.pid):
        try:
            if Path(f"/proc/{pid}/comm").read_text().strip() != "bwrap":  # bwrap dying would SIGKILL the rest
                os.kill(pid, signal.SIGTERM)
        except (OSError, ProcessLookupError):
            pass
    deadline = time.monotonic() + settings.RUN_PREEMPTION_GRACE_SECONDS
    while time.monotonic() < deadline:
        try:
            chunk = output.get(timeout=0.2)
        except queue.Empty:
            continue
        if chunk is None:
            break
        log(chunk.decode("utf-8", "replace"))
    _kill(process)


def _descendants(root: int) -> list[int]:
    """The pids below ``root``, children first, from /proc."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            parent = int(stat.rsplit(")", 1)[1].split()[1])
            parents.setdefault(parent, []).append(int(entry))
    found, frontier = [], [root]
    while frontier:
        children = [child for pid in frontier for child in parents.get(pid, [])]
        found += children
        frontier = children
    return found


def _read_into(stream, output: queue.Queue) -> None:
    try:
        while chunk := os.read(stream.fileno(), 65536):
            output.put(chunk)
    finally:
        output.put(None)


def _kill(process: subprocess.Popen) -> None:
    """Kill the step's whole process group (the sandbox dies with it: --die-with-parent)."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()
