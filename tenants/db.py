"""Database roles, row-level security and grants.

Three PostgreSQL roles (docs/operators.md):
- the owner role owns the schema and runs migrations (``migrate`` defaults to the
  ``owner`` alias and refuses any other);
- the app role (``DB_APP_ROLE``) serves requests and tasks: no BYPASSRLS, no UPDATE,
  DELETE or TRUNCATE on the append-only audit tables;
- the platform role (``DB_PLATFORM_ROLE``) runs platform jobs such as the audit
  sequencer, on the ``platform`` alias.

Every tenant-owned table has ENABLE and FORCE row-level security with a policy on
``app.tenant_id``, which the choke point sets with ``set_config(..., true)`` inside the
transaction. Outside a transaction the setting does not survive the statement, so
tenant reads then see nothing: the failure mode is closed.
"""

from contextlib import contextmanager

from django.conf import settings
from django.db import connections, migrations, transaction

from audit.appendonly import APPEND_ONLY_TABLES
from audit.sequencer import PLATFORM_ALIAS  # the platform role (BYPASSRLS): jobs and runners see every tenant

OWNER_ALIAS = "owner"

TENANT_MATCH = "tenant_id = nullif(current_setting('app.tenant_id', true), '')::bigint"
USER_MATCH = "user_id = nullif(current_setting('app.user_id', true), '')::bigint"


class MigrateAsOwnerRouter:
    """Migrations run on the owner alias only. Writes go through the app role unless the
    caller names another alias: Django would otherwise save a new row through whatever
    alias its related objects were loaded from, outside the caller's transaction."""

    def db_for_write(self, model, **hints):
        return "default"

    def allow_relation(self, obj1, obj2, **hints):
        return True  # every alias is the same database, under a different role

    def allow_migrate(self, db, app_label, model_name=None, **hints):
        return db == OWNER_ALIAS


def bind_rls(*, user_id=None, tenant_id=None, token_hash=None, using: str = "default") -> None:
    """Set the row-level security context for the current transaction."""
    connection = connections[using]
    if connection.vendor != "postgresql":
        return
    values = {"app.user_id": user_id, "app.tenant_id": tenant_id, "app.token_hash": token_hash}
    pairs = [(name, "" if value is None else str(value)) for name, value in values.items() if value is not None]
    if not pairs:
        return
    sql = "SELECT " + ", ".join("set_config(%s, %s, true)" for _ in pairs)
    with connection.cursor() as cursor:
        cursor.execute(sql, [item for pair in pairs for item in pair])


@contextmanager
def tenant_reads(user, tenant):
    """A transaction with the row-level security context bound, for reads in views that run
    outside the request's transaction (streaming uploads, step-up decisions)."""
    with transaction.atomic():
        bind_rls(user_id=user.pk, tenant_id=tenant.pk)
        yield


class EnableTenantRLS(migrations.operations.base.Operation):
    """Migration operation: ENABLE + FORCE row-level security on a tenant-owned table.

    ``select_also`` adds SELECT-only policies (extra ways a row may be read, never written).
    """

    reduces_to_sql = True
    reversible = True

    def __init__(self, table, select_also=()):
        self.table = table
        self.select_also = tuple(select_also)

    def state_forwards(self, app_label, state):
        pass

    def database_forwards(self, app_label, schema_editor, from_state, to_state):
        if schema_editor.connection.vendor != "postgresql":
            return
        table = self.table
        schema_editor.execute(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
        schema_editor.execute(f"ALTER TABLE {table} FORCE ROW LEVEL SECURITY")
        schema_editor.execute(
            f"CREATE POLICY tenant_isolation ON {table} USING ({TENANT_MATCH}) WITH CHECK ({TENANT_MATCH})"
        )
        for index, condition in enumerate(self.select_also):
            schema_editor.execute(f"CREATE POLICY read_{index} ON {table} FOR SELECT USING ({condition})")

    def database_backwards(self, app_label, schema_editor, from_state, to_state):
        if schema_editor.connection.vendor != "postgresql":
            return
        for index in range(len(self.select_also)):
            schema_editor.execute(f"DROP POLICY IF EXISTS read_{index} ON {self.table}")
        schema_editor.execute(f"DROP POLICY IF EXISTS tenant_isolation ON {self.table}")
        schema_editor.execute(f"ALTER TABLE {self.table} NO FORCE ROW LEVEL SECURITY")
        schema_editor.execute(f"ALTER TABLE {self.table} DISABLE ROW LEVEL SECURITY")

    def describe(self):
        return f"Row-level security on {self.table}"

    def deconstruct(self):
        kwargs = {"select_also": list(self.select_also)} if self.select_also else {}
        return (self.__class__.__qualname__, [self.table], kwargs)


def _role_exists(cursor, role):
    cursor.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [role])
    return cursor.fetchone() is not None


# What platform jobs write besides the audit sequencer's tables. Admission admits every
# tenant's runs and records each admission; it locks quota rows and nodes with SELECT ... FOR
# UPDATE, which PostgreSQL allows only with an UPDATE privilege: a column one is enough.
# Runner workers execute every tenant's runs through the same role: they claim runs, record
# steps and logs, bill usage and publish the dispatch outbox.
PLATFORM_WRITES = (("runners_run", "UPDATE"), ("audit_auditevent", "INSERT"),
                   ("tenants_tenantquota", "UPDATE (updated_at)"), ("runners_runnernode", "UPDATE (last_heartbeat_at)"),
                   ("runners_runstep", "INSERT, UPDATE"), ("runners_runlogchunk", "INSERT"),
                   ("runners_dispatchoutbox", "INSERT, UPDATE"), ("runners_usageentry", "INSERT"),
                   ("runners_budgetalert", "INSERT"), ("workflows_artifact", "INSERT"),
                   ("workflows_runoutput", "INSERT"))


def apply_role_grants(using=OWNER_ALIAS, **kwargs):
    """After every migrate: give the app and platform roles exactly their grants.

    Runs as the owner. A role that does not exist is skipped: a single-role deployment
    then relies on the choke point alone (docs/operators.md says why that is weaker).
    """
    connection = connections[using]
    if connection.vendor != "postgresql":
        return
    app_role, platform_role = settings.DB_APP_ROLE, settings.DB_PLATFORM_ROLE
    with connection.cursor() as cursor:
        if _role_exists(cursor, app_role):
            cursor.execute(f'GRANT USAGE ON SCHEMA public TO "{app_role}"')
            cursor.execute(f'GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO "{app_role}"')
            cursor.execute(f'GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO "{app_role}"')
            cursor.execute(f'REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON django_migrations FROM "{app_role}"')
            for table in (*APPEND_ONLY_TABLES, "audit_sequencerstate"):
                cursor.execute(f'REVOKE UPDATE, DELETE, TRUNCATE ON {table} FROM "{app_role}"')
            cursor.execute(f'REVOKE INSERT ON audit_auditleaf, audit_audittreenode, audit_auditcheckpoint, '
                           f'audit_audittenanthead, audit_auditcosignature, audit_sequencerstate FROM "{app_role}"')
            # The sequencer's queue is the database's to fill (a trigger) and the sequencer's to empty.
            cursor.execute(f'REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON audit_auditpending FROM "{app_role}"')
            # Only runners bill; the ledger is written once and never changed.
            cursor.execute(f'REVOKE INSERT, UPDATE ON runners_usageentry FROM "{app_role}"')
        if _role_exists(cursor, platform_role):
            cursor.execute(f'GRANT USAGE ON SCHEMA public TO "{platform_role}"')
            cursor.execute(f'GRANT SELECT ON ALL TABLES IN SCHEMA public TO "{platform_role}"')
            cursor.execute(f'GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO "{platform_role}"')
            cursor.execute(f'GRANT INSERT ON audit_auditleaf, audit_audittreenode, audit_auditcheckpoint, '
                           f'audit_audittenanthead, audit_auditcosignature TO "{platform_role}"')
            cursor.execute(f'GRANT UPDATE ON audit_sequencerstate TO "{platform_role}"')
            cursor.execute(f'GRANT DELETE ON audit_auditpending TO "{platform_role}"')
            # Admission sees every tenant's runs and admits them, recording each admission.
            for table, privilege in PLATFORM_WRITES:
                cursor.execute(f'GRANT {privilege} ON {table} TO "{platform_role}"')
