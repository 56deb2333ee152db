"""Verify a promotion's evidence pack offline, trusting only the platform's public key.

    python -m compliance.verify_evidence DIR_OR_ZIP --public-key FILE [--public-key FILE ...]

Needs only the standard library, ``cryptography`` and ``rfc8785`` (no Django, no database).
It checks:

- the manifest lists every file with its SHA-256, and nothing else is in the pack;
- the checkpoint is signed by the given key, and every audit event in the pack is in the
  signed tree (canonical bytes, sequencing entry, inclusion proof);
- the version's digest recomputes from its spec and artifact digests, and the request event
  in the log names that digest, workflow, version, stage, kind and justification;
- every policy decision's input hashes to its digest, and the log holds that decision with
  the same digest, result and rules;
- every approval or rejection is in the log with the same person, binding and OTP device;
- every waiver and override the decisions relied on, and every signature verification, is in
  the log; an output of a run carries provenance signed by the given key, and the log records
  the run producing it;
- the promotion attestation (once promoted) is signed by the given key, names this version,
  promotion, its decisions and its approvers, and is the one the log's promote event names.

Exit status 0 when everything verifies; 1 with one sentence naming the first problem.
"""

import argparse
import hashlib
import io
import json
import sys
import zipfile
from pathlib import Path

import rfc8785
from cryptography.hazmat.primitives import serialization

from audit.checkpoints import NoteInvalid, parse_checkpoint, verify_note
from audit.verify_export import PackInvalid, proven_event
from workflows.attestations import PROVENANCE_PREDICATE, AttestationInvalid, verify_attestation

KIND = "neocloud/promotion-evidence"


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def key_id(public_pem: str) -> str:
    """The platform's id for a key: ``platform-`` and 16 hex digits of SHA-256 over its DER."""
    der = serialization.load_pem_public_key(public_pem.encode()).public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return "platform-" + hashlib.sha256(der).hexdigest()[:16]


def read_pack(path: Path) -> dict[str, bytes]:
    if path.is_dir():
        return {item.name: item.read_bytes() for item in sorted(path.iterdir()) if item.is_file()}
    try:
        with zipfile.ZipFile(io.BytesIO(path.read_bytes())) as archive:
            return {name: archive.read(name) for name in archive.namelist()}
    except zipfile.BadZipFile:
        raise PackInvalid(f"{path} is neither a folder nor a zip") from None


def _json(files: dict[str, bytes], name: str):
    try:
        return json.loads(files[name])
    except (KeyError, ValueError):
        raise PackInvalid(f"{name} is missing or is not JSON") from None


def _check_manifest(files: dict[str, bytes]) -> dict:
    manifest = _json(files, "manifest.json")
    if manifest.get("kind") != KIND:
        raise PackInvalid("manifest.json does not describe a promotion evidence pack")
    listed = manifest.get("files", {})
    for name in sorted(set(files) - {"manifest.json"}):
        if name not in listed:
            raise PackInvalid(f"{name} is in the pack but not in its manifest")
    for name, digest in sorted(listed.items()):
        if name not in files:
            raise PackInvalid(f"{name} is listed in the manifest but missing")
        if hashlib.sha256(files[name]).hexdigest() != digest:
            raise PackInvalid(f"{name} was changed after the pack was made")
    return manifest


class _Log:
    """The pack's audit events, each proven in the signed checkpoint, found by target."""

    def __init__(self, files: dict[str, bytes], public_pems: list[str], tenant: str):
        checkpoint = None
        for pem in public_pems:
            try:
                checkpoint = parse_checkpoint(verify_note(files.get("checkpoint.txt", b"").decode(), pem))
                break
            except NoteInvalid as problem:
                reason = problem
        if checkpoint is None:
            raise PackInvalid(f"the checkpoint does not verify: {reason}")
        self.size = checkpoint.size
        self.events = [proven_event(line, number, checkpoint, tenant)[0]
                       for number, line in enumerate(files.get("events.jsonl", b"").decode().splitlines(), start=1)]

    def about(self, target_type: str, target_id, *actions: str) -> list[dict]:
        return [e for e in self.events if e["target"] == {"type": target_type, "id": str(target_id)}
                and (not actions or e["action"] in actions)]

    def one(self, what: str, target_type: str, target_id, *actions: str, **data) -> dict:
        for event in self.about(target_type, target_id, *actions):
            if all(event["data"].get(key) == value for key, value in data.items()):
                return event
        raise PackInvalid(f"the log in the pack holds no {' or '.join(actions)} event for {what} that matches it")


def _check_version(files, promotion, log: _Log) -> dict:
    version = _json(files, "version.json")
    body = rfc8785.dumps({"spec": version["spec"], "artifacts": sorted(set(version["artifact_digests"]))})
    if _sha256(body) != version["digest"]:
        raise PackInvalid("the version's digest does not match its spec and artifacts")
    log.one("the request", "promotion", promotion["id"], "promotion.request", version_digest=version["digest"],
            workflow=promotion["workflow"], version=promotion["version"], stage=promotion["stage"],
            kind=promotion["kind"], justification=promotion["justification"])
    return version


def _check_decisions(files, promotion, log: _Log) -> list[dict]:
    decisions = _json(files, "decisions.json")
    if [d["decision_id"] for d in decisions] != promotion["decision_ids"]:
        raise PackInvalid("the pack's decisions are not the promotion's decisions")
    for decision in decisions:
        if _sha256(rfc8785.dumps(decision["input"])) != decision["input_digest"]:
            raise PackInvalid(f"decision {decision['decision_id']}: its input does not match its digest")
        log.one(f"decision {decision['decision_id']}", "policy_decision", decision["decision_id"], "policy.decide",
                input_digest=decision["input_digest"], allow=decision["allow"],
                policy_revision=decision["policy_revision"], violations=[v["rule"] for v in decision["violations"]])
    return decisions


def _check_approvals(files, promotion, log: _Log) -> list[dict]:
    approvals = _json(files, "approvals.json")
    for approval in approvals:
        event = log.one(f"the {approval['verdict']} by {approval['user']}", "promotion", promotion["id"],
                        f"promotion.{approval['verdict']}", approval=approval["id"],
                        binding_digest=approval["binding_digest"], otp_device=approval["mfa"]["otp_device"])
        if event["actor"]["name"] != approval["user"]:
            raise PackInvalid(f"approval {approval['id']} names {approval['user']}, the log {event['actor']['name']}")
    return approvals


def _check_exemptions(files, promotion, log: _Log) -> None:
    exemptions = _json(files, "exemptions.json")
    for waiver in exemptions["waivers"]:
        log.one(f"waiver {waiver['id']}", "waiver", waiver["id"], "waiver.request", rule=waiver["rule"])
        if waiver["approved_by"]:
            log.one(f"waiver {waiver['id']}", "waiver", waiver["id"], "waiver.approve")
    for override in exemptions["overrides"]:
        log.one(f"override {override['id']}", "promotion", promotion["id"], "promotion.override_request",
                override=override["id"], rule=override["rule"])
        if override["confirmed_by"]:
            log.one(f"override {override['id']}", "promotion", promotion["id"], "promotion.override_confirm",
                    override=override["id"])


def _check_run_output(artifact: dict, version: dict, public_pems, log: _Log) -> None:
    """An output of a run: its provenance is signed by the platform, names this artifact and
    version, and the log records the run producing it."""
    output, target = artifact["run_output"], f"{artifact['name']}@{artifact['digest']}"
    try:
        statement = verify_attestation(output["provenance"], {key_id(pem): pem for pem in public_pems},
                                       predicate_type=PROVENANCE_PREDICATE)
    except AttestationInvalid as exc:
        raise PackInvalid(f"the provenance of {target} does not verify: {exc}") from None
    algorithm, _, value = artifact["digest"].partition(":")
    if (statement["subject"][0]["digest"] != {algorithm: value}
            or statement["predicate"].get("version_digest") != version["digest"]):
        raise PackInvalid(f"the provenance of {target} is about another artifact or version")
    log.one(f"the run that made {target}", "run", output["run_id"], "run.output", digest=artifact["digest"])


def _check_artifacts(files, version, public_pems, log: _Log) -> int:
    checked = 0
    for artifact in _json(files, "artifacts.json"):
        target = f"{artifact['name']}@{artifact['digest']}"
        if artifact.get("run_output"):
            _check_run_output(artifact, version, public_pems, log)
            checked += 1
        logged = log.about("artifact", target, "signature.verify", "signature.revoke")
        for signature in artifact["signatures"]:
            if _sha256(signature["bundle"].encode()) != signature["bundle_digest"]:
                raise PackInvalid(f"a signature bundle of {target} does not match its digest")
            for verification in signature["verifications"]:
                if not any(e["data"].get("signature") == signature["id"]
                           and e["outcome"] == ("success" if verification["verified"] else "failed") for e in logged):
                    raise PackInvalid(f"a verification of {target} is not in the log in the pack")
                checked += 1
    return checked


def _check_attestation(files, promotion, version, decisions, approvals, public_pems, log: _Log) -> bool:
    bundle = files.get("attestation.sigstore.json")
    if bundle is None:
        if promotion["state"] == "promoted":
            raise PackInvalid("the promotion was promoted but the pack has no attestation")
        return False
    try:
        statement = verify_attestation(bundle, {key_id(pem): pem for pem in public_pems})
    except AttestationInvalid as exc:
        raise PackInvalid(f"the attestation does not verify: {exc}") from None
    predicate = statement["predicate"]
    algorithm, _, value = version["digest"].partition(":")
    if statement["subject"][0]["digest"] != {algorithm: value} or predicate["promotion"] != promotion["id"]:
        raise PackInvalid("the attestation is about another version or promotion")
    if predicate["decision_ids"] != [d["decision_id"] for d in decisions]:
        raise PackInvalid("the attestation names other policy decisions than the pack")
    approved = {(a["user"], a["mfa"]["otp_device"]) for a in approvals if a["verdict"] == "approve"}
    for approver in predicate["approvers"]:
        if (approver["user"], approver["otp_device"]) not in approved:
            raise PackInvalid(f"the attestation names approver {approver['user']}, whose approval is not in the pack")
    log.one("the promotion", "promotion", promotion["id"], "promotion.promote", attestation_digest=_sha256(bundle))
    return True


def verify_evidence(path: Path, public_pems: list[str]) -> dict:
    """Return a summary if the pack verifies; raise PackInvalid naming the first problem."""
    files = read_pack(path)
    manifest = _check_manifest(files)
    promotion = _json(files, "promotion.json")
    if (promotion["id"], promotion["tenant"]) != (manifest["promotion"], manifest["tenant"]):
        raise PackInvalid("promotion.json is not the promotion the manifest names")
    log = _Log(files, public_pems, promotion["tenant"])
    version = _check_version(files, promotion, log)
    decisions = _check_decisions(files, promotion, log)
    approvals = _check_approvals(files, promotion, log)
    _check_exemptions(files, promotion, log)
    verifications = _check_artifacts(files, version, public_pems, log)
    attested = _check_attestation(files, promotion, version, decisions, approvals, public_pems, log)
    return {"promotion": promotion["id"], "tenant": promotion["tenant"], "state": promotion["state"],
            "events": len(log.events), "tree_size": log.size, "decisions": len(decisions),
            "approvals": len(approvals), "verifications": verifications, "attested": attested}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m compliance.verify_evidence", description=__doc__.splitlines()[0])
    parser.add_argument("pack", type=Path, help="the evidence pack: its zip or the folder it was unpacked into")
    parser.add_argument("--public-key", required=True, type=Path, action="append",
                        help="a platform public key (PEM) you obtained yourself; repeat for older keys")
    options = parser.parse_args(argv)
    try:
        summary = verify_evidence(options.pack, [key.read_text() for key in options.public_key])
    except PackInvalid as exc:
        print(f"The evidence pack does not verify: {exc}.", file=sys.stderr)
        return 1
    except (OSError, ValueError, KeyError, TypeError) as exc:
        print(f"The evidence pack cannot be read: {exc!r}.", file=sys.stderr)
        return 1
    print(f"Verified: promotion {summary['promotion']} of tenant {summary['tenant']} ({summary['state']}): "
          f"{summary['decisions']} decision(s), {summary['approvals']} approval(s), "
          f"{summary['verifications']} signature verification(s), "
          f"attestation {'verified' if summary['attested'] else 'none (not promoted)'}; "
          f"{summary['events']} event(s) proven in the signed tree of size {summary['tree_size']}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
