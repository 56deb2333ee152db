"""Admissions per second with 16 concurrent submitters on PostgreSQL, the largest
over-admission seen (it must be 0), and dispatch latency on Redis.

    python bench/admission.py [--submitters 16] [--runs-per-submitter 25] [--nodes 8]
                              [--dispatches 30] [--broker redis://127.0.0.1:6379/13]

Needs PostgreSQL with the project's roles (`make pg-roles`) and a superuser
(`PG_SUPERUSER_URL`, default `postgresql://postgres@127.0.0.1:5432/postgres`); it creates and
drops its own database, `neocloud_bench_admission`. Each submitter thread records runs through the real
domain function (the run policy included) and then runs an admission cycle, as each new run
wakes one in production; so up to 16 cycles compete for the same quota and nodes. After
every cycle the script checks, in the database, what the tenant holds against its limit and
what each node has handed out against its devices.

Dispatch latency is measured next, from a run's admission to its first step starting: a real
runner (`manage.py runner start`, declared devices, steps in bubblewrap) listens on Redis,
and runs of one `true` step are requested and admitted one after another; the latency covers
the outbox publish, the broker, the fenced claim, fetching nothing, and starting the sandbox.
The broker database given by --broker is emptied first and last.
"""

import argparse
import os
import statistics
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PG = os.environ.get("PG_HOST", "127.0.0.1") + ":" + os.environ.get("PG_PORT", "5432")
DATABASE = "neocloud_bench_admission"
SUPERUSER_URL = os.environ.get("PG_SUPERUSER_URL", f"postgresql://postgres@{PG}/postgres")
LIMIT_NOMINAL, LIMIT_BORROWING, GPUS_PER_RUN, DEVICES_PER_NODE = 16, 8, 2, 4
BROKER = "redis://127.0.0.1:6379/13"


def boot_django() -> None:
    import psycopg

    with psycopg.connect(SUPERUSER_URL, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{DATABASE}" OWNER neocloud_owner')
    os.environ.update({
        "DJANGO_SETTINGS_MODULE": "neocloud.settings",
        "NEOCLOUD_ENV": "development",
        "DATABASE_URL": f"postgresql://neocloud_app@{PG}/{DATABASE}",
        "OWNER_DATABASE_URL": f"postgresql://neocloud_owner@{PG}/{DATABASE}",
        "PLATFORM_DATABASE_URL": f"postgresql://neocloud_platform@{PG}/{DATABASE}",
        "CELERY_BROKER_URL": BROKER,  # admissions publish here; the runner of the second part listens
        "LOG_LEVEL": "ERROR",
    })
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def drop_database() -> None:
    import psycopg
    from django.db import connections

    connections.close_all()
    with psycopg.connect(SUPERUSER_URL, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)')


def setup(nodes: int):
    from django.contrib.auth import get_user_model

    from runners.discovery import Discovery, Device
    from runners.services import runner_register
    from tenants.models import GpuFlavor, Membership, Tenant, TenantQuota
    from workflows.models import Workflow, WorkflowVersion

    tenant = Tenant.objects.using("owner").create(slug="bench-bank", name="Bench Bank", jurisdiction="eu")
    developer = get_user_model().objects.db_manager("owner").create_user(username="bench-dev", password=None)
    Membership.objects.using("owner").create(tenant=tenant, user=developer, role="developer")
    flavor = GpuFlavor.objects.using("owner").create(name="h100-80gb", memory_gb=80, billing_weight="1")
    TenantQuota.objects.using("owner").create(tenant=tenant, flavor=flavor, nominal=LIMIT_NOMINAL,
                                              borrowing_limit=LIMIT_BORROWING)
    for index in range(nodes):
        runner_register(hostname=f"gpu-eu-{index}", flavor_name="h100-80gb", region="eu", jurisdiction="eu",
                        discovery=Discovery("declared", tuple(Device(str(d)) for d in range(DEVICES_PER_NODE))))
    spec = {"name": "bench", "steps": [{"name": "train", "command": ["true"],
                                        "gpu": {"flavor": "h100-80gb", "count": GPUS_PER_RUN}}]}
    workflow = Workflow.objects.using("owner").create(tenant=tenant, name="bench", created_by=developer)
    version = WorkflowVersion.objects.using("owner").create(
        tenant=tenant, workflow=workflow, number=1, spec=spec, spec_canonical="{}", digest="sha256:" + "b" * 64,
        created_by=developer)
    # Loaded through the owner alias (row-level security would hide them from the app role
    # outside a tenant's transaction); the domain functions bind the tenant themselves.
    return tenant, developer, WorkflowVersion.objects.using("owner").select_related("workflow").get(pk=version.pk)


def over_admission() -> int:
    """How far the holdings exceed a limit right now: the tenant's, or any node's devices."""
    from django.db.models import Sum

    from runners.models import HOLDING_STATES, Run

    held = Run.objects.using("owner").filter(state__in=HOLDING_STATES)
    worst = max(0, (held.aggregate(total=Sum("gpus"))["total"] or 0) - (LIMIT_NOMINAL + LIMIT_BORROWING))
    per_node = {}
    for node_id, devices in held.values_list("node_id", "device_ids"):
        per_node.setdefault(node_id, []).extend(devices)
    for devices in per_node.values():
        worst = max(worst, len(devices) - len(set(devices)), len(devices) - DEVICES_PER_NODE)
    return worst


def release_some(fraction: float) -> None:
    """Finish a share of the admitted runs so admission keeps having work (as runs complete)."""
    from runners.models import HOLDING_STATES, Run, RunState

    admitted = list(Run.objects.using("owner").filter(state__in=HOLDING_STATES).values_list("pk", flat=True))
    done = admitted[: int(len(admitted) * fraction)]
    Run.objects.using("owner").filter(pk__in=done).update(state=RunState.SUCCEEDED)


def dispatch_latency(tenant, developer, count: int) -> list[float]:
    """Admission to first step started, in ms, for ``count`` one-step runs on a real runner."""
    import subprocess

    from runners.admission import admission_cycle, run_request
    from runners.models import HOLDING_STATES, WAITING_STATES, Run, RunState, RunStep
    from workflows.models import Workflow, WorkflowVersion

    Run.objects.using("owner").filter(state__in=(*HOLDING_STATES, *WAITING_STATES)).update(state=RunState.SUCCEEDED)
    spec = {"name": "dispatch", "steps": [{"name": "first", "command": ["true"],
                                           "gpu": {"flavor": "h100-80gb", "count": 1}}]}
    workflow = Workflow.objects.using("owner").create(tenant=tenant, name="dispatch", created_by=developer)
    version = WorkflowVersion.objects.using("owner").create(
        tenant=tenant, workflow=workflow, number=1, spec=spec, spec_canonical="{}", digest="sha256:" + "d" * 64,
        created_by=developer)
    version = WorkflowVersion.objects.using("owner").select_related("workflow").get(pk=version.pk)
    env = dict(os.environ, RUNNER_HOSTNAME="bench-runner", RUNNER_FLAVOR="h100-80gb", RUNNER_REGION="eu",
               RUNNER_JURISDICTION="eu", RUNNER_GPU_DEVICES="0,1,2,3", PYTHONUNBUFFERED="1")
    log = open(ROOT / "var" / "bench-runner.log", "wb")
    runner = subprocess.Popen([sys.executable, "manage.py", "runner", "start", "--loglevel", "WARNING"], cwd=ROOT,
                              env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        from runners.models import RunnerNode

        while not RunnerNode.objects.using("owner").filter(hostname="bench-runner").exists():
            if runner.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the runner did not start; see var/bench-runner.log")
            time.sleep(0.2)
        # Only the bench runner's node takes runs now.
        RunnerNode.objects.using("owner").exclude(hostname="bench-runner").update(state="down")
        time.sleep(2)  # the worker inside the runner is listening
        latencies = []
        for n in range(count):
            run, _ = run_request(actor=developer, tenant=tenant, version=version, stage="development",
                                 parameters={"n": n})
            admission_cycle()
            step = None
            deadline = time.monotonic() + 60
            while step is None or step.started_at is None:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"run {run.public_id} did not start; see var/bench-runner.log")
                time.sleep(0.005)
                step = RunStep.objects.using("owner").filter(run=run).first()
            admitted = Run.objects.using("owner").get(pk=run.pk).admitted_at
            latencies.append((step.started_at - admitted).total_seconds() * 1000)
            while Run.objects.using("owner").get(pk=run.pk).state in HOLDING_STATES:
                time.sleep(0.01)
        return latencies
    finally:
        runner.terminate()
        runner.wait(timeout=30)
        log.close()


def flush_broker() -> None:
    import redis

    redis.Redis.from_url(BROKER).flushdb()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--submitters", type=int, default=16)
    parser.add_argument("--runs-per-submitter", type=int, default=25)
    parser.add_argument("--nodes", type=int, default=8)
    parser.add_argument("--dispatches", type=int, default=30)
    parser.add_argument("--broker", default=BROKER, help="a Redis database the benchmark may empty")
    options = parser.parse_args()
    globals()["BROKER"] = options.broker
    try:
        flush_broker()
        boot_django()
    except Exception as exc:
        print(f"PostgreSQL is not ready for the benchmark ({type(exc).__name__}: {str(exc).splitlines()[0]}); "
              "run `make pg-roles` first.", file=sys.stderr)
        return 2
    from django.db import connections

    from runners.admission import admission_cycle, run_request

    try:
        tenant, developer, version = setup(options.nodes)
        barrier = threading.Barrier(options.submitters)
        cycle_ms, admitted, worst, errors = [], [0], [0], []
        lock = threading.Lock()

        def submitter(index):
            try:
                barrier.wait()
                for n in range(options.runs_per_submitter):
                    run_request(actor=developer, tenant=tenant, version=version, stage="development",
                                parameters={"submitter": index, "n": n})
                    started = time.perf_counter()
                    result = admission_cycle()
                    elapsed = (time.perf_counter() - started) * 1000
                    seen = over_admission()
                    with lock:
                        cycle_ms.append(elapsed)
                        admitted[0] += result.admitted
                        worst[0] = max(worst[0], seen)
                    if n % 5 == 4:
                        release_some(0.5)
            except Exception as exc:  # reported after the run, with its message
                errors.append(exc)
            finally:
                connections.close_all()

        threads = [threading.Thread(target=submitter, args=(i,)) for i in range(options.submitters)]
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        wall = time.perf_counter() - started
        if errors:
            print(f"A submitter failed: {type(errors[0]).__name__}: {errors[0]}", file=sys.stderr)
            return 1
        requests = options.submitters * options.runs_per_submitter
        ordered = sorted(cycle_ms)
        print(f"{os.cpu_count()} CPU cores; PostgreSQL at {PG}; {options.submitters} submitters x "
              f"{options.runs_per_submitter} runs of {GPUS_PER_RUN} GPUs; tenant limit "
              f"{LIMIT_NOMINAL}+{LIMIT_BORROWING}; {options.nodes} nodes x {DEVICES_PER_NODE} devices")
        print(f"{'measure':<34}{'value':>12}")
        print(f"{'runs recorded':<34}{requests:>12}")
        print(f"{'admissions':<34}{admitted[0]:>12}")
        print(f"{'admissions per second':<34}{admitted[0] / wall:>12.1f}")
        print(f"{'requests + cycles per second':<34}{requests / wall:>12.1f}")
        print(f"{'admission cycle p50 ms':<34}{statistics.median(ordered):>12.1f}")
        print(f"{'admission cycle p99 ms':<34}{ordered[max(0, int(len(ordered) * 0.99) - 1)]:>12.1f}")
        print(f"{'largest over-admission seen':<34}{worst[0]:>12}")
        latencies = sorted(dispatch_latency(tenant, developer, options.dispatches))
        print(f"{'dispatch latency p50 ms (Redis)':<34}{statistics.median(latencies):>12.1f}")
        print(f"{'dispatch latency p99 ms (Redis)':<34}{latencies[max(0, int(len(latencies) * 0.99) - 1)]:>12.1f}")
        return 0 if worst[0] == 0 else 1
    finally:
        drop_database()
        flush_broker()


if __name__ == "__main__":
    sys.exit(main())
