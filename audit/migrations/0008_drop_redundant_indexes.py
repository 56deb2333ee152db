"""Drop the single-column indexes on the event's tenant and action (with PostgreSQL's
``varchar_pattern_ops`` twins): the ``(tenant, id)`` and ``(action, id)`` indexes serve every
query they served, and each index is one more write per recorded event.

Only the indexes go, by name, on both databases: letting Django alter the fields would rebuild
the SQLite table and lose its append-only and queue triggers with it."""

from django.db import migrations, models

TABLE = "audit_auditevent"


def drop_single_column_indexes(apps, schema_editor):
    connection = schema_editor.connection
    with connection.cursor() as cursor:
        constraints = connection.introspection.get_constraints(cursor, TABLE)
    for name, details in sorted(constraints.items()):
        if (details["index"] and not details["unique"] and not details["primary_key"]
                and details["columns"] in (["tenant"], ["action"])):
            schema_editor.execute(f"DROP INDEX {connection.ops.quote_name(name)}")


def create_single_column_indexes(apps, schema_editor):
    """Backwards: plain single-column indexes again (found by column, not name, going forwards)."""
    model = apps.get_model("audit", "AuditEvent")
    for name in ("tenant", "action"):
        schema_editor.add_index(model, models.Index(fields=[name], name=f"audit_event_{name}_single"))


class Migration(migrations.Migration):

    dependencies = [
        ("audit", "0007_tenant_console_indexes"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterField(model_name="auditevent", name="tenant",
                                      field=models.CharField(blank=True, max_length=64)),
                migrations.AlterField(model_name="auditevent", name="action", field=models.CharField(max_length=64)),
            ],
            database_operations=[migrations.RunPython(drop_single_column_indexes, create_single_column_indexes)],
        ),
    ]
