"""The test database: created once per session, committed to for real, truncated after each test.

The suite runs against the database named by DATABASE_URL, connected as the app role
(no BYPASSRLS on PostgreSQL), with the owner role on the ``owner`` alias for fixtures and
teardown. Tests commit for real (requests are atomic, a worker is another process), so
every test that touches the database uses ``live_db``, which truncates through the owner
alias afterwards, lifting the audit triggers only inside that transaction.
"""

import io
import os
import shutil
import time
from importlib import import_module
from pathlib import Path
from types import SimpleNamespace

import pytest
from django.apps import apps as django_apps
from django.conf import settings
from django.core.management import call_command
from django.db import OperationalError, connections, transaction

STACK = os.environ.get("NEOCLOUD_TEST_STACK", "")
# The sequences behind the emptied tables' identity and serial columns start again at 1.
RESTART_SEQUENCES = """
    SELECT setval(sequence.oid, 1, false) FROM pg_class sequence
    JOIN pg_depend link ON link.objid = sequence.oid AND link.deptype IN ('a', 'i')
    JOIN pg_class owner_table ON owner_table.oid = link.refobjid
    WHERE sequence.relkind = 'S' AND owner_table.relname = ANY(%s)
"""
KEEP_TABLES = {"django_migrations", "django_content_type", "auth_permission", "audit_sequencerstate"}


def pytest_configure(config):
    name = settings.DATABASES["default"]["NAME"]
    if STACK not in ("postgres", "embedded") or "test" not in str(name):
        raise pytest.UsageError(
            "Run the suite with `make test` (or set NEOCLOUD_TEST_STACK and a DATABASE_URL whose name contains 'test'); "
            f"refusing to run against {name}."
        )


def _recreate_postgres_database():
    import psycopg

    admin_url = os.environ["PG_ADMIN_URL"]
    name = settings.DATABASES["owner"]["NAME"]
    try:
        admin = psycopg.connect(admin_url, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        pytest.exit(f"PostgreSQL is unreachable at {admin_url}: {str(exc).strip().splitlines()[0]}", returncode=3)
    with admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{name}"')


@pytest.fixture(scope="session")
def django_db_setup(django_db_blocker):
    with django_db_blocker.unblock():
        if connections["owner"].vendor == "postgresql":
            _recreate_postgres_database()
        else:
            db_file = Path(settings.DATABASES["owner"]["NAME"])
            db_file.parent.mkdir(parents=True, exist_ok=True)
            for suffix in ("", "-wal", "-shm"):
                Path(f"{db_file}{suffix}").unlink(missing_ok=True)
        call_command("migrate", verbosity=0)
        call_command("platform_keys", "init", stdout=io.StringIO())  # signs promotion attestations
        for alias in connections:
            connections[alias].close()


def truncate_all():
    """Empty every table but the schema's bookkeeping, as the owner, audit triggers lifted."""
    from audit.appendonly import triggers_suspended
    from audit.models import SequencerState

    owner = connections["owner"]
    tables = [t for t in owner.introspection.table_names() if t not in KEEP_TABLES]
    for attempt in range(5):
        try:
            return _truncate(owner, tables, SequencerState, triggers_suspended)
        except OperationalError as exc:  # the platform worker's admission cycle held a table: try again
            if "deadlock" not in str(exc) or attempt == 4:
                raise
            time.sleep(0.2)


def _truncate(owner, tables, SequencerState, triggers_suspended):
    with transaction.atomic(using="owner"):
        # Take the audit sequencer's lock first, as the sequencer itself does, so a worker
        # sequencing in the background waits for this teardown instead of deadlocking with it.
        SequencerState.objects.using("owner").select_for_update().filter(pk=1).first()
        with triggers_suspended(owner), owner.cursor() as cursor:
            if owner.vendor == "postgresql":
                # DELETE, not TRUNCATE: a test leaves a few rows, and TRUNCATE's fixed cost per
                # table (a new file for each) was 25 times that. Django's foreign keys are
                # deferrable, so the order does not matter; the owner bypasses row-level security.
                cursor.execute("SET CONSTRAINTS ALL DEFERRED")
                for table in tables:
                    cursor.execute(f'DELETE FROM "{table}"')
                cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")  # checked now: the triggers come back next
                cursor.execute(RESTART_SEQUENCES, [tables])
            else:
                cursor.execute("PRAGMA defer_foreign_keys = ON")
                for table in tables:
                    cursor.execute(f'DELETE FROM "{table}"')
        # update_or_create: a test may have removed the row, as an intruder would
        SequencerState.objects.using("owner").update_or_create(pk=1, defaults={"tree_size": 0, "updated_at": None})
        # A platform starts with its default catalogue of regions and its installed baseline
        # accepted, as its migrations leave it.
        for migration, seed in (("tenants.migrations.0007_region_catalogue", "seed_catalogue"),
                                ("tenants.migrations.0013_accept_installed_regions", "accept_installed_regions"),
                                ("policies.migrations.0007_baseline_revisions", "accept_installed_baseline")):
            getattr(import_module(migration), seed)(django_apps, SimpleNamespace(connection=owner))


def _committed_database(django_db_blocker):
    """Database access with real commits; everything is truncated afterwards."""
    from django.core.cache import cache

    with django_db_blocker.unblock():
        cache.clear()
        try:
            yield
        finally:
            for alias in ("default", "platform", "audit_side"):
                connections[alias].close()
            truncate_all()
            shutil.rmtree(Path(settings.DATA_DIR) / "artifacts", ignore_errors=True)


@pytest.fixture
def live_db(django_db_setup, django_db_blocker):
    """Database access with real commits; everything is truncated after the test."""
    yield from _committed_database(django_db_blocker)


@pytest.fixture(scope="module")
def module_live_db(django_db_setup, django_db_blocker):
    """As live_db, for a module that builds one read-only world for all its tests: truncated
    after the module's last test. No test in such a module may ask for live_db."""
    yield from _committed_database(django_db_blocker)


@pytest.fixture
def transactional_db(live_db):
    """live_server asks for pytest-django's transactional_db, whose flush as the app role would
    fail (append-only audit tables, row-level security). live_db commits for real and truncates
    as the owner afterwards, which is what a live server needs."""
    yield
