"""GPU flavors and per-tenant quotas: platform admins set them, tenants read their own."""

import pytest

from audit.models import AuditEvent
from tenants.models import GpuFlavor, TenantQuota

from .test_api import assert_error


H100 = {"name": "h100-80gb", "memory_gb": 80, "billing_weight": "1.000", "description": "NVIDIA H100 SXM"}
MIG = {"name": "h100-1g.10gb", "memory_gb": 10, "billing_weight": "0.143", "description": "H100 MIG 1g.10gb slice"}


def actions():
    return list(AuditEvent.objects.using("owner").order_by("id").values_list("action", flat=True))


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
def test_platform_admin_sets_a_quota_and_the_tenant_reads_it(flavors, world, api):
    response = flavors.put("/api/v1/tenants/acme-bank/quota/h100-80gb/", {"nominal": 8, "borrowing_limit": 4})
    assert response.status_code == 200, response.content
    flavors.put("/api/v1/tenants/acme-bank/quota/h100-80gb/", {"nominal": 16, "borrowing_limit": 0})
    quotas = api(world.a.developer).get("/api/v1/tenants/acme-bank/quota/").json()["results"]
    assert [(q["flavor"], q["nominal"], q["borrowing_limit"]) for q in quotas] == [("h100-80gb", 16, 0)]
    events = AuditEvent.objects.using("owner").filter(action="tenant_quota.set").order_by("id")
    first = {"nominal": 8, "borrowing_limit": 4, "gpu_hours_budget": None, "budget_mode": "hard"}
    assert [e.data for e in events] == [
        {"from": None, "to": first},
        {"from": first, "to": {**first, "nominal": 16, "borrowing_limit": 0}}]
    assert {e.tenant for e in events} == {"acme-bank"}
    assert api(world.b.developer).get("/api/v1/tenants/st-mary-hospital/quota/").json()["count"] == 0


def test_a_tenant_admin_cannot_raise_their_own_quota(flavors, world, api):
    flavors.put("/api/v1/tenants/acme-bank/quota/h100-80gb/", {"nominal": 2})
    response = api(world.a.admin).put("/api/v1/tenants/acme-bank/quota/h100-80gb/", {"nominal": 64})
    assert_error(response, 403, "permission_denied")
    assert TenantQuota.objects.using("owner").get().nominal == 2


@pytest.mark.parametrize("body, field", [({"nominal": -1}, "nominal"), ({"nominal": 1.5}, "nominal"),
                                         ({"nominal": 1, "borrowing_limit": -2}, "borrowing_limit")])
def test_a_quota_is_a_whole_number_of_gpus(flavors, body, field):
    response = flavors.put("/api/v1/tenants/acme-bank/quota/h100-80gb/", body)
    assert field in assert_error(response, 400, "invalid")["fields"]


def test_a_quota_for_an_unknown_flavor_is_404(flavors):
    assert_error(flavors.put("/api/v1/tenants/acme-bank/quota/a100/", {"nominal": 1}), 404, "not_found")


@pytest.mark.embedded
def test_a_monthly_gpu_hour_budget_is_set_with_its_mode_and_audited(flavors, world, api):
    response = flavors.put("/api/v1/tenants/acme-bank/quota/h100-80gb/",
                           {"nominal": 4, "gpu_hours_budget": 2000, "budget_mode": "soft"})
    assert response.status_code == 200, response.content
    [quota] = api(world.a.developer).get("/api/v1/tenants/acme-bank/quota/").json()["results"]
    assert (quota["gpu_hours_budget"], quota["budget_mode"]) == (2000, "soft")
    event = AuditEvent.objects.using("owner").get(action="tenant_quota.set")
    assert event.data["to"] == {"nominal": 4, "borrowing_limit": 0, "gpu_hours_budget": 2000, "budget_mode": "soft"}
    assert_error(api(world.a.admin).put("/api/v1/tenants/acme-bank/quota/h100-80gb/",
                                        {"nominal": 4, "gpu_hours_budget": 99999}), 403, "permission_denied")


@pytest.mark.parametrize("body, field", [({"nominal": 1, "gpu_hours_budget": -5}, "gpu_hours_budget"),
                                         ({"nominal": 1, "budget_mode": "lenient"}, "budget_mode")])
def test_a_budget_is_whole_gpu_hours_in_a_known_mode(flavors, body, field):
    response = flavors.put("/api/v1/tenants/acme-bank/quota/h100-80gb/", body)
    assert field in assert_error(response, 400, "invalid")["fields"]
    assert not TenantQuota.objects.using("owner").exists()
