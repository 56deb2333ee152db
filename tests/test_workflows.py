"""Workflows and immutable versions through the API."""

import hashlib

import pytest
import rfc8785
from django.db import DatabaseError, connections, transaction

from audit.models import AuditEvent
from workflows.models import Artifact, WorkflowVersion

from .test_api import assert_error


SPEC = """
name: fraud-detector
description: Fine-tune the fraud model
steps:
  - name: prepare
    command: [python, prepare.py]
  - name: train
    command: [python, train.py]
    gpu: {flavor: h100-80gb, count: 2}
    depends_on: [prepare]
"""
VERSIONS = "/api/v1/tenants/acme-bank/workflows/fraud-detector/versions/"


@pytest.fixture
def developer(world, api):
    from tenants.services import gpu_flavor_create

    gpu_flavor_create(actor=world.platform_admin, name="h100-80gb", memory_gb=80, billing_weight="1")
    return api(world.a.developer)


def make_artifact(world, name="base-model", digest_byte="ab"):
    return Artifact.objects.using("owner").create(
        tenant=world.a.tenant, name=name, kind="model", digest="sha256:" + digest_byte * 32, size_bytes=1024,
        region="eu", created_by=world.a.developer)


@pytest.mark.embedded
def test_registering_a_spec_creates_version_one_with_its_rfc8785_digest(developer):
    response = developer.post(VERSIONS, {"spec": SPEC})
    assert response.status_code == 201, response.content
    body = response.json()
    assert (body["workflow"], body["number"], body["uses_images"]) == ("fraud-detector", 1, False)
    expected = hashlib.sha256(rfc8785.dumps({"spec": body["spec"], "artifacts": []})).hexdigest()
    assert body["digest"] == f"sha256:{expected}"
    actions = list(AuditEvent.objects.using("owner").exclude(action="audit.checkpoint").order_by("id")
                   .values_list("action", "target_id"))
    assert actions[-2:] == [("workflow.create", "fraud-detector"), ("workflow_version.register", "fraud-detector@1")]


def test_registering_the_identical_spec_again_returns_the_existing_version(developer):
    first = developer.post(VERSIONS, {"spec": SPEC}).json()
    again = developer.post(VERSIONS, {"spec": SPEC.replace("steps:", "# same content\nsteps:")})
    assert again.status_code == 200
    assert again.json()["number"] == first["number"] == 1
    assert WorkflowVersion.objects.using("owner").count() == 1


@pytest.mark.embedded
def test_a_changed_spec_becomes_the_next_version_and_the_diff_names_the_change(developer):
    developer.post(VERSIONS, {"spec": SPEC})
    second = developer.post(VERSIONS, {"spec": SPEC.replace("count: 2", "count: 4")}).json()
    assert second["number"] == 2
    diff = developer.get(f"{VERSIONS}2/diff/").json()
    assert diff["from"]["number"] == 1 and diff["to"]["number"] == 2
    assert diff["spec"] == [{"op": "changed", "path": "$.steps.train.gpu.count", "from": 2, "to": 4}]
    listed = developer.get(VERSIONS).json()["results"]
    assert [v["number"] for v in listed] == [2, 1]
    detail = developer.get("/api/v1/tenants/acme-bank/workflows/fraud-detector/").json()
    assert detail["latest_version"] == 2 and detail["stages"] == {}


def test_the_digest_covers_the_artifacts_a_version_references(developer, world):
    model = make_artifact(world)
    plain = developer.post(VERSIONS, {"spec": SPEC}).json()
    with_model = developer.post(VERSIONS, {"spec": SPEC, "artifacts": [model.digest]})
    assert with_model.status_code == 201
    assert with_model.json()["digest"] != plain["digest"] and with_model.json()["artifacts"] == [model.digest]
    diff = developer.get(f"{VERSIONS}2/diff/?against=1").json()
    assert diff["spec"] == [] and diff["artifacts"] == {"added": [model.digest], "removed": []}


@pytest.mark.embedded
def test_an_artifact_of_another_tenant_or_unknown_digest_is_refused(developer, world):
    foreign = Artifact.objects.using("owner").create(
        tenant=world.b.tenant, name="theirs", kind="model", digest="sha256:" + "cd" * 32, size_bytes=1,
        region="us", created_by=world.b.developer)
    body = assert_error(developer.post(VERSIONS, {"spec": SPEC, "artifacts": [foreign.digest]}), 400, "invalid")
    assert body["fields"] == {"artifacts[0]": [f"No artifact with digest {foreign.digest} in acme-bank."]}
    assert not WorkflowVersion.objects.using("owner").exists()


def test_an_invalid_spec_is_refused_with_json_paths(developer):
    bad = SPEC.replace("flavor: h100-80gb", "flavor: a100").replace("depends_on: [prepare]", "depends_on: [ghost]")
    body = assert_error(developer.post(VERSIONS, {"spec": bad}), 400, "invalid_spec")
    assert body["fields"] == {
        "$.steps[1].gpu.flavor": ["unknown GPU flavor 'a100' (known: h100-80gb)"],
        "$.steps[1].depends_on[0]": ["depends on unknown step 'ghost'"],
    }
    assert not WorkflowVersion.objects.using("owner").exists()


def test_the_spec_must_name_the_workflow_in_the_path(developer):
    response = developer.post("/api/v1/tenants/acme-bank/workflows/other/versions/", {"spec": SPEC})
    assert assert_error(response, 400, "invalid")["fields"] == {
        "spec.name": ["The spec names workflow 'fraud-detector', not 'other'."]}


def test_a_spec_with_a_container_image_registers_and_is_marked(developer):
    spec = SPEC.replace("command: [python, train.py]", "image: registry.example/train:1")
    assert developer.post(VERSIONS, {"spec": spec}).json()["uses_images"] is True


@pytest.mark.parametrize("role", ["approver", "auditor"])
def test_only_developers_register_versions(world, api, developer, role):
    response = api(getattr(world.a, role)).post(VERSIONS, {"spec": SPEC})
    assert_error(response, 403, "permission_denied")
    assert not WorkflowVersion.objects.using("owner").exists()


@pytest.mark.embedded
def test_the_database_refuses_to_change_a_stored_spec(developer):
    developer.post(VERSIONS, {"spec": SPEC})
    for alias in ("owner", "default"):
        with pytest.raises(DatabaseError, match="append-only|permission denied|row-level"), \
                transaction.atomic(using=alias), connections[alias].cursor() as cursor:
            if alias == "default" and connections[alias].vendor == "postgresql":
                cursor.execute("SELECT set_config('app.tenant_id', %s, true)",
                               [str(WorkflowVersion.objects.using("owner").get().tenant_id)])
            cursor.execute("UPDATE workflows_workflowversion SET spec = '{}'")
    assert WorkflowVersion.objects.using("owner").get().spec["name"] == "fraud-detector"


def test_a_version_is_read_by_number_and_unknown_numbers_are_404(developer):
    developer.post(VERSIONS, {"spec": SPEC})
    assert developer.get(f"{VERSIONS}1/").json()["spec"]["steps"][1]["gpu"] == {"flavor": "h100-80gb", "count": 2}
    assert_error(developer.get(f"{VERSIONS}9/"), 404, "not_found")
    assert_error(developer.get("/api/v1/tenants/acme-bank/workflows/nope/versions/"), 404, "not_found")


def test_console_shows_workflows_versions_digest_and_diff(developer, world, client):
    from tests.support.clients import sign_in

    model = make_artifact(world)
    developer.post(VERSIONS, {"spec": SPEC})
    developer.post(VERSIONS, {"spec": SPEC.replace("count: 2", "count: 4"), "artifacts": [model.digest]})
    sign_in(client, world.a.auditor)
    listing = client.get("/t/acme-bank/workflows/").content.decode()
    assert 'href="/t/acme-bank/workflows/fraud-detector/"' in listing
    page = client.get("/t/acme-bank/workflows/fraud-detector/v2/").content.decode()
    version = WorkflowVersion.objects.using("owner").get(number=2)
    assert f'<code id="version-digest">{version.digest}</code>' in page
    assert "$.steps.train.gpu.count" in page and 'data-artifact="base-model"' in page
    detail = client.get("/t/acme-bank/workflows/fraud-detector/").content.decode()
    assert "v1" in detail and "v2" in detail
    assert client.get("/t/acme-bank/workflows/fraud-detector/v7/").status_code == 404


@pytest.mark.parametrize("spec", [[{"name": "x"}], 17, True])
def test_a_spec_that_is_neither_a_mapping_nor_text_is_a_400_on_the_spec(developer, spec):
    body = assert_error(developer.post(VERSIONS, {"spec": spec}), 400, "invalid_spec")
    assert list(body["fields"]) == ["$"], body
