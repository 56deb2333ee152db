"""Verify a promotion's evidence pack offline, trusting only the platform's public key.

    python -m compliance.verify_evidence PACK --public-key FILE [--public-key FILE ...]
                                         [--previous-checkpoint FILE]

PACK is the zip or the folder it was unpacked into. Needs only the standard library,
``cryptography`` and ``rfc8785`` (no Django, no database). The JSON records are the evidence;
``summary.html`` is a reading aid made from them and is checked only against the manifest.
It checks:

- the manifest lists every file with its SHA-256, and nothing else is in the pack;
- the checkpoint is signed by the given key, and every audit event in the pack is in the
  signed tree (canonical bytes, sequencing entry, inclusion proof);
- the pack holds every one of the tenant's events from the promotion's request to its last
  event (to the signed tenant head, for a request still open), so nothing that happened to
  the promotion can be left out, and the state it claims is the one its events lead to;
- each record says what its logged event says: the request (version digest, stage, kind,
  justification, requester, metrics), each policy decision (and that they are exactly the
  decisions its checks logged), each approval and rejection (exactly those logged, with the
  same person, binding, TOTP device, channel and comment), each override (exactly those
  logged) and waiver, each signature verification, each run output and its signed provenance;
- the version's digest recomputes from its spec and artifact digests, and names them all;
- the attestation (once promoted) is signed by the given key, names this version, promotion,
  decisions and approvers, and is the one the promote event names;
- with an earlier checkpoint you kept: that the pack's checkpoint is consistent with it.

Exit status 0 when everything verifies; 1 with one sentence naming the first problem.
"""

import argparse
import hashlib
import io
import json
import sys
import zipfile
from datetime import datetime
from pathlib import Path

import rfc8785

from audit.checkpoints import NoteInvalid, parse_checkpoint, parse_tenant_head
from audit.hashing import SAFE_INTEGER
from audit.keys import kid_of_pem
from audit.verify_export import (InputUnreadable, PackInvalid, add_witness_options, check_consistency,
                                 consistency_records, proven_event, read_input, signed_checkpoint, verified_note,
                                 witness_keys_of, witnessed_or_refused)
from workflows.attestations import PROVENANCE_PREDICATE, AttestationInvalid, verify_attestation

KIND = "neocloud/promotion-evidence"
OPEN_STATES = ("requested", "checked", "awaiting_approval", "approved")
CLOSING = {"promotion.promote": "promoted", "promotion.withdraw": "withdrawn", "promotion.expire": "expired",
           "promotion.reject": "rejected"}
MISSING = object()  # a logged field the event does not have never matches


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def read_pack(path: Path) -> dict[str, bytes]:
    if path.is_dir():
        return {item.name: item.read_bytes() for item in sorted(path.iterdir()) if item.is_file()}
    try:
        with zipfile.ZipFile(io.BytesIO(path.read_bytes())) as archive:
            names = archive.namelist()
            if len(set(names)) != len(names):
                raise PackInvalid("the zip holds two files of the same name")
            return {name: archive.read(name) for name in names}
    except zipfile.BadZipFile:
        raise PackInvalid(f"{path} is neither a folder nor a zip") from None


def _jcs_number(text: str):
    """An integer as RFC 8785 reads it: a double. The platform's database writes some floats
    back as integers (1e16 as 10000000000000000), which only a double serialises again."""
    value = int(text)
    return value if -SAFE_INTEGER <= value <= SAFE_INTEGER else float(text)


def _json(files: dict[str, bytes], name: str):
    try:
        return json.loads(files[name], parse_int=_jcs_number)
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


def _signed(note: str, public_pems: list[str], parse):
    """The note's body, signed by one of the keys, read by ``parse`` (a checkpoint or a head)."""
    try:
        return parse(verified_note(note, public_pems))
    except NoteInvalid as problem:
        raise PackInvalid(f"a signed note in the pack does not verify: {problem}") from None


class _Log:
    """The pack's audit events, each proven in the signed checkpoint."""

    def __init__(self, files: dict[str, bytes], public_pems: list[str], tenant: str):
        self.checkpoint = _signed(files.get("checkpoint.txt", b"").decode(), public_pems, parse_checkpoint)
        self.events = []
        for number, line in enumerate(files.get("events.jsonl", b"").decode().splitlines(), start=1):
            body, tenant_position = proven_event(line, number, self.checkpoint, tenant)
            self.events.append({**body, "tenant_position": tenant_position})
        self.by_position = {event["tenant_position"]: event for event in self.events}

    def about(self, target_type: str, target_id, *actions: str) -> list[dict]:
        return [e for e in self.events if e["target"] == {"type": target_type, "id": str(target_id)}
                and (not actions or e["action"] in actions)]

    def one(self, what: str, target_type: str, target_id, *actions: str, actor=MISSING, **data) -> dict:
        for event in self.about(target_type, target_id, *actions):
            if (actor is MISSING or event["actor"]["name"] == actor) and all(
                    event["data"].get(key, MISSING) == value for key, value in data.items()):
                return event
        raise PackInvalid(f"the log in the pack holds no {' or '.join(actions)} event for {what} that matches it")


def _own_events(promotion: dict, log: _Log) -> list[dict]:
    own = [e for e in log.about("promotion", promotion["id"]) if not e["action"].startswith("audit.")]
    return sorted(own, key=lambda e: e["tenant_position"])


def _check_span(files, promotion, log: _Log, public_pems) -> list[dict]:
    """Every tenant event from the request to the promotion's last event (or to the signed
    tenant head while it is open) is in the pack; return the promotion's own events."""
    own = _own_events(promotion, log)
    requests = [e for e in own if e["action"] == "promotion.request"]
    if len(requests) != 1:
        raise PackInvalid("the pack does not hold the promotion's request event")
    first = requests[0]["tenant_position"]
    if promotion["state"] in OPEN_STATES:
        _, tenant, tenant_size, size, root = _signed(files.get("tenant-head.txt", b"").decode(), public_pems,
                                                     parse_tenant_head)
        if (tenant, size, root) != (promotion["tenant"], log.checkpoint.size, log.checkpoint.root):
            raise PackInvalid("the tenant head is not this tenant's head at the pack's checkpoint")
        last = tenant_size - 1
    else:
        last = own[-1]["tenant_position"]
    for position in range(first, last + 1):
        if position not in log.by_position:
            raise PackInvalid(f"the tenant's event {position}, between the promotion's request and its last "
                              "event, is missing from the pack")
    return own


def _check_state(promotion, own: list[dict]) -> None:
    logged = "requested"
    for event in own:
        if event["action"] in CLOSING:
            logged = CLOSING[event["action"]]
        elif event["action"] == "promotion.check" and logged in OPEN_STATES:
            logged = event["data"].get("state", logged)
    if logged != promotion["state"]:
        raise PackInvalid(f"promotion.json says the promotion is {promotion['state']}; its events say {logged}")


def _check_request(files, promotion, log: _Log) -> dict:
    version = _json(files, "version.json")
    body = rfc8785.dumps({"spec": version["spec"], "artifacts": sorted(set(version["artifact_digests"]))})
    if _sha256(body) != version["digest"]:
        raise PackInvalid("the version's digest does not match its spec and artifacts")
    log.one("the request", "promotion", promotion["id"], "promotion.request", actor=promotion["requested_by"],
            version_digest=version["digest"], workflow=promotion["workflow"], version=promotion["version"],
            stage=promotion["stage"], kind=promotion["kind"], justification=promotion["justification"],
            metrics_artifact=promotion["metrics_artifact"])
    return version


def _check_decisions(files, promotion, own, log: _Log) -> list[dict]:
    decisions = _json(files, "decisions.json")
    checked = [e["data"].get("decision_id") for e in own if e["action"] == "promotion.check"]
    if [d["decision_id"] for d in decisions] != promotion["decision_ids"] or promotion["decision_ids"] != checked:
        raise PackInvalid("the pack's decisions are not the decisions the promotion's checks logged")
    for decision in decisions:
        if _sha256(rfc8785.dumps(decision["input"])) != decision["input_digest"]:
            raise PackInvalid(f"decision {decision['decision_id']}: its input does not match its digest")
        log.one(f"decision {decision['decision_id']}", "policy_decision", decision["decision_id"], "policy.decide",
                input_digest=decision["input_digest"], allow=decision["allow"], engine=decision["engine"],
                entrypoint=decision["entrypoint"], error=decision["error"],
                policy_revision=decision["policy_revision"], violations=[v["rule"] for v in decision["violations"]])
    return decisions


def _check_approvals(files, promotion, own, log: _Log) -> list[dict]:
    approvals = _json(files, "approvals.json")
    logged = _ids(e["data"].get("approval") for e in own if e["action"] in ("promotion.approve", "promotion.reject"))
    if _ids(a["id"] for a in approvals) != logged:
        raise PackInvalid("the pack's approvals and rejections are not those the log holds for the promotion")
    for approval in approvals:
        if approval["verdict"] not in ("approve", "reject"):
            raise PackInvalid(f"approval {approval['id']} has no verdict the platform gives")
        log.one(f"the {approval['verdict']} by {approval['user']}", "promotion", promotion["id"],
                f"promotion.{approval['verdict']}", actor=approval["user"], approval=approval["id"],
                binding_digest=approval["binding_digest"], policy_revision=approval["policy_revision"],
                otp_device=approval["mfa"]["otp_device"], via=approval["via"], comment=approval["comment"])
    return approvals


def _ids(values) -> list[str]:
    """Record ids as a comparable list, whatever a forger put in them."""
    return sorted(json.dumps(value) for value in values)


def _same_time(first: str | None, second: str | None) -> bool:
    try:
        return datetime.fromisoformat(first) == datetime.fromisoformat(second)
    except (TypeError, ValueError):
        return first == second


def _check_exemptions(files, promotion, own, log: _Log) -> None:
    exemptions = _json(files, "exemptions.json")
    for waiver in exemptions["waivers"]:
        asked = log.one(f"waiver {waiver['id']}", "waiver", waiver["id"], "waiver.request",
                        actor=waiver["requested_by"], rule=waiver["rule"], reason=waiver["reason"],
                        ticket_url=waiver["ticket_url"])
        if not _same_time(asked["data"].get("expires_at"), waiver["expires_at"]):
            raise PackInvalid(f"waiver {waiver['id']}'s expiry differs from the logged one")
        approved = log.about("waiver", waiver["id"], "waiver.approve")
        if [e["actor"]["name"] for e in approved] != ([waiver["approved_by"]] if waiver["approved_by"] else []):
            raise PackInvalid(f"waiver {waiver['id']}'s approval differs from the log")
        revoked = log.about("waiver", waiver["id"], "waiver.revoke")
        if [e["actor"]["name"] for e in revoked] != ([waiver["revoked_by"]] if waiver["revoked_by"] else []):
            raise PackInvalid(f"waiver {waiver['id']}'s revocation differs from the log")
    overrides = exemptions["overrides"]
    asked = _ids(e["data"].get("override") for e in own if e["action"] == "promotion.override_request")
    confirmed = _ids(e["data"].get("override") for e in own if e["action"] == "promotion.override_confirm")
    if _ids(o["id"] for o in overrides) != asked or _ids(o["id"] for o in overrides if o["confirmed_by"]) != confirmed:
        raise PackInvalid("the pack's overrides are not those the log holds for the promotion")
    for override in overrides:
        log.one(f"override {override['id']}", "promotion", promotion["id"], "promotion.override_request",
                actor=override["requested_by"], override=override["id"], rule=override["rule"],
                justification=override["justification"])
        if override["confirmed_by"]:
            log.one(f"override {override['id']}", "promotion", promotion["id"], "promotion.override_confirm",
                    actor=override["confirmed_by"], override=override["id"], rule=override["rule"])


def _check_run_output(artifact: dict, version: dict, public_pems, log: _Log) -> None:
    """An output of a run: its provenance is signed by the platform, names this artifact and
    version, and the log records the run producing it."""
    output, target = artifact["run_output"], f"{artifact['name']}@{artifact['digest']}"
    try:
        statement = verify_attestation(output["provenance"], {kid_of_pem(pem): pem for pem in public_pems},
                                       predicate_type=PROVENANCE_PREDICATE)
    except AttestationInvalid as exc:
        raise PackInvalid(f"the provenance of {target} does not verify: {exc}") from None
    algorithm, _, value = artifact["digest"].partition(":")
    if (statement["subject"][0]["digest"] != {algorithm: value}
            or statement["predicate"].get("version_digest") != version["digest"]):
        raise PackInvalid(f"the provenance of {target} is about another artifact or version")
    log.one(f"the run that made {target}", "run", output["run_id"], "run.output", digest=artifact["digest"])


def _check_artifacts(files, version, public_pems, log: _Log) -> int:
    artifacts = _json(files, "artifacts.json")
    missing = set(version["artifact_digests"]) - {a["digest"] for a in artifacts}
    if missing:
        raise PackInvalid(f"the version's artifact {sorted(missing)[0]} is not in the pack")
    checked = 0
    for artifact in artifacts:
        target = f"{artifact['name']}@{artifact['digest']}"
        if artifact.get("run_output"):
            _check_run_output(artifact, version, public_pems, log)
            checked += 1
        unused = log.about("artifact", target, "signature.verify", "signature.revoke")
        for signature in artifact["signatures"]:
            if _sha256(signature["bundle"].encode()) != signature["bundle_digest"]:
                raise PackInvalid(f"a signature bundle of {target} does not match its digest")
            for verification in signature["verifications"]:
                match = next((e for e in unused if _records(e, signature["id"], verification)), None)
                if match is None:
                    raise PackInvalid(f"a verification of {target} is not in the log in the pack as it is stated")
                unused.remove(match)
                checked += 1
    return checked


def _records(event: dict, signature_id, verification: dict) -> bool:
    """Whether ``event`` is the logged form of ``verification`` (a revocation logs no reason)."""
    data = event["data"]
    same = (data.get("signature", MISSING) == signature_id and event["actor"]["name"] == verification["performed_by"]
            and event["outcome"] == ("success" if verification["verified"] else "failed")
            and data.get("mode", MISSING) == verification["mode"]
            and data.get("identity", MISSING) == verification["identity"]
            and data.get("trust_revision", MISSING) == verification["trust_revision"])
    if event["action"] == "signature.verify":
        return same and data.get("reason", MISSING) == verification["reason"]
    return same and not verification["verified"]


def _check_attestation(files, promotion, version, decisions, approvals, public_pems, log: _Log) -> bool:
    bundle = files.get("attestation.sigstore.json")
    if bundle is None:
        if promotion["state"] == "promoted":
            raise PackInvalid("the promotion was promoted but the pack has no attestation")
        return False
    try:
        statement = verify_attestation(bundle, {kid_of_pem(pem): pem for pem in public_pems})
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
    if _sha256(bundle) != promotion["attestation_digest"]:
        raise PackInvalid("promotion.json names another attestation")
    log.one("the promotion", "promotion", promotion["id"], "promotion.promote", attestation_digest=_sha256(bundle))
    return True


def verify_evidence(path: Path, public_pems: list[str], *, previous_checkpoint: str | None = None) -> dict:
    """Return a summary if the pack verifies; raise PackInvalid naming the first problem."""
    files = read_pack(path)
    manifest = _check_manifest(files)
    promotion = _json(files, "promotion.json")
    if (promotion["id"], promotion["tenant"]) != (manifest["promotion"], manifest["tenant"]):
        raise PackInvalid("promotion.json is not the promotion the manifest names")
    log = _Log(files, public_pems, promotion["tenant"])
    own = _check_span(files, promotion, log, public_pems)
    _check_state(promotion, own)
    version = _check_request(files, promotion, log)
    decisions = _check_decisions(files, promotion, own, log)
    approvals = _check_approvals(files, promotion, own, log)
    _check_exemptions(files, promotion, own, log)
    verifications = _check_artifacts(files, version, public_pems, log)
    attested = _check_attestation(files, promotion, version, decisions, approvals, public_pems, log)
    if previous_checkpoint is not None:
        previous = signed_checkpoint(previous_checkpoint, public_pems, what="the earlier checkpoint")
        records = consistency_records(files.get("consistency.jsonl", b"").decode(), log.checkpoint)
        check_consistency(records, previous.size, previous.root, log.checkpoint, what="the earlier checkpoint")
    return {"promotion": promotion["id"], "tenant": promotion["tenant"], "state": promotion["state"],
            "events": len(log.events), "tree_size": log.checkpoint.size, "decisions": len(decisions),
            "approvals": len(approvals), "verifications": verifications, "attested": attested,
            "checkpoint_note": files.get("checkpoint.txt", b"").decode()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m compliance.verify_evidence", description=__doc__.splitlines()[0])
    parser.add_argument("pack", type=Path, help="the evidence pack: its zip or the folder it was unpacked into")
    parser.add_argument("--public-key", required=True, type=Path, action="append",
                        help="a platform public key (PEM) you obtained yourself; repeat for older keys")
    parser.add_argument("--previous-checkpoint", type=Path, help="a checkpoint you kept from before")
    add_witness_options(parser)
    options = parser.parse_args(argv)
    try:
        if not options.pack.exists():
            raise InputUnreadable(f"The evidence pack {options.pack} does not exist.")
        witness_keys = witness_keys_of(options.witness_key)
        summary = verify_evidence(
            options.pack, [read_input(key, "public key") for key in options.public_key],
            previous_checkpoint=read_input(options.previous_checkpoint, "earlier checkpoint"))
        witnessed = witnessed_or_refused(summary["checkpoint_note"], witness_keys, required=options.require_witness)
    except PackInvalid as exc:
        print(f"The evidence pack does not verify: {exc}.", file=sys.stderr)
        return 1
    except InputUnreadable as exc:
        print(exc, file=sys.stderr)
        return 1
    except (OSError, ValueError, KeyError, TypeError, AttributeError, IndexError) as exc:
        print(f"The evidence pack cannot be read: {exc!r}.", file=sys.stderr)
        return 1
    print(f"Verified: promotion {summary['promotion']} of tenant {summary['tenant']} ({summary['state']}): "
          f"{summary['decisions']} decision(s), {summary['approvals']} approval(s), "
          f"{summary['verifications']} signature verification(s), "
          f"attestation {'verified' if summary['attested'] else 'none (not promoted)'}; "
          f"{summary['events']} event(s) proven in the signed tree of size {summary['tree_size']}; {witnessed}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
