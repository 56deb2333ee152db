"""The demo seed: idempotent, every role in two tenants, printable TOTP secrets."""

import base64

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django_otp.plugins.otp_totp.models import TOTPDevice

from audit.models import AuditEvent
from tenants.models import Membership, Tenant

pytestmark = pytest.mark.embedded


def counts():
    return (Tenant.objects.using("owner").count(), Membership.objects.using("owner").count(),
            get_user_model().objects.using("owner").count(), TOTPDevice.objects.using("owner").count(),
            # The session's worker may sign a checkpoint (and record it) between two seeds.
            AuditEvent.objects.using("owner").exclude(action="audit.checkpoint").count())


def test_seed_demo_is_idempotent_and_prints_each_sign_in(live_db, capsys):
    call_command("seed_demo")
    first_output = capsys.readouterr().out
    first = counts()
    call_command("seed_demo")
    assert counts() == first
    assert capsys.readouterr().out == first_output

    assert first[:4] == (2, 12, 15, 15)
    for tenant in Tenant.objects.using("owner"):
        roles = sorted(Membership.objects.using("owner").filter(tenant=tenant).values_list("role", flat=True))
        assert roles == ["approver", "approver", "auditor", "developer", "tenant_admin", "tenant_admin"]
    admins = get_user_model().objects.using("owner").filter(is_superuser=True)
    assert sorted(admins.values_list("username", flat=True)) == ["ops-ada", "ops-grace"]
    device = TOTPDevice.objects.using("owner").get(user__username="bank-admin1")
    secret = base64.b32encode(device.bin_key).decode().rstrip("=")
    assert f"bank-admin1                 tenant_admin in acme-bank         {secret}" in first_output
    assert "neocloud-demo-2026" in first_output
    seeded_actions = AuditEvent.objects.using("owner").exclude(action="audit.checkpoint").values_list("action", flat=True)
    assert set(seeded_actions) == {
        "platform_admin.create", "user.create", "tenant.create", "membership.grant", "governed_change.propose",
        "governed_change.confirm"}


def test_seed_demo_refuses_production(live_db, settings):
    from django.core.management.base import CommandError

    settings.PRODUCTION = True
    with pytest.raises(CommandError, match="development only"):
        call_command("seed_demo")
    assert counts() == (0, 0, 0, 0, 0)
