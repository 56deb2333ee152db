"""Domain functions of the policy app: a decision is evaluated, stored and audited at once."""

import hashlib
import uuid

from django.db import transaction

from audit.hashing import canonical_json
from audit.log import Actor, Target, record
from tenants.access import actor_for, is_platform_admin, require
from tenants.db import bind_rls
from tenants.errors import Forbidden, Invalid
from tenants.models import Tenant

from .engines import Decision, PolicyInputError, decide, encode_input
from .models import PolicyDecision


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
