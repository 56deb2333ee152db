"""Evidence packs: everything that decided one promotion, with proof that it is in the log.

A pack is a zip of JSON files and a readable ``summary.html``:

- ``promotion.json``: the request, its state and who asked;
- ``version.json``: the version's spec, its artifact digests and its digest;
- ``artifacts.json``: each artifact with its signatures and every verification of them;
- ``decisions.json``: every policy decision taken on the promotion (input, input digest,
  policy revision, engine, result, rule messages);
- ``approvals.json``: every approval or rejection, with its time, its binding and the one-time
  password device that backed it;
- ``exemptions.json``: the waivers and overrides any decision's input carried;
- ``attestation.sigstore.json``: the platform-signed promotion attestation (once promoted);
- ``events.jsonl`` and ``checkpoint.txt``: the audit events about all of the above, and every
  event of the tenant from the promotion's request to its last event (to the tenant head while
  it is open), each with its exact canonical bytes and an inclusion proof in the checkpoint;
- ``tenant-head.txt`` and ``consistency.jsonl``: the tenant's signed head at that checkpoint,
  and a consistency proof from every earlier checkpoint;
- ``manifest.json``: what the pack is, and the SHA-256 of every other file.

``python -m compliance.verify_evidence`` checks a pack offline against the platform's key.
"""

import hashlib
import json

from django.db import transaction
from django.db.models import Q
from django.template.loader import render_to_string
from django.utils import timezone

from audit.export import NothingToExport, consistency_proofs, jsonl, proved_event, signed_checkpoint
from audit.log import Target, record
from audit.models import AuditCheckpoint, AuditLeaf
from audit.sequencer import sequence_all
from audit.witnessing import cosigned_note
from policies.models import PolicyDecision, Waiver
from tenants.access import actor_for, require
from tenants.db import PLATFORM_ALIAS, tenant_reads
from tenants.models import Tenant
from workflows.models import (OPEN_PROMOTION_STATES, Approval, Artifact, Promotion, RunOutput, Signature,
                              Verification)
from workflows.selectors import promotion_by_id

FORMAT = 1
KIND = "neocloud/promotion-evidence"


def _time(moment) -> str | None:
    return moment.isoformat() if moment else None


def _promotion(promotion: Promotion) -> dict:
    return {
        "id": str(promotion.public_id), "tenant": promotion.tenant.slug, "workflow": promotion.workflow.name,
        "version": promotion.version.number, "stage": promotion.stage, "kind": promotion.kind,
        "state": promotion.state, "requested_by": promotion.requested_by.username,
        "requested_via_token": promotion.requested_via_token, "requested_at": _time(promotion.requested_at),
        "justification": promotion.justification, "expires_at": _time(promotion.expires_at),
        "previous_version_digest": promotion.previous_version.digest if promotion.previous_version else "",
        "metrics_artifact": promotion.metrics_artifact.digest if promotion.metrics_artifact else "",
        "binding_digest": promotion.binding_digest, "policy_revision": promotion.policy_revision,
        "required_approvals": promotion.required_approvals, "decision_ids": promotion.decisions,
        "closed_at": _time(promotion.closed_at), "closed_by": promotion.closed_by.username if promotion.closed_by else "",
        "close_reason": promotion.close_reason, "promoted_at": _time(promotion.promoted_at),
        "superseded_at": _time(promotion.superseded_at), "attestation_digest": promotion.attestation_digest,
    }


def _version(promotion: Promotion) -> dict:
    version = promotion.version
    return {"workflow": promotion.workflow.name, "number": version.number, "digest": version.digest,
            "spec": version.spec, "artifact_digests": version.artifact_digests,
            "created_by": version.created_by.username, "created_at": _time(version.created_at)}


def _artifacts(promotion: Promotion) -> list[dict]:
    artifacts = list(Artifact.objects.filter(Q(version_links__version=promotion.version)
                                             | Q(pk=promotion.metrics_artifact_id), tenant=promotion.tenant)
                     .distinct().order_by("name", "digest"))
    outputs = {output.artifact_id: output for output in
               RunOutput.objects.filter(artifact__in=artifacts, version=promotion.version).order_by("created_at", "id")}
    signatures = {}
    for signature in (Signature.objects.filter(artifact__in=artifacts).select_related("uploaded_by")
                      .order_by("received_at", "id")):
        signatures.setdefault(signature.artifact_id, []).append(signature)
    verifications = {}
    for verification in Verification.objects.filter(artifact__in=artifacts).order_by("performed_at", "id"):
        verifications.setdefault(verification.signature_id, []).append(verification)
    return [{
        "name": artifact.name, "kind": artifact.kind, "digest": artifact.digest, "size_bytes": artifact.size_bytes,
        "region": artifact.region, "created_at": _time(artifact.created_at),
        "signatures": [{
            "id": signature.pk, "bundle_digest": signature.bundle_digest, "bundle": signature.bundle,
            "received_at": _time(signature.received_at), "uploaded_by": signature.uploaded_by.username,
            "verifications": [{"verified": v.verified, "mode": v.mode, "identity": v.identity, "reason": v.reason,
                               "trust_revision": v.trust_revision, "performed_by": v.performed_by,
                               "performed_at": _time(v.performed_at)}
                              for v in verifications.get(signature.pk, [])],
        } for signature in signatures.get(artifact.pk, [])],
        "run_output": _run_output(outputs.get(artifact.pk)),
    } for artifact in artifacts]


def _run_output(output: RunOutput | None) -> dict | None:
    """For an output of a run: which run made it, and the provenance the platform signed."""
    if output is None:
        return None
    return {"run_id": str(output.run_id), "output_name": output.output_name, "stage": output.stage,
            "created_at": _time(output.created_at), "provenance": output.provenance}


def _decisions(promotion: Promotion) -> list[PolicyDecision]:
    found = {str(d.decision_id): d for d in PolicyDecision.objects.filter(tenant=promotion.tenant,
                                                                          decision_id__in=promotion.decisions)}
    return [found[decision_id] for decision_id in promotion.decisions if decision_id in found]


def _decision(decision: PolicyDecision) -> dict:
    return {"decision_id": str(decision.decision_id), "entrypoint": decision.entrypoint, "engine": decision.engine,
            "policy_revision": decision.policy_revision, "input": decision.input,
            "input_digest": decision.input_digest, "allow": decision.allow, "violations": decision.violations,
            "enforcement": decision.enforcement, "error": decision.error, "requested_by": decision.requested_by,
            "created_at": _time(decision.created_at)}


def _approvals(promotion: Promotion) -> list[dict]:
    approvals = Approval.objects.filter(promotion=promotion).select_related("user").order_by("created_at", "id")
    return [{"id": a.pk, "user": a.user.username, "verdict": a.verdict, "comment": a.comment,
             "created_at": _time(a.created_at), "version_digest": a.version_digest,
             "binding_digest": a.binding_digest, "policy_revision": a.policy_revision,
             "mfa": {"method": "totp", "otp_device": a.otp_device},
             "via": a.via, "token": a.token, "current": a.is_current_for(promotion)} for a in approvals]


def _exemption_sources(decisions: list[PolicyDecision]) -> set[str]:
    return {exemption["source"] for d in decisions for exemption in d.input.get("exemptions", [])
            if isinstance(exemption, dict) and "source" in exemption}


def _exemptions(promotion: Promotion, decisions: list[PolicyDecision]) -> dict:
    sources = _exemption_sources(decisions)
    waiver_ids = sorted(int(s.split(":", 1)[1]) for s in sources if s.startswith("waiver:"))
    waivers = Waiver.objects.filter(tenant=promotion.tenant, pk__in=waiver_ids).select_related(
        "requested_by", "approved_by", "revoked_by").order_by("id")
    overrides = promotion.overrides.select_related("requested_by", "confirmed_by").order_by("requested_at", "id")

    def who(user):
        return user.username if user else ""

    return {
        "waivers": [{"id": w.pk, "rule": w.rule, "reason": w.reason, "ticket_url": w.ticket_url,
                     "requested_by": who(w.requested_by), "requested_at": _time(w.requested_at),
                     "approved_by": who(w.approved_by), "approved_at": _time(w.approved_at),
                     "expires_at": _time(w.expires_at), "revoked_by": who(w.revoked_by),
                     "revoked_at": _time(w.revoked_at)} for w in waivers],
        "overrides": [{"id": o.pk, "rule": o.rule, "justification": o.justification,
                       "requested_by": who(o.requested_by), "requested_at": _time(o.requested_at),
                       "confirmed_by": who(o.confirmed_by), "confirmed_at": _time(o.confirmed_at)}
                      for o in overrides],
    }


def _audit_targets(promotion: dict, records: dict) -> Q:
    """The audit events about what the promotion was decided on (some older than its request)."""
    targets = [("promotion", promotion["id"]), ("workflow_version", f"{promotion['workflow']}@{promotion['version']}")]
    targets += [("policy_decision", d["decision_id"]) for d in records["decisions"]]
    targets += [("waiver", str(w["id"])) for w in records["exemptions"]["waivers"]]
    targets += [("artifact", f"{a['name']}@{a['digest']}") for a in records["artifacts"]]
    targets += [("run", a["run_output"]["run_id"]) for a in records["artifacts"] if a["run_output"]]
    condition = Q()
    for target_type, target_id in targets:
        condition |= Q(event__target_type=target_type, event__target_id=target_id)
    return condition


def evidence_records(promotion: Promotion) -> dict:
    """What the pack says, read on the caller's connection (the caller has checked the reader
    may audit the tenant and bound its row-level security)."""
    decisions = _decisions(promotion)
    artifacts = _artifacts(promotion)
    return {"promotion": _promotion(promotion), "version": _version(promotion), "artifacts": artifacts,
            "decisions": [_decision(d) for d in decisions], "approvals": _approvals(promotion),
            "exemptions": _exemptions(promotion, decisions)}


def _span(promotion: dict, using: str) -> tuple[int, int | None]:
    """The tenant positions the pack holds in full: from the promotion's request to its last
    event of its own (None: an open request, whose span runs to the checkpoint's tenant head).
    Everything that happened to the promotion lies in it, and the verifier checks none of it
    is missing."""
    own = (AuditLeaf.objects.using(using).filter(tenant=promotion["tenant"], event__target_type="promotion",
                                                 event__target_id=promotion["id"])
           .exclude(event__action__startswith="audit."))
    first = own.filter(event__action="promotion.request").values_list("tenant_position", flat=True).first()
    if first is None:
        raise NothingToExport("The promotion's request is not in the log yet.")
    last = own.order_by("-tenant_position").values_list("tenant_position", flat=True).first()
    return first, None if promotion["state"] in OPEN_PROMOTION_STATES else last


def evidence_files(*, records: dict, attestation: str, using: str) -> dict[str, bytes]:
    """The pack's files by name: the records, the attestation (empty before promotion), and
    the audit events about them proven in a signed checkpoint (the latest, when it already
    covers them; else one signed now)."""
    sequence_all(using=using)
    promotion = records["promotion"]
    tenant = promotion["tenant"]
    first, last = _span(promotion, using)
    tenant_leaves = AuditLeaf.objects.using(using).filter(tenant=tenant)
    targeted = _audit_targets(promotion, records)
    needed = [tenant_leaves.filter(targeted).order_by("-position").values_list("position", flat=True).first()]
    if last is not None:
        needed.append(tenant_leaves.filter(tenant_position=last).values_list("position", flat=True).first())
    newest = max((position for position in needed if position is not None), default=-1)
    # The latest checkpoint serves while it covers everything the pack proves (so repeated
    # downloads do not each sign one); an open request's span runs to the tenant head, so it
    # always gets a fresh one.
    checkpoint = AuditCheckpoint.objects.using(using).order_by("-tree_size").first()
    if last is None or checkpoint is None or checkpoint.tree_size <= newest:
        checkpoint = signed_checkpoint(using=using)
    size = checkpoint.tree_size
    head = checkpoint.tenant_heads.using(using).get(tenant=tenant)
    span = Q(tenant_position__gte=first) & (Q(tenant_position__lte=last) if last is not None else Q())
    leaves = (tenant_leaves.filter(targeted | span, position__lt=size)
              .select_related("event").order_by("position"))
    events = [proved_event(leaf, size, using=using) for leaf in leaves]
    packed = {f"{name}.json": json.dumps(value, indent=2, sort_keys=True).encode() for name, value in records.items()}
    if attestation:
        packed["attestation.sigstore.json"] = attestation.encode()
    packed["events.jsonl"] = jsonl(events)
    packed["checkpoint.txt"] = cosigned_note(checkpoint, using=using).encode()
    packed["tenant-head.txt"] = head.note.encode()
    packed["consistency.jsonl"] = jsonl(consistency_proofs(size, using=using))
    packed["summary.html"] = render_to_string("compliance/evidence_summary.html", {
        **records, "events": [{**json.loads(e["canonical"]), "position": e["position"]} for e in events],
        "checkpoint": checkpoint, "has_attestation": bool(attestation)}).encode()
    manifest = {"format": FORMAT, "kind": KIND, "tenant": tenant, "promotion": promotion["id"], "tree_size": size,
                "events": len(events), "span": [first, last], "created_at": timezone.now().isoformat(),
                "files": {name: hashlib.sha256(data).hexdigest() for name, data in sorted(packed.items())}}
    return {"manifest.json": json.dumps(manifest, indent=2, sort_keys=True).encode(), **packed}


def promotion_evidence(*, actor, tenant: Tenant, public_id) -> tuple[Promotion, dict[str, bytes]]:
    """The evidence pack of one of the tenant's promotions, for its auditors and admins; the
    download is audited. Runs outside any transaction: the records are read first, then the
    log (sequenced and, when needed, checkpointed through the platform role), so every record
    read has its event in the checkpoint."""
    require(actor, tenant, "audit")
    with tenant_reads(actor, tenant):
        promotion = promotion_by_id(actor=actor, tenant=tenant, public_id=public_id)
        records = evidence_records(promotion)
    files = evidence_files(records=records, attestation=promotion.attestation, using=PLATFORM_ALIAS)
    with transaction.atomic():
        record(action="audit.evidence_pack", actor=actor_for(actor), tenant=tenant.slug,
               target=Target("promotion", str(promotion.public_id)),
               data={"tree_size": json.loads(files["manifest.json"])["tree_size"]})
    return promotion, files
