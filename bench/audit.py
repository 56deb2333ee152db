"""Audit log throughput and proof latency on PostgreSQL, each next to its plain baseline.

    python bench/audit.py [--writers 8] [--threads] [--appends 4000] [--rounds 2] [--sequencer-pause 0.01]
                          [--verify-events 20000] [--proof-events 1000000] [--proofs 200] [--repeat 3]

Measures in one run:

1. appends: events per second through the product's ``audit.log.record`` (each event in its
   own ``transaction.atomic()`` on the app role, as a request records it) from --writers
   processes (as gunicorn's and Celery's are; --threads for threads of one interpreter), each
   with its own connection, while a sequencer process (as in production, where
   the beat-driven task runs in a worker process) calls
   ``audit.sequencer.sequence_pending`` in a loop on the platform role; the same without the
   sequencer; and next to them the same number of equivalent rows (built by the same code
   beforehand: canonical JSON and hash precomputed) written by as many writers as bare
   INSERTs through psycopg, one transaction per row. It reports how far the sequencer lagged
   and how long after the writers stopped everything was sequenced;
2. verify: events and MB per second of ``audit.verify.verify_log`` (what
   ``manage.py audit verify`` runs) over a log of --verify-events events, next to plain
   ``hashlib.sha256`` over the bytes verify must hash (each event's canonical JSON and each
   leaf entry, with the RFC 6962 leaf prefix), already in memory;
3. proofs: p50 and p99 latency of ``audit.tree.inclusion_proof`` and
   ``audit.tree.consistency_proof`` on a log of --proof-events events, read from the stored
   subtrees. Every timed proof is then checked with ``audit.merkle.verify_*`` against roots
   computed independently from all the stored leaves. It also times one ``sequence_pending``
   call for one new event on the verify-sized and on the proof-sized log;
4. console: on the same log, the compliance console's page read
   (``compliance.selectors.event_page``, one keyset query of 50 rows, checked to be one query):
   a tenant's first page, a random page deep in it, and pages filtered by actor and by target
   type and time.

The log the first part appends is checked with ``verify_log`` (untimed). Parts 2 and 3 start
again from an empty database, whose log is written directly (COPY as the owner role):
synthetic events of the same shape, hashed the way the product hashes them, with their leaves
and tree nodes computed here through ``audit.merkle.completed_nodes``. Up to
--verify-events, the product signs a checkpoint (``checkpoint_write``) after every
AUDIT_CHECKPOINT_EVERY of them, and the verify of the second part checks them all with the
product's own code.

Needs PostgreSQL with the project's roles (``make pg-roles``) and a superuser
(``PG_SUPERUSER_URL``, default ``postgresql://postgres@127.0.0.1:5432/postgres``); it creates
and drops its own database, ``neocloud_bench_audit``, and a throwaway platform keyring in a
temporary folder. It prints whether each goal is met and never asserts a goal; it exits
non-zero only when something did not work (a failed write, an unverifiable proof, a log that
does not verify).
"""

import argparse
import hashlib
import io
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PG = os.environ.get("PG_HOST", "127.0.0.1") + ":" + os.environ.get("PG_PORT", "5432")
DATABASE = "neocloud_bench_audit"
SUPERUSER_URL = os.environ.get("PG_SUPERUSER_URL", f"postgresql://postgres@{PG}/postgres")
APP_URL = f"postgresql://neocloud_app@{PG}/{DATABASE}"
OWNER_URL = f"postgresql://neocloud_owner@{PG}/{DATABASE}"
PLATFORM_URL = f"postgresql://neocloud_platform@{PG}/{DATABASE}"
PLATFORM = "platform"

ACTION = "workflow_version.register"  # catalogued; what registering a workflow version records
TENANTS = tuple(f"bench-bank-{n}" for n in range(4))
GOAL_APPEND, GOAL_VERIFY, GOAL_PROOF_MS = 0.70, 0.50, 10.0

EVENT_COLUMNS = ("id", "uuid", "occurred_at", "actor_type", "actor_id", "actor_name", "token_id", "tenant", "action",
                 "outcome", "target_type", "target_id", "data", "canonical", "event_hash")
INSERT_SQL = ("INSERT INTO audit_auditevent (uuid, occurred_at, actor_type, actor_id, actor_name, token_id, tenant, "
              "action, outcome, target_type, target_id, data, canonical, event_hash) "
              "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s::jsonb, %s, %s) RETURNING id")


class BenchFailure(Exception):
    """Something did not work; the message is one sentence."""


# Database and Django ----------------------------------------------------------------------------


def create_database() -> None:
    import psycopg

    with psycopg.connect(SUPERUSER_URL, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{DATABASE}" OWNER neocloud_owner')


def boot_django(keys: Path) -> None:
    create_database()
    os.environ.update({
        "DJANGO_SETTINGS_MODULE": "neocloud.settings",
        "NEOCLOUD_ENV": "development",
        "DATABASE_URL": APP_URL,
        "OWNER_DATABASE_URL": OWNER_URL,
        "PLATFORM_DATABASE_URL": PLATFORM_URL,
        "PLATFORM_KEK_FILE": str(keys / "platform-kek"),  # a throwaway keyring signs the checkpoints
        "PLATFORM_KEYRING_FILE": str(keys / "platform-keyring.json"),
        "LOG_LEVEL": "ERROR",
    })
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    call_command("platform_keys", "init", stdout=io.StringIO())


def fresh_database() -> None:
    """An empty, migrated database again (the audit tables refuse DELETE and TRUNCATE)."""
    from django.core.management import call_command
    from django.db import connections

    connections.close_all()
    create_database()
    call_command("migrate", verbosity=0)


def drop_database() -> None:
    import psycopg

    try:
        from django.db import connections

        connections.close_all()
    except Exception:  # Django never started
        pass
    with psycopg.connect(SUPERUSER_URL, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)')


def tree_size() -> int:
    from audit.models import SequencerState

    return SequencerState.objects.using(PLATFORM).values_list("tree_size", flat=True).get(pk=1)


def drain() -> int:
    """Sequence everything committed so far (untimed housekeeping between measurements)."""
    from audit.sequencer import sequence_all

    return sequence_all(using=PLATFORM)


# Events -----------------------------------------------------------------------------------------


def digest(*parts) -> str:
    return "sha256:" + hashlib.sha256("/".join(map(str, parts)).encode()).hexdigest()


def event_arguments(writer: int, n: int, tag: str) -> dict:
    """What registering workflow version ``n`` of a developer records (workflows.services)."""
    from audit.log import Actor, Target

    return {
        "action": ACTION,
        "actor": Actor(type="user", id=str(100 + writer), name=f"developer-{writer}"),
        "tenant": TENANTS[writer % len(TENANTS)],
        "target": Target("workflow_version", f"scorer-{tag}-{writer}@{n + 1}"),
        "data": {"digest": digest(tag, writer, n), "artifacts": sorted([digest(tag, writer, n, "model"),
                                                                        digest(tag, writer, n, "eval")]),
                 "uses_images": False},
    }


def precomputed_rows(writer: int, count: int, tag: str) -> list[tuple]:
    """``count`` events of ``writer`` built by the product's code (canonical JSON and hash), as
    INSERT_SQL's parameters: the reference contenders write these without building anything."""
    from audit.log import _build

    return [insert_row(_build(outcome="success", **event_arguments(writer, n, tag))) for n in range(count)]


def insert_row(event) -> tuple:
    return (event.uuid, event.occurred_at, event.actor_type, event.actor_id, event.actor_name, event.token_id,
            event.tenant, event.action, event.outcome, event.target_type, event.target_id, json.dumps(event.data),
            event.canonical, event.event_hash)


# 1. Appends -------------------------------------------------------------------------------------


def timed_writers(count: int, prepare, work, processes: bool) -> tuple[float, list]:
    """Run ``work(i, prepare(i))`` in ``count`` writers released together; the wall time from
    the release to the last writer's end, and the errors raised (as sentences).

    Writers are processes by default, as the product's writers are (gunicorn's sync workers,
    Celery's prefork pool); ``processes=False`` runs them as threads of this one interpreter,
    where they also share its GIL."""
    if not processes:
        return _timed_threads(count, prepare, work)
    import multiprocessing

    from django.db import connections

    connections.close_all()  # a forked child must open its own connections, never share these
    context = multiprocessing.get_context("fork")
    barrier, results = context.Barrier(count + 1), context.Queue()

    def body(index):
        prepared, error = None, ""
        try:
            prepared = prepare(index)
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
        barrier.wait()
        try:
            if prepared is not None:
                work(index, prepared)
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
        finally:
            ended = time.perf_counter()  # CLOCK_MONOTONIC: one clock for every process
            connections.close_all()
            results.put((ended, error))

    children = [context.Process(target=body, args=(i,)) for i in range(count)]
    for child in children:
        child.start()
    barrier.wait()
    started = time.perf_counter()
    reports = [results.get(timeout=600) for _ in children]
    for child in children:
        child.join()
    return max(ended for ended, _ in reports) - started, [error for _, error in reports if error]


def _timed_threads(count: int, prepare, work) -> tuple[float, list]:
    barrier = threading.Barrier(count + 1)
    ends, errors = [0.0] * count, []

    def body(index):
        prepared = None
        try:
            prepared = prepare(index)
        except Exception as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
        barrier.wait()
        try:
            if prepared is not None:
                work(index, prepared)
        except Exception as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
        finally:
            ends[index] = time.perf_counter()
            from django.db import connections

            connections.close_all()  # this thread's own connections

    threads = [threading.Thread(target=body, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    barrier.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    return max(ends) - started, errors


def bare_inserts(writers: int, per_writer: int, tag: str, processes: bool) -> float:
    """Bare INSERTs of precomputed rows, one transaction each; the wall time."""
    import psycopg

    def prepare(index):
        rows = precomputed_rows(index, per_writer, tag)
        connection = psycopg.connect(APP_URL)
        return connection, rows

    def work(index, prepared):
        connection, rows = prepared
        with connection:
            for row in rows:
                connection.execute(INSERT_SQL, row).fetchone()
                connection.commit()

    wall, errors = timed_writers(writers, prepare, work, processes)
    if errors:
        raise BenchFailure(f"a bare INSERT writer failed: {errors[0]}")
    return wall


def django_inserts(writers: int, per_writer: int, tag: str, processes: bool) -> float:
    """The bare INSERTs' precomputed rows, each through Django's cursor inside its own
    ``transaction.atomic()`` on the app role: what any write inside a Django transaction costs
    here before record() does anything of its own. The wall time."""
    from django.db import connections, transaction

    def prepare(index):
        connections["default"].ensure_connection()
        return precomputed_rows(index, per_writer, tag)

    def work(index, rows):
        connection = connections["default"]
        for row in rows:
            with transaction.atomic(), connection.cursor() as cursor:
                cursor.execute(INSERT_SQL, row)
                cursor.fetchone()

    wall, errors = timed_writers(writers, prepare, work, processes)
    if errors:
        raise BenchFailure(f"a Django INSERT writer failed: {errors[0]}")
    return wall


class Sequencer:
    """``sequence_pending`` in a loop in a process of its own, as the beat-driven sequencer runs
    in production (a Celery worker process), not a thread competing with the writers for one
    interpreter. It notes the queue's length (committed, not yet sequenced) after every call."""

    def __init__(self, pause: float):
        self.pause = pause
        self.process = None
        self.stopped_at = self.caught_up_at = None
        self.lag_at_stop = None
        self.calls = self.batches = 0
        self.lags: list[int] = []
        self.error = None

    def start(self):
        self.process = subprocess.Popen([sys.executable, __file__, "--sequencer-process", str(self.pause)],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        text=True, env=os.environ.copy())
        self.process.stdout.readline()  # "ready": Django is up and sequencing before the writers start

    def finish(self, pending: int):
        """The writers have stopped with ``pending`` events unsequenced: let the process drain
        the queue and report."""
        self.stopped_at, self.lag_at_stop = time.time(), pending
        out, err = self.process.communicate("stop\n", timeout=300)
        if self.process.returncode != 0:
            self.error = RuntimeError(err.strip().splitlines()[-1] if err.strip() else "exited non-zero")
            return
        report = json.loads(out.strip().splitlines()[-1])
        self.calls, self.batches, self.lags, self.caught_up_at = (report["calls"], report["batches"], report["lags"],
                                                                   report["caught_up_at"])


def sequencer_process(pause: float) -> int:
    """The child side of Sequencer: loop until told to stop on stdin and the queue is empty."""
    import django

    django.setup()
    from django.conf import settings

    from audit.models import AuditPending
    from audit.sequencer import sequence_pending

    sequence_pending(batch=settings.AUDIT_SEQUENCER_BATCH, using=PLATFORM)
    print("ready", flush=True)
    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.readline(), stop.set()), daemon=True).start()
    calls = batches = 0
    lags = []
    while True:
        finishing = stop.is_set()
        done = sequence_pending(batch=settings.AUDIT_SEQUENCER_BATCH, using=PLATFORM)
        calls, batches = calls + 1, batches + bool(done)
        lags.append(AuditPending.objects.using(PLATFORM).count())
        if finishing and lags[-1] == 0:
            break
        if done < settings.AUDIT_SEQUENCER_BATCH:
            time.sleep(pause)  # caught up with what had committed: wait for more
    print(json.dumps({"calls": calls, "batches": batches, "lags": lags, "caught_up_at": time.time()}))
    return 0


def recorded_appends(writers: int, per_writer: int, tag: str, pause: float | None,
                     processes: bool) -> tuple[float, Sequencer | None]:
    """record() from ``writers`` writers, with a sequencer process beside them unless ``pause``
    is None; the writers' wall time and the sequencer's account."""
    from django.db import connections, transaction

    from audit.log import record

    start_size = tree_size()
    sequencer = None if pause is None else Sequencer(pause)

    def prepare(index):
        connections["default"].ensure_connection()
        return [event_arguments(index, n, tag) for n in range(per_writer)]

    def work(index, arguments):
        for kwargs in arguments:
            with transaction.atomic():
                record(**kwargs)

    if sequencer:
        sequencer.start()
    wall, errors = timed_writers(writers, prepare, work, processes)
    if sequencer:
        sequencer.finish(writers * per_writer - (tree_size() - start_size))  # pending as the writers stop
    if errors:
        raise BenchFailure(f"a record() writer failed: {errors[0]}")
    if sequencer and sequencer.error:
        raise BenchFailure(f"the sequencer failed: {type(sequencer.error).__name__}: {sequencer.error}")
    return wall, sequencer


def measure_appends(writers: int, appends: int, rounds: int, pause: float, processes: bool) -> dict:
    """Best events/s of each contender over ``rounds`` rounds, the contenders in turns."""
    per_writer = max(1, appends // writers)
    total = per_writer * writers
    best = {"record": float("inf"), "alone": float("inf"), "django": float("inf"), "bare": float("inf")}
    sequencers = []
    for round_ in range(rounds):
        # Whatever a contender leaves pending is sequenced before the next one starts, so the
        # sequencer beside record() has only record()'s own events to keep up with.
        best["bare"] = min(best["bare"], bare_inserts(writers, per_writer, f"bare{round_}", processes))
        drain()
        best["django"] = min(best["django"], django_inserts(writers, per_writer, f"django{round_}", processes))
        drain()
        best["alone"] = min(best["alone"], recorded_appends(writers, per_writer, f"alone{round_}", None, processes)[0])
        drain()
        wall, sequencer = recorded_appends(writers, per_writer, f"record{round_}", pause, processes)
        best["record"] = min(best["record"], wall)
        sequencers.append(sequencer)
    return {"events": total, "sequencers": sequencers, **{name: total / wall for name, wall in best.items()}}


# Synthetic log (COPY) ---------------------------------------------------------------------------


def _copy_text(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


def populate(upto: int, *, checkpoint_every: int | None = None, chunk: int = 50000) -> float:
    """Append synthetic, correctly hashed events with their leaves and tree nodes until the
    tree has ``upto`` leaves, by COPY as the owner role; with ``checkpoint_every``, the product
    signs a checkpoint (checkpoint_write) after each that many. Returns the seconds taken."""
    import psycopg

    from audit import merkle, tree
    from audit.checkpointing import checkpoint_write
    from audit.hashing import canonical_json, timestamp
    from audit.models import AuditLeaf

    started = time.perf_counter()
    step = min(chunk, checkpoint_every or chunk)
    rng = random.Random(upto)
    with psycopg.connect(OWNER_URL) as connection:
        while True:
            size = connection.execute("SELECT tree_size FROM audit_sequencerstate WHERE id = 1").fetchone()[0]
            if size >= upto:
                break
            count = min(step, upto - size)
            heads = dict(connection.execute(
                "SELECT tenant, max(tenant_position) FROM audit_auditleaf GROUP BY tenant").fetchall())
            pending = {}  # level -> hash of the left node waiting for its right sibling
            wanted = tree.frontier(size)
            if wanted:
                rows = connection.execute(
                    "SELECT level, index, hash FROM audit_audittreenode WHERE (level, index) IN ("
                    + ", ".join(f"({level}, {index})" for level, index in wanted) + ")").fetchall()
                pending = {level: bytes.fromhex(value) for level, index, value in rows}
                if len(pending) != len(wanted):
                    raise BenchFailure(f"the stored tree lacks part of its frontier at size {size}")
            first_id = connection.execute(
                "SELECT nextval(pg_get_serial_sequence('audit_auditevent', 'id'))").fetchone()[0]
            moment = datetime.now(UTC) - timedelta(seconds=60)
            events, leaves, nodes = io.StringIO(), io.StringIO(), io.StringIO()
            sequenced_at = moment.isoformat()
            for offset in range(count):
                position, event_id = size + offset, first_id + offset
                writer = rng.randrange(64)
                tenant = TENANTS[writer % len(TENANTS)]
                occurred = moment + timedelta(microseconds=offset)
                data = {"artifacts": sorted([digest("copy", position, "model"), digest("copy", position, "eval")]),
                        "digest": digest("copy", position), "uses_images": False}
                body = {"action": ACTION,
                        "actor": {"id": str(100 + writer), "name": f"developer-{writer}", "token": "", "type": "user"},
                        "data": data, "outcome": "success",
                        "target": {"id": f"scorer-copy-{writer}@{position}", "type": "workflow_version"},
                        "tenant": tenant, "time": timestamp(occurred), "uuid": str(uuid.UUID(int=rng.getrandbits(128),
                                                                                            version=4))}
                # JCS (RFC 8785) equals sorted, compact json.dumps for these ASCII strings and
                # booleans; checked against the product's canonical_json on the first of each chunk.
                canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
                if offset == 0 and canonical.encode() != canonical_json(body):
                    raise BenchFailure("the synthetic events' JSON is not the canonical form")
                event_hash = merkle.leaf_hash(canonical.encode()).hex()
                tenant_position = heads.get(tenant, -1) + 1
                heads[tenant] = tenant_position
                leaf = (f'{{"event_hash":"{event_hash}","tenant":"{tenant}",'
                        f'"tenant_position":{tenant_position}}}')
                if offset == 0 and leaf.encode() != AuditLeaf.leaf_body(
                        event_hash=event_hash, tenant=tenant, tenant_position=tenant_position):
                    raise BenchFailure("the synthetic leaf entries are not the product's")
                leaf_hash = merkle.leaf_hash(leaf.encode())
                events.write("\t".join((
                    str(event_id), body["uuid"], occurred.isoformat(), "user", str(100 + writer),
                    f"developer-{writer}", "", tenant, ACTION, "success", "workflow_version",
                    f"scorer-copy-{writer}@{position}", _copy_text(json.dumps(data)), _copy_text(canonical),
                    event_hash)) + "\n")
                leaves.write(f"{position}\t{event_id}\t{tenant}\t{tenant_position}\t{_copy_text(leaf)}\t"
                             f"{leaf_hash.hex()}\t{sequenced_at}\n")
                level = 0
                for level, index, value in merkle.completed_nodes(position, leaf_hash, lambda lv, ix: pending[lv]):
                    nodes.write(f"{level}\t{index}\t{value.hex()}\n")
                pending[level] = value
            with connection.cursor() as cursor:
                for table, columns, buffer in (
                        ("audit_auditevent", EVENT_COLUMNS, events),
                        ("audit_auditleaf", ("position", "event_id", "tenant", "tenant_position", "leaf", "leaf_hash",
                                             "sequenced_at"), leaves),
                        ("audit_audittreenode", ("level", "index", "hash"), nodes)):
                    with cursor.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
                        copy.write(buffer.getvalue())
                # The fill writes the leaves itself: empty the queue the insert trigger filled.
                cursor.execute("DELETE FROM audit_auditpending WHERE event_id >= %s AND event_id < %s",
                               (first_id, first_id + count))
                cursor.execute("SELECT setval(pg_get_serial_sequence('audit_auditevent', 'id'), %s)",
                               (first_id + count - 1,))
                cursor.execute("UPDATE audit_sequencerstate SET tree_size = %s, updated_at = now() WHERE id = 1",
                               (size + count,))
            connection.commit()
            if checkpoint_every and checkpoint_write(using=PLATFORM) is None:
                raise BenchFailure(f"no checkpoint was written at size {size + count}")
        connection.commit()
        connection.autocommit = True  # VACUUM runs outside a transaction
        # As autovacuum would: statistics for the filled tables, and the queue the fill emptied.
        connection.execute("VACUUM ANALYZE audit_auditevent, audit_auditleaf, audit_audittreenode, audit_auditpending")
    return time.perf_counter() - started


# 2. Verify --------------------------------------------------------------------------------------


def check_log() -> int:
    """verify_log over the log as it stands (untimed); the number of events it checked."""
    from django.conf import settings

    from audit.verify import verify_log

    report = verify_log(using=PLATFORM, max_unsequenced=timedelta(seconds=settings.AUDIT_MAX_UNSEQUENCED_SECONDS))
    if not report.ok:
        raise BenchFailure(f"the log does not verify: {report.problems[0].sentence()}")
    if report.unsequenced:
        raise BenchFailure(f"{report.unsequenced} events were left unsequenced")
    return report.leaves


def measure_verify(events: int, repeat: int) -> dict:
    """verify_log over a log of ``events`` events, and hashlib.sha256 over the bytes it must hash."""
    import psycopg
    from django.conf import settings

    from audit.models import AuditCheckpoint
    from audit.verify import verify_log

    filled = populate(events, checkpoint_every=settings.AUDIT_CHECKPOINT_EVERY)
    bound = timedelta(seconds=settings.AUDIT_MAX_UNSEQUENCED_SECONDS)
    with psycopg.connect(PLATFORM_URL) as connection:
        rows = connection.execute(
            "SELECT e.canonical, l.leaf FROM audit_auditleaf l JOIN audit_auditevent e ON e.id = l.event_id "
            "ORDER BY l.position").fetchall()
    # What verify must hash: every event's canonical JSON and every leaf entry, as RFC 6962
    # leaves (0x00 prefix). Built beforehand: the baseline is hashing alone.
    blobs = [b"\x00" + text.encode() for row in rows for text in row]
    size = sum(len(blob) - 1 for blob in blobs)
    best_verify = best_hashlib = best_reads = float("inf")
    leaves = 0
    for _ in range(repeat):
        started = time.perf_counter()
        report = verify_log(using=PLATFORM, max_unsequenced=bound)
        best_verify = min(best_verify, time.perf_counter() - started)
        started = time.perf_counter()
        read = verify_reads()
        best_reads = min(best_reads, time.perf_counter() - started)
        if read != len(rows):
            raise BenchFailure(f"the reads alone saw {read} leaves where the log has {len(rows)}")
        if not report.ok:
            raise BenchFailure(f"the log does not verify: {report.problems[0].sentence()}")
        if report.unsequenced:
            raise BenchFailure(f"{report.unsequenced} events were left unsequenced before verify")
        leaves = report.leaves
        sha256 = hashlib.sha256
        started = time.perf_counter()
        for blob in blobs:
            sha256(blob).digest()
        best_hashlib = min(best_hashlib, time.perf_counter() - started)
    return {"events": leaves, "checkpoints": AuditCheckpoint.objects.using(PLATFORM).count(), "bytes": size,
            "verify_s": best_verify, "hashlib_s": best_hashlib, "reads_s": best_reads, "fill_s": filled,
            "hashed_rows": len(rows)}


def verify_reads() -> int:
    """Only the reading of verify_log: its two row streams (leaves with their events' columns,
    and the tree's stored leaves) consumed in step, nothing checked. The leaves read."""
    from audit.models import AuditLeaf, AuditTreeNode
    from audit.verify import _LEAF_ROW

    stored = (AuditTreeNode.objects.using(PLATFORM).filter(level=0).order_by("index")
              .values_list("index", "hash").iterator(chunk_size=2000))
    leaves = AuditLeaf.objects.using(PLATFORM).order_by("position").values_list(*_LEAF_ROW)
    count = 0
    for _row in leaves.iterator(chunk_size=2000):
        next(stored, None)
        count += 1
    return count


# 3. Proofs --------------------------------------------------------------------------------------


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, round(share * len(ordered)) - 1))]


def independent_roots(sizes: set[int], total: int) -> dict[int, bytes]:
    """Roots at ``sizes`` computed from the stored leaves alone (not the stored tree)."""
    import psycopg

    from audit import merkle

    frontier, roots = merkle.Frontier(), {}
    with psycopg.connect(PLATFORM_URL) as connection, connection.cursor(name="leaves") as cursor:
        cursor.itersize = 20000
        cursor.execute("SELECT leaf_hash FROM audit_auditleaf ORDER BY position")
        for (value,) in cursor:
            frontier.append(bytes.fromhex(value))
            if frontier.size in sizes:
                roots[frontier.size] = frontier.root()
    if frontier.size != total:
        raise BenchFailure(f"the log holds {frontier.size} leaves where {total} were expected")
    return roots


def measure_proofs(events: int, proofs: int) -> dict:
    """Inclusion and consistency proof latency at ``events`` leaves, every proof verified."""
    from audit import merkle, tree
    from audit.models import AuditLeaf

    filled = populate(events)
    size = tree_size()
    rng = random.Random(size)
    positions = [rng.randrange(size) for _ in range(proofs)]
    olds = [rng.randrange(1, size) for _ in range(proofs)]
    for position, old in list(zip(positions, olds))[:10]:  # warm the connection and the index pages
        tree.inclusion_proof(position, size, using=PLATFORM)
        tree.consistency_proof(old, size, using=PLATFORM)

    def timed(call, arguments):
        results, latencies = [], []
        for argument in arguments:
            started = time.perf_counter()
            results.append(call(argument))
            latencies.append((time.perf_counter() - started) * 1000)
        return results, latencies

    inclusion, inclusion_ms = timed(lambda p: tree.inclusion_proof(p, size, using=PLATFORM), positions)
    consistency, consistency_ms = timed(lambda m: tree.consistency_proof(m, size, using=PLATFORM), olds)
    _, root_ms = timed(lambda m: tree.root(m, using=PLATFORM), olds)

    roots = independent_roots({*olds, size}, size)
    if tree.root(size, using=PLATFORM) != roots[size]:
        raise BenchFailure(f"the stored tree's root at {size} differs from the root of its leaves")
    leaf_hashes = dict(AuditLeaf.objects.using(PLATFORM).filter(position__in=positions)
                       .values_list("position", "leaf_hash"))
    try:
        for position, proof in zip(positions, inclusion):
            merkle.verify_inclusion(position, size, bytes.fromhex(leaf_hashes[position]), proof, roots[size])
        for old, proof in zip(olds, consistency):
            merkle.verify_consistency(old, size, roots[old], roots[size], proof)
    except merkle.ProofError as exc:
        raise BenchFailure(f"a proof does not verify: {exc}") from None
    return {"size": size, "fill_s": filled, "inclusion": inclusion_ms, "consistency": consistency_ms,
            "root": root_ms, "proof_hashes": max(map(len, inclusion + consistency))}


def measure_console(samples: int) -> dict:
    """The compliance console's page read (``compliance.selectors.event_page``, one keyset query)
    on the million-event log: the first page of a tenant, a random page deep in it, and pages
    filtered by actor and by target type and time, each starting at a random event."""
    from django.db import connections
    from django.test.utils import CaptureQueriesContext

    from audit.models import AuditEvent
    from compliance.selectors import event_page

    events = AuditEvent.objects.using(PLATFORM)
    top = events.order_by("-id").values_list("id", flat=True).first()
    rng = random.Random(top)
    since = events.order_by("id").values_list("occurred_at", flat=True).first()
    shapes = {
        "first page of a tenant": lambda: (events.filter(tenant=rng.choice(TENANTS)), None),
        "a random page of a tenant": lambda: (events.filter(tenant=rng.choice(TENANTS)), rng.randrange(top)),
        "by tenant and actor, from a random event": lambda: (
            events.filter(tenant=rng.choice(TENANTS), actor_name=f"developer-{rng.randrange(64)}"), rng.randrange(top)),
        "by target type and time, from a random event": lambda: (
            events.filter(target_type="workflow_version", occurred_at__gte=since), rng.randrange(top)),
    }
    results = {}
    for name, shape in shapes.items():
        latencies, rows = [], 0
        for n in range(samples + 5):
            queryset, before = shape()
            with CaptureQueriesContext(connections[PLATFORM]) as captured:
                started = time.perf_counter()
                page = event_page(queryset, before=before)
                elapsed = (time.perf_counter() - started) * 1000
            if len(captured) != 1:
                raise BenchFailure(f"a console page took {len(captured)} queries, not 1")
            if n >= 5:  # the first few warm the connection and the index pages
                latencies.append(elapsed)
                rows += len(page.events)
        results[name] = {"ms": latencies, "rows": rows / samples}
    return results


def sequencer_call() -> tuple[float, int]:
    """One event recorded on the log as it stands, then one sequence_pending call: its
    milliseconds and the log's size before it."""
    from django.db import transaction

    from audit.log import record
    from audit.sequencer import sequence_pending

    size = tree_size()
    with transaction.atomic():
        record(**event_arguments(0, size, "one"))
    started = time.perf_counter()
    done = sequence_pending(using=PLATFORM)
    elapsed = (time.perf_counter() - started) * 1000
    if done != 1:
        raise BenchFailure(f"sequence_pending sequenced {done} events where 1 was pending")
    return elapsed, size


# Report -----------------------------------------------------------------------------------------


def verdict(met: bool) -> str:
    return "met" if met else "not met"


def main() -> int:
    if sys.argv[1:2] == ["--sequencer-process"]:
        return sequencer_process(float(sys.argv[2]))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--writers", type=int, default=8, help="writer processes in each append contender")
    parser.add_argument("--threads", action="store_true",
                        help="run the writers as threads of one interpreter (sharing its GIL) instead of processes")
    parser.add_argument("--appends", type=int, default=4000, help="events each append contender writes per round")
    parser.add_argument("--rounds", type=int, default=2, help="append rounds, contenders in turns; the best counts")
    parser.add_argument("--sequencer-pause", type=float, default=0.01,
                        help="seconds the sequencer process waits after a call that found less than a full batch")
    parser.add_argument("--verify-events", type=int, default=20000, help="events in the log verify checks")
    parser.add_argument("--proof-events", "--events", dest="proof_events", type=int, default=1_000_000,
                        help="events in the log proofs are taken on")
    parser.add_argument("--proofs", type=int, default=200, help="proofs of each kind timed")
    parser.add_argument("--repeat", type=int, default=3, help="verify runs (with hashlib in turns); the best counts")
    options = parser.parse_args()
    if options.proofs < 1:
        parser.error("--proofs must be at least 1")
    if options.proof_events < options.verify_events:
        parser.error("--proof-events must be at least --verify-events (the proofs' log grows from verify's)")
    keys = tempfile.TemporaryDirectory(prefix="neocloud-bench-audit-")
    try:
        boot_django(Path(keys.name))
    except Exception as exc:
        keys.cleanup()
        print(f"PostgreSQL is not ready for the benchmark ({type(exc).__name__}: {str(exc).splitlines()[0]}); "
              "run `make pg-roles` first.", file=sys.stderr)
        return 2
    try:
        from django.db import connections

        with connections[PLATFORM].cursor() as cursor:
            cursor.execute("SELECT current_setting('server_version'), current_setting('synchronous_commit')")
            version, synchronous = cursor.fetchone()
        print(f"{os.cpu_count()} CPU cores; Python {sys.version.split()[0]}; PostgreSQL {version.split()[0]} at {PG} "
              f"(synchronous_commit {synchronous}); events: {ACTION} in {len(TENANTS)} tenants", flush=True)

        appends = measure_appends(options.writers, options.appends, options.rounds, options.sequencer_pause,
                                  not options.threads)
        ratio = appends["record"] / appends["bare"]
        print(f"\n1. Appends: {options.writers} writer {'threads' if options.threads else 'processes'}, {appends['events']} events per contender and round, "
              f"one transaction per event; best of {options.rounds} round(s), contenders in turns")
        print(f"{'contender':<58}{'events/s':>10}{'vs bare':>10}")
        print(f"{'audit.log.record() (+ sequence_pending loop beside it)':<58}{appends['record']:>10.0f}{ratio:>10.1%}")
        print(f"{'audit.log.record() alone (no sequencer running)':<58}{appends['alone']:>10.0f}"
              f"{appends['alone'] / appends['bare']:>10.1%}")
        print(f"{'reference: the bare rows through Django in atomic()':<58}{appends['django']:>10.0f}"
              f"{appends['django'] / appends['bare']:>10.1%}")
        print(f"{'bare INSERT (psycopg, precomputed rows)':<58}{appends['bare']:>10.0f}{1:>10.1%}")
        appended = check_log()
        for n, sequencer in enumerate(appends["sequencers"], 1):
            print(f"sequencer, round {n}: {sequencer.batches} batches in {sequencer.calls} calls; lag after a call "
                  f"p50 {statistics.median(sequencer.lags):.0f}, max {max(sequencer.lags)} events; "
                  f"{sequencer.lag_at_stop} pending as the writers stopped, all sequenced "
                  f"{(sequencer.caught_up_at - sequencer.stopped_at) * 1000:.0f} ms later")
        print(f"the {appended} events appended verify (audit.verify.verify_log: gapless, every hash and leaf)")

        fresh_database()  # parts 2 and 3 on a log of exactly the sizes asked for

        verify = measure_verify(options.verify_events, options.repeat)
        mb = verify["bytes"] / 1e6
        verify_ratio = verify["hashlib_s"] / verify["verify_s"]
        print(f"\n2. Verify: audit.verify.verify_log (manage.py audit verify) over {verify['events']} events and "
              f"{verify['checkpoints']} signed checkpoint(s); {mb:.1f} MB of canonical events + leaf entries; "
              f"best of {options.repeat}")
        print(f"{'contender':<58}{'events/s':>10}{'MB/s':>10}{'vs hashlib':>12}")
        print(f"{'verify_log (reads, rebuilds, hashes, checks)':<58}{verify['events'] / verify['verify_s']:>10.0f}"
              f"{mb / verify['verify_s']:>10.1f}{verify_ratio:>12.1%}")
        print(f"{'reference: the reads of verify_log alone (nothing checked)':<58}"
              f"{verify['events'] / verify['reads_s']:>10.0f}{mb / verify['reads_s']:>10.1f}"
              f"{verify['hashlib_s'] / verify['reads_s']:>12.1%}")
        print(f"{'hashlib.sha256 over the same bytes (in memory)':<58}{verify['events'] / verify['hashlib_s']:>10.0f}"
              f"{mb / verify['hashlib_s']:>10.1f}{1:>12.1%}")

        sequencer_calls = [sequencer_call()]
        proofs = measure_proofs(options.proof_events, options.proofs)
        inclusion_p99, consistency_p99 = percentile(proofs["inclusion"], 0.99), percentile(proofs["consistency"], 0.99)
        print(f"\n3. Proofs at {proofs['size']} events, from the stored subtrees (audit.tree), {options.proofs} random "
              f"positions/sizes each (up to {proofs['proof_hashes']} hashes a proof); all verified (audit.merkle) "
              f"against roots rebuilt from every leaf")
        print(f"{'read':<58}{'p50 ms':>10}{'p99 ms':>10}")
        for name, key in (("inclusion_proof(random position, size)", "inclusion"),
                          ("consistency_proof(random older size, size)", "consistency"),
                          ("root(random size)", "root")):
            print(f"{name:<58}{statistics.median(proofs[key]):>10.2f}{percentile(proofs[key], 0.99):>10.2f}")
        sequencer_calls.append(sequencer_call())
        print("one sequence_pending call for one new event: "
              + ", ".join(f"{ms:.0f} ms on a log of {size} events" for ms, size in sequencer_calls))
        print(f"(the logs were filled by COPY, not a product path: {verify['fill_s']:.0f} s to {verify['events']} "
              f"events with checkpoints, {proofs['fill_s']:.0f} s more to {proofs['size']})")
        console = measure_console(options.proofs)
        print(f"\n4. Compliance console pages at {proofs['size']} events (compliance.selectors.event_page: one keyset "
              f"query of 50 rows), {options.proofs} pages each")
        print(f"{'page':<58}{'p50 ms':>10}{'p99 ms':>10}")
        for name, figures in console.items():
            print(f"{name:<58}{statistics.median(figures['ms']):>10.2f}{percentile(figures['ms'], 0.99):>10.2f}")

        print("\nGoals:")
        kept_up = all(sequencer.caught_up_at for sequencer in appends["sequencers"])
        drained_ms = max((s.caught_up_at - s.stopped_at) * 1000 for s in appends["sequencers"])
        print(f"  append  record() >= {GOAL_APPEND:.0%} of bare INSERT: {verdict(ratio >= GOAL_APPEND)} ({ratio:.1%}: "
              f"{appends['record']:.0f} vs {appends['bare']:.0f} events/s); the sequencer kept up: "
              f"{'yes' if kept_up else 'no'} (all sequenced {drained_ms:.0f} ms after the writers stopped, at most); "
              f"the bare rows through Django in atomic() alone reach {appends['django'] / appends['bare']:.1%}")
        print(f"  verify  >= {GOAL_VERIFY:.0%} of hashlib.sha256: {verdict(verify_ratio >= GOAL_VERIFY)} "
              f"({verify_ratio:.1%}: {mb / verify['verify_s']:.1f} vs {mb / verify['hashlib_s']:.1f} MB/s); "
              f"verify's reads alone reach {verify['hashlib_s'] / verify['reads_s']:.1%}")
        proofs_met = max(inclusion_p99, consistency_p99) < GOAL_PROOF_MS
        print(f"  proofs  p99 < {GOAL_PROOF_MS:.0f} ms at {proofs['size']} events: {verdict(proofs_met)} "
              f"(inclusion {inclusion_p99:.2f} ms, consistency {consistency_p99:.2f} ms)")
        return 0
    except BenchFailure as exc:
        print(str(exc), file=sys.stderr)
        return 1
    finally:
        drop_database()
        keys.cleanup()


if __name__ == "__main__":
    sys.exit(main())
