"""Append-only tables, enforced by the database rather than by the application.

PostgreSQL: row triggers reject UPDATE and DELETE, a statement trigger rejects TRUNCATE
(TRUNCATE fires no DELETE trigger), and all are ENABLE ALWAYS so that
``session_replication_role = replica`` does not skip them. SQLite: BEFORE UPDATE/DELETE
triggers that abort. The app role also lacks UPDATE, DELETE and TRUNCATE grants on them.
"""

from contextlib import contextmanager

from django.db import DatabaseError, migrations

APPEND_ONLY_TABLES = ("audit_auditevent", "audit_auditleaf", "audit_audittreenode", "audit_auditcheckpoint",
                      "audit_audittenanthead", "audit_auditcosignature")

PG_FUNCTION = """
CREATE OR REPLACE FUNCTION audit_reject_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION USING
        MESSAGE = 'table ' || TG_TABLE_NAME || ' is append-only: ' || TG_OP || ' refused',
        ERRCODE = 'insufficient_privilege';
END;
$$;
"""


def _pg_create(table):
    return [
        f"CREATE TRIGGER {table}_no_change BEFORE UPDATE OR DELETE ON {table} "
        f"FOR EACH ROW EXECUTE FUNCTION audit_reject_change()",
        f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table} "
        f"FOR EACH STATEMENT EXECUTE FUNCTION audit_reject_change()",
        f"ALTER TABLE {table} ENABLE ALWAYS TRIGGER {table}_no_change",
        f"ALTER TABLE {table} ENABLE ALWAYS TRIGGER {table}_no_truncate",
    ]


def _sqlite_create(table):
    return [
        f"CREATE TRIGGER {table}_no_update BEFORE UPDATE ON {table} "
        f"BEGIN SELECT RAISE(ABORT, 'table {table} is append-only: UPDATE refused'); END",
        f"CREATE TRIGGER {table}_no_delete BEFORE DELETE ON {table} "
        f"BEGIN SELECT RAISE(ABORT, 'table {table} is append-only: DELETE refused'); END",
    ]


def _sqlite_drop(table):
    return [f"DROP TRIGGER IF EXISTS {table}_no_update", f"DROP TRIGGER IF EXISTS {table}_no_delete"]


def _pg_drop(table):
    return [f"DROP TRIGGER IF EXISTS {table}_no_change ON {table}", f"DROP TRIGGER IF EXISTS {table}_no_truncate ON {table}"]


def immutable_row_statements(vendor, table):
    """Triggers that refuse UPDATE only: rows that may be written once and never changed
    (workflow versions), but may go with their tenant."""
    if vendor == "postgresql":
        return [PG_FUNCTION,
                f"CREATE TRIGGER {table}_no_update BEFORE UPDATE ON {table} "
                f"FOR EACH ROW EXECUTE FUNCTION audit_reject_change()",
                f"ALTER TABLE {table} ENABLE ALWAYS TRIGGER {table}_no_update"]
    return [f"CREATE TRIGGER {table}_no_update BEFORE UPDATE ON {table} "
            f"BEGIN SELECT RAISE(ABORT, 'table {table} is append-only: UPDATE refused'); END"]


def create_statements(vendor, table):
    if vendor == "postgresql":
        return [PG_FUNCTION, *_pg_create(table)]
    if vendor == "sqlite":
        return _sqlite_create(table)
    raise NotImplementedError(f"append-only triggers are not written for {vendor}")


def drop_statements(vendor, table):
    return _pg_drop(table) if vendor == "postgresql" else _sqlite_drop(table)


class MakeAppendOnly(migrations.operations.base.Operation):
    """Migration operation: install the append-only triggers on one table.

    ``updates_only=True`` refuses UPDATE but not DELETE (see immutable_row_statements)."""

    reduces_to_sql = True
    reversible = True

    def __init__(self, table, updates_only=False):
        self.table = table
        self.updates_only = updates_only

    def state_forwards(self, app_label, state):
        pass

    def database_forwards(self, app_label, schema_editor, from_state, to_state):
        vendor = schema_editor.connection.vendor
        statements = immutable_row_statements if self.updates_only else create_statements
        for statement in statements(vendor, self.table):
            schema_editor.execute(statement)

    def database_backwards(self, app_label, schema_editor, from_state, to_state):
        for statement in drop_statements(schema_editor.connection.vendor, self.table):
            schema_editor.execute(statement)
        schema_editor.execute(f"DROP TRIGGER IF EXISTS {self.table}_no_update"
                              + (f" ON {self.table}" if schema_editor.connection.vendor == "postgresql" else ""))

    def describe(self):
        return f"Make {self.table} {'immutable' if self.updates_only else 'append-only'}"

    def deconstruct(self):
        return (self.__class__.__qualname__, [self.table], {"updates_only": True} if self.updates_only else {})


def _set_triggers(connection, tables, *, enabled: bool):
    with connection.cursor() as cursor:
        for table in tables:
            if connection.vendor == "postgresql":
                state = "ENABLE ALWAYS" if enabled else "DISABLE"
                for trigger in (f"{table}_no_change", f"{table}_no_truncate"):
                    cursor.execute(f"ALTER TABLE {table} {state} TRIGGER {trigger}")
            else:
                for statement in (_sqlite_create if enabled else _sqlite_drop)(table):
                    cursor.execute(statement)


@contextmanager
def triggers_suspended(connection, tables=APPEND_ONLY_TABLES):
    """Lift the append-only triggers for the enclosing transaction only.

    For the owner role in test teardown and tamper tests; the caller must already be
    inside ``transaction.atomic`` on that connection, so the triggers come back whatever
    happens.
    """
    if not connection.in_atomic_block:
        raise RuntimeError("triggers_suspended must run inside a transaction")
    _set_triggers(connection, tables, enabled=False)
    try:
        yield
    except BaseException:
        try:
            _set_triggers(connection, tables, enabled=True)
        except DatabaseError:  # the transaction is aborted: it cannot commit, and its rollback restores them
            pass
        raise  # the original error, not the aborted transaction's complaint about the statement above
    _set_triggers(connection, tables, enabled=True)
