"""The promotion gate through the API: policy first, then people with fresh one-time passwords,
then an atomic stage move and a signed attestation. Every bypass attempt is refused here."""

import hashlib
import json
import os
import threading
from datetime import timedelta

import pytest
from django.db import connections
from django.utils import timezone

from audit.models import AuditEvent
from policies.models import TenantPolicy, Waiver
from workflows import signing
from workflows.attestations import AttestationInvalid, verify_attestation
from workflows.models import Approval, Promotion, StagePointer

from tests.support.baseline import accept_running_baseline
from tests.support.clients import issue_token

from tests.support.otp import current_totp, fresh_totp
from .test_api import assert_error
from tests.support.governance import put_governed


T = "/api/v1/tenants/acme-bank"
SPEC = {
    "name": "fraud-detector",
    "base_model": {"name": "mistralai/Mistral-7B"},
    "inputs": [{"name": "transactions", "region": "eu-west1", "uri": "s3://acme-data/tx.parquet"}],  # + Gate.dataset
    "steps": [{"name": "train", "command": ["python", "train.py"], "gpu": {"flavor": "h100-80gb", "count": 2}}],
}


class Gate:
    """acme-bank with a GPU quota, a trusted CI key, policy data, and helpers to push signed
    artifacts and register versions."""

    def __init__(self, world, api, tmp_path):
        from tenants.services import gpu_flavor_create
        from tests.support.governance import set_quota

        self.world, self.api, self.tmp = world, api, tmp_path
        flavor = gpu_flavor_create(actor=world.platform_admin, name="h100-80gb", memory_gb=80, billing_weight="1")
        set_quota(world, world.a.tenant, flavor, nominal=2, borrowing_limit=2)
        self.private_pem, public_pem = signing.generate_key_pair()
        self.admin = api(world.a.admin)
        assert self.put_governed("trust/", {"public_keys": {"ci-2026": public_pem.decode()}}).status_code == 200
        response = self.put_governed("policy-data/", {"base_model_allowlist": ["mistralai/*"],
                                                      "metrics_thresholds": {"accuracy": 0.9}})
        assert response.status_code == 200, response.content
        self.developer = api(world.a.developer)

    def put_governed(self, setting, body):
        """Change acme-bank's policy data or trust; a loosening is confirmed by its second admin."""
        return put_governed(self.api, self.world.a, f"{T}/{setting}", body)

    def push(self, name, data: bytes, kind="model", sign=True):
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        response = self.developer.client.generic(
            "PUT", f"{T}/artifacts/{name}/?digest={digest}&kind={kind}&region=eu", data=data,
            content_type="application/octet-stream", **self.developer.headers)
        assert response.status_code in (200, 201), response.content
        if sign:
            self.sign(name, digest, data)
        return digest

    def sign(self, name, digest, data):
        path = self.tmp / f"{name}-{digest[7:15]}"
        path.write_bytes(data)
        bundle = signing.sign_path(path, private_key_pem=self.private_pem, name=name)
        response = self.developer.client.generic(
            "POST", f"{T}/artifacts/{name}/{digest}/signatures/", data=bundle.encode(),
            content_type="application/json", **self.developer.headers)
        assert response.status_code == 201, response.content

    @property
    def dataset(self) -> str:
        """The digest of the transactions the spec's input names, uploaded as acme-bank's artifact."""
        if not hasattr(self, "_dataset"):
            self._dataset = self.push("transactions", b"amount,label\n10,0\n20,1\n", kind="dataset", sign=False)
        return self._dataset

    def version(self, *, accuracy=0.95, sign_model=True, spec_changes=None):
        model = self.push("scorer", os.urandom(4096), sign=sign_model)
        metrics = self.push("eval", json.dumps({"accuracy": accuracy}).encode(), kind="metrics")
        spec = {**SPEC, "inputs": [{**SPEC["inputs"][0], "digest": self.dataset}], **(spec_changes or {})}
        response = self.developer.post(f"{T}/workflows/fraud-detector/versions/",
                                       {"spec": spec, "artifacts": [model, metrics]})
        assert response.status_code == 201, response.content
        self.accuracy = {**getattr(self, "accuracy", {}), response.json()["number"]: accuracy}
        return response.json()["number"]

    def staging_run(self, number, metrics: dict):
        """What a successful staging run of the version leaves: a succeeded run and its metrics
        output, stored and signed by the platform through the function runners call."""
        from runners.models import Run
        from workflows.models import WorkflowVersion
        from workflows.outputs import run_output_register

        version = WorkflowVersion.objects.using("owner").get(workflow__tenant=self.world.a.tenant,
                                                             workflow__name="fraud-detector", number=number)
        run = Run.objects.using("owner").create(
            tenant=self.world.a.tenant, version=version, stage="staging", requested_by=self.world.a.developer,
            max_runtime_seconds=60, state="succeeded", fencing_token=1, started_at=timezone.now(),
            finished_at=timezone.now())
        path = self.tmp / f"staging-metrics-{run.public_id}.json"
        path.write_bytes(json.dumps(metrics).encode())
        return run_output_register(
            tenant=self.world.a.tenant, version=version, stage="staging", run_id=str(run.public_id), name="eval",
            kind="metrics", path=path, region="eu", created_by=self.world.a.developer, using="owner",
            facts={"run": str(run.public_id), "version_digest": version.digest, "stage": "staging"})

    def request(self, number, stage, who=None, **extra):
        from workflows.models import RunOutput

        if stage == "production" and number in getattr(self, "accuracy", {}) and not RunOutput.objects.using(
                "owner").filter(version__number=number, version__workflow__name="fraud-detector",
                                stage="staging").exists():
            self.staging_run(number, {"accuracy": self.accuracy[number]})
        return (who or self.developer).post(f"{T}/promotions/", {"workflow": "fraud-detector", "version": number,
                                                                 "stage": stage, **extra})

    def approve(self, promotion_id, person, code=None, **extra):
        return self.api(person).post(f"{T}/promotions/{promotion_id}/approve/",
                                     {"otp_token": code or fresh_totp(person), **extra})

    def promote(self, number, stage):
        """Take a version through a stage with the approvals it needs."""
        response = self.request(number, stage)
        assert response.status_code == 201, response.content
        body = response.json()
        for person in [self.world.a.approver, self.world.a.approver2][:body["required_approvals"]]:
            body = self.approve(body["id"], person).json()
        assert body["state"] == "promoted", body
        return body


@pytest.fixture
def gate(world, api, tmp_path):
    return Gate(world, api, tmp_path)


def rules(body):
    return {v["rule"] for v in body["violations"]}


def test_development_needs_only_a_policy_allow_and_moves_the_pointer(gate, world):
    number = gate.version()
    response = gate.request(number, "development")
    body = response.json()
    assert response.status_code == 201 and body["state"] == "promoted", body
    assert body["required_approvals"] == 0 and len(body["decisions"]) == 1
    pointer = StagePointer.objects.using("owner").get(workflow__name="fraud-detector", stage="development")
    assert pointer.version.number == number
    actions = list(AuditEvent.objects.using("owner").filter(action__startswith="promotion.")
                   .values_list("action", flat=True).order_by("id"))
    assert actions == ["promotion.request", "promotion.check", "promotion.promote"]


@pytest.mark.embedded
def test_production_needs_staging_two_approvals_and_a_signed_attestation(gate, world, api):
    number = gate.version()
    gate.promote(number, "development")
    staging = gate.promote(number, "staging")
    assert staging["required_approvals"] == 1
    response = gate.request(number, "production")
    body = response.json()
    assert body["state"] == "awaiting_approval" and body["required_approvals"] == 2
    assert {v["rule"] for v in body["violations"] if v["pending"]} == {"baseline.min_approvals"}
    first = gate.approve(body["id"], world.a.approver).json()
    assert first["state"] == "awaiting_approval" and [a["current"] for a in first["approvals"]] == [True]
    final = gate.approve(body["id"], world.a.approver2).json()
    assert final["state"] == "promoted", final
    assert StagePointer.objects.using("owner").get(stage="production").version.number == number

    # The attestation verifies offline against the platform's published keys.
    bundle = api(world.a.auditor).get(f"{T}/promotions/{body['id']}/attestation")
    keys = {kid: entry["public_key"] for kid, entry in api(world.a.auditor).get("/api/v1/platform/keys/").json().items()}
    statement = verify_attestation(bundle.content, keys)
    predicate = statement["predicate"]
    assert statement["subject"][0]["digest"] == {"sha256": final["version_digest"].removeprefix("sha256:")}
    assert predicate["stage"] == "production" and predicate["policy_revision"] == final["policy_revision"]
    assert [a["user"] for a in predicate["approvers"]] == ["acme-bank-approver", "acme-bank-approver2"]
    assert predicate["decision_ids"] == final["decisions"] and predicate["metrics_artifact"].startswith("sha256:")
    tampered = json.loads(bundle.content)
    tampered["dsseEnvelope"]["payload"] = tampered["dsseEnvelope"]["payload"][:-8] + "AAAAAAA="
    with pytest.raises(AttestationInvalid):
        verify_attestation(json.dumps(tampered), keys)
    with pytest.raises(AttestationInvalid):
        verify_attestation(bundle.content, {})


def test_a_new_production_version_supersedes_the_previous_one(gate, world):
    first = gate.version()
    for stage in ("development", "staging", "production"):
        gate.promote(first, stage)
    second = gate.version(accuracy=0.97)
    for stage in ("development", "staging"):
        gate.promote(second, stage)
    promoted = gate.promote(second, "production")
    assert promoted["previous_version"] == first
    old = Promotion.objects.using("owner").get(version__number=first, stage="production")
    assert old.superseded_at is not None and old.state == "promoted"


def test_production_before_staging_is_rejected_at_once_with_its_reasons(gate):
    number = gate.version()
    body = gate.request(number, "production").json()
    assert body["state"] == "rejected"
    assert "baseline.staging_before_production" in rules(body)
    assert "must reach staging before production" in body["close_reason"]


def test_an_unsigned_artifact_is_rejected_and_a_signed_one_goes_through(gate, world):
    number = gate.version(sign_model=False)
    body = gate.request(number, "development").json()
    assert body["state"] == "rejected" and "baseline.artifacts_signed" in rules(body)
    assert "has no signature verified" in body["close_reason"]
    # Fix it: sign the model, then ask again.
    version = gate.developer.get(f"{T}/workflows/fraud-detector/versions/{number}/").json()
    scorer = [d for d in version["artifacts"]
              if gate.developer.get(f"{T}/artifacts/scorer/{d}/").status_code == 200][0]
    content = gate.developer.get(f"{T}/artifacts/scorer/{scorer}/content")
    gate.sign("scorer", scorer, b"".join(content.streaming_content))
    assert gate.request(number, "development").json()["state"] == "promoted"


def test_metrics_typed_into_a_request_are_refused(gate):
    number = gate.version()
    assert_error(gate.request(number, "development", metrics={"accuracy": 0.99}), 400, "metrics_not_accepted")
    assert not Promotion.objects.using("owner").exists()


@pytest.mark.embedded
def test_metrics_below_the_threshold_hold_the_request_until_an_override_is_confirmed(gate, world, api):
    number = gate.version(accuracy=0.5)
    gate.promote(number, "development")  # advisory in development
    body = gate.request(number, "staging").json()
    assert body["state"] == "checked" and "baseline.metrics_thresholds" in rules(body)
    [violation] = [v for v in body["violations"] if v["rule"] == "baseline.metrics_thresholds"]
    assert "accuracy is 0.5, below the threshold 0.9" in violation["message"]
    overrides = f"{T}/promotions/{body['id']}/overrides/"
    # Only a tenant admin asks, with a justification; a hard rule is never overridable.
    assert_error(api(world.a.developer).post(overrides, {"rule": "baseline.metrics_thresholds",
                                                         "justification": "x"}), 403, "permission_denied")
    assert_error(gate.admin.post(overrides, {"rule": "baseline.dataset_residency", "justification": "x"}),
                 400, "not_overridable")
    override = gate.admin.post(overrides, {"rule": "baseline.metrics_thresholds",
                                           "justification": "Holdout set is biased; see ticket RISK-12"}).json()
    confirm = f"{overrides}{override['id']}/confirm/"
    assert_error(gate.admin.post(confirm, {"otp_token": fresh_totp(world.a.admin)}), 403, "separation_of_duties")
    confirmed = api(world.a.admin2).post(confirm, {"otp_token": fresh_totp(world.a.admin2)}).json()
    assert confirmed["state"] == "awaiting_approval", confirmed
    [shown] = confirmed["overrides"]
    assert shown["confirmed_by"] == "acme-bank-admin2" and shown["justification"].startswith("Holdout")
    final = gate.approve(body["id"], world.a.approver).json()
    assert final["state"] == "promoted"
    assert [v["exempt"] for v in final["violations"] if v["rule"] == "baseline.metrics_thresholds"] == [True]


@pytest.mark.embedded
def test_a_waiver_lifts_a_soft_rule_until_it_expires(gate, world, api):
    number = gate.version(spec_changes={"base_model": {"name": "meta-llama/Llama-3-8B"}})
    assert gate.request(number, "development").json()["state"] == "checked"
    waivers = f"{T}/waivers/"
    later = (timezone.now() + timedelta(days=7)).isoformat()
    assert_error(gate.admin.post(waivers, {"rule": "baseline.dataset_residency", "reason": "r",
                                           "ticket_url": "https://tickets.example/1", "expires_at": later}),
                 400, "rule_not_waivable")
    waiver = gate.admin.post(waivers, {"rule": "baseline.base_model_allowed", "reason": "Pilot of Llama 3",
                                       "ticket_url": "https://tickets.example/2", "expires_at": later}).json()
    assert waiver["state"] == "requested"
    approve = f"{waivers}{waiver['id']}/approve/"
    assert_error(gate.admin.post(approve, {"otp_token": fresh_totp(world.a.admin)}), 403, "separation_of_duties")
    assert api(world.a.admin2).post(approve, {"otp_token": fresh_totp(world.a.admin2)}).json()["state"] == "active"
    [open_request] = Promotion.objects.using("owner").filter(state="checked")
    rechecked = gate.developer.post(f"{T}/promotions/{open_request.public_id}/recheck/").json()
    assert rechecked["state"] == "promoted", rechecked
    # Expiry needs nobody: once the waiver is past its time it no longer applies.
    Waiver.objects.using("owner").filter(pk=waiver["id"]).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert gate.developer.get(waivers).json()["results"][0]["state"] == "expired"
    body = gate.request(number, "staging").json()
    assert body["state"] == "checked" and "baseline.base_model_allowed" in rules(body)


@pytest.mark.embedded
def test_a_revoked_waiver_stops_lifting_its_rule_at_once_and_the_revocation_is_audited(gate, world, api):
    number = gate.version(spec_changes={"base_model": {"name": "meta-llama/Llama-3-8B"}})
    waivers = f"{T}/waivers/"
    later = (timezone.now() + timedelta(days=7)).isoformat()
    waiver = gate.admin.post(waivers, {"rule": "baseline.base_model_allowed", "reason": "Pilot of Llama 3",
                                       "ticket_url": "https://tickets.example/3", "expires_at": later}).json()
    approve = f"{waivers}{waiver['id']}/approve/"
    assert api(world.a.admin2).post(approve, {"otp_token": fresh_totp(world.a.admin2)}).json()["state"] == "active"
    assert gate.request(number, "development").json()["state"] == "promoted"
    revoke = f"{waivers}{waiver['id']}/revoke/"
    assert_error(gate.developer.post(revoke), 403, "permission_denied")
    revoked = gate.admin.post(revoke)
    assert revoked.status_code == 200 and revoked.json()["state"] == "revoked", revoked.content
    assert gate.admin.post(revoke).json()["state"] == "revoked"  # a second revocation changes nothing
    [event] = AuditEvent.objects.using("owner").filter(action="waiver.revoke")
    assert event.actor_name == world.a.admin.username and event.tenant == "acme-bank"
    body = gate.request(number, "staging").json()
    assert body["state"] == "checked" and "baseline.base_model_allowed" in rules(body)


# Bypass attempts ---------------------------------------------------------------------------


@pytest.fixture
def in_production(gate):
    """A version promoted to staging and asked for production (awaiting two approvals)."""
    number = gate.version()
    gate.promote(number, "development")
    gate.promote(number, "staging")
    body = gate.request(number, "production").json()
    assert body["state"] == "awaiting_approval"
    return body["id"]


def production_approvals(public_id):
    return Approval.objects.using("owner").filter(promotion__public_id=public_id)


def test_the_requester_and_the_author_cannot_approve(gate, world, api, in_production):
    from tenants.models import Membership

    # The developer wrote the version and asked: even holding the approver role later, no.
    Membership.objects.using("owner").filter(user=world.a.developer).update(role="approver")
    assert_error(gate.approve(in_production, world.a.developer), 403, "separation_of_duties")
    assert not Approval.objects.using("owner").filter(user=world.a.developer).exists()


def test_a_service_account_token_never_approves(gate, world, api, in_production):
    from tenants.services import service_account_create

    account = service_account_create(actor=world.a.developer, tenant=world.a.tenant, name="ci-bot", role="developer")
    token = issue_token(world.a.developer, world.a.tenant, service_account=account)
    response = api(token).post(f"{T}/promotions/{in_production}/approve/",
                               {"otp_token": fresh_totp(world.a.developer)})
    assert_error(response, 403, "service_account_forbidden")
    assert not production_approvals(in_production).exists()


def test_a_personal_token_approves_with_its_owner_totp(gate, world, api, in_production):
    token = issue_token(world.a.approver, world.a.tenant)
    response = api(token).post(f"{T}/promotions/{in_production}/approve/", {"otp_token": fresh_totp(world.a.approver)})
    assert response.status_code == 200 and response.json()["approvals"][0]["user"] == "acme-bank-approver"


def test_a_developer_cannot_approve(gate, world, api, in_production):
    assert_error(gate.approve(in_production, world.a.auditor), 403, "permission_denied")


@pytest.mark.parametrize("code, status, error", [("", 400, "otp_required"), ("12ab56", 400, "otp_invalid"),
                                                 ("000000", 403, "otp_invalid")])
def test_an_approval_without_a_valid_totp_is_refused(gate, world, in_production, code, status, error):
    real = current_totp(world.a.approver)
    code = "000001" if code == "000000" and real == "000000" else code
    assert_error(gate.approve(in_production, world.a.approver, code=code or " "), status, error)
    assert not production_approvals(in_production).exists()


@pytest.mark.embedded
def test_a_reused_totp_code_is_refused_even_on_another_promotion(gate, world, in_production):
    code = fresh_totp(world.a.approver)
    assert gate.approve(in_production, world.a.approver, code=code).status_code == 200
    other = gate.version(accuracy=0.96)
    body = gate.request(other, "development").json()
    staging = gate.request(other, "staging").json()
    assert body["state"] == "promoted" and staging["state"] == "awaiting_approval"
    assert_error(gate.approve(staging["id"], world.a.approver, code=code), 403, "otp_invalid")
    assert AuditEvent.objects.using("owner").filter(action="auth.otp_failed").exists()


def test_a_replayed_approval_is_refused(gate, world, in_production):
    assert gate.approve(in_production, world.a.approver).status_code == 200
    assert_error(gate.approve(in_production, world.a.approver), 409, "already_decided")
    assert production_approvals(in_production).count() == 1


def test_an_approval_after_expiry_is_refused_and_the_request_expires(gate, world, in_production):
    Promotion.objects.using("owner").filter(public_id=in_production).update(
        expires_at=timezone.now() - timedelta(seconds=1))
    assert_error(gate.approve(in_production, world.a.approver), 409, "promotion_expired")
    promotion = Promotion.objects.using("owner").get(public_id=in_production)
    assert promotion.state == "expired" and not production_approvals(in_production).exists()
    assert AuditEvent.objects.using("owner").filter(action="promotion.expire").count() == 1


def test_a_change_to_the_policy_input_voids_earlier_approvals(gate, world, in_production):
    first = gate.approve(in_production, world.a.approver).json()
    binding = first["binding_digest"]
    assert gate.admin.put(f"{T}/policy-data/", {"metrics_thresholds": {"accuracy": 0.91}}).status_code == 200
    # An approver who reviewed the old facts is told they changed.
    assert_error(gate.approve(in_production, world.a.approver2, binding_digest=binding), 409, "binding_changed")
    after = gate.approve(in_production, world.a.approver2).json()
    assert after["state"] == "awaiting_approval" and after["binding_digest"] != binding
    assert {a["user"]: a["current"] for a in after["approvals"]} == {"acme-bank-approver": False,
                                                                     "acme-bank-approver2": True}
    # The first approver approves again, bound to the new facts: now it counts.
    assert gate.approve(in_production, world.a.approver).json()["state"] == "promoted"


def test_another_tenants_promotion_is_not_found(gate, world, api, in_production):
    for person in (world.b.approver, world.outsider):
        assert_error(api(person).get(f"{T}/promotions/{in_production}/"), 404, "not_found")
        assert_error(api(person).post(f"/api/v1/tenants/st-mary-hospital/promotions/{in_production}/approve/",
                                      {"otp_token": fresh_totp(person)}), 404, "not_found")


# Policy data -------------------------------------------------------------------------------


@pytest.mark.embedded
def test_policy_data_is_versioned_audited_and_never_below_the_floor(gate, world, api):
    assert_error(gate.admin.put(f"{T}/policy-data/", {"min_approvals": 1}), 400, "below_platform_floor")
    assert_error(gate.admin.put(f"{T}/policy-data/", {"rollback_min_approvals": 0}), 400, "below_platform_floor")
    assert_error(gate.admin.put(f"{T}/policy-data/", {"rule_levels": {"baseline.dataset_residency": "advisory"}}),
                 400, "below_platform_floor")
    assert_error(api(world.a.developer).put(f"{T}/policy-data/", {"min_approvals": 3}), 403, "permission_denied")
    raised = gate.admin.put(f"{T}/policy-data/", {"min_approvals": 3,
                                                  "rule_levels": {"baseline.base_model_allowed": "hard-mandatory"}})
    assert raised.json()["revision"] == 2 and raised.json()["base_model_allowlist"] == ["mistralai/*"]
    assert list(TenantPolicy.objects.using("owner").values_list("revision", flat=True).order_by("revision")) == [1, 2]
    assert AuditEvent.objects.using("owner").filter(action="tenant_policy.update").count() == 2


def test_the_tenant_minimum_raises_the_production_approvals(gate, world):
    gate.admin.put(f"{T}/policy-data/", {"min_approvals": 3})
    number = gate.version()
    gate.promote(number, "development")
    gate.promote(number, "staging")
    body = gate.request(number, "production").json()
    assert body["required_approvals"] == 3


# Rollback ----------------------------------------------------------------------------------


@pytest.mark.embedded
def test_rollback_to_the_superseded_version_is_a_checked_promotion_with_one_approval(gate, world):
    first = gate.version()
    gate.promote(first, "development")
    second = gate.version(accuracy=0.97)
    gate.promote(second, "development")
    third = gate.version(accuracy=0.98)
    assert_error(gate.request(third, "development", kind="rollback"), 400, "not_rollback_target")
    body = gate.request(first, "development", kind="rollback").json()
    assert body["kind"] == "rollback" and body["state"] == "awaiting_approval" and body["required_approvals"] == 1
    done = gate.approve(body["id"], world.a.approver).json()
    assert done["state"] == "promoted" and done["previous_version"] == second
    assert StagePointer.objects.using("owner").get(stage="development").version.number == first
    # Only the immediately superseded version is a rollback target.
    assert_error(gate.request(first, "development", kind="rollback"), 409, "already_in_stage")


# Races (PostgreSQL) --------------------------------------------------------------------------


@pytest.mark.postgres
def test_parallel_approvals_promote_exactly_once(gate, world, api, in_production):
    codes = {p.pk: fresh_totp(p) for p in (world.a.approver, world.a.approver2)}
    results = {}
    barrier = threading.Barrier(2)

    def approve(person):
        client = api(person)
        barrier.wait()
        try:
            results[person.username] = client.post(f"{T}/promotions/{in_production}/approve/",
                                                   {"otp_token": codes[person.pk]})
        finally:
            connections.close_all()

    threads = [threading.Thread(target=approve, args=(p,)) for p in (world.a.approver, world.a.approver2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(r.status_code for r in results.values()) == [200, 200]
    promotion = Promotion.objects.using("owner").get(public_id=in_production)
    assert promotion.state == "promoted" and promotion.attestation
    assert AuditEvent.objects.using("owner").filter(action="promotion.promote").count() == 3  # dev, staging, prod


@pytest.mark.postgres
def test_parallel_requests_for_the_same_stage_open_only_one(gate, world, api):
    number = gate.version()
    gate.promote(number, "development")
    results = []
    barrier = threading.Barrier(3)

    def ask():
        client = api(world.a.developer)
        barrier.wait()
        try:
            results.append(gate.request(number, "staging", who=client).status_code)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=ask) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == [201, 409, 409]
    assert Promotion.objects.using("owner").filter(stage="staging").count() == 1


# Revocation --------------------------------------------------------------------------------


def test_removing_a_signer_from_trust_blocks_the_versions_it_signed_until_re_signed(gate, world):
    number = gate.version()
    gate.promote(number, "development")
    _, other_public = signing.generate_key_pair()
    assert gate.put_governed("trust/", {"public_keys": {"ci-2027": other_public.decode()}}).status_code == 200
    revoked = AuditEvent.objects.using("owner").filter(action="signature.revoke")
    assert revoked.count() == 2  # the model and the metrics artifact
    body = gate.request(number, "staging").json()
    assert body["state"] == "rejected" and "baseline.artifacts_signed" in rules(body)
    version = gate.developer.get(f"{T}/workflows/fraud-detector/versions/{number}/").json()
    detail = gate.developer.get(f"{T}/artifacts/scorer/{version['artifacts'][0]}/")
    if detail.status_code != 200:
        detail = gate.developer.get(f"{T}/artifacts/scorer/{version['artifacts'][1]}/")
    [signature] = detail.json()["signatures"]
    assert "removed from the trust configuration" in json.dumps(signature)


def test_an_opa_server_that_is_down_denies_the_promotion_and_the_decision_is_audited(gate, settings):
    from policies.models import PolicyDecision

    number = gate.version()
    settings.POLICY_ENGINE, settings.OPA_URL, settings.OPA_TIMEOUT_SECONDS = "opa", "http://127.0.0.1:9", 1
    body = gate.request(number, "development").json()
    assert body["state"] == "rejected" and "could not be evaluated" in body["close_reason"]
    decision = PolicyDecision.objects.using("owner").get()
    assert decision.engine == "opa" and not decision.allow and "failed" in decision.error
    event = AuditEvent.objects.using("owner").get(action="policy.decide")
    assert event.outcome == "failed" and event.data["error"] == decision.error
    assert not StagePointer.objects.using("owner").exists()


# Found in review: each of these was a way around the gate ------------------------------------


def test_a_rollback_is_refused_at_approval_when_the_stage_moved_on_meanwhile(gate, world):
    first, second = gate.version(), gate.version(accuracy=0.96)
    gate.promote(first, "development")
    gate.promote(second, "development")
    rollback = gate.request(first, "development", kind="rollback").json()
    assert rollback["state"] == "awaiting_approval"
    third = gate.version(accuracy=0.97)
    gate.promote(third, "development")  # the stage moves on: v1 is no longer the superseded version
    body = gate.approve(rollback["id"], world.a.approver).json()
    assert body["state"] == "rejected" and "immediately before" in body["close_reason"]
    assert StagePointer.objects.using("owner").get(stage="development").version.number == third


def test_a_stage_move_voids_approvals_given_before_it(gate, world):
    first, second = gate.version(), gate.version(accuracy=0.96)
    for number in (first, second):
        gate.promote(number, "development")
        gate.promote(number, "staging")
    gate.promote(first, "production")
    pending = gate.request(second, "production").json()
    approved_once = gate.approve(pending["id"], world.a.approver).json()
    gate.promote(gate.version(accuracy=0.97), "development")  # unrelated stage: nothing changes
    third = gate.version(accuracy=0.98)
    gate.promote(third, "development")
    gate.promote(third, "staging")
    gate.promote(third, "production")  # production now holds v3, not the v1 the approver saw
    after = gate.approve(pending["id"], world.a.approver2).json()
    assert after["binding_digest"] != approved_once["binding_digest"]
    assert after["state"] == "awaiting_approval", after
    assert {a["user"]: a["current"] for a in after["approvals"]}["acme-bank-approver"] is False


def test_a_platform_admin_is_not_an_approver(gate, world, in_production):
    assert_error(gate.approve(in_production, world.platform_admin), 403, "permission_denied")


def test_an_approval_stops_counting_when_its_approver_loses_the_role(gate, world, in_production):
    from tenants.models import Membership

    assert gate.approve(in_production, world.a.approver).status_code == 200
    Membership.objects.using("owner").filter(user=world.a.approver).update(role="auditor")
    body = gate.approve(in_production, world.a.approver2).json()
    assert body["state"] == "awaiting_approval"


def test_a_suspended_tenant_cannot_move_a_promotion(gate, world, in_production):
    from tenants.models import Tenant

    Tenant.objects.using("owner").filter(pk=world.a.tenant.pk).update(status="suspended")
    assert_error(gate.developer.post(f"{T}/promotions/{in_production}/recheck/"), 403, "tenant_suspended")
    assert_error(gate.approve(in_production, world.a.approver), 403, "tenant_suspended")


def test_a_stale_binding_refreshes_the_promotion_before_refusing(gate, world, in_production):
    reviewed = gate.developer.get(f"{T}/promotions/{in_production}/").json()["binding_digest"]
    gate.admin.put(f"{T}/policy-data/", {"metrics_thresholds": {"accuracy": 0.92}})
    assert_error(gate.approve(in_production, world.a.approver, binding_digest=reviewed), 409, "binding_changed")
    fresh = gate.developer.get(f"{T}/promotions/{in_production}/").json()["binding_digest"]
    assert fresh != reviewed
    assert gate.approve(in_production, world.a.approver, binding_digest=fresh).status_code == 200


@pytest.mark.parametrize("value", [10**400, -1, "9"])
def test_policy_data_numbers_out_of_range_are_refused(gate, value):
    body = json.dumps({"metrics_thresholds": {"accuracy": value}})
    response = gate.admin.client.generic("PUT", f"{T}/policy-data/", body, content_type="application/json",
                                         **gate.admin.headers)
    assert_error(response, 400, "invalid")


def test_a_console_override_confirmation_with_a_bad_id_is_a_form_error(gate, world, client):
    from tests.support.clients import sign_in

    number = gate.version(accuracy=0.5)
    gate.promote(number, "development")
    body = gate.request(number, "staging").json()
    response = sign_in(client, world.a.admin2).post(f"/t/acme-bank/promotions/{body['id']}/",
                                                   {"action": "confirm", "override": "abc", "otp_token": "123456"})
    assert response.status_code == 400


def test_a_new_policy_revision_voids_earlier_approvals(gate, world, in_production, tmp_path, monkeypatch):
    import shutil

    from policies import bundle

    first = gate.approve(in_production, world.a.approver).json()
    candidate = tmp_path / "rego"
    shutil.copytree(bundle.REGO_DIR, candidate)
    with open(candidate / "platform" / "promotion.rego", "a") as rego:
        rego.write("\n# a reviewed change: the revision moves\n")
    monkeypatch.setattr(bundle, "REGO_DIR", candidate)
    accept_running_baseline(world)  # two platform admins take the new revision on
    after = gate.approve(in_production, world.a.approver2).json()
    assert after["policy_revision"] != first["policy_revision"]
    assert after["state"] == "awaiting_approval"
    assert {a["user"]: a["current"] for a in after["approvals"]} == {"acme-bank-approver": False,
                                                                     "acme-bank-approver2": True}


def test_production_is_judged_only_by_the_platform_signed_metrics_of_the_latest_staging_run(gate):
    from policies.models import PolicyDecision

    number = gate.version(accuracy=0.97)  # what the developer uploaded says 0.97
    gate.promote(number, "development")
    gate.promote(number, "staging")
    uploaded = Promotion.objects.using("owner").get(stage="staging").metrics_artifact.digest
    assert_error(gate.developer.post(f"{T}/promotions/", {"workflow": "fraud-detector", "version": number,
                                                          "stage": "production", "metrics_artifact": uploaded}),
                 400, "invalid")  # another metrics artifact cannot be named for production

    older = gate.staging_run(number, {"accuracy": 0.99})
    latest = gate.staging_run(number, {"accuracy": 0.5})  # the latest staging run measured worse
    body = gate.request(number, "production").json()
    messages = [v["message"] for v in body["violations"] if v["rule"] == "baseline.metrics_thresholds"]
    assert any("accuracy is 0.5, below the threshold 0.9" in m for m in messages), body["violations"]
    promotion = Promotion.objects.using("owner").get(stage="production")
    assert promotion.metrics_artifact_id == latest.artifact_id != older.artifact_id
    decision = PolicyDecision.objects.using("owner").get(decision_id=promotion.decisions[-1])
    assert decision.input["metrics_run"] == str(latest.run_id) and decision.input["metrics"] == {"accuracy": 0.5}


def test_a_production_request_without_a_staging_run_has_no_metrics_to_pass(gate):
    number = gate.version(accuracy=0.97)
    gate.promote(number, "development")
    gate.promote(number, "staging")
    gate.accuracy.pop(number)  # no staging run happened
    body = gate.request(number, "production").json()
    assert "baseline.metrics_thresholds" in rules(body)
    assert Promotion.objects.using("owner").get(stage="production").metrics_artifact is None
