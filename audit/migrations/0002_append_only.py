from django.db import migrations

from audit.appendonly import MakeAppendOnly


def create_sequencer_state(apps, schema_editor):
    apps.get_model("audit", "SequencerState").objects.using(schema_editor.connection.alias).get_or_create(pk=1)


class Migration(migrations.Migration):
    dependencies = [("audit", "0001_initial")]

    operations = [
        MakeAppendOnly("audit_auditevent"),
        MakeAppendOnly("audit_auditleaf"),
        migrations.RunPython(create_sequencer_state, migrations.RunPython.noop),
    ]
