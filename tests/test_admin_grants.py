"""Making a tenant admin is loosening: it is proposed and applies only when a second person
confirms it with a fresh one-time password (a second tenant admin; two platform admins while
the tenant has fewer than two tenant admins). Removing or demoting an admin applies at once."""

import pytest
from django.urls import reverse

from audit.models import AuditEvent
from policies.models import GovernedChangeProposal
from tenants.models import Membership, Tenant
from tests.support.clients import sign_in
from tests.support.governance import confirm_as, make_admin, propose_admin, second_platform_admin

from .test_api import assert_error, members_url


def role_of(tenant, user):
    return Membership.objects.using("owner").filter(tenant=tenant, user=user).values_list("role", flat=True).first()


def state_of(api, who, tenant, proposal):
    return api(who).get(f"/api/v1/tenants/{tenant.slug}/proposals/{proposal['id']}/").json()["state"]


@pytest.fixture
def second_operator(world):
    return second_platform_admin()


def test_the_members_api_refuses_to_grant_admin_and_says_where_to_propose_it(world, api):
    admin, a = api(world.a.admin), world.a.tenant
    body = assert_error(admin.post(members_url(a), {"username": world.outsider.username, "role": "tenant_admin"}),
                        409, "admin_grant_needs_proposal")
    assert "/api/v1/tenants/acme-bank/admin-proposals/" in body["fields"]["role"][0]
    assert_error(admin.patch(members_url(a, world.a.developer.username), {"role": "tenant_admin"}),
                 409, "admin_grant_needs_proposal")
    assert role_of(a, world.outsider) is None and role_of(a, world.a.developer) == "developer"


@pytest.mark.embedded
def test_a_tenant_admin_proposes_an_admin_and_a_second_tenant_admin_confirms(world, api, second_operator):
    a = world.a.tenant
    response = propose_admin(api, world.a.admin, a, world.outsider.username)
    assert response.status_code == 202, response.content
    proposal = response.json()
    assert (proposal["setting"], proposal["confirmers"], proposal["state"]) == ("admins", "tenant_admins", "proposed")
    assert proposal["diff"]["loosening"] == ["makes outsider a tenant admin"]
    assert proposal["diff"]["fields"]["admins"] == {
        "before": ["acme-bank-admin", "acme-bank-admin2"], "after": ["acme-bank-admin", "acme-bank-admin2", "outsider"]}
    assert role_of(a, world.outsider) is None, "a proposal applies nothing"

    assert_error(confirm_as(api, world.a.admin, a, proposal), 403, "separation_of_duties")
    # The tenant has two admins: no platform admin confirms in their place.
    assert_error(confirm_as(api, world.platform_admin, a, proposal), 403, "tenant_admin_required")
    assert_error(confirm_as(api, world.a.approver, a, proposal), 403, "permission_denied")
    confirmed = confirm_as(api, world.a.admin2, a, proposal)
    assert confirmed.status_code == 200, confirmed.content
    assert (confirmed.json()["state"], confirmed.json()["confirmed_by"]) == ("applied", "acme-bank-admin2")
    assert role_of(a, world.outsider) == "tenant_admin"
    assert Tenant.objects.using("owner").get(pk=a.pk).admins_revision == confirmed.json()["applied_revision"] == 1
    grant = AuditEvent.objects.using("owner").get(action="membership.grant", target_id="outsider")
    assert (grant.actor_name, grant.data["role"], grant.data["proposal"]) == (
        "acme-bank-admin2", "tenant_admin", proposal["id"])

    # A platform admin does not propose for a tenant that has two admins either.
    assert_error(propose_admin(api, world.platform_admin, a, world.a.developer.username), 403,
                 "tenant_admin_required")
    assert_error(propose_admin(api, world.a.admin, a, "outsider"), 409, "already_admin")


def test_a_one_admin_tenants_admin_cannot_grant_admin(world, api):
    a = world.a.tenant
    assert api(world.a.admin).delete(members_url(a, world.a.admin2.username)).status_code == 204
    body = assert_error(propose_admin(api, world.a.admin, a, world.outsider.username), 409, "second_admin_required")
    assert "platform admin" in body["detail"]
    assert not GovernedChangeProposal.objects.using("owner").exists()


@pytest.mark.embedded
def test_a_new_tenant_gets_its_first_two_admins_from_two_platform_admins(world, api, second_operator):
    created = api(world.platform_admin).post("/api/v1/tenants/", {"slug": "nordic-insure", "name": "Nordic",
                                                                   "jurisdiction": "eu"})
    assert created.status_code == 201, created.content
    tenant = Tenant.objects.using("owner").get(slug="nordic-insure")
    assert not Membership.objects.using("owner").filter(tenant=tenant).exists()

    for person in (world.outsider, world.a.developer):
        response = propose_admin(api, world.platform_admin, tenant, person.username)
        assert response.status_code == 202, response.content
        proposal = response.json()
        assert proposal["confirmers"] == "platform_admins"
        assert_error(confirm_as(api, world.platform_admin, tenant, proposal), 403, "separation_of_duties")
        assert role_of(tenant, person) is None
        confirmed = confirm_as(api, second_operator, tenant, proposal)
        assert confirmed.status_code == 200, confirmed.content
        assert role_of(tenant, person) == "tenant_admin"

    # Two admins now: the third is theirs to propose and confirm.
    assert_error(propose_admin(api, world.platform_admin, tenant, world.b.developer.username), 403,
                 "tenant_admin_required")
    make_admin(api, tenant, world.b.developer.username, proposer=world.outsider, confirmer=world.a.developer)
    assert role_of(tenant, world.b.developer) == "tenant_admin"


def test_a_platform_confirmed_proposal_is_void_once_the_tenant_has_two_admins(world, api, second_operator):
    b = world.b.tenant
    User = type(world.b.admin2)
    User.objects.using("owner").filter(pk=world.b.admin2.pk).update(is_active=False)
    proposal = propose_admin(api, world.platform_admin, b, world.outsider.username).json()
    assert proposal["confirmers"] == "platform_admins"
    User.objects.using("owner").filter(pk=world.b.admin2.pk).update(is_active=True)
    body = assert_error(confirm_as(api, second_operator, b, proposal), 409, "proposal_stale")
    assert "has two tenant admins now" in body["detail"]
    assert role_of(b, world.outsider) is None
    assert state_of(api, world.b.admin, b, proposal) == "void"


@pytest.mark.embedded
def test_demoting_or_removing_an_admin_applies_at_once_and_voids_older_proposals(world, api):
    a, admin = world.a.tenant, api(world.a.admin)
    make_admin(api, a, world.a.approver.username, proposer=world.a.admin, confirmer=world.a.admin2)
    proposal = propose_admin(api, world.a.admin, a, world.outsider.username).json()

    response = admin.patch(members_url(a, world.a.approver.username), {"role": "approver"})
    assert response.status_code == 200 and role_of(a, world.a.approver) == "approver"
    shown = api(world.a.auditor).get(f"/api/v1/tenants/{a.slug}/proposals/{proposal['id']}/").json()
    assert shown["state"] == "void"  # at once, before anyone tries to confirm it
    assert "list of tenant admins is at revision 2, not 1" in shown["void_reason"]
    body = assert_error(confirm_as(api, world.a.admin2, a, proposal), 409, "proposal_stale")
    assert "list of tenant admins is at revision 2, not 1" in body["detail"]
    assert role_of(a, world.outsider) is None

    assert admin.delete(members_url(a, world.a.admin2.username)).status_code == 204
    assert role_of(a, world.a.admin2) is None
    assert_error(admin.patch(members_url(a, world.a.admin.username), {"role": "developer"}), 409, "conflict")
    assert Tenant.objects.using("owner").get(pk=a.pk).admins_revision == 3


def test_an_admin_granted_after_a_proposal_cannot_confirm_it(world, api):
    a = world.a.tenant
    earlier = propose_admin(api, world.a.admin, a, world.outsider.username).json()
    make_admin(api, a, world.a.approver.username, proposer=world.a.admin, confirmer=world.a.admin2)
    assert_error(confirm_as(api, world.a.approver, a, earlier), 403, "role_granted_after_proposal")
    assert state_of(api, world.a.admin, a, earlier) == "void"  # the admins changed after it was made
    assert role_of(a, world.outsider) is None


@pytest.mark.parametrize("form", ["add", "role"])
def test_the_console_shows_the_refusal_next_to_the_role_field(world, client, form):
    a = world.a.tenant
    sign_in(client, world.a.admin)
    if form == "add":
        response = client.post(reverse("tenant-member-add", args=[a.slug]),
                               {"username": world.outsider.username, "role": "tenant_admin"})
    else:
        response = client.post(reverse("tenant-member-role", args=[a.slug, world.a.developer.username]),
                               {"role": "tenant_admin"})
    assert response.status_code == 400
    page = response.content.decode()
    error = page.split('id="member_role-error">', 1)[1].split("</p>", 1)[0]
    assert "takes two people" in error and "/api/v1/tenants/acme-bank/admin-proposals/" in error
    assert role_of(a, world.outsider) is None and role_of(a, world.a.developer) == "developer"
