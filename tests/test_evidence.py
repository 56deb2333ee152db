"""Evidence packs: one download per promotion holds what decided it, each piece proven in the
signed log, and the standalone verifier (run here without Django) accepts it whole and refuses
it after any edit."""

import io
import json
import os
import subprocess
import sys
import zipfile

import pytest

from audit.keys import platform_keyring
from audit.models import AuditEvent
from audit.verify_export import PackInvalid
from compliance.verify_evidence import verify_evidence

from tests.support import ROOT

from tests.support.otp import fresh_totp
from .test_promotions import T, Gate, in_production  # noqa: F401 (a fixture)



@pytest.fixture
def gate(world, api, tmp_path):
    return Gate(world, api, tmp_path)


@pytest.fixture
def key(tmp_path):
    path = tmp_path / "platform-key.pem"
    path.write_text(platform_keyring().active().public_pem)
    return path


def download(api, person, promotion_id) -> bytes:
    response = api(person).client.get(f"{T}/promotions/{promotion_id}/evidence/", **api(person).headers)
    assert response.status_code == 200, response.content
    assert response["Content-Type"] == "application/zip"
    return response.content


def unpack(content: bytes, folder):
    zipfile.ZipFile(io.BytesIO(content)).extractall(folder)
    return folder


def run_verifier(*args):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO", "DATABASE"))}
    return subprocess.run([sys.executable, "-m", "compliance.verify_evidence", *map(str, args)], cwd=ROOT,
                          env=env, capture_output=True, text=True)


@pytest.fixture
def production(gate, world):
    """A version promoted to production with two approvals; its evidence pack as a folder."""
    number = gate.version()
    gate.promote(number, "development")
    gate.promote(number, "staging")
    return gate.promote(number, "production")


@pytest.mark.embedded
def test_a_production_pack_holds_the_whole_decision_and_verifies_offline(production, world, api, key, tmp_path):
    content = download(api, world.a.auditor, production["id"])
    pack = tmp_path / "evidence.zip"
    pack.write_bytes(content)
    result = run_verifier(pack, "--public-key", key)
    assert result.returncode == 0, result.stderr
    assert f"Verified: promotion {production['id']} of tenant acme-bank (promoted)" in result.stdout
    assert "2 approval(s)" in result.stdout and "attestation verified" in result.stdout
    assert result.stdout.rstrip().endswith("is not witnessed (no witness key given).")  # no witness configured
    required = run_verifier(pack, "--public-key", key, "--require-witness")
    assert required.returncode == 1 and "is not witnessed (no witness key given)" in required.stderr

    folder = unpack(content, tmp_path / "unpacked")
    names = {p.name for p in folder.iterdir()}
    assert names == {"manifest.json", "promotion.json", "version.json", "artifacts.json", "decisions.json",
                     "approvals.json", "exemptions.json", "attestation.sigstore.json", "events.jsonl",
                     "checkpoint.txt", "tenant-head.txt", "consistency.jsonl", "summary.html"}
    version = json.loads((folder / "version.json").read_text())
    assert version["digest"] == production["version_digest"] and version["spec"]["name"] == "fraud-detector"
    decisions = json.loads((folder / "decisions.json").read_text())
    assert [d["decision_id"] for d in decisions] == production["decisions"]
    assert decisions[-1]["allow"] is True and decisions[-1]["input"]["stage"] == "production"
    assert decisions[-1]["policy_revision"] == production["policy_revision"]
    approvals = json.loads((folder / "approvals.json").read_text())
    assert [(a["user"], a["verdict"], a["current"]) for a in approvals] == [
        ("acme-bank-approver", "approve", True), ("acme-bank-approver2", "approve", True)]
    assert all(a["mfa"]["method"] == "totp" and a["mfa"]["otp_device"].startswith("otp_totp.") for a in approvals)
    artifacts = {a["name"]: a for a in json.loads((folder / "artifacts.json").read_text())}
    [scorer_signature] = artifacts["scorer"]["signatures"]
    assert [v["verified"] for v in scorer_signature["verifications"]] == [True]
    # Production is judged by the staging run's metrics: its provenance is in the pack.
    assert artifacts["eval"]["run_output"]["stage"] == "staging"
    events = [json.loads(json.loads(line)["canonical"]) for line in (folder / "events.jsonl").read_text().splitlines()]
    actions = [e["action"] for e in events]
    assert actions.count("promotion.approve") == 2 and "promotion.promote" in actions
    assert "policy.decide" in actions and "signature.verify" in actions and "run.output" in actions
    assert {e["tenant"] for e in events} == {"acme-bank"}
    summary = (folder / "summary.html").read_text()
    assert "acme-bank-approver2" in summary and production["version_digest"] in summary
    downloaded = AuditEvent.objects.using("owner").filter(action="audit.evidence_pack").get()
    assert downloaded.actor_name == world.a.auditor.username and downloaded.target_id == production["id"]


def test_a_pack_with_an_override_proves_the_override(gate, world, api, key, tmp_path):
    number = gate.version(accuracy=0.5)
    gate.promote(number, "development")
    body = gate.request(number, "staging").json()
    overrides = f"{T}/promotions/{body['id']}/overrides/"
    override = gate.admin.post(overrides, {"rule": "baseline.metrics_thresholds",
                                           "justification": "Holdout set is biased; see RISK-12"}).json()
    api(world.a.admin2).post(f"{overrides}{override['id']}/confirm/", {"otp_token": fresh_totp(world.a.admin2)})
    assert gate.approve(body["id"], world.a.approver).json()["state"] == "promoted"
    folder = unpack(download(api, world.a.admin, body["id"]), tmp_path / "pack")
    [shown] = json.loads((folder / "exemptions.json").read_text())["overrides"]
    assert (shown["rule"], shown["requested_by"], shown["confirmed_by"]) == (
        "baseline.metrics_thresholds", "acme-bank-admin", "acme-bank-admin2")
    assert verify_evidence(folder, [key.read_text()])["attested"] is True


def test_a_pack_with_a_waiver_proves_the_waiver(gate, world, api, key, tmp_path):
    from datetime import timedelta

    from django.utils import timezone

    number = gate.version(spec_changes={"base_model": {"name": "meta-llama/Llama-3-8B"}})
    body = gate.request(number, "development").json()
    assert body["state"] == "checked"
    waiver = gate.admin.post(f"{T}/waivers/", {
        "rule": "baseline.base_model_allowed", "reason": "Pilot of Llama 3", "ticket_url": "https://tickets.example/2",
        "expires_at": (timezone.now() + timedelta(days=7)).isoformat()}).json()
    api(world.a.admin2).post(f"{T}/waivers/{waiver['id']}/approve/", {"otp_token": fresh_totp(world.a.admin2)})
    assert gate.developer.post(f"{T}/promotions/{body['id']}/recheck/").json()["state"] == "promoted"
    folder = unpack(download(api, world.a.auditor, body["id"]), tmp_path / "pack")
    [shown] = json.loads((folder / "exemptions.json").read_text())["waivers"]
    assert (shown["id"], shown["approved_by"]) == (waiver["id"], "acme-bank-admin2")
    summary = verify_evidence(folder, [key.read_text()])
    assert summary["decisions"] == 2 and summary["approvals"] == 0


def test_a_rejected_promotion_has_a_pack_without_an_attestation(gate, world, api, key, tmp_path):
    number = gate.version()
    body = gate.request(number, "production").json()  # before staging: rejected at once
    assert body["state"] == "rejected"
    folder = unpack(download(api, world.a.auditor, body["id"]), tmp_path / "pack")
    assert not (folder / "attestation.sigstore.json").exists()
    summary = verify_evidence(folder, [key.read_text()])
    assert (summary["state"], summary["attested"], summary["decisions"]) == ("rejected", False, 1)


@pytest.mark.embedded
def test_a_pack_verifies_whatever_form_the_database_gives_its_numbers_back_in(gate, world, api, key, tmp_path):
    # PostgreSQL's jsonb hands back the float 1e16 as the integer 10000000000000000, past what
    # an RFC 8785 number may hold as an integer; the verifier reads numbers as JCS does
    # (doubles), so the spec still hashes to its digest and the decision input to its own.
    number = gate.version(spec_changes={"parameters": {"max_rows": 1e16, "budget": 2.5e20, "epsilon": 1e-7,
                                                        "share": 0.1, "whole": 3.0}})
    body = gate.promote(number, "development")
    folder = unpack(download(api, world.a.auditor, body["id"]), tmp_path / "pack")
    summary = verify_evidence(folder, [key.read_text()])
    assert (summary["state"], summary["attested"]) == ("promoted", True)


def _rewrite(folder, name, change):
    """Edit one JSON file of the pack and fix up the manifest, as a forger would."""
    import hashlib

    path = folder / name
    value = json.loads(path.read_text())
    change(value)
    path.write_text(json.dumps(value))
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["files"][name] = hashlib.sha256(path.read_bytes()).hexdigest()
    (folder / "manifest.json").write_text(json.dumps(manifest))


def _edit_event(folder, action, change):
    lines = (folder / "events.jsonl").read_text().splitlines()
    for index, line in enumerate(lines):
        record = json.loads(line)
        event = json.loads(record["canonical"])
        if event["action"] == action:
            change(event)
            record["canonical"] = json.dumps(event, sort_keys=True, separators=(",", ":"))
            lines[index] = json.dumps(record)
            break
    (folder / "events.jsonl").write_text("".join(f"{line}\n" for line in lines))


TAMPERING = {
    "a file edited without the manifest": (
        lambda f: (f / "summary.html").write_text("<p>all fine</p>"), "summary.html was changed"),
    "a file slipped in": (lambda f: (f / "extra.json").write_text("{}"), "extra.json is in the pack but not"),
    "a decision's input": (
        lambda f: _rewrite(f, "decisions.json", lambda d: d[-1]["input"].update(stage="staging")),
        "its input does not match its digest"),
    "a decision's result": (
        lambda f: _rewrite(f, "decisions.json", lambda d: d[0].update(allow=not d[0]["allow"])),
        "holds no policy.decide event"),
    "an approval dropped": (
        lambda f: _rewrite(f, "approvals.json", lambda a: a.pop()), "approvals and rejections are not those the log"),
    "an approval and its event dropped": (
        lambda f: (_rewrite(f, "approvals.json", lambda a: a.pop()), _drop_event(f, "promotion.approve", last=True)),
        "is missing from the pack"),
    "an approval slipped in": (
        lambda f: _rewrite(f, "approvals.json", lambda a: a.append({**a[0], "id": None, "verdict": "promote"})),
        "approvals and rejections are not those the log"),
    "an approver renamed": (
        lambda f: _rewrite(f, "approvals.json", lambda a: a[0].update(user="acme-bank-admin")),
        "holds no promotion.approve event for the approve by acme-bank-admin"),
    "the state, with the attestation removed": (
        lambda f: (_rewrite(f, "promotion.json", lambda p: p.update(state="withdrawn")), _remove(f, "attestation.sigstore.json")),
        "says the promotion is withdrawn; its events say promoted"),
    "the requester": (
        lambda f: _rewrite(f, "promotion.json", lambda p: p.update(requested_by="acme-bank-approver")),
        "holds no promotion.request event"),
    "a decision's engine": (
        lambda f: _rewrite(f, "decisions.json", lambda d: d[0].update(engine="none")), "holds no policy.decide event"),
    "a verification's identity": (
        lambda f: _rewrite(f, "artifacts.json",
                           lambda a: next(x for x in a if x["signatures"])["signatures"][0]["verifications"][0].update(
                               identity="someone-else")),
        "a verification of .* is not in the log"),
    "an MFA device changed": (
        lambda f: _rewrite(f, "approvals.json", lambda a: a[0]["mfa"].update(otp_device="otp_static.x/1")),
        "holds no promotion.approve event"),
    "the request's justification": (
        lambda f: _rewrite(f, "promotion.json", lambda p: p.update(justification="Board approved")),
        "holds no promotion.request event"),
    "the version spec": (
        lambda f: _rewrite(f, "version.json", lambda v: v["spec"].update(name="other")),
        "digest does not match its spec"),
    "an audit event": (
        lambda f: _edit_event(f, "promotion.approve", lambda e: e["actor"].update(name="mallory")),
        "its sequencing entry does not match its canonical bytes"),
    "the checkpoint": (
        lambda f: (f / "checkpoint.txt").write_text((f / "checkpoint.txt").read_text().replace("\n", "\n1", 1)),
        "a signed note in the pack does not verify"),
    "the checkpoint, for another note the platform signed": (
        lambda f: (f / "checkpoint.txt").write_text(_platform_signed("neocloud/audit-log/export\nsha256:00\n")),
        "a signed note in the pack does not verify: a checkpoint body is"),
}


def _platform_signed(body: str) -> str:
    from audit.checkpoints import sign_note
    from audit.keys import platform_keyring

    return sign_note(body, name="neocloud/audit-log", private_key=platform_keyring().active().private_key)


def _remove(folder, name):
    (folder / name).unlink()
    manifest = json.loads((folder / "manifest.json").read_text())
    del manifest["files"][name]
    (folder / "manifest.json").write_text(json.dumps(manifest))


def _drop_event(folder, action, last=False):
    lines = (folder / "events.jsonl").read_text().splitlines()
    matching = [i for i, line in enumerate(lines) if json.loads(json.loads(line)["canonical"])["action"] == action]
    del lines[matching[-1] if last else matching[0]]
    (folder / "events.jsonl").write_text("".join(f"{line}\n" for line in lines))


@pytest.mark.parametrize("tamper", list(TAMPERING))
def test_any_edit_to_the_pack_is_detected(production, world, api, key, tmp_path, tamper):
    folder = unpack(download(api, world.a.auditor, production["id"]), tmp_path / "pack")
    edit, expected = TAMPERING[tamper]
    edit(folder)
    with pytest.raises(PackInvalid, match=expected):
        _verify_after_manifest_fix(folder, key, tamper)
    result = run_verifier(folder, "--public-key", key)
    assert result.returncode == 1 and result.stderr.startswith("The evidence pack does not verify:"), result.stderr


def _verify_after_manifest_fix(folder, key, tamper):
    """Edits to events.jsonl or checkpoint.txt are also re-hashed into the manifest, so the check
    that catches them is the log's, not the manifest's."""
    import hashlib

    if tamper in ("an audit event", "the checkpoint", "the checkpoint, for another note the platform signed",
                  "an approval and its event dropped"):
        manifest = json.loads((folder / "manifest.json").read_text())
        for name in ("events.jsonl", "checkpoint.txt"):
            manifest["files"][name] = hashlib.sha256((folder / name).read_bytes()).hexdigest()
        (folder / "manifest.json").write_text(json.dumps(manifest))
    return verify_evidence(folder, [key.read_text()])


def test_the_verifier_names_an_input_it_cannot_read_in_one_sentence(tmp_path):
    for args, sentence in [
        ((tmp_path / "nowhere.zip", "--public-key", tmp_path / "key.pem"),
         f"The evidence pack {tmp_path / 'nowhere.zip'} does not exist."),
        ((tmp_path, "--public-key", tmp_path / "key.pem"),
         f"The public key {tmp_path / 'key.pem'} cannot be read: No such file or directory."),
    ]:
        result = run_verifier(*args)
        assert result.returncode == 1 and result.stderr == sentence + "\n", result.stderr


def test_a_key_from_elsewhere_is_refused(production, world, api, tmp_path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    folder = unpack(download(api, world.a.auditor, production["id"]), tmp_path / "pack")
    other = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    with pytest.raises(PackInvalid, match="no signature on the note is by the given key"):
        verify_evidence(folder, [other])


def test_only_the_tenants_auditors_and_admins_download_packs(production, world, api):
    path = f"{T}/promotions/{production['id']}/evidence/"
    assert api(world.a.developer).get(path).status_code == 403
    assert api(world.a.approver).get(path).status_code == 403
    assert api(world.b.auditor).get(path).status_code == 404
    assert api(world.a.auditor).get(f"{T}/promotions/00000000-0000-4000-8000-000000000000/evidence/").status_code == 404


def test_a_pack_is_checked_against_a_checkpoint_the_regulator_kept(production, world, api, key, tmp_path):
    from audit.checkpointing import checkpoint_write
    from audit.sequencer import sequence_pending

    while sequence_pending(using="owner"):
        pass
    kept = tmp_path / "kept-checkpoint.txt"
    kept.write_text(checkpoint_write(using="owner").note)
    api(world.a.developer).get(f"{T}/promotions/")  # the log moves on
    pack = tmp_path / "evidence.zip"
    pack.write_bytes(download(api, world.a.auditor, production["id"]))
    result = run_verifier(pack, "--public-key", key, "--previous-checkpoint", kept)
    assert result.returncode == 0, result.stderr
    forked = kept.read_text().split("\n")
    forked[2] = forked[2][:-8] + "AAAAAAA="  # another root at the same size: a forked history
    kept.write_text("\n".join(forked))
    result = run_verifier(pack, "--public-key", key, "--previous-checkpoint", kept)
    assert result.returncode == 1 and "does not verify" in result.stderr, result.stderr


def test_an_open_request_is_proven_up_to_the_tenant_head(in_production, world, api, key, tmp_path):
    folder = unpack(download(api, world.a.auditor, in_production), tmp_path / "pack")
    summary = verify_evidence(folder, [key.read_text()])
    assert (summary["state"], summary["attested"]) == ("awaiting_approval", False)
    lines = (folder / "events.jsonl").read_text().splitlines()
    del lines[-1]  # the newest event of the tenant: after the request, so inside its span
    (folder / "events.jsonl").write_text("".join(f"{line}\n" for line in lines))
    import hashlib

    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["files"]["events.jsonl"] = hashlib.sha256((folder / "events.jsonl").read_bytes()).hexdigest()
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(PackInvalid, match="is missing from the pack"):
        verify_evidence(folder, [key.read_text()])
