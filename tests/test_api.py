"""The API: identities, tenants, members, tokens, service accounts, and the error format."""

import json
from datetime import timedelta

import pytest
from django.utils import timezone
from rest_framework.throttling import UserRateThrottle

from audit.models import AuditEvent
from tenants.models import ApiToken, Membership, ServiceAccount, Tenant

from tests.support.clients import issue_token



def events(action=None, **filters):
    queryset = AuditEvent.objects.using("owner").order_by("id")
    if action:
        queryset = queryset.filter(action=action)
    return list(queryset.filter(**filters))


def members_url(tenant, username=None):
    base = f"/api/v1/tenants/{tenant.slug}/members/"
    return f"{base}{username}/" if username else base


def assert_error(response, status, code):
    assert response.status_code == status, response.content
    assert response["Content-Type"].startswith("application/json")
    body = response.json()
    assert body["code"] == code, body
    assert isinstance(body["detail"], str) and body["detail"]
    return body


# Who am I ------------------------------------------------------------------------------


def test_me_lists_the_callers_memberships(world, api):
    from tenants.services import membership_grant

    membership_grant(actor=world.b.admin, tenant=world.b.tenant, user=world.a.developer, role="auditor")
    body = api(world.a.developer).get("/api/v1/me").json()
    assert body["username"] == world.a.developer.username
    assert sorted((m["tenant"], m["role"]) for m in body["memberships"]) == [
        ("acme-bank", "developer"), ("st-mary-hospital", "auditor")]
    assert body["token"] is None


def test_me_with_a_token_shows_only_the_tokens_tenant(world, api):
    from tenants.services import membership_grant

    membership_grant(actor=world.b.admin, tenant=world.b.tenant, user=world.a.developer, role="auditor")
    token = issue_token(world.a.developer, world.a.tenant)
    body = api(token).get("/api/v1/me").json()
    assert body["memberships"] == [{"tenant": "acme-bank", "role": "developer"}]
    assert body["token"]["tenant"] == "acme-bank" and body["token"]["role"] == "developer"


def test_unauthenticated_call_gets_401_json(world, api):
    response = api().get("/api/v1/me")
    assert_error(response, 401, "not_authenticated")
    assert response["WWW-Authenticate"] == "Bearer"


# Tenants -------------------------------------------------------------------------------


def test_a_member_lists_only_their_tenants(world, api):
    body = api(world.a.auditor).get("/api/v1/tenants/").json()
    assert body["count"] == 1
    assert [t["slug"] for t in body["results"]] == ["acme-bank"]


@pytest.mark.embedded
def test_platform_admin_lists_and_creates_tenants_with_an_audit_event(world, api):
    client = api(world.platform_admin)
    assert client.get("/api/v1/tenants/").json()["count"] == 2
    response = client.post("/api/v1/tenants/", {"slug": "nordic-insure", "name": "Nordic Insurance", "jurisdiction": "eu"})
    assert response.status_code == 201, response.content
    assert Tenant.objects.using("owner").filter(slug="nordic-insure", status="active").exists()
    [event] = events("tenant.create")
    assert (event.tenant, event.actor_name, event.outcome) == ("nordic-insure", "ops-admin", "success")


def test_tenant_admin_cannot_create_a_tenant(world, api):
    response = api(world.a.admin).post("/api/v1/tenants/", {"slug": "x-corp", "name": "X", "jurisdiction": "eu"})
    assert_error(response, 403, "permission_denied")
    assert Tenant.objects.using("owner").count() == 2
    [denial] = events("request.denied")
    assert denial.outcome == "denied" and denial.data["status"] == 403


def test_tenant_creation_validates_each_field(world, api):
    response = api(world.platform_admin).post("/api/v1/tenants/", {"slug": "Bad Slug!", "name": "X", "jurisdiction": "europe"})
    body = assert_error(response, 400, "invalid")
    assert set(body["fields"]) == {"slug", "jurisdiction"}
    duplicate = api(world.platform_admin).post("/api/v1/tenants/", {"slug": "acme-bank", "name": "X", "jurisdiction": "eu"})
    body = assert_error(duplicate, 409, "conflict")
    assert body["fields"] == {"slug": ["A tenant with slug acme-bank already exists."]}


@pytest.mark.embedded
def test_suspended_tenant_members_can_read_but_not_change(world, api):
    response = api(world.platform_admin).patch(f"/api/v1/tenants/{world.a.tenant.slug}/", {"status": "suspended"})
    assert response.status_code == 200 and response.json()["status"] == "suspended"
    admin = api(world.a.admin)
    assert admin.get(members_url(world.a.tenant)).status_code == 200
    response = admin.post(members_url(world.a.tenant), {"username": world.outsider.username, "role": "developer"})
    assert_error(response, 403, "tenant_suspended")
    assert not Membership.objects.using("owner").filter(user=world.outsider).exists()
    assert [e.data["to"] for e in events("tenant.status_change")] == ["suspended"]


def test_only_a_platform_admin_changes_tenant_status(world, api):
    response = api(world.a.admin).patch(f"/api/v1/tenants/{world.a.tenant.slug}/", {"status": "suspended"})
    assert_error(response, 403, "permission_denied")
    assert Tenant.objects.using("owner").get(pk=world.a.tenant.pk).status == "active"


def test_platform_admin_reads_inside_a_tenant_are_audited(world, api):
    api(world.platform_admin).get(members_url(world.a.tenant))
    [event] = events("platform.tenant_access")
    assert event.tenant == "acme-bank" and event.data["method"] == "GET"


# Members -------------------------------------------------------------------------------


@pytest.mark.embedded
def test_tenant_admin_grants_changes_and_revokes_a_membership(world, api):
    admin = api(world.a.admin)
    response = admin.post(members_url(world.a.tenant), {"username": world.outsider.username, "role": "developer"})
    assert response.status_code == 201, response.content
    assert response.json() == {**response.json(), "username": "outsider", "role": "developer", "tenant": "acme-bank"}
    response = admin.patch(members_url(world.a.tenant, "outsider"), {"role": "auditor"})
    assert response.status_code == 200 and response.json()["role"] == "auditor"
    assert admin.delete(members_url(world.a.tenant, "outsider")).status_code == 204
    assert not Membership.objects.using("owner").filter(user=world.outsider).exists()
    assert [e.action for e in events() if e.target_id == "outsider"] == [
        "membership.grant", "membership.role_change", "membership.revoke"]


def test_member_filter_by_role(world, api):
    body = api(world.a.auditor).get(members_url(world.a.tenant) + "?role=approver").json()
    assert sorted(m["username"] for m in body["results"]) == ["acme-bank-approver", "acme-bank-approver2"]


def test_developer_cannot_manage_members_and_the_refusal_is_recorded(world, api):
    response = api(world.a.developer).post(members_url(world.a.tenant), {"username": "outsider", "role": "tenant_admin"})
    assert_error(response, 403, "permission_denied")
    assert not Membership.objects.using("owner").filter(user=world.outsider).exists()
    [denial] = events("request.denied")
    assert (denial.actor_name, denial.tenant, denial.data["method"]) == ("acme-bank-developer", "acme-bank", "POST")
    assert not events("membership.grant")


def test_granting_an_unknown_user_or_role_names_the_field(world, api):
    admin = api(world.a.admin)
    body = assert_error(admin.post(members_url(world.a.tenant), {"username": "nobody", "role": "developer"}), 404, "not_found")
    assert body["fields"] == {"username": ["No user named nobody."]}
    body = assert_error(admin.post(members_url(world.a.tenant), {"username": "outsider", "role": "king"}), 400, "invalid")
    assert "role" in body["fields"]


def test_the_last_tenant_admin_cannot_be_removed(world, api):
    admin = api(world.a.admin)
    assert admin.delete(members_url(world.a.tenant, world.a.admin2.username)).status_code == 204
    response = admin.delete(members_url(world.a.tenant, world.a.admin.username))
    assert_error(response, 409, "conflict")
    assert Membership.objects.using("owner").filter(user=world.a.admin).exists()


# Tokens and service accounts -----------------------------------------------------------


def test_a_token_is_shown_once_and_stored_only_as_a_hash(world, api):
    client = api(world.a.developer)
    response = client.post("/api/v1/tenants/acme-bank/tokens/", {"name": "laptop", "expires_in_days": 7})
    assert response.status_code == 201, response.content
    plaintext = response.json()["token"]
    assert plaintext.startswith("nct_")
    stored = ApiToken.objects.using("owner").get(public_id=response.json()["id"])
    assert stored.key_hash != plaintext and plaintext not in json.dumps(list(ApiToken.objects.using("owner").values()), default=str)
    listed = client.get("/api/v1/tenants/acme-bank/tokens/").json()["results"]
    assert [t["id"] for t in listed] == [stored.public_id] and "token" not in listed[0]
    assert api(plaintext).get("/api/v1/me").status_code == 200
    [event] = events("token.issue")
    assert event.target_id == stored.public_id and plaintext not in event.canonical


@pytest.mark.embedded
def test_revoked_and_expired_tokens_get_401_json(world, api):
    token = issue_token(world.a.developer, world.a.tenant)
    public_id = token.split("_")[1]
    assert api(world.a.developer).delete(f"/api/v1/tenants/acme-bank/tokens/{public_id}/").status_code == 204
    assert_error(api(token).get("/api/v1/me"), 401, "token_revoked")

    expired = issue_token(world.a.developer, world.a.tenant, name="old")
    ApiToken.objects.using("owner").filter(public_id=expired.split("_")[1]).update(
        expires_at=timezone.now() - timedelta(seconds=1))
    assert_error(api(expired).get("/api/v1/me"), 401, "token_expired")
    assert_error(api("nct_000000000000_made-up").get("/api/v1/me"), 401, "invalid_token")


@pytest.mark.embedded
def test_a_token_reaches_only_its_tenant_and_role(world, api):
    from tenants.services import membership_grant

    membership_grant(actor=world.b.admin, tenant=world.b.tenant, user=world.a.admin, role="developer")
    token = issue_token(world.a.admin, world.a.tenant)
    client = api(token)
    assert client.get(members_url(world.a.tenant)).status_code == 200
    assert_error(client.get(members_url(world.b.tenant)), 404, "not_found")
    assert client.get("/api/v1/tenants/").json()["count"] == 1


@pytest.mark.embedded
def test_a_role_change_retires_the_members_personal_tokens(world, api):
    token = issue_token(world.a.developer, world.a.tenant)
    api(world.a.admin).patch(members_url(world.a.tenant, world.a.developer.username), {"role": "auditor"})
    assert_error(api(token).get("/api/v1/me"), 401, "token_revoked")


def test_a_tokens_holder_cannot_issue_further_tokens(world, api):
    token = issue_token(world.a.developer, world.a.tenant)
    response = api(token).post("/api/v1/tenants/acme-bank/tokens/", {"name": "again"})
    assert_error(response, 403, "permission_denied")
    assert ApiToken.objects.using("owner").count() == 1


@pytest.mark.embedded
def test_service_account_acts_for_its_owner(world, api):
    developer = api(world.a.developer)
    response = developer.post("/api/v1/tenants/acme-bank/service-accounts/", {"name": "ci-pipeline", "role": "developer"})
    assert response.status_code == 201, response.content
    assert response.json()["owner"] == world.a.developer.username
    issued = developer.post("/api/v1/tenants/acme-bank/tokens/", {"name": "ci", "service_account": "ci-pipeline"}).json()
    pipeline = api(issued["token"])
    assert pipeline.get("/api/v1/me").json()["username"] == world.a.developer.username
    assert_error(pipeline.post(members_url(world.a.tenant), {"username": "outsider", "role": "developer"}),
                 403, "permission_denied")
    [denial] = events("request.denied")
    assert (denial.actor_type, denial.actor_name, denial.token_id) == ("token", world.a.developer.username, issued["id"])


def test_service_account_tokens_die_with_their_owners_membership(world, api):
    developer = api(world.a.developer)
    developer.post("/api/v1/tenants/acme-bank/service-accounts/", {"name": "ci", "role": "developer"})
    token = developer.post("/api/v1/tenants/acme-bank/tokens/", {"name": "ci", "service_account": "ci"}).json()["token"]
    assert api(world.a.admin).delete(members_url(world.a.tenant, world.a.developer.username)).status_code == 204
    assert_error(api(token).get("/api/v1/me"), 401, "token_revoked")
    assert not ServiceAccount.objects.using("owner").get(name="ci").is_active


def test_service_accounts_never_hold_approver_or_admin_roles(world, api):
    response = api(world.a.admin).post("/api/v1/tenants/acme-bank/service-accounts/", {"name": "x", "role": "approver"})
    body = assert_error(response, 400, "invalid")
    assert "role" in body["fields"]


# The error format ----------------------------------------------------------------------


def test_malformed_json_is_a_400_with_a_code(world, api):
    response = api(world.a.admin).post(members_url(world.a.tenant), data="{not json", content_type="application/json")
    assert_error(response, 400, "malformed_request")


def test_wrong_content_type_is_a_415(world, api):
    response = api(world.a.admin).post(members_url(world.a.tenant), data="username=x", content_type="text/plain")
    assert_error(response, 415, "unsupported_media_type")


def test_unsupported_method_is_a_405(world, api):
    assert_error(api(world.a.admin).put(members_url(world.a.tenant), {}), 405, "method_not_allowed")


def test_an_oversized_body_is_a_413_before_it_is_read(world, api, settings):
    body = json.dumps({"username": "x" * (settings.API_MAX_BODY_BYTES + 1), "role": "developer"})
    response = api(world.a.admin).post(members_url(world.a.tenant), data=body, content_type="application/json")
    assert_error(response, 413, "body_too_large")


def test_an_unknown_api_path_is_a_json_404(world, api):
    assert_error(api(world.a.admin).get("/api/v1/no-such-thing/"), 404, "not_found")


def test_too_many_requests_is_a_429_with_retry_after(world, api, monkeypatch):
    monkeypatch.setattr(UserRateThrottle, "rate", "3/min", raising=False)
    client = api(issue_token(world.a.developer, world.a.tenant))
    statuses = [client.get("/api/v1/me").status_code for _ in range(4)]
    assert statuses == [200, 200, 200, 429]
    response = client.get("/api/v1/me")
    assert_error(response, 429, "throttled")
    assert int(response["Retry-After"]) > 0


@pytest.mark.parametrize("payload", [
    [], "string", 12, None, {"username": None, "role": None}, {"username": ["a"], "role": {"x": 1}},
    {"username": "\u0000evil", "role": "developer"}, {"username": "a" * 10000, "role": "developer"},
])
def test_strange_input_never_gets_a_500(world, api, payload):
    response = api(world.a.admin).post(members_url(world.a.tenant), data=json.dumps(payload),
                                       content_type="application/json")
    assert 400 <= response.status_code < 500, response.content
    assert response.json()["code"]


def test_token_expiry_out_of_range_names_the_field(world, api):
    body = assert_error(api(world.a.developer).post("/api/v1/tenants/acme-bank/tokens/",
                                                    {"name": "x", "expires_in_days": 9999}), 400, "invalid")
    assert "expires_in_days" in body["fields"]


def test_openapi_schema_and_docs_are_served_without_a_cdn(world, api):
    refused = api().get("/api/v1/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert refused.status_code == 401 and refused.json()["code"] == "not_authenticated"
    client = api(world.a.developer)
    schema = client.get("/api/v1/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert schema.status_code == 200
    assert "/api/v1/tenants/{tenant}/members/" in schema.json()["paths"]
    docs = client.get("/api/v1/docs/")
    assert docs.status_code == 200
    html = docs.content.decode()
    assert "swagger-ui" in html and "cdn" not in html.lower() and "https://" not in html


def test_an_explicit_audit_grant_lets_an_external_auditor_read_one_tenants_trail(world, api):
    from tenants.services import object_permission_grant

    object_permission_grant(actor=world.platform_admin, tenant=world.a.tenant, user=world.outsider, action="audit")
    regulator = api(world.outsider)
    assert [t["slug"] for t in regulator.get("/api/v1/tenants/").json()["results"]] == ["acme-bank"]
    events = regulator.get("/api/v1/tenants/acme-bank/audit/events/")
    assert events.status_code == 200 and len(events.json()["results"]) >= 1
    assert_error(regulator.post(members_url(world.a.tenant), {"username": "outsider", "role": "tenant_admin"}),
                 403, "permission_denied")
    assert_error(regulator.get("/api/v1/tenants/st-mary-hospital/audit/events/"), 404, "not_found")
    [grant] = AuditEvent.objects.using("owner").filter(action="object_permission.grant")
    assert (grant.tenant, grant.target_id, grant.data) == ("acme-bank", "outsider", {"action": "audit"})


@pytest.mark.parametrize("action", ["develop", "approve", "admin"])
def test_an_explicit_grant_reads_and_never_reaches_a_write(world, api, action):
    """One platform admin gives a grant alone, so it gives reading only: a grant of a write
    would let an operator hand a tenant's work, decisions or members to anyone, unseconded."""
    from django.contrib.auth.models import Permission
    from guardian.models import UserObjectPermission

    from tenants.errors import Invalid
    from tenants.roles import permission_codename
    from tenants.services import object_permission_grant

    with pytest.raises(Invalid, match="comes from a membership"):
        object_permission_grant(actor=world.platform_admin, tenant=world.a.tenant, user=world.outsider, action=action)
    # A row of such a grant, however it got there, gives nothing either.
    permission = Permission.objects.using("owner").get(codename=permission_codename(action))
    UserObjectPermission.objects.using("owner").create(user=world.outsider, permission=permission,
                                                       content_type=permission.content_type,
                                                       object_pk=str(world.a.tenant.pk))
    outsider = api(world.outsider)
    assert outsider.get("/api/v1/tenants/").json()["results"] == []
    assert_error(outsider.post(members_url(world.a.tenant), {"username": "outsider", "role": "developer"}),
                 404, "not_found")
    assert not Membership.objects.using("owner").filter(user=world.outsider).exists()


def test_a_platform_admin_reads_the_platform_events_and_no_tenants_trail(world, api):
    admin = api(world.platform_admin)
    assert admin.post("/api/v1/regions/", {"code": "eu-x1", "name": "X1", "jurisdiction": "eu"}).status_code == 201
    assert api(world.a.admin).post(f"/api/v1/tenants/{world.a.tenant.slug}/tokens/",
                                   {"name": "laptop", "expires_in_days": 7}).status_code == 201  # a tenant event
    events = admin.get("/api/v1/audit/events/").json()["results"]
    assert "catalogue.region_create" in {e["action"] for e in events}
    assert {e["tenant"] for e in events} == {""}
    assert_error(admin.get(f"/api/v1/tenants/{world.a.tenant.slug}/audit/events/"), 403, "permission_denied")
