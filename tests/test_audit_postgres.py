"""PostgreSQL-only guarantees of the audit tables: TRUNCATE, replica mode, grants."""

import os

import pytest
from django.conf import settings
from django.db import DatabaseError, connections, transaction

from audit.sequencer import sequence_pending

from .test_audit import owner_events, record_events

pytestmark = pytest.mark.postgres


@pytest.fixture(autouse=True)
def _on_postgresql(django_db_setup):
    assert connections["owner"].vendor == "postgresql", "run this module on PostgreSQL (make test-postgres)"


@pytest.mark.parametrize("table", ["audit_auditevent", "audit_auditleaf"])
def test_truncate_is_refused_on_postgresql(live_db, table):
    record_events(1)
    sequence_pending()
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic(using="owner"):
        with connections["owner"].cursor() as cursor:
            cursor.execute(f"TRUNCATE {table} CASCADE")
    assert owner_events().count() == 1


def test_replica_mode_does_not_skip_the_triggers_on_postgresql(live_db):
    # Only a superuser may set session_replication_role; even one is stopped.
    import psycopg

    record_events(1)
    url = os.environ["PG_SUPERUSER_URL"].rsplit("/", 1)[0] + "/" + settings.DATABASES["owner"]["NAME"]
    with psycopg.connect(url) as superuser:
        superuser.execute("SET session_replication_role = replica")
        with pytest.raises(psycopg.Error, match="append-only"):
            superuser.execute("DELETE FROM audit_auditevent")
    assert owner_events().count() == 1


def test_app_role_has_no_update_or_delete_grant_on_postgresql(live_db):
    record_events(1)
    for statement in ("UPDATE audit_auditevent SET action = 'x'", "DELETE FROM audit_auditevent",
                      "TRUNCATE audit_auditevent"):
        with pytest.raises(DatabaseError, match="permission denied"), transaction.atomic():
            with connections["default"].cursor() as cursor:
                cursor.execute(statement)


AUDIT_TABLES = ("audit_auditevent", "audit_auditleaf", "audit_audittreenode", "audit_auditcheckpoint",
                "audit_audittenanthead", "audit_auditcosignature", "audit_sequencerstate")


@pytest.mark.parametrize("alias", ["default", "platform"])
def test_the_roles_the_platform_runs_as_cannot_lift_the_triggers_or_drop_the_tables(live_db, alias):
    """The grant step (docs/operators.md): the owner owns the audit tables, so neither the app
    role nor the platform role may change, disable, drop or empty them."""
    record_events(1)
    sequence_pending()
    connection = connections[alias]
    with connection.cursor() as cursor:
        cursor.execute("SELECT tablename, tableowner FROM pg_tables WHERE tablename LIKE 'audit\\_%%'")
        owners = dict(cursor.fetchall())
    assert {table: owners[table] for table in AUDIT_TABLES} == {table: "neocloud_owner" for table in AUDIT_TABLES}
    for table in AUDIT_TABLES:
        trigger = f"{table}_no_change" if table != "audit_sequencerstate" else None
        key = "position" if table == "audit_auditleaf" else "id"
        statements = [f"UPDATE {table} SET {key} = {key}" if table != "audit_sequencerstate" else None,
                      f"DELETE FROM {table}" if table != "audit_sequencerstate" else None,
                      f"TRUNCATE {table} CASCADE", f"ALTER TABLE {table} DISABLE TRIGGER ALL",
                      f"DROP TRIGGER {trigger} ON {table}" if trigger else None, f"DROP TABLE {table} CASCADE"]
        for statement in filter(None, statements):
            with pytest.raises(DatabaseError, match="permission denied|must be owner"), \
                    transaction.atomic(using=alias):
                with connection.cursor() as cursor:
                    cursor.execute(statement)
    assert owner_events().count() == 1


def test_the_app_role_cannot_forge_or_drop_the_sequencers_queue(live_db):
    """The queue is filled by a trigger that runs as the owner; the app role records events
    (and so queues them) but cannot add, change or remove queue entries itself."""
    record_events(1)
    for statement in ("INSERT INTO audit_auditpending (event_id) SELECT max(id) FROM audit_auditevent",
                      "DELETE FROM audit_auditpending", "UPDATE audit_auditpending SET event_id = event_id"):
        with pytest.raises(DatabaseError, match="permission denied"), transaction.atomic():
            with connections["default"].cursor() as cursor:
                cursor.execute(statement)
    assert sequence_pending() == 1


def test_a_temporary_table_cannot_capture_the_queue(live_db):
    """The trigger's function runs as the owner with pg_temp last on its search path and the
    queue schema-qualified, so a session's own temporary table of that name changes nothing."""
    from audit.models import AuditPending

    with transaction.atomic(), connections["default"].cursor() as cursor:
        cursor.execute("CREATE TEMP TABLE audit_auditpending (event_id bigint) ON COMMIT DROP")
        record_events(1)
    assert AuditPending.objects.using("owner").count() == 1
    assert sequence_pending() == 1
