"""Bootstrap a platform admin (audited as done by manage.py)."""

import getpass
import os

from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from tenants import services
from tenants.errors import DomainError


class Command(BaseCommand):
    help = "Create a platform admin. The password comes from NEOCLOUD_ADMIN_PASSWORD or a prompt."

    def add_arguments(self, parser):
        parser.add_argument("username")
        parser.add_argument("--email", default="")

    def handle(self, *args, username, email, **options):
        password = os.environ.get("NEOCLOUD_ADMIN_PASSWORD") or getpass.getpass("Password: ")
        try:
            validate_password(password)
            services.user_create(actor=None, username=username, password=password, email=email, platform_admin=True)
        except ValidationError as exc:
            raise CommandError(" ".join(exc.messages))
        except DomainError as exc:
            raise CommandError(exc.detail)
        self.stdout.write(f"Platform admin {username} created; they enrol a TOTP device at first sign-in.")
