"""Bytes belong to tenants: a digest alone grants no bytes, anywhere.

Every path that takes a digest resolves it through the asking tenant's own artifact
records: spec inputs and version artifacts at registration, uploaded files at assembly, the
run request, and the runner before it copies an input onto its node. An unknown digest and
another tenant's get the same answer, and each refusal is audited in the caller's tenant.
"""

import hashlib

import pytest
from django.utils import timezone

from audit.models import AuditEvent
from runners.discovery import Discovery, parse_declared
from runners.execution import Lease, run_claim
from runners.executor import InputRefused, _fetch_inputs, _prepare
from runners.models import Run
from runners.services import runner_register
from tenants.db import PLATFORM_ALIAS
from workflows.digests import version_digest
from workflows.models import Workflow, WorkflowVersion

from .test_api import assert_error
from .test_promotions import SPEC, T, Gate

VERSIONS = f"{T}/workflows/fraud-detector/versions/"
NOT_HELD = "no artifact of acme-bank has this digest: upload the input as an artifact first"


@pytest.fixture
def gate(world, api, tmp_path):
    return Gate(world, api, tmp_path)


def upload(client, tenant_slug, name, data, region):
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    response = client.client.generic(
        "PUT", f"/api/v1/tenants/{tenant_slug}/artifacts/{name}/?digest={digest}&kind=dataset&region={region}",
        data=data, content_type="application/octet-stream", **client.headers)
    assert response.status_code == 201, response.content
    return digest


def with_input(digest):
    return {**SPEC, "inputs": [{**SPEC["inputs"][0], "digest": digest}]}


def refusals(action="artifact.access_refused"):
    return [(e.tenant, e.actor_name, e.target_id, e.data, e.outcome)
            for e in AuditEvent.objects.using("owner").filter(action=action).order_by("id")]


@pytest.mark.embedded
def test_a_spec_input_must_be_the_tenants_artifact_and_no_answer_tells_whose_bytes_exist(gate, world, api):
    theirs = upload(api(world.b.developer), "st-mary-hospital", "records", b"patient,score\n1,0.2\n", "us")
    unknown = "sha256:" + hashlib.sha256(b"bytes nobody uploaded").hexdigest()
    answers = [gate.developer.post(VERSIONS, {"spec": with_input(digest)}) for digest in (theirs, unknown)]
    bodies = [assert_error(answer, 400, "invalid_spec") for answer in answers]
    assert bodies[0] == bodies[1] and answers[0].content == answers[1].content
    assert bodies[0]["fields"] == {"$.inputs[0].digest": [NOT_HELD]}
    assert not WorkflowVersion.objects.using("owner").exists()
    developer = world.a.developer.username
    assert refusals() == [("acme-bank", developer, theirs, {"field": "$.inputs[0].digest"}, "denied"),
                          ("acme-bank", developer, unknown, {"field": "$.inputs[0].digest"}, "denied")]
    ours = gate.dataset  # the tenant's own upload registers
    assert gate.developer.post(VERSIONS, {"spec": with_input(ours), "artifacts": []}).status_code == 201


def test_a_version_artifact_or_an_assembled_file_of_another_tenant_is_refused_and_audited(gate, world, api):
    theirs = upload(api(world.b.developer), "st-mary-hospital", "records", b"patient,score\n1,0.2\n", "us")
    body = assert_error(gate.developer.post(VERSIONS, {"spec": with_input(gate.dataset), "artifacts": [theirs]}),
                        400, "invalid")
    assert body["fields"] == {"artifacts[0]": [f"No artifact with digest {theirs} in acme-bank."]}
    files = {"config.json": theirs}
    response = gate.developer.post(f"{T}/artifacts/stolen/?digest={theirs}&kind=model&region=eu", {"files": files})
    assert response.status_code == 400, response.content
    developer = world.a.developer.username
    assert refusals() == [("acme-bank", developer, theirs, {"field": "artifacts[0]"}, "denied"),
                          ("acme-bank", developer, theirs, {"field": "files.config.json"}, "denied")]
    assert not AuditEvent.objects.using("owner").filter(tenant="st-mary-hospital",
                                                        action="artifact.access_refused").exists()


def legacy_version(world, spec) -> WorkflowVersion:
    """A version registered before spec inputs had to be artifacts (written as the owner)."""
    workflow = Workflow.objects.using("owner").create(tenant=world.a.tenant, name=spec["name"],
                                                      created_by=world.a.developer)
    digest, canonical = version_digest(spec, [])
    return WorkflowVersion.objects.using("owner").create(
        tenant=world.a.tenant, workflow=workflow, number=1, spec=spec, spec_canonical=canonical, digest=digest,
        artifact_digests=[], created_by=world.a.developer)


def running_on(world, version, hostname, jurisdiction) -> Lease:
    """A run of ``version`` that a runner on ``hostname`` has claimed, as the runner loads it."""
    node = runner_register(hostname=hostname, flavor_name="h100-80gb", region=jurisdiction,
                           jurisdiction=jurisdiction, discovery=Discovery("declared", parse_declared("0,1")))
    run = Run.objects.using("owner").create(
        tenant=world.a.tenant, version=version, stage="development", requested_by=world.a.developer, gpus=0,
        max_runtime_seconds=600, state="running", node=node, fencing_token=1, started_at=timezone.now())
    loaded = (Run.objects.using(PLATFORM_ALIAS).select_related("tenant", "node", "version__workflow")
              .get(pk=run.pk))
    return Lease(run=loaded, fencing_token=1, hostname=hostname)


def test_a_legacy_version_whose_input_is_not_an_artifact_cannot_run_and_the_runner_refuses_it_too(
        gate, world, api, tmp_path):
    theirs = upload(api(world.b.developer), "st-mary-hospital", "records", b"patient,score\n1,0.2\n", "us")
    version = legacy_version(world, with_input(theirs))
    response = gate.developer.post(f"{T}/runs/", {"workflow": "fraud-detector", "version": 1, "stage": "development"})
    body = assert_error(response, 403, "run_policy_denied")
    assert body["detail"] == ("Input transactions of version 1 is not an artifact of acme-bank; register a version "
                              "whose inputs are uploaded artifacts.")
    lease = running_on(world, version, "gpu-eu-1", "eu")  # however a run of it reached a node
    workdir = tmp_path / "run"
    _prepare(lease.run, workdir)
    with pytest.raises(InputRefused, match=rf"^Input transactions \({theirs}\) is not an artifact of acme-bank\.$"):
        _fetch_inputs(lease, workdir)
    assert not any((workdir / "inputs").iterdir())
    [refused] = AuditEvent.objects.using("owner").filter(action="run.input_refused")
    assert refused.tenant == "acme-bank" and refused.data["digest"] == theirs and refused.data["node"] == "gpu-eu-1"


def test_the_runner_copies_no_input_outside_the_jurisdiction_of_its_region_nor_claims_a_foreign_node(
        gate, world, tmp_path):
    number = gate.version()
    version = WorkflowVersion.objects.using("owner").get(workflow__name="fraud-detector", number=number)
    lease = running_on(world, version, "gpu-us-1", "us")  # an eu tenant's run on a us node
    workdir = tmp_path / "run"
    _prepare(lease.run, workdir)
    with pytest.raises(InputRefused, match=r"is stored in region eu, outside this node's jurisdiction \(us\)\.$"):
        _fetch_inputs(lease, workdir)
    assert not any((workdir / "inputs").iterdir())
    assert refusals("run.input_refused")[0][:1] == ("acme-bank",)

    Run.objects.using("owner").filter(pk=lease.run.pk).update(state="dispatched", fencing_token=2)
    assert run_claim(run_id=str(lease.run.public_id), fencing_token=2, hostname="gpu-us-1") is None
    [refused] = AuditEvent.objects.using("owner").filter(action="run.claim_refused")
    assert refused.data["reason"] == "The node is in us, outside acme-bank's jurisdiction (eu)."
    assert Run.objects.using("owner").get(pk=lease.run.pk).state == "dispatched"


def test_the_runner_copies_the_tenants_own_resident_input(gate, world, tmp_path):
    number = gate.version()
    version = WorkflowVersion.objects.using("owner").get(workflow__name="fraud-detector", number=number)
    lease = running_on(world, version, "gpu-eu-1", "eu")
    workdir = tmp_path / "run"
    _prepare(lease.run, workdir)
    _fetch_inputs(lease, workdir)
    assert (workdir / "inputs" / "transactions").read_bytes() == b"amount,label\n10,0\n20,1\n"
    assert not AuditEvent.objects.using("owner").filter(action="run.input_refused").exists()
