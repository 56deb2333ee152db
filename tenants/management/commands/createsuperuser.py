"""Django's createsuperuser is refused: it would save an account without the username rule,
its skeleton (tenants/usernames.py) or an audit event. ``create_platform_admin`` does all three.

This replaces django.contrib.auth's command because tenants comes before it in INSTALLED_APPS."""

from django.contrib.auth.management.commands.createsuperuser import Command as DjangoCreateSuperuser
from django.core.management.base import CommandError


class Command(DjangoCreateSuperuser):
    # Django's arguments are kept, so that any invocation gets the sentence below, not a usage error.
    help = "Refused here: create platform admins with create_platform_admin."

    def handle(self, *args, **options):
        raise CommandError("createsuperuser is not used on this platform: run `manage.py create_platform_admin "
                           "<username>`, which checks the username and records the new admin in the audit log.")
