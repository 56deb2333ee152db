"""Personas: two tenants with every role, an outsider and a platform admin, each with a
confirmed TOTP device."""

from dataclasses import dataclass

import pytest

PASSWORD = "correct-horse-battery-staple"


@dataclass
class TenantPeople:
    tenant: object
    developer: object
    approver: object
    approver2: object
    auditor: object
    admin: object
    admin2: object


@dataclass
class World:
    a: TenantPeople
    b: TenantPeople
    outsider: object
    platform_admin: object


def make_user(username, *, platform_admin=False, device=True):
    from django.contrib.auth import get_user_model
    from django_otp.plugins.otp_totp.models import TOTPDevice

    user = get_user_model().objects.db_manager("owner").create_user(
        username=username, password=PASSWORD, is_superuser=platform_admin, is_staff=platform_admin)
    if device:
        TOTPDevice.objects.using("owner").create(user=user, name="test authenticator", confirmed=True)
    return user


def make_tenant_people(slug, jurisdiction):
    from tenants.models import Membership, Tenant

    tenant = Tenant.objects.using("owner").create(slug=slug, name=slug.replace("-", " ").title(),
                                                  jurisdiction=jurisdiction)
    people = {}
    for field, role in [("developer", "developer"), ("approver", "approver"), ("approver2", "approver"),
                        ("auditor", "auditor"), ("admin", "tenant_admin"), ("admin2", "tenant_admin")]:
        user = make_user(f"{slug}-{field}")
        Membership.objects.using("owner").create(tenant=tenant, user=user, role=role)
        people[field] = user
    return TenantPeople(tenant=tenant, **people)


def make_world():
    return World(
        a=make_tenant_people("acme-bank", "eu"),
        b=make_tenant_people("st-mary-hospital", "us"),
        outsider=make_user("outsider"),
        platform_admin=make_user("ops-admin", platform_admin=True),
    )


@pytest.fixture
def world(live_db):
    """Two tenants, each with every role; an outsider; a platform admin."""
    return make_world()
