"""Create the demo: two tenants with every role, and two platform admins. Idempotent.

It lives in policies, not tenants, because each tenant's two admins are made as any new
tenant's are: one platform admin proposes each, the other confirms it with a one-time password
(policies/admins.py), and tenants does not import policies."""

import base64

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction
from django_otp.plugins.otp_totp.models import TOTPDevice

from audit.log import denials_recorded
from policies.admins import tenant_admin_propose
from policies.governance import governed_change_confirm
from tenants import services
from tenants.db import bind_rls
from tenants.management.commands.totp_code import unspent_code
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

    def _seed(self):
        people, operators, wanted_admins, wanted_members = [], [], [], []
        with transaction.atomic():
            for username in PLATFORM_ADMINS:
                user, device = self._person(username, platform_admin=True)
                operators.append(user)
                people.append((username, "platform admin", device))
            for slug, name, jurisdiction, prefix in TENANTS:
                tenant = Tenant.objects.filter(slug=slug).first() or services.tenant_create(
                    actor=operators[0], slug=slug, name=name, jurisdiction=jurisdiction)
                bind_rls(tenant_id=tenant.pk)  # its memberships are read under its row-level security
                for suffix, role in ROLES:
                    user, device = self._person(f"{prefix}-{suffix}")
                    if role == Role.TENANT_ADMIN:
                        if not Membership.objects.filter(tenant=tenant, user=user, role=role).exists():
                            wanted_admins.append((tenant, user))
                    elif not Membership.objects.filter(tenant=tenant, user=user).exists():
                        wanted_members.append((tenant, user, role))
                    people.append((user.username, f"{role} in {slug}", device))
            user, device = self._person("outsider")
            people.append((user.username, "no tenant (add them as a member)", device))
        # Outside the transaction: each confirmation spends its one-time password on its own.
        for turn, (tenant, user) in enumerate(wanted_admins):
            proposer, confirmer = operators[turn % 2], operators[1 - turn % 2]
            proposal = tenant_admin_propose(actor=proposer, tenant=tenant, user=user, comment="demo tenant admin")
            device = TOTPDevice.objects.get(user=confirmer, confirmed=True)
            governed_change_confirm(actor=confirmer, proposal=proposal, otp_token=unspent_code(device),
                                    diff_digest=proposal.diff_digest)
        # The other members are the tenant's own admins' to add: platform admins do no tenant work.
        for tenant, user, role in wanted_members:
            with transaction.atomic():
                bind_rls(tenant_id=tenant.pk)  # the tenant's rows are read under its row-level security
                admin = Membership.objects.filter(tenant=tenant, role=Role.TENANT_ADMIN).select_related("user").first()
            services.membership_grant(actor=admin.user, tenant=tenant, user=user, role=role)
        return people
