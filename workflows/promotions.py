"""Promotions: moving a version into a stage, decided by policy and by people.

requested -> (policy check) -> checked | awaiting_approval | rejected
checked: soft-mandatory violations wait for a waiver or a confirmed override, then a re-check.
awaiting_approval -> approvals (each with a fresh OTP, bound to the version digest, the digest
of the policy input without approvals, and the policy revision) -> at the last one the policy
runs again with the approvals, and only an allow moves the stage pointer -> promoted, with a
signed attestation. Open requests can also be withdrawn, rejected by an approver, or expire.

Every change of a promotion takes the workflow's row lock first, then the promotion's: one
fixed order, so concurrent approvals and promotions of one workflow serialise.
"""

import json
from dataclasses import dataclass
from datetime import UTC, timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from audit.keys import KeyringError, platform_keyring, platform_public_keys
from audit.log import Actor, Target, record
from policies.baseline import is_accepted as baseline_accepted
from policies.engines import DEFAULT_ENTRYPOINT, blocking, get_engine
from policies.models import PRODUCTION_APPROVALS_FLOOR, ROLLBACK_APPROVALS_FLOOR
from policies.services import active_waivers, input_digest, policy_data_document, policy_decide, tenant_policy_of
from tenants.access import actor_for, can, memberships_of, require, require_one_of, role_in, standing_lapse
from tenants.catalogue import region_jurisdictions
from tenants.db import PLATFORM_ALIAS, bind_rls
from tenants.errors import Conflict, DomainError, Forbidden, Invalid, NotFound
from tenants.models import Tenant, TenantQuota
from tenants.roles import Role
from tenants.stepup import require_person, step_up_verify

from . import attestations
from .models import (
    OPEN_PROMOTION_STATES,
    Approval,
    Artifact,
    ArtifactKind,
    Promotion,
    PromotionKind,
    PromotionOverride,
    PromotionState,
    Stage,
    StagePointer,
    Workflow,
    WorkflowVersion,
)
from .outputs import staging_run_metrics, staging_run_metrics_of
from .selectors import artifacts_by_version, signature_set
from .spec import gpus_by_flavor
from .store import get_store

ENTRYPOINT = DEFAULT_ENTRYPOINT


class AttestationUnavailable(DomainError):
    status = 503
    code = "attestation_unavailable"


# The policy input ------------------------------------------------------------------------


def _rfc3339(moment) -> str:
    # A numeric offset, never "Z": regopy fails on it.
    return moment.astimezone(UTC).isoformat(timespec="seconds")


def metrics_of(artifact: Artifact | None) -> dict:
    """The numbers of a metrics artifact, read from the store (the upload check made them a
    JSON object of finite numbers). Numbers typed into a request never get here."""
    if artifact is None:
        return {}
    with get_store().open(artifact.digest) as handle:
        document = json.loads(handle.read())
    return document if isinstance(document, dict) else {}


def _exceptions_in_force(promotion: Promotion, moment) -> list[tuple[str, str, object, object]]:
    return _exceptions_from(promotion, waivers=active_waivers(promotion.tenant, moment),
                            overrides=promotion.overrides.filter(confirmed_at__isnull=False).select_related(
                                "requested_by", "confirmed_by"),
                            members=memberships_of(promotion.tenant_id))


def _exceptions_from(promotion: Promotion, *, waivers, overrides, members) -> list[tuple[str, str, object, object]]:
    """The waivers and confirmed overrides that may exempt this promotion, as (rule, source,
    who asked, who confirmed): an exception counts only while its confirmer still stands as
    they did when they confirmed, and only if neither of its people requested the promotion
    or wrote the version (one person never plays two parts on one promotion)."""
    asked_or_wrote = {promotion.requested_by_id, promotion.version.created_by_id}
    candidates = [(w.rule, f"waiver:{w.pk}", w.requested_by, w.approved_by, w.approved_at, WAIVER_APPROVING_ROLES)
                  for w in waivers]
    candidates += [(o.rule, f"override:{o.pk}", o.requested_by, o.confirmed_by, o.confirmed_at,
                    OVERRIDE_CONFIRMING_ROLES) for o in overrides]
    return [(rule, source, asker, confirmer) for rule, source, asker, confirmer, confirmed_at, roles in candidates
            if not {asker.pk, confirmer.pk} & asked_or_wrote
            and not standing_lapse(confirmer, promotion.tenant_id, given_at=confirmed_at, roles=roles,
                                   memberships=members)]


def _people_behind_exceptions(promotion: Promotion, moment=None) -> set[int]:
    return {person.pk for _, _, asker, confirmer in _exceptions_in_force(promotion, moment or timezone.now())
            for person in (asker, confirmer)}


def _refuse_a_second_part(actor, promotion: Promotion, what: str) -> None:
    """One person plays one part on a promotion: whoever asked for it, wrote the version or
    approved it does not also ask for or confirm an exception to it."""
    if actor.pk in {promotion.requested_by_id, promotion.version.created_by_id}:
        raise Forbidden(f"You asked for this promotion or wrote this version; someone else must {what}.",
                        code="separation_of_duties")
    if any(approval.user_id == actor.pk for approval in current_approvals(promotion)):
        raise Forbidden(f"You approved this promotion; someone else must {what}.", code="separation_of_duties")


def policy_input(promotion: Promotion, *, moment) -> dict:
    """The facts the policy decides on, all read from the database and the store; the caller
    adds ``approvals``."""
    return policy_inputs([promotion], moment=moment)[promotion.pk]


def policy_inputs(promotions, *, moment) -> dict[int, dict]:
    """``policy_input`` of each promotion (by id), read together in a fixed number of queries
    whatever their number: one check is a batch of one, so a list judges as a check does."""
    promotions = list(promotions)
    if not promotions:
        return {}
    versions = list({p.version_id: p.version for p in promotions}.values())
    artifacts = artifacts_by_version(versions)
    tenants = {tenant_id: _TenantFacts.read(tenant, moment)
               for tenant_id, tenant in {p.tenant_id: p.tenant for p in promotions}.items()}
    pointers = dict(((workflow, stage), digest) for workflow, stage, digest in StagePointer.objects.filter(
        workflow_id__in={p.workflow_id for p in promotions}).values_list("workflow_id", "stage", "version__digest"))
    reached = {version.pk: set() for version in versions}
    for version_id, stage in Promotion.objects.filter(version_id__in=list(reached),
                                                      state=PromotionState.PROMOTED).values_list("version_id", "stage"):
        reached[version_id].add(stage)
    overrides = {p.pk: [] for p in promotions}
    for override in PromotionOverride.objects.filter(promotion_id__in=list(overrides), confirmed_at__isnull=False) \
            .select_related("requested_by", "confirmed_by"):
        overrides[override.promotion_id].append(override)
    regions = {p.pk: _dataset_regions(p.version, artifacts[p.version_id]) for p in promotions}
    jurisdictions = region_jurisdictions(set().union(*regions.values()))
    staging = staging_run_metrics_of([p.version for p in promotions if _judged_by_staging_metrics(p)])
    inputs = {}
    for promotion in promotions:
        version, tenant = promotion.version, tenants[promotion.tenant_id]
        output = staging.get(version.pk)
        inputs[promotion.pk] = {
            "kind": promotion.kind,
            "stage": promotion.stage,
            # What the stage holds now: approvers approve a move from it, so a move voids them.
            "stage_version": pointers.get((promotion.workflow_id, promotion.stage), ""),
            "version": {
                "digest": version.digest,
                "author": version.created_by.username,
                "artifacts": [{"digest": a.digest, "name": a.name, "kind": a.kind, "verified": status.verified,
                               "identity": status.identity if status.verified else "", "signatures": signature_set(a)}
                              for a, status in artifacts[version.pk]],
                "gpus": gpus_by_flavor(version.spec),
                "base_model": (version.spec.get("base_model") or {}).get("name", ""),
                "dataset_regions": sorted(regions[promotion.pk]),
                # The catalogue's jurisdiction of each of those regions; a region not in it is absent.
                "dataset_jurisdictions": {r: jurisdictions[r] for r in regions[promotion.pk] if r in jurisdictions},
            },
            "tenant": {"slug": promotion.tenant.slug, "jurisdiction": promotion.tenant.jurisdiction,
                       "quota": tenant.quota, "policy": tenant.policy},
            "metrics": metrics_of(promotion.metrics_artifact),
            "metrics_artifact": promotion.metrics_artifact.digest if promotion.metrics_artifact else "",
            # For production: which staging run produced (and the platform signed) those metrics,
            # as long as its provenance still verifies; else nothing (and the metrics rule fails).
            "metrics_run": str(output.run_id) if _judged_by_staging_metrics(promotion) and output
            and output.artifact_id == promotion.metrics_artifact_id else "",
            "requester": promotion.requested_by.username,
            "stages_reached": sorted(reached[version.pk]),
            "exemptions": [{"rule": rule, "source": source} for rule, source, _, _ in _exceptions_from(
                promotion, waivers=tenant.waivers, overrides=overrides[promotion.pk], members=tenant.members)],
            "now": _rfc3339(moment),
        }
    return inputs


@dataclass(frozen=True)
class _TenantFacts:
    """What every promotion of one tenant reads alike."""

    quota: dict
    policy: dict
    members: dict
    waivers: list

    @classmethod
    def read(cls, tenant: Tenant, moment) -> "_TenantFacts":
        quota = {q.flavor.name: q.nominal + q.borrowing_limit
                 for q in TenantQuota.objects.filter(tenant=tenant).select_related("flavor")}
        return cls(quota=quota, policy=policy_data_document(tenant_policy_of(tenant)),
                   members=memberships_of(tenant.pk), waivers=active_waivers(tenant, moment))


def _dataset_regions(version: WorkflowVersion, artifacts) -> set[str]:
    regions = {i["region"] for i in version.spec.get("inputs", []) if i.get("region")}
    return regions | {a.region for a, _ in artifacts if a.kind == ArtifactKind.DATASET}


def _judged_by_staging_metrics(promotion: Promotion) -> bool:
    return promotion.stage == Stage.PRODUCTION and promotion.metrics_artifact_id is not None


def binding_of(facts: dict) -> str:
    """What an approval binds to besides the version digest and policy revision: the digest
    of the policy input without approvals and without the clock."""
    return input_digest({k: v for k, v in facts.items() if k not in ("approvals", "now")})


# Who may give which decision. A decision counts only while its giver still holds such a role,
# unchanged since they gave it (tenants.access.standing_lapse).
APPROVING_ROLES = (Role.APPROVER,)
OVERRIDE_CONFIRMING_ROLES = (Role.TENANT_ADMIN, Role.APPROVER)
WAIVER_APPROVING_ROLES = (Role.TENANT_ADMIN,)


def fresh_binding(promotion: Promotion) -> tuple[str, str]:
    """The binding digest and policy revision of the promotion's facts read now, for showing
    an approval void the moment what it approved changes, before anyone checks again."""
    return fresh_bindings([promotion])[promotion.pk]


def fresh_bindings(promotions) -> dict[int, tuple[str, str]]:
    """``fresh_binding`` of each promotion (by id), read together: what a list of them shows."""
    revision = _policy_revision()
    return {pk: (binding_of(facts), revision) for pk, facts in policy_inputs(promotions, moment=timezone.now()).items()}


def approval_void_reason(approval: Approval, promotion: Promotion, *, memberships=None, binding=None) -> str:
    """Why an approval does not count towards ``promotion`` (as last checked, or against
    ``binding`` from ``fresh_binding``), or "" if it does."""
    if approval.verdict != Approval.Verdict.APPROVE:
        return "it is a rejection"
    bound_to = (approval.version_digest, approval.binding_digest, approval.policy_revision)
    if bound_to != (promotion.version.digest, *(binding or (promotion.binding_digest, promotion.policy_revision))):
        return "what it approved has changed since (the version, the reviewed facts or the policy)"
    lapse = standing_lapse(approval.user, promotion.tenant_id, given_at=approval.created_at, roles=APPROVING_ROLES,
                           memberships=memberships)
    if lapse:
        return lapse
    if approval.user_id in {promotion.requested_by_id, promotion.version.created_by_id}:
        return f"{approval.user.username} requested the promotion or wrote the version"
    return ""


def approvals_with_standing(promotion: Promotion) -> list[tuple[Approval, str]]:
    """Every verdict on the promotion with why it does not count ("" when it does), judged for
    an open request against its facts as they are now."""
    binding = fresh_binding(promotion) if promotion.is_open else None
    members = memberships_of(promotion.tenant_id)
    return [(a, "" if a.verdict != Approval.Verdict.APPROVE
             else approval_void_reason(a, promotion, memberships=members, binding=binding))
            for a in promotion.approvals.select_related("user")]


def current_approvals(promotion: Promotion) -> list[Approval]:
    """Approvals bound to the promotion as it stands, by approvers whose standing has not lapsed
    since they approved; never the requester's or the author's."""
    members = memberships_of(promotion.tenant_id)
    return [a for a in promotion.approvals.select_related("user")
            if not approval_void_reason(a, promotion, memberships=members)]


def is_approver(user, tenant: Tenant) -> bool:
    """Approvals come from the tenant's approver role (a platform admin is not one)."""
    return role_in(user, tenant) in APPROVING_ROLES


def _policy_revision() -> str:
    try:
        return get_engine().revision
    except Exception:  # the decision that follows fails closed and says why
        return ""


# Reading ---------------------------------------------------------------------------------


def _locked(promotion: Promotion) -> Promotion:
    """Lock the workflow, then the promotion (the one order every change takes)."""
    Workflow.objects.select_for_update().filter(pk=promotion.workflow_id).first()
    return (Promotion.objects.select_for_update(of=("self",))
            .select_related("tenant", "workflow", "version__created_by", "requested_by", "metrics_artifact")
            .get(pk=promotion.pk))


def _close(promotion: Promotion, state: str, *, by=None, reason: str = "") -> None:
    promotion.state = state
    promotion.closed_at = timezone.now()
    promotion.closed_by = by
    promotion.close_reason = reason[:2000]
    promotion.save()


def _target(promotion: Promotion) -> Target:
    return Target("promotion", str(promotion.public_id))


def _summary(promotion: Promotion) -> dict:
    return {"workflow": promotion.workflow.name, "version": promotion.version.number,
            "version_digest": promotion.version.digest, "stage": promotion.stage, "kind": promotion.kind}


# Requesting ------------------------------------------------------------------------------


def _metrics_artifact(version: WorkflowVersion, digest: str | None, stage: str) -> Artifact | None:
    """What the metrics rule judges: for production, only the platform-signed metrics output
    of the version's latest successful staging run; for other stages, the version's metrics
    artifact (named, when it has several)."""
    if stage == Stage.PRODUCTION:
        output = staging_run_metrics(version)
        if digest and (output is None or output.artifact.digest != digest):
            raise Invalid("Production is judged by the metrics of the version's latest successful staging run, "
                          "signed by the platform; another metrics artifact cannot be named.", field="metrics_artifact")
        return output.artifact if output else None
    metrics = list(Artifact.objects.filter(version_links__version=version, kind=ArtifactKind.METRICS)
                   .order_by("name", "digest"))
    if digest:
        chosen = [a for a in metrics if a.digest == digest]
        if not chosen:
            raise Invalid(f"{digest} is not a metrics artifact of this version.", field="metrics_artifact")
        return chosen[0]
    if len(metrics) > 1:
        raise Invalid("This version has several metrics artifacts: name the one to judge it by.",
                      field="metrics_artifact")
    return metrics[0] if metrics else None


def promotion_request(*, actor, tenant: Tenant, version: WorkflowVersion, stage: str, justification: str = "",
                      metrics_artifact: str | None = None, kind: str = PromotionKind.PROMOTION) -> Promotion:
    """Ask to move ``version`` into ``stage``; it is checked against policy at once.

    A hard-mandatory violation rejects it with the reasons; soft-mandatory ones leave it
    ``checked`` (a waiver or an override can lift them); otherwise it awaits its approvals,
    or, where none are needed (development), is promoted now.
    """
    if stage not in Stage.values:
        raise Invalid(f"A stage is one of {', '.join(Stage.values)}.", field="stage")
    if kind not in PromotionKind.values:
        raise Invalid(f"A kind is one of {', '.join(PromotionKind.values)}.", field="kind")
    with transaction.atomic():
        require(actor, tenant, "develop")
        bind_rls(tenant_id=tenant.pk)
        Workflow.objects.select_for_update().filter(pk=version.workflow_id).first()
        pointer = StagePointer.objects.filter(workflow_id=version.workflow_id, stage=stage).first()
        if pointer is not None and pointer.version_id == version.pk:
            raise Conflict(f"Version {version.number} is already the {stage} version.", code="already_in_stage")
        if kind == PromotionKind.ROLLBACK:
            _check_rollback_target(version=version, stage=stage, pointer=pointer)
        if Promotion.objects.filter(version=version, stage=stage, state__in=OPEN_PROMOTION_STATES).exists():
            raise Conflict(f"Version {version.number} already has an open request for {stage}.",
                           code="promotion_already_open")
        now = timezone.now()
        promotion = Promotion.objects.create(
            tenant=tenant, workflow_id=version.workflow_id, version=version, stage=stage, kind=kind,
            requested_by=actor, justification=(justification or "")[:2000], requested_at=now,
            requested_via_token=getattr(getattr(actor, "api_token", None), "public_id", "") or "",
            expires_at=now + timedelta(hours=settings.PROMOTION_TTL_HOURS),
            metrics_artifact=_metrics_artifact(version, metrics_artifact, stage),
            previous_version_id=pointer.version_id if pointer else None)
        record(action="promotion.request", actor=actor_for(actor), tenant=tenant.slug, target=_target(promotion),
               data={**_summary(promotion), "justification": promotion.justification,
                     "metrics_artifact": promotion.metrics_artifact.digest if promotion.metrics_artifact else ""})
        promotion = _locked(promotion)
        _advance(promotion, actor=actor)
    return promotion


def _check_rollback_target(*, version: WorkflowVersion, stage: str, pointer) -> None:
    """A rollback goes back only to the version the stage held immediately before, and only
    while that version's promotion attestation stands and none of its artifacts is revoked."""
    current = (Promotion.objects.filter(workflow_id=version.workflow_id, stage=stage, state=PromotionState.PROMOTED,
                                        superseded_at__isnull=True).order_by("-promoted_at").first())
    if pointer is None or current is None or current.previous_version_id != version.pk:
        raise Invalid(f"Version {version.number} is not the version {stage} held immediately before; "
                      "only that one can be rolled back to.", field="version", code="not_rollback_target")
    earlier = (Promotion.objects.filter(version=version, stage=stage, state=PromotionState.PROMOTED)
               .exclude(attestation="").order_by("-promoted_at").first())
    if earlier is None:
        raise Invalid(f"Version {version.number} has no promotion attestation for {stage}.", field="version",
                      code="not_rollback_target")
    try:
        attestations.verify_attestation(earlier.attestation, platform_public_keys())
    except KeyringError as exc:
        raise AttestationUnavailable(f"The platform's keys cannot be read to check the attestation: {exc}") from None
    except attestations.AttestationInvalid as exc:
        raise Invalid(f"The earlier attestation of version {version.number} does not verify: {exc}",
                      field="version", code="not_rollback_target") from None


# Checking and moving on ------------------------------------------------------------------


def _advance(promotion: Promotion, *, actor) -> None:
    """Evaluate the policy with the approvals that are still current, then move the state.
    Runs inside the caller's transaction, with the promotion locked."""
    moment = timezone.now()
    facts = policy_input(promotion, moment=moment)
    binding, revision = binding_of(facts), _policy_revision()
    if (binding, revision) != (promotion.binding_digest, promotion.policy_revision):
        # The facts or the policy changed: approvals bound to the old ones stop counting.
        promotion.binding_digest, promotion.policy_revision = binding, revision
    approvals = current_approvals(promotion)
    facts["approvals"] = [{"user": a.user.username} for a in approvals]
    decision = policy_decide(actor=actor, tenant=promotion.tenant, entrypoint=ENTRYPOINT, input=facts)
    promotion.decisions = [*promotion.decisions, str(decision.decision_id)]
    promotion.violations = decision.violations
    promotion.required_approvals = _required_approvals(facts)
    denying = blocking(decision.violations)
    pending = [v for v in decision.violations if v["pending"]]
    missing = _missing_facts(promotion, facts, revision=decision.policy_revision)
    if decision.error:
        state, reason = PromotionState.REJECTED, f"The policy could not be evaluated, so it denies: {decision.error}"
    elif missing or any(v["level"] == "hard-mandatory" for v in denying):
        state = PromotionState.REJECTED
        reason = "; ".join(missing + [f"{v['rule']}: {v['message']}" for v in denying
                                      if v["level"] == "hard-mandatory"])
    elif denying:
        state, reason = PromotionState.CHECKED, ""
    elif pending or not decision.allow:
        state, reason = PromotionState.AWAITING_APPROVAL, ""
    else:
        state, reason = PromotionState.APPROVED, ""
    if state == PromotionState.APPROVED:
        state, reason = _final_checks(promotion, facts=facts, approvals=approvals, decision=decision, moment=moment)
    # The event states where the check left the request, final checks included: "approved" in
    # the log means the promotion follows in the same transaction (evidence packs rely on it).
    record(action="promotion.check", actor=actor_for(actor), tenant=promotion.tenant.slug, target=_target(promotion),
           outcome={PromotionState.REJECTED: "denied"}.get(state, "success"),
           data={**_summary(promotion), "decision_id": str(decision.decision_id), "state": state,
                 "binding_digest": binding, "policy_revision": revision, "approvals": len(approvals),
                 "required_approvals": promotion.required_approvals,
                 "violations": [v["rule"] for v in decision.violations], "reason": reason})
    if state == PromotionState.REJECTED:
        _close(promotion, state, reason=reason)
        return
    promotion.state = state
    promotion.save()
    if state == PromotionState.APPROVED:
        _promote(promotion, actor=actor, decision=decision, approvals=approvals, facts=facts)


# The stage a version must have reached before it may enter each stage.
STAGE_BEFORE = {Stage.STAGING: Stage.DEVELOPMENT, Stage.PRODUCTION: Stage.STAGING}


def _missing_facts(promotion: Promotion, facts: dict, *, revision: str) -> list[str]:
    """The hard facts the platform checks itself, whatever the policy engine answers: no
    waiver or override stands in for a missing one (docs/promotions.md)."""
    missing = []
    if revision and not baseline_accepted(revision):
        missing.append(f"the platform baseline revision {revision} has not been accepted by two platform admins, "
                       "so nothing is promoted under it (docs/policies.md)")
    before = STAGE_BEFORE.get(promotion.stage)
    if before and before not in facts["stages_reached"]:
        missing.append(f"version {promotion.version.number} has not been promoted to {before}; "
                       "a version goes through development, then staging, then production")
    if promotion.stage == Stage.PRODUCTION and not (facts["metrics_artifact"] and facts["metrics_run"]):
        missing.append("production needs the platform-signed metrics of a successful staging run of this version")
    return missing


def _final_checks(promotion: Promotion, *, facts, approvals, decision, moment) -> tuple[str, str]:
    """Defence in depth before the pointer moves: the policy said allow, and the platform's own
    rules agree (enough distinct approvers, none the requester, the author or a person behind an
    exception in force; only exemptions the input carried; a rollback still goes to the
    immediately superseded version)."""
    people = ({a.user_id for a in approvals} - {promotion.requested_by_id, promotion.version.created_by_id}
              - _people_behind_exceptions(promotion, moment))
    if len(people) < promotion.required_approvals:
        return PromotionState.AWAITING_APPROVAL, ""
    exempted = {e["rule"] for e in facts["exemptions"]}
    stray = [v["rule"] for v in decision.violations if v["exempt"] and v["rule"] not in exempted]
    if stray:
        return PromotionState.REJECTED, f"The policy exempted {', '.join(stray)} without a waiver or an override."
    if promotion.kind == PromotionKind.ROLLBACK:
        pointer = StagePointer.objects.filter(workflow_id=promotion.workflow_id, stage=promotion.stage).first()
        try:
            _check_rollback_target(version=promotion.version, stage=promotion.stage, pointer=pointer)
        except Invalid as exc:
            return PromotionState.REJECTED, exc.detail
    return PromotionState.APPROVED, ""


def _required_approvals(facts: dict) -> int:
    policy = facts["tenant"]["policy"]
    if facts["kind"] == PromotionKind.ROLLBACK:
        return max(ROLLBACK_APPROVALS_FLOOR, policy["rollback_min_approvals"])
    if facts["stage"] == Stage.PRODUCTION:
        return max(PRODUCTION_APPROVALS_FLOOR, policy["min_approvals"])
    return {Stage.DEVELOPMENT: 0, Stage.STAGING: 1}.get(facts["stage"], 0)


def _promote(promotion: Promotion, *, actor, decision, approvals, facts) -> None:
    """Move the stage pointer (atomically, under the workflow lock) and sign the attestation."""
    now = timezone.now()
    pointer = StagePointer.objects.select_for_update().filter(workflow_id=promotion.workflow_id,
                                                              stage=promotion.stage).first()
    previous = pointer.version if pointer else None
    if pointer is None:
        StagePointer.objects.create(tenant=promotion.tenant, workflow_id=promotion.workflow_id, stage=promotion.stage,
                                    version=promotion.version, updated_at=now)
    else:
        pointer.version, pointer.updated_at = promotion.version, now
        pointer.save(update_fields=["version", "updated_at"])
    Promotion.objects.filter(workflow_id=promotion.workflow_id, stage=promotion.stage, state=PromotionState.PROMOTED,
                             superseded_at__isnull=True).exclude(pk=promotion.pk).update(superseded_at=now)
    promotion.previous_version = previous
    promotion.state, promotion.promoted_at = PromotionState.PROMOTED, now
    statement = attestations.statement(
        subject_name=f"{promotion.tenant.slug}/{promotion.workflow.name}@{promotion.version.number}",
        digest=promotion.version.digest,
        predicate={
            "tenant": promotion.tenant.slug, "workflow": promotion.workflow.name,
            "version": promotion.version.number, "version_digest": promotion.version.digest,
            "stage": promotion.stage, "kind": promotion.kind, "promotion": str(promotion.public_id),
            "requested_by": promotion.requested_by.username, "promoted_at": _rfc3339(now),
            "decision_ids": promotion.decisions, "final_decision_id": str(decision.decision_id),
            "policy_revision": decision.policy_revision, "policy_engine": decision.engine,
            "binding_digest": promotion.binding_digest,
            "approvers": [{"user": a.user.username, "approved_at": _rfc3339(a.created_at), "otp_device": a.otp_device}
                          for a in approvals],
            "exemptions": facts["exemptions"],
            "metrics_artifact": facts["metrics_artifact"],
            "previous_version_digest": previous.digest if previous else "",
        })
    try:
        promotion.attestation = attestations.sign_statement(statement, platform_keyring())
    except KeyringError as exc:
        raise AttestationUnavailable(f"The platform cannot sign the promotion attestation: {exc}") from None
    promotion.attestation_digest = attestations.bundle_digest(promotion.attestation)
    promotion.save()
    record(action="promotion.promote", actor=actor_for(actor), tenant=promotion.tenant.slug, target=_target(promotion),
           data={**_summary(promotion), "previous_version_digest": previous.digest if previous else "",
                 "decision_id": str(decision.decision_id), "policy_revision": decision.policy_revision,
                 "approvers": [a.user.username for a in approvals], "attestation_digest": promotion.attestation_digest})


# Expiry ----------------------------------------------------------------------------------


def promotions_expire(*, moment=None) -> int:
    """Close every open request past its expiry (a beat task). The candidates are read on the
    platform alias, which sees every tenant; each is then closed under its own tenant."""
    moment = moment or timezone.now()
    due = list(Promotion.objects.using(PLATFORM_ALIAS).filter(state__in=OPEN_PROMOTION_STATES, expires_at__lte=moment)
               .values_list("pk", "tenant_id", "workflow_id"))
    closed = 0
    for pk, tenant_id, workflow_id in due:
        with transaction.atomic():
            bind_rls(tenant_id=tenant_id)
            promotion = _locked(Promotion(pk=pk, workflow_id=workflow_id))
            if promotion.is_open and promotion.expires_at <= moment:
                _expire(promotion)
                closed += 1
    return closed


def _expire(promotion: Promotion) -> None:
    _close(promotion, PromotionState.EXPIRED, reason="The request passed its expiry without a decision.")
    record(action="promotion.expire", actor=Actor.system("promotions"), tenant=promotion.tenant.slug,
           target=_target(promotion), data=_summary(promotion))


def _expire_if_due(promotion: Promotion) -> None:
    """In its own transaction, so the expiry stands when the decision asked for is refused."""
    if promotion.is_open and promotion.expires_at <= timezone.now():
        with transaction.atomic():
            bind_rls(tenant_id=promotion.tenant_id)
            locked = _locked(promotion)
            if locked.is_open:
                _expire(locked)
        raise Conflict("This promotion request has expired; ask again.", code="promotion_expired")


# Decisions by people ---------------------------------------------------------------------


def _decide_as_approver(*, actor, promotion: Promotion, otp_token: str, verdict: str, comment: str, via: str,
                        binding_digest: str | None) -> Promotion:
    require_person(actor, f"{verdict} a promotion")
    require(actor, promotion.tenant, "approve")
    device = step_up_verify(user=actor, otp_token=otp_token, purpose=f"promotion.{verdict}")
    _expire_if_due(promotion)
    with transaction.atomic():
        require(actor, promotion.tenant, "approve")
        bind_rls(tenant_id=promotion.tenant_id)
        promotion = _locked(promotion)
        if promotion.state != PromotionState.AWAITING_APPROVAL:
            raise Conflict(f"This promotion is {promotion.state.replace('_', ' ')}, not awaiting approval.",
                           code="promotion_not_awaiting_approval")
        if promotion.expires_at <= timezone.now():
            raise Conflict("This promotion request has expired; ask again.", code="promotion_expired")
        if actor.pk in (promotion.requested_by_id, promotion.version.created_by_id):
            raise Forbidden("You asked for this promotion or wrote this version; someone else must approve it.",
                            code="separation_of_duties")
        if not is_approver(actor, promotion.tenant):
            raise Forbidden("Only members with the approver role decide promotions.")
        if verdict == Approval.Verdict.APPROVE and actor.pk in _people_behind_exceptions(promotion):
            raise Forbidden("You asked for or confirmed an exception this promotion relies on; someone else must "
                            "approve it.", code="separation_of_duties")
        facts = policy_input(promotion, moment=timezone.now())
        binding, revision = binding_of(facts), _policy_revision()
        stale = bool(binding_digest) and binding_digest != binding
        if stale:
            # Check again and keep the result (refused after the commit), so the page the
            # approver reloads shows what changed.
            _advance(promotion, actor=actor)
        else:
            _record_verdict(actor=actor, promotion=promotion, verdict=verdict, comment=comment, via=via,
                            device=device, binding=binding, revision=revision)
    if stale:
        raise Conflict("What you reviewed has changed since (artifacts, policy data, waivers, overrides or the "
                       "version in the stage): review the promotion again.", code="binding_changed")
    return promotion


def _record_verdict(*, actor, promotion: Promotion, verdict, comment, via, device, binding, revision) -> None:
    if (binding, revision) != (promotion.binding_digest, promotion.policy_revision):
        promotion.binding_digest, promotion.policy_revision = binding, revision
        promotion.save(update_fields=["binding_digest", "policy_revision"])
    if promotion.approvals.filter(user=actor, binding_digest=binding, policy_revision=revision).exists():
        raise Conflict("You have already decided on this promotion as it stands.", code="already_decided")
    approval = Approval.objects.create(
        tenant=promotion.tenant, promotion=promotion, user=actor, verdict=verdict, comment=(comment or "")[:2000],
        version_digest=promotion.version.digest, binding_digest=binding, policy_revision=revision,
        otp_device=device.persistent_id, via=via,
        token=getattr(getattr(actor, "api_token", None), "public_id", "") or "")
    record(action=f"promotion.{verdict}", actor=actor_for(actor), tenant=promotion.tenant.slug,
           target=_target(promotion),
           data={**_summary(promotion), "approval": approval.pk, "binding_digest": binding,
                 "policy_revision": revision, "otp_device": device.persistent_id, "via": via,
                 "comment": approval.comment})
    if verdict == Approval.Verdict.REJECT:
        _close(promotion, PromotionState.REJECTED, by=actor, reason=f"Rejected by {actor.username}: {comment}")
    else:
        _advance(promotion, actor=actor)


def promotion_approve(*, actor, promotion: Promotion, otp_token: str, comment: str = "", via: str = "api",
                      binding_digest: str | None = None) -> Promotion:
    return _decide_as_approver(actor=actor, promotion=promotion, otp_token=otp_token, verdict=Approval.Verdict.APPROVE,
                               comment=comment, via=via, binding_digest=binding_digest)


def promotion_reject(*, actor, promotion: Promotion, otp_token: str, comment: str, via: str = "api") -> Promotion:
    if not (comment or "").strip():
        raise Invalid("Say why you reject it.", field="comment")
    return _decide_as_approver(actor=actor, promotion=promotion, otp_token=otp_token, verdict=Approval.Verdict.REJECT,
                               comment=comment, via=via, binding_digest=None)


def promotion_withdraw(*, actor, promotion: Promotion, reason: str = "") -> Promotion:
    with transaction.atomic():
        require_one_of(actor, promotion.tenant, ("develop", "admin"))
        bind_rls(tenant_id=promotion.tenant_id)
        promotion = _locked(promotion)
        if actor.pk != promotion.requested_by_id and not can(actor, promotion.tenant, "admin"):
            raise Forbidden("Only the requester or a tenant admin can withdraw a promotion request.")
        if not promotion.is_open:
            raise Conflict(f"This promotion is already {promotion.state}.", code="promotion_closed")
        _close(promotion, PromotionState.WITHDRAWN, by=actor, reason=reason or f"Withdrawn by {actor.username}.")
        record(action="promotion.withdraw", actor=actor_for(actor), tenant=promotion.tenant.slug,
               target=_target(promotion), data={**_summary(promotion), "reason": promotion.close_reason})
    return promotion


def promotion_recheck(*, actor, promotion: Promotion) -> Promotion:
    """Evaluate again, for example after a waiver was approved or an artifact re-signed."""
    _expire_if_due(promotion)
    with transaction.atomic():
        # Checking again grants nothing, so anyone who works on or decides promotions may.
        require_one_of(actor, promotion.tenant, ("develop", "admin", "approve"))
        bind_rls(tenant_id=promotion.tenant_id)
        promotion = _locked(promotion)
        if promotion.state not in (PromotionState.CHECKED, PromotionState.AWAITING_APPROVAL):
            raise Conflict(f"This promotion is {promotion.state}; only an open one can be checked again.",
                           code="promotion_closed")
        _advance(promotion, actor=actor)
    return promotion


# Overrides of soft-mandatory violations --------------------------------------------------


def _check_afresh(promotion: Promotion, *, actor) -> None:
    """Check an open request again, in a transaction of its own, before an action that depends
    on what the last check found: violations stored by an earlier check never decide a later
    one (the check stands even when the action is then refused)."""
    with transaction.atomic():
        bind_rls(tenant_id=promotion.tenant_id)
        locked = _locked(promotion)
        if locked.state in (PromotionState.CHECKED, PromotionState.AWAITING_APPROVAL):
            _advance(locked, actor=actor)


def promotion_override_request(*, actor, promotion: Promotion, rule: str, justification: str) -> PromotionOverride:
    """A tenant admin asks to override one soft-mandatory violation; a second person confirms."""
    if not (justification or "").strip():
        raise Invalid("An override needs a justification.", field="justification")
    require_person(actor, "override a policy violation")
    require(actor, promotion.tenant, "admin")
    _check_afresh(promotion, actor=actor)
    with transaction.atomic():
        require(actor, promotion.tenant, "admin")
        bind_rls(tenant_id=promotion.tenant_id)
        promotion = _locked(promotion)
        if promotion.state != PromotionState.CHECKED:
            raise Conflict("Only a promotion held by soft-mandatory violations can be overridden.",
                           code="promotion_not_checked")
        _refuse_a_second_part(actor, promotion, "ask for an override")
        soft = {v["rule"] for v in promotion.violations if v["level"] == "soft-mandatory" and not v.get("exempt")}
        if rule not in soft:
            hard = {v["rule"] for v in promotion.violations if v["level"] == "hard-mandatory"}
            why = "it is hard-mandatory: nobody can override it" if rule in hard else "it is not violated here"
            raise Invalid(f"{rule} cannot be overridden: {why}.", field="rule", code="not_overridable")
        if promotion.overrides.filter(rule=rule).exists():
            raise Conflict(f"An override of {rule} was already asked for.", code="override_exists")
        override = PromotionOverride.objects.create(tenant=promotion.tenant, promotion=promotion, rule=rule,
                                                    justification=justification.strip()[:2000], requested_by=actor)
        record(action="promotion.override_request", actor=actor_for(actor), tenant=promotion.tenant.slug,
               target=_target(promotion), data={**_summary(promotion), "rule": rule, "override": override.pk,
                                                "justification": override.justification})
    return override


def promotion_override_confirm(*, actor, override: PromotionOverride, otp_token: str) -> Promotion:
    """A second person (tenant admin or approver, not the one who asked) confirms with a fresh
    OTP; the promotion is checked again at once."""
    require_person(actor, "confirm an override")
    promotion = override.promotion
    require_one_of(actor, promotion.tenant, ("admin", "approve"))
    device = step_up_verify(user=actor, otp_token=otp_token, purpose="promotion.override_confirm")
    _expire_if_due(promotion)
    with transaction.atomic():
        require_one_of(actor, promotion.tenant, ("admin", "approve"))
        bind_rls(tenant_id=promotion.tenant_id)
        promotion = _locked(promotion)
        override = PromotionOverride.objects.select_for_update().get(pk=override.pk)
        if override.confirmed_at is not None:
            raise Conflict("This override is already confirmed.", code="override_confirmed")
        if override.requested_by_id == actor.pk:
            raise Forbidden("An override needs a second person: someone other than who asked must confirm it.",
                            code="separation_of_duties")
        _refuse_a_second_part(actor, promotion, "confirm this override")
        if promotion.state != PromotionState.CHECKED:
            raise Conflict(f"This promotion is {promotion.state}; the override no longer applies.",
                           code="promotion_not_checked")
        override.confirmed_by, override.confirmed_at = actor, timezone.now()
        override.save(update_fields=["confirmed_by", "confirmed_at"])
        record(action="promotion.override_confirm", actor=actor_for(actor), tenant=promotion.tenant.slug,
               target=_target(promotion), data={**_summary(promotion), "rule": override.rule, "override": override.pk,
                                                "otp_device": device.persistent_id})
        _advance(promotion, actor=actor)
    return promotion
