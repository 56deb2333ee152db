"""Every existing person gets their name's skeleton, unless two usernames look alike or one
breaks the rule: then the migration stops and names them (docs/operators.md, "Usernames that
look alike"). It runs apart from 0009, which creates the table, so that `manage.py
rename_user` can fix a pair while this one waits."""

from django.core.management.base import CommandError
from django.db import migrations

from tenants.usernames import problems_among, skeleton_sha256


def name_every_person(apps, schema_editor):
    User, PersonName = apps.get_model("auth", "User"), apps.get_model("tenants", "PersonName")
    db = schema_editor.connection.alias
    people = list(User.objects.using(db).order_by("pk").values_list("pk", "username"))
    problems = problems_among(people)
    if problems:
        raise CommandError(
            "Some usernames would not be one identity each, so tenants.0010 stops here:\n"
            + "".join(f"  - {problem}\n" for problem in problems)
            + "Rename all but one account of each lookalike group, and each account whose username breaks the rule, "
              "with `manage.py rename_user <id> <new username>`; then run migrate again (docs/operators.md, "
              "\"Usernames that look alike\").")
    for pk, username in people:
        PersonName.objects.using(db).update_or_create(user_id=pk, defaults={"skeleton_sha256": skeleton_sha256(username)})


class Migration(migrations.Migration):

    dependencies = [
        ("tenants", "0009_person_names"),
    ]

    operations = [
        migrations.RunPython(name_every_person, migrations.RunPython.noop),
    ]
