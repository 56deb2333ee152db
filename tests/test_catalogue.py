"""The platform catalogue: regions, jurisdictions, stages, roles and flavors are exact entries.

A value that is not an entry is refused with a sentence, whatever it looks like: whitespace,
control characters and case variants are never normalised, and no prefix of a region's code
places it in a jurisdiction. Only the region's catalogue entry does.
"""

import pytest

from audit.models import AuditEvent
from runners.discovery import Discovery, parse_declared
from runners.services import runner_register
from tenants.errors import Invalid
from tenants.services import gpu_flavor_create

from tests.support.clients import issue_token
from tests.support.governance import second_platform_admin
from tests.support.otp import fresh_totp
from .test_api import assert_error
from .test_artifacts import DIGEST, upload
from .test_workflows import SPEC, VERSIONS

NEAR_MISSES = ["EU", " eu", "eu ", "eu\n", "e\u200bu", "eu\x00"]


def add_region(admin, code, jurisdiction):
    return admin.post("/api/v1/regions/", {"code": code, "name": code, "jurisdiction": jurisdiction})


def accept_region(api, who, code, otp_token=None):
    return api(who).post(f"/api/v1/regions/{code}/accept/", {"otp_token": otp_token or fresh_totp(who)})


def region_in_force(api, world, code, jurisdiction):
    """world.platform_admin proposes the region and a second platform admin accepts it."""
    assert add_region(api(world.platform_admin), code, jurisdiction).status_code == 201
    accepted = accept_region(api, second_platform_admin(), code)
    assert accepted.status_code == 200 and accepted.json()["in_force"], accepted.content


def test_platform_admins_manage_the_catalogue_and_members_read_it(world, api):
    admin = api(world.platform_admin)
    created = admin.post("/api/v1/jurisdictions/", {"code": "no", "name": "Norway"})
    assert created.status_code == 201, created.content
    region = add_region(admin, "no-osl1", "no")
    assert region.status_code == 201, region.content
    assert {key: region.json()[key] for key in ("code", "name", "jurisdiction", "in_force", "proposed_by")} == {
        "code": "no-osl1", "name": "no-osl1", "jurisdiction": "no", "in_force": False, "proposed_by": "ops-admin"}
    assert accept_region(api, second_platform_admin(), "no-osl1").json()["accepted_by"] == "ops-second"
    assert assert_error(add_region(admin, "no-osl1", "no"), 409, "conflict")["fields"] == {
        "code": ["The catalogue already has region no-osl1."]}
    assert assert_error(add_region(admin, "no-osl2", "NO"), 400, "invalid")["fields"] == {
        "jurisdiction": ["Jurisdiction 'NO' is not in the catalogue; entries are case-sensitive (no is)."]}
    actions = set(AuditEvent.objects.using("owner").values_list("action", "target_id"))
    assert {("catalogue.jurisdiction_create", "no"), ("catalogue.region_create", "no-osl1")} <= actions

    member = api(issue_token(world.a.developer, world.a.tenant))
    listed = {r["code"]: r["jurisdiction"] for r in member.get("/api/v1/regions/").json()["results"]}
    assert listed["no-osl1"] == "no" and listed["eu-west1"] == "eu"
    assert member.get("/api/v1/regions/?jurisdiction=no").json()["results"][0]["code"] == "no-osl1"
    assert_error(member.post("/api/v1/regions/", {"code": "eu-x", "name": "x", "jurisdiction": "eu"}), 403, "permission_denied")
    assert_error(api(world.a.admin).post("/api/v1/jurisdictions/", {"code": "xx", "name": "x"}), 403, "permission_denied")
    assert "eu-x" not in {r["code"] for r in admin.get("/api/v1/regions/").json()["results"]}


@pytest.mark.parametrize("bad", NEAR_MISSES + ["europe"])
def test_a_tenant_names_an_exact_jurisdiction(world, api, bad):
    admin = api(world.platform_admin)
    good = {"slug": "nordic-insure", "name": "Nordic Insurance", "jurisdiction": "eu"}
    body = assert_error(admin.post("/api/v1/tenants/", {**good, "jurisdiction": bad}), 400, "invalid")
    assert list(body["fields"]) == ["jurisdiction"]
    assert body["fields"]["jurisdiction"][0].endswith(".")
    assert admin.post("/api/v1/tenants/", good).status_code == 201


@pytest.mark.parametrize("bad", ["EU-west1", "eu-west1 ", "Eu-West1", "eu-west"])
def test_an_artifact_region_is_an_exact_entry(world, api, bad):
    developer = api(issue_token(world.a.developer, world.a.tenant))
    body = assert_error(upload(developer, region=bad), 400, "invalid")
    assert list(body["fields"]) == ["region"]
    assert upload(developer, region="eu-west1").status_code == 201


def test_a_region_is_in_the_jurisdiction_its_entry_names_never_the_one_its_prefix_suggests(world, api):
    region_in_force(api, world, "eu-shadow", "us")  # looks European; the catalogue says us
    developer = api(issue_token(world.a.developer, world.a.tenant))  # acme-bank is in eu
    assert assert_error(upload(developer, region="eu-shadow"), 400, "invalid")["fields"] == {
        "region": ["Region eu-shadow is outside acme-bank's jurisdiction (eu)."]}
    assert assert_error(upload(developer, region="eu-evil"), 400, "invalid")["fields"] == {
        "region": ["Region 'eu-evil' is not in the platform's catalogue."]}

    nodes = dict(hostname="gpu-shadow-1", flavor_name="h100-80gb", discovery=Discovery("declared", parse_declared("0")))
    gpu_flavor_create(actor=world.platform_admin, name="h100-80gb", memory_gb=80, billing_weight="1")
    with pytest.raises(Invalid, match=r"Region eu-shadow is outside the node's jurisdiction \(eu\)\."):
        runner_register(**nodes, region="eu-shadow", jurisdiction="eu")
    with pytest.raises(Invalid, match=r"Jurisdiction 'EU' is not in the catalogue"):
        runner_register(**nodes, region="eu-west1", jurisdiction="EU")
    assert runner_register(**nodes, region="eu-shadow", jurisdiction="us").jurisdiction == "us"

    policy = api(world.a.admin).put("/api/v1/tenants/acme-bank/policy-data/", {"allowed_regions": ["eu-shadow"]})
    assert assert_error(policy, 400, "invalid")["fields"] == {
        "allowed_regions": ["Region eu-shadow is outside the tenant's jurisdiction (eu)."]}


def test_a_spec_input_names_a_catalogue_region(world, api):
    gpu_flavor_create(actor=world.platform_admin, name="h100-80gb", memory_gb=80, billing_weight="1")
    developer = api(issue_token(world.a.developer, world.a.tenant))
    assert upload(developer, region="eu-west1").status_code == 201
    spec = SPEC + f"inputs:\n  - name: weights\n    digest: \"{DIGEST}\"\n    region: EU-west1\n    uri: s3://x/w\n"
    body = assert_error(developer.post(VERSIONS, {"spec": spec}), 400, "invalid_spec")
    assert list(body["fields"]) == ["$.inputs[0].region"]  # the spec's own shape refuses upper case
    body = assert_error(developer.post(VERSIONS, {"spec": spec.replace("EU-west1", "eu-west9")}), 400, "invalid_spec")
    assert body["fields"] == {"$.inputs[0].region": ["Region 'eu-west9' is not in the platform's catalogue."]}
    assert developer.post(VERSIONS, {"spec": spec.replace("EU-west1", "eu-west1")}).status_code == 201


@pytest.mark.parametrize("flavor", ["H100-80GB", "h100-80gb "])
def test_a_spec_flavor_is_an_exact_entry(world, api, flavor):
    gpu_flavor_create(actor=world.platform_admin, name="h100-80gb", memory_gb=80, billing_weight="1")
    developer = api(issue_token(world.a.developer, world.a.tenant))
    spec = SPEC.replace("flavor: h100-80gb", f"flavor: '{flavor}'")
    body = assert_error(developer.post(VERSIONS, {"spec": spec}), 400, "invalid_spec")
    assert list(body["fields"]) == ["$.steps[1].gpu.flavor"], body


@pytest.mark.parametrize("role", ["Approver", "approver ", "APPROVER", "approver\n"])
def test_a_role_is_an_exact_entry(world, api, role):
    response = api(world.a.admin).post("/api/v1/tenants/acme-bank/members/",
                                       {"username": world.b.developer.username, "role": role})
    assert list(assert_error(response, 400, "invalid")["fields"]) == ["role"]


@pytest.mark.parametrize("stage", ["Staging", "staging ", "STAGING", "stag"])
def test_a_stage_is_an_exact_entry(world, api, stage):
    gpu_flavor_create(actor=world.platform_admin, name="h100-80gb", memory_gb=80, billing_weight="1")
    developer = api(issue_token(world.a.developer, world.a.tenant))
    assert developer.post(VERSIONS, {"spec": SPEC}).status_code == 201
    response = developer.post("/api/v1/tenants/acme-bank/promotions/",
                              {"workflow": "fraud-detector", "version": 1, "stage": stage})
    assert list(assert_error(response, 400, "invalid")["fields"]) == ["stage"]


@pytest.mark.embedded  # region_accept's select_for_update runs on SQLite too
def test_a_new_region_counts_only_once_a_second_platform_admin_accepts_it(world, api):
    """A region lets data and work into its jurisdiction, so adding one is loosening: one
    platform admin proposes it and another accepts it with a fresh one-time password."""
    second = second_platform_admin()
    assert add_region(api(world.platform_admin), "eu-south1", "eu").status_code == 201
    developer = api(issue_token(world.a.developer, world.a.tenant))
    assert assert_error(upload(developer, region="eu-south1"), 400, "invalid")["fields"] == {
        "region": ["Region 'eu-south1' is not in the platform's catalogue."]}
    policy = api(world.a.admin).put("/api/v1/tenants/acme-bank/policy-data/", {"allowed_regions": ["eu-south1"]})
    assert "allowed_regions" in assert_error(policy, 400, "invalid")["fields"]

    assert_error(accept_region(api, world.platform_admin, "eu-south1"), 403, "separation_of_duties")
    assert_error(accept_region(api, world.a.admin, "eu-south1"), 403, "permission_denied")
    assert_error(accept_region(api, second, "eu-nowhere"), 404, "not_found")
    accepted = accept_region(api, second, "eu-south1")
    assert accepted.status_code == 200 and accepted.json()["in_force"], accepted.content
    assert_error(accept_region(api, second, "eu-south1"), 409, "region_accepted")
    assert upload(developer, region="eu-south1").status_code == 201
    [event] = AuditEvent.objects.using("owner").filter(action="catalogue.region_accept")
    assert (event.actor_name, event.target_id, event.data["proposed_by"]) == ("ops-second", "eu-south1", "ops-admin")

