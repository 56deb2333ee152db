"""Domain functions of the policy app: a decision is evaluated, stored and audited at once."""

import hashlib
import math
import uuid
from datetime import timedelta

from django.db import transaction
from django.utils import timezone

from audit.hashing import canonical_json
from audit.log import Actor, Target, record
from tenants.access import actor_for, is_platform_admin, require, require_one_of
from tenants.db import bind_rls
from tenants.errors import Conflict, Forbidden, Invalid, clean_or_invalid
from tenants.catalogue import residency_problem
from tenants.models import Tenant
from tenants.stepup import require_person, step_up_verify

from . import governance, loosening
from .engines import Decision, PolicyInputError, decide, encode_input
from .models import (PRODUCTION_APPROVALS_FLOOR, ROLLBACK_APPROVALS_FLOOR, GovernedChangeProposal, PolicyDecision,
                     TenantPolicy, Waiver)
from .rules import LEVELS, RULES, is_waivable, rank


def input_digest(value: dict) -> str:
    """sha256 over the RFC 8785 canonical JSON of a policy input."""
    return "sha256:" + hashlib.sha256(canonical_json(value)).hexdigest()


def policy_decide(*, actor, tenant: Tenant | None, entrypoint: str, input: dict) -> PolicyDecision:
    """Evaluate ``entrypoint`` on ``input`` with the configured engine; store and audit the decision.

    ``actor`` is a user (a member who may view ``tenant``, or a platform admin for a
    platform-scope evaluation) or None for the platform itself (a task or command). The
    decision is stored whatever it says, deny and engine errors included.
    """
    try:
        encode_input(input)
        digest = input_digest(input)
    except (PolicyInputError, TypeError, ValueError) as exc:
        raise Invalid(f"The policy input is not a JSON object: {exc}", field="input") from None
    audit_actor = Actor.system("policy") if actor is None else actor_for(actor)
    with transaction.atomic():
        if tenant is not None:
            if actor is not None:
                require(actor, tenant, "view")
            bind_rls(tenant_id=tenant.pk)
        elif actor is not None and not is_platform_admin(actor):
            raise Forbidden("Only a platform admin may evaluate a policy outside a tenant.")
        decision: Decision = decide(entrypoint, input)
        row = PolicyDecision.objects.create(
            decision_id=uuid.UUID(decision.decision_id) if _is_uuid(decision.decision_id) else uuid.uuid4(),
            engine_decision_id=decision.decision_id, tenant=tenant, entrypoint=entrypoint,
            engine=decision.engine, policy_revision=decision.policy_revision, input=input, input_digest=digest,
            allow=decision.allow, violations=decision.violations, enforcement=decision.enforcement,
            error=decision.error, duration_ms=decision.duration_ms, requested_by=audit_actor.name,
        )
        record(action="policy.decide", actor=audit_actor, tenant=tenant.slug if tenant else "",
               target=Target("policy_decision", str(row.decision_id)),
               outcome="failed" if decision.error else ("success" if decision.allow else "denied"),
               data={"entrypoint": entrypoint, "engine": decision.engine, "policy_revision": decision.policy_revision,
                     "input_digest": digest, "allow": decision.allow,
                     "violations": [v["rule"] for v in decision.violations], "error": decision.error})
    return row


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except (TypeError, ValueError):
        return False
    return True


# Tenant policy data ---------------------------------------------------------------------

POLICY_DATA_FIELDS = ("min_approvals", "rollback_min_approvals", "base_model_allowlist", "metrics_thresholds",
                      "allowed_regions", "max_gpus", "rule_levels")
MAX_LIST = 200
MAX_NUMBER = 10**15  # far above any threshold or GPU count; keeps huge JSON integers out


def tenant_policy_of(tenant: Tenant) -> TenantPolicy:
    """The tenant's current policy data; revision 0 (unsaved) holds the defaults."""
    current = TenantPolicy.objects.filter(tenant=tenant).order_by("-revision").first()
    return current or TenantPolicy(tenant=tenant, revision=0)


def policy_data_document(policy: TenantPolicy) -> dict:
    """What the policy input carries as ``tenant.policy``."""
    return {field: getattr(policy, field) for field in POLICY_DATA_FIELDS} | {"revision": policy.revision}


def _whole_number(value, field, *, floor: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value > 20:
        raise Invalid(f"{field} is a whole number of people, at most 20.", field=field)
    if value < floor:
        raise Invalid(f"{field} cannot go below the platform floor of {floor}.", field=field, code="below_platform_floor")
    return value


def _strings(value, field, *, max_length=200) -> list[str]:
    if not isinstance(value, list) or len(value) > MAX_LIST or not all(
            isinstance(v, str) and 0 < len(v) <= max_length for v in value):
        raise Invalid(f"{field} is a list of non-empty strings.", field=field)
    return list(dict.fromkeys(value))


def _numbers(value, field, *, whole=False) -> dict:
    if not isinstance(value, dict) or len(value) > MAX_LIST:
        raise Invalid(f"{field} maps names to numbers.", field=field)
    for name, number in value.items():
        kind = int if whole else (int, float)
        if not name or isinstance(number, bool) or not isinstance(number, kind) or not 0 <= number <= MAX_NUMBER \
                or not math.isfinite(number):
            raise Invalid(f"{field}.{name} must be a {'whole ' if whole else ''}number from 0 to {MAX_NUMBER}.",
                          field=f"{field}.{name}")
    return value


def _rule_levels(value) -> dict:
    if not isinstance(value, dict):
        raise Invalid("rule_levels maps rule ids to levels.", field="rule_levels")
    for rule, level in value.items():
        if rule not in RULES:
            raise Invalid(f"There is no rule {rule}.", field=f"rule_levels.{rule}")
        if level not in LEVELS:
            raise Invalid(f"A level is one of {', '.join(LEVELS)}.", field=f"rule_levels.{rule}")
        base = RULES[rule][0]
        if rank(level) < rank(base):
            raise Invalid(f"{rule} is {base} in the platform baseline; a tenant may raise it, never lower it.",
                          field=f"rule_levels.{rule}", code="below_platform_floor")
    return value


def tenant_policy_update(*, actor, tenant: Tenant, comment: str = "", **changes) -> TenantPolicy | GovernedChangeProposal:
    """Write the next revision of the tenant's policy data (tenant admins); refuse anything that
    would loosen the platform floor. Fields not given keep their current value. A change that
    loosens the tenant's own data is not written: it returns the proposal a second tenant
    admin must confirm (policies.governance)."""
    unknown = set(changes) - set(POLICY_DATA_FIELDS)
    if unknown:
        raise Invalid(f"Unknown policy data field {sorted(unknown)[0]}.", field=sorted(unknown)[0])
    checks = {
        "min_approvals": lambda v: _whole_number(v, "min_approvals", floor=PRODUCTION_APPROVALS_FLOOR),
        "rollback_min_approvals": lambda v: _whole_number(v, "rollback_min_approvals", floor=ROLLBACK_APPROVALS_FLOOR),
        "base_model_allowlist": lambda v: _strings(v, "base_model_allowlist"),
        "metrics_thresholds": lambda v: _numbers(v, "metrics_thresholds"),
        "allowed_regions": lambda v: _strings(v, "allowed_regions", max_length=16),
        "max_gpus": lambda v: _numbers(v, "max_gpus", whole=True),
        "rule_levels": _rule_levels,
    }
    cleaned = {field: checks[field](value) for field, value in changes.items()}
    for region in cleaned.get("allowed_regions", []):
        problem = residency_problem(region, tenant.jurisdiction, whose="the tenant's")
        if problem:
            raise Invalid(problem, field="allowed_regions")
    with transaction.atomic():
        require(actor, tenant, "admin")
        bind_rls(tenant_id=tenant.pk)
        before, revision = _current_policy_data(tenant)
        proposal = governance.propose_if_loosening(actor=actor, tenant=tenant, setting="policy_data", before=before,
                                                   changes=cleaned, base_revision=revision, comment=comment)
        return proposal or _write_policy_data(actor=actor, tenant=tenant, changes=cleaned, comment=comment)


def _current_policy_data(tenant: Tenant) -> tuple[dict, int]:
    Tenant.objects.select_for_update().filter(pk=tenant.pk).first()  # one writer of revisions at a time
    current = tenant_policy_of(tenant)
    return {field: getattr(current, field) for field in POLICY_DATA_FIELDS}, current.revision


def _write_policy_data(*, actor, tenant: Tenant, changes: dict, comment: str, proposal=None) -> TenantPolicy:
    """Write the next revision (the tenant's row locked): a tightening at once, or a
    loosening its second admin confirmed (``proposal``)."""
    current = tenant_policy_of(tenant)
    values = {field: getattr(current, field) for field in POLICY_DATA_FIELDS} | changes
    policy = TenantPolicy.objects.create(tenant=tenant, revision=current.revision + 1, created_by=actor,
                                         comment=comment[:500], **values)
    record(action="tenant_policy.update", actor=actor_for(actor), tenant=tenant.slug,
           target=Target("tenant_policy", f"{tenant.slug}@{policy.revision}"),
           data={"revision": policy.revision, "changed": sorted(changes), "values": values, "comment": comment[:500],
                 "proposal": proposal.pk if proposal else None})
    governance.settle(actor=actor, tenant=tenant, setting="policy_data", revision=policy.revision, applied=proposal)
    return policy


GOVERNED_POLICY_DATA = governance.Governed(orders=loosening.POLICY_DATA, current=_current_policy_data,
                                           write=_write_policy_data, label="policy data",
                                           revision=lambda tenant: tenant_policy_of(tenant).revision)


# Waivers --------------------------------------------------------------------------------

MAX_WAIVER_DAYS = 90


def waiver_request(*, actor, tenant: Tenant, rule: str, reason: str, ticket_url: str, expires_at) -> Waiver:
    """A tenant admin asks for a waiver of one rule; it applies once a second person approves."""
    if rule not in RULES:
        raise Invalid(f"There is no rule {rule}.", field="rule")
    if not is_waivable(rule):
        raise Invalid(f"{rule} is a hard-mandatory baseline rule: no waiver can cover it.", field="rule",
                      code="rule_not_waivable")
    now = timezone.now()
    if expires_at is None or expires_at <= now:
        raise Invalid("A waiver's expiry must be in the future.", field="expires_at")
    if expires_at > now + timedelta(days=MAX_WAIVER_DAYS):
        raise Invalid(f"A waiver lasts at most {MAX_WAIVER_DAYS} days.", field="expires_at")
    waiver = Waiver(tenant=tenant, rule=rule, reason=(reason or "").strip(), ticket_url=ticket_url,
                    expires_at=expires_at, requested_by=actor)
    clean_or_invalid(waiver, exclude=["tenant", "requested_by"])
    with transaction.atomic():
        require_person(actor, "ask for a waiver")
        require(actor, tenant, "admin")
        bind_rls(tenant_id=tenant.pk)
        waiver.save()
        record(action="waiver.request", actor=actor_for(actor), tenant=tenant.slug, target=Target("waiver", waiver.pk),
               data={"rule": rule, "reason": waiver.reason, "ticket_url": ticket_url,
                     "expires_at": expires_at.isoformat()})
    return waiver


def waiver_approve(*, actor, waiver: Waiver, otp_token: str) -> Waiver:
    """A second tenant admin (not the requester) approves with a fresh OTP: a waiver lifts a rule
    for the whole tenant, which is loosening, and waivers are the tenant admins' to decide."""
    require_person(actor, "approve a waiver")
    tenant = waiver.tenant
    require(actor, tenant, "admin")
    device = step_up_verify(user=actor, otp_token=otp_token, purpose="waiver.approve")
    with transaction.atomic():
        require(actor, tenant, "admin")
        bind_rls(tenant_id=tenant.pk)
        waiver = Waiver.objects.select_for_update().get(pk=waiver.pk)
        state = waiver.state_at(timezone.now())
        if state != "requested":
            raise Conflict(f"This waiver is {state}; only a requested waiver can be approved.", code="waiver_not_open")
        if waiver.requested_by_id == actor.pk:
            raise Forbidden("A waiver needs a second person: you asked for it, so someone else must approve it.",
                            code="separation_of_duties")
        waiver.approved_by, waiver.approved_at = actor, timezone.now()
        waiver.save(update_fields=["approved_by", "approved_at"])
        record(action="waiver.approve", actor=actor_for(actor), tenant=tenant.slug, target=Target("waiver", waiver.pk),
               data={"rule": waiver.rule, "otp_device": device.persistent_id,
                     "expires_at": waiver.expires_at.isoformat()})
    return waiver


def waiver_revoke(*, actor, waiver: Waiver) -> Waiver:
    with transaction.atomic():
        require(actor, waiver.tenant, "admin")
        bind_rls(tenant_id=waiver.tenant_id)
        waiver = Waiver.objects.select_for_update().get(pk=waiver.pk)
        if waiver.revoked_at is None:
            waiver.revoked_by, waiver.revoked_at = actor, timezone.now()
            waiver.save(update_fields=["revoked_by", "revoked_at"])
            record(action="waiver.revoke", actor=actor_for(actor), tenant=waiver.tenant.slug,
                   target=Target("waiver", waiver.pk), data={"rule": waiver.rule})
    return waiver


def active_waivers(tenant: Tenant, moment) -> list[Waiver]:
    """Approved, unrevoked waivers that have not expired at ``moment``: an expired waiver
    stops applying on its own, with nobody having to act."""
    return list(Waiver.objects.filter(tenant=tenant, approved_at__isnull=False, revoked_at__isnull=True,
                                      expires_at__gt=moment).select_related("requested_by", "approved_by")
                .order_by("rule", "id"))
