"""GPU flavors and per-tenant quotas: platform admins set them, tenants read their own."""

import pytest

from audit.models import AuditEvent
from tenants.models import GpuFlavor, TenantQuota

from tests.support.governance import confirm_as, put_quota, second_platform_admin

from .test_api import assert_error


H100 = {"name": "h100-80gb", "memory_gb": 80, "billing_weight": "1.000", "description": "NVIDIA H100 SXM"}
MIG = {"name": "h100-1g.10gb", "memory_gb": 10, "billing_weight": "0.143", "description": "H100 MIG 1g.10gb slice"}


def actions():
    return list(AuditEvent.objects.using("owner").order_by("id").values_list("action", flat=True))


QUOTA = "/api/v1/tenants/acme-bank/quota/h100-80gb/"


@pytest.fixture
def flavors(world, api):
    admin = api(world.platform_admin)
    for flavor in (H100, MIG):
        assert admin.post("/api/v1/gpu-flavors/", flavor).status_code == 201
    return admin


def test_platform_admin_adds_flavors_including_mig_profiles(flavors, world, api):
    listed = api(world.a.developer).get("/api/v1/gpu-flavors/").json()["results"]
    assert [(f["name"], f["memory_gb"], f["billing_weight"]) for f in listed] == [
        ("h100-1g.10gb", 10, "0.143"), ("h100-80gb", 80, "1.000")]
    assert actions().count("gpu_flavor.create") == 2


def test_a_duplicate_or_malformed_flavor_is_refused(flavors):
    body = assert_error(flavors.post("/api/v1/gpu-flavors/", H100), 409, "conflict")
    assert body["fields"] == {"name": ["A GPU flavor named h100-80gb already exists."]}
    body = assert_error(flavors.post("/api/v1/gpu-flavors/", {**H100, "name": "H100 80GB"}), 400, "invalid")
    assert "name" in body["fields"]
    body = assert_error(flavors.post("/api/v1/gpu-flavors/", {**H100, "name": "x", "billing_weight": "0"}), 400, "invalid")
    assert "billing_weight" in body["fields"]


def test_only_platform_admins_manage_flavors(world, api):
    assert_error(api(world.a.admin).post("/api/v1/gpu-flavors/", H100), 403, "permission_denied")
    assert not GpuFlavor.objects.using("owner").exists()


@pytest.mark.embedded
def test_changing_a_flavor_is_audited_and_its_name_and_memory_stay(flavors):
    response = flavors.patch("/api/v1/gpu-flavors/h100-80gb/", {"billing_weight": "1.250", "memory_gb": 40})
    assert response.status_code == 200 and response.json()["billing_weight"] == "1.250"
    assert GpuFlavor.objects.using("owner").get(name="h100-80gb").memory_gb == 80
    [event] = AuditEvent.objects.using("owner").filter(action="gpu_flavor.update")
    assert event.data == {"from": {"billing_weight": "1.000"}, "to": {"billing_weight": "1.250"}}


@pytest.mark.embedded
def test_platform_admins_set_a_quota_and_the_tenant_reads_it(flavors, world, api):
    response = put_quota(api, world, {"nominal": 8, "borrowing_limit": 4})
    assert response.status_code == 200, response.content
    cut = flavors.put(QUOTA, {"nominal": 6, "borrowing_limit": 0})  # a cut applies at once
    assert cut.status_code == 200 and (cut.json()["nominal"], cut.json()["borrowing_limit"]) == (6, 0)
    quotas = api(world.a.developer).get("/api/v1/tenants/acme-bank/quota/").json()["results"]
    assert [(q["flavor"], q["nominal"], q["borrowing_limit"]) for q in quotas] == [("h100-80gb", 6, 0)]
    events = AuditEvent.objects.using("owner").filter(action="tenant_quota.set").order_by("id")
    first = {"nominal": 8, "borrowing_limit": 4, "gpu_hours_budget": None, "budget_mode": "hard"}
    [proposal] = AuditEvent.objects.using("owner").filter(action="governed_change.confirm")
    assert [e.data for e in events] == [
        {"from": None, "to": first, "proposal": int(proposal.target_id)},
        {"from": first, "to": {**first, "nominal": 6, "borrowing_limit": 0}, "proposal": None}]
    assert [e.actor_name for e in events] == ["ops-second", "ops-admin"]  # the confirmer writes a raise
    assert {e.tenant for e in events} == {"acme-bank"}
    assert api(world.b.developer).get("/api/v1/tenants/st-mary-hospital/quota/").json()["count"] == 0


@pytest.mark.embedded
def test_a_quota_raise_waits_for_a_second_platform_admin(flavors, world, api):
    """A quota decides baseline.gpu_quota and admission, so a raise lets through what was refused
    or held: one platform admin proposes it, another confirms it; neither the proposer nor the
    tenant's own admins may."""
    put_quota(api, world, {"nominal": 2})
    response = flavors.put(QUOTA, {"nominal": 16, "borrowing_limit": 4, "budget_mode": "soft"})
    assert response.status_code == 202, response.content
    proposal = response.json()
    assert (proposal["setting"], proposal["state"]) == ("quotas", "proposed")
    assert proposal["diff"]["loosening"] == ["h100-80gb.nominal 2 → 16", "h100-80gb.borrowing_limit 0 → 4"]
    assert TenantQuota.objects.using("owner").get().nominal == 2

    assert_error(confirm_as(api, world.platform_admin, world.a.tenant, proposal), 403, "separation_of_duties")
    for tenant_admin in (world.a.admin, world.a.admin2):
        assert_error(confirm_as(api, tenant_admin, world.a.tenant, proposal), 403, "platform_admin_required")
    assert TenantQuota.objects.using("owner").get().nominal == 2
    confirmed = confirm_as(api, second_platform_admin(), world.a.tenant, proposal)
    assert confirmed.status_code == 200 and confirmed.json()["state"] == "applied", confirmed.content
    quota = TenantQuota.objects.using("owner").get()
    assert (quota.nominal, quota.borrowing_limit, quota.budget_mode) == (16, 4, "soft")


@pytest.mark.embedded
def test_a_quota_proposal_is_void_once_the_quota_changes_under_it(flavors, world, api):
    put_quota(api, world, {"nominal": 8})
    proposal = flavors.put(QUOTA, {"nominal": 12}).json()
    assert flavors.put(QUOTA, {"nominal": 4}).status_code == 200  # a cut lands in between
    assert_error(confirm_as(api, second_platform_admin(), world.a.tenant, proposal), 409, "proposal_stale")
    assert TenantQuota.objects.using("owner").get().nominal == 4


def test_a_quota_raise_needs_a_second_platform_admin_to_exist(flavors, world, api):
    assert not second_platform_admin_exists()
    body = assert_error(flavors.put(QUOTA, {"nominal": 4}), 409, "second_platform_admin_required")
    assert "needs a second platform admin" in body["detail"]
    assert not TenantQuota.objects.using("owner").exists()


@pytest.mark.parametrize("before, after, loosens", [
    ({}, {"nominal": 1}, ["x.nominal 0 → 1", "x.gpu_hours_budget 0 → none"]),  # no quota allows nothing
    ({"nominal": 4}, {"nominal": 4, "borrowing_limit": 1}, ["x.borrowing_limit 0 → 1"]),
    ({"nominal": 4, "gpu_hours_budget": 10}, {"nominal": 4, "gpu_hours_budget": 11}, ["x.gpu_hours_budget 10 → 11"]),
    ({"nominal": 4, "gpu_hours_budget": 10}, {"nominal": 4}, ["x.gpu_hours_budget 10 → none"]),
    ({"nominal": 4, "gpu_hours_budget": 10}, {"nominal": 4, "gpu_hours_budget": 10, "budget_mode": "soft"},
     ["x.budget_mode hard → soft"]),
    ({"nominal": 4}, {"nominal": 3}, []),
    ({"nominal": 4}, {"nominal": 4, "gpu_hours_budget": 5}, []),  # a budget where there was none
    ({"nominal": 4, "budget_mode": "soft"}, {"nominal": 4}, []),
])
def test_which_quota_changes_loosen(before, after, loosens):
    from policies.loosening import QUOTAS, loosening

    def quota(values):
        return {"nominal": 0, "borrowing_limit": 0, "gpu_hours_budget": None, "budget_mode": "hard"} | values
    old = {"x": quota(before)} if before else {}
    assert loosening(QUOTAS, {"quotas": old}, {"quotas": {"x": quota(after)}}) == loosens


def proposal_row(client, proposal) -> str:
    page = client.get("/t/acme-bank/policy/").content.decode()
    row = page[page.index(f'data-proposal="{proposal["id"]}"'):]
    return row[:row.index("</tr>")]


@pytest.mark.embedded
def test_a_second_platform_admin_confirms_a_quota_raise_in_the_console(flavors, world, api, client):
    from tests.support.clients import sign_in
    from tests.support.otp import fresh_totp

    second = second_platform_admin()
    proposal = flavors.put(QUOTA, {"nominal": 8}).json()
    sign_in(client, world.a.admin)  # the tenant's admins see it, and that it is not theirs to confirm
    row = proposal_row(client, proposal)
    assert "h100-80gb.nominal 0 → 8" in row and "A second platform admin confirms it." in row and "Confirm<" not in row
    sign_in(client, world.platform_admin)
    assert "Confirm<" not in proposal_row(client, proposal)  # not for its proposer

    sign_in(client, second)
    assert "Confirm<" in proposal_row(client, proposal)
    form = {"action": "confirm", "proposal": proposal["id"], "diff_digest": proposal["diff_digest"]}
    wrong = client.post("/t/acme-bank/policy/", {**form, "otp_token": "12345"})
    assert wrong.status_code == 400 and "field-error" in wrong.content.decode()
    assert not TenantQuota.objects.using("owner").exists()
    confirmed = client.post("/t/acme-bank/policy/", {**form, "otp_token": fresh_totp(second)})
    assert confirmed.status_code == 302, confirmed.content.decode()[:500]
    assert TenantQuota.objects.using("owner").get().nominal == 8


def second_platform_admin_exists():
    from django.contrib.auth import get_user_model

    return get_user_model().objects.using("owner").filter(is_superuser=True).count() > 1


def test_a_tenant_admin_cannot_raise_their_own_quota(flavors, world, api):
    put_quota(api, world, {"nominal": 2})
    response = api(world.a.admin).put(QUOTA, {"nominal": 64})
    assert_error(response, 403, "permission_denied")
    assert TenantQuota.objects.using("owner").get().nominal == 2


@pytest.mark.parametrize("body, field", [({"nominal": -1}, "nominal"), ({"nominal": 1.5}, "nominal"),
                                         ({"nominal": 1, "borrowing_limit": -2}, "borrowing_limit")])
def test_a_quota_is_a_whole_number_of_gpus(flavors, body, field):
    response = flavors.put(QUOTA, body)
    assert field in assert_error(response, 400, "invalid")["fields"]


def test_a_quota_for_an_unknown_flavor_is_404(flavors):
    assert_error(flavors.put("/api/v1/tenants/acme-bank/quota/a100/", {"nominal": 1}), 404, "not_found")


@pytest.mark.embedded
def test_a_monthly_gpu_hour_budget_is_set_with_its_mode_and_audited(flavors, world, api):
    response = put_quota(api, world, {"nominal": 4, "gpu_hours_budget": 2000, "budget_mode": "soft"})
    assert response.status_code == 200, response.content
    [quota] = api(world.a.developer).get("/api/v1/tenants/acme-bank/quota/").json()["results"]
    assert (quota["gpu_hours_budget"], quota["budget_mode"]) == (2000, "soft")
    event = AuditEvent.objects.using("owner").get(action="tenant_quota.set")
    assert event.data["to"] == {"nominal": 4, "borrowing_limit": 0, "gpu_hours_budget": 2000, "budget_mode": "soft"}
    assert_error(api(world.a.admin).put(QUOTA, {"nominal": 4, "gpu_hours_budget": 99999}), 403, "permission_denied")


@pytest.mark.parametrize("body, field", [({"nominal": 1, "gpu_hours_budget": -5}, "gpu_hours_budget"),
                                         ({"nominal": 1, "budget_mode": "lenient"}, "budget_mode")])
def test_a_budget_is_whole_gpu_hours_in_a_known_mode(flavors, body, field):
    response = flavors.put(QUOTA, body)
    assert field in assert_error(response, 400, "invalid")["fields"]
    assert not TenantQuota.objects.using("owner").exists()
