"""Row-level security: the second line behind the choke point, on PostgreSQL."""

import pytest
from django.db import connections, transaction

from tenants.db import bind_rls
from tenants.models import ApiToken, Membership, ServiceAccount

from tests.support.clients import issue_token

pytestmark = pytest.mark.postgres


@pytest.fixture(autouse=True)
def _on_postgresql(django_db_setup):
    assert connections["default"].vendor == "postgresql", "run this module on PostgreSQL (make test-postgres)"


TENANT_TABLES = ["tenants_membership", "tenants_serviceaccount", "tenants_apitoken"]


def test_every_tenant_owned_table_has_forced_row_level_security(live_db):
    with connections["owner"].cursor() as cursor:
        cursor.execute("SELECT relname, relrowsecurity, relforcerowsecurity FROM pg_class WHERE relname = ANY(%s)",
                       [TENANT_TABLES])
        rows = {name: (enabled, forced) for name, enabled, forced in cursor.fetchall()}
    assert rows == {table: (True, True) for table in TENANT_TABLES}


def test_app_role_cannot_bypass_row_level_security(live_db):
    with connections["default"].cursor() as cursor:
        cursor.execute("SELECT rolbypassrls, rolsuper FROM pg_roles WHERE rolname = current_user")
        assert cursor.fetchone() == (False, False)


def test_without_the_app_filter_a_tenant_context_shows_zero_foreign_rows(world):
    from tenants.services import service_account_create

    service_account_create(actor=world.a.developer, tenant=world.a.tenant, name="ci", role="developer")
    issue_token(world.a.developer, world.a.tenant)
    issue_token(world.b.developer, world.b.tenant)
    with transaction.atomic():
        bind_rls(tenant_id=world.b.tenant.pk)
        # No restrict(), no tenant filter: only the database stands between tenants here.
        assert Membership.objects.exclude(tenant=world.b.tenant).count() == 0
        assert ServiceAccount.objects.exclude(tenant=world.b.tenant).count() == 0
        assert ApiToken.objects.exclude(tenant=world.b.tenant).count() == 0
        assert Membership.objects.count() == 6
    assert Membership.objects.using("owner").filter(tenant=world.a.tenant).count() == 6


def test_outside_a_transaction_the_context_is_gone_and_nothing_is_visible(world):
    bind_rls(tenant_id=world.a.tenant.pk)  # autocommit: set_config(..., true) ends with the statement
    assert Membership.objects.count() == 0


def test_a_person_sees_only_their_own_memberships_across_tenants(world):
    from tenants.models import Tenant

    with transaction.atomic():
        bind_rls(user_id=world.a.admin.pk)
        assert list(Membership.objects.values_list("user__username", flat=True)) == [world.a.admin.username]
    assert Tenant.objects.using("owner").count() == 2


def test_app_role_cannot_write_a_row_into_another_tenant(world):
    from django.db import DatabaseError

    with pytest.raises(DatabaseError, match="row-level security"), transaction.atomic():
        bind_rls(tenant_id=world.b.tenant.pk)
        Membership.objects.create(tenant=world.a.tenant, user=world.outsider, role="developer")
    assert not Membership.objects.using("owner").filter(user=world.outsider).exists()
