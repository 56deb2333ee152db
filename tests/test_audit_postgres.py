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
