"""Create the demo: two tenants with every role, and two platform admins. Idempotent."""

import base64

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction
from django_otp.plugins.otp_totp.models import TOTPDevice

from audit.log import denials_recorded
from tenants import services
from tenants.models import Membership, Tenant
from tenants.roles import Role

User = get_user_model()

DEMO_PASSWORD = "neocloud-demo-2026"
PLATFORM_ADMINS = ["ops-ada", "ops-grace"]
TENANTS = [
    ("acme-bank", "Acme Bank", "eu", "bank"),
    ("st-mary-hospital", "St Mary's Hospital", "us", "hospital"),
]
ROLES = [
    ("dev", Role.DEVELOPER),
    ("approver1", Role.APPROVER),
    ("approver2", Role.APPROVER),
    ("auditor", Role.AUDITOR),
    ("admin1", Role.TENANT_ADMIN),
    ("admin2", Role.TENANT_ADMIN),
]


def totp_secret(device: TOTPDevice) -> str:
    return base64.b32encode(device.bin_key).decode().rstrip("=")


class Command(BaseCommand):
    help = "Create (or re-print) the demo tenants, people and their TOTP secrets."

    def handle(self, *args, **options):
        if settings.PRODUCTION:
            raise CommandError("The demo seed is for development only; it is refused in production.")
        with denials_recorded():
            people = self._seed()
        self.stdout.write(f"\nDemo sign-ins (password for all: {DEMO_PASSWORD})\n")
        self.stdout.write(f"{'username':<28}{'scope':<34}TOTP secret")
        for username, scope, device in people:
            self.stdout.write(f"{username:<28}{scope:<34}{totp_secret(device)}")
        self.stdout.write("\nAdd a secret to any authenticator app (TOTP, SHA-1, 6 digits, 30 s), "
                          "or run: python manage.py totp_code <username>\n")

    def _person(self, username, platform_admin=False):
        user = User.objects.filter(username=username).first()
        if user is None:
            user = services.user_create(actor=None, username=username, password=DEMO_PASSWORD,
                                        email=f"{username}@example.org", platform_admin=platform_admin)
        device = TOTPDevice.objects.filter(user=user, confirmed=True).first()
        if device is None:
            device = TOTPDevice.objects.create(user=user, name="demo authenticator", confirmed=True)
        return user, device

    @transaction.atomic
    def _seed(self):
        people = []
        admins = []
        for username in PLATFORM_ADMINS:
            user, device = self._person(username, platform_admin=True)
            admins.append(user)
            people.append((username, "platform admin", device))
        for slug, name, jurisdiction, prefix in TENANTS:
            tenant = Tenant.objects.filter(slug=slug).first() or services.tenant_create(
                actor=admins[0], slug=slug, name=name, jurisdiction=jurisdiction)
            for suffix, role in ROLES:
                user, device = self._person(f"{prefix}-{suffix}")
                if not Membership.objects.filter(tenant=tenant, user=user).exists():
                    services.membership_grant(actor=admins[0], tenant=tenant, user=user, role=role)
                people.append((user.username, f"{role} in {slug}", device))
        user, device = self._person("outsider")
        people.append((user.username, "no tenant (add them as a member)", device))
        return people
