"""Loosening takes two people (domain functions).

A governed setting (the tenant's policy data, its trust configuration, who its tenant admins
are) changes through its own update function. A change that only tightens applies at once; a
change with any loosening part (policies/loosening.py) becomes a proposal instead, which
applies only when a second person confirms it with a fresh one-time password, naming the
diff digest they saw, before it expires and while the setting is still at the revision it was
made against. Every write of a setting voids the proposals made against an older revision.

The second person is another tenant admin, except for making a tenant admin of a tenant with
fewer than two (policies/admins.py) and for the tenant's GPU quotas (policies/quotas.py): a
platform admin proposes those, and another confirms them.
"""

import hashlib
from dataclasses import dataclass
from datetime import timedelta
from typing import Callable

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import transaction
from django.utils import timezone
from django.utils.module_loading import import_string

from audit.hashing import canonical_json
from audit.log import Target, record
from tenants.access import actor_for, is_platform_admin, memberships_of, require_governing, standing_lapse
from tenants.db import bind_rls
from tenants.errors import Conflict, Forbidden
from tenants.models import Tenant
from tenants.roles import Role
from tenants.stepup import require_person, step_up_verify

from .loosening import loosening
from .models import GovernedChangeProposal

Proposal = GovernedChangeProposal
Confirmers = Proposal.Confirmers
ADMIN_ROLES = (Role.TENANT_ADMIN,)


@dataclass(frozen=True)
class Governed:
    """How one setting is governed: its order functions, and two hooks of its update path.
    ``current(tenant)`` locks the setting's writers out and returns (every field, revision);
    ``write(actor=, tenant=, changes=, comment=, proposal=)`` writes the next revision (called
    with that lock held) and returns what it wrote, which has a ``revision``; ``revision(tenant)``
    reads the revision now, without a lock, for showing a proposal void at once."""

    orders: dict
    current: Callable
    write: Callable
    label: str
    revision: Callable
    # For a setting a second platform admin may confirm: why (shown to a tenant admin who
    # tries), and why a platform-confirmed proposal no longer stands ("" while it does).
    why_platform_confirms: Callable | None = None
    platform_lapse: Callable | None = None


# The setting's own module declares its Governed; imported by name so neither app imports
# the other at load time.
GOVERNED = {
    Proposal.Setting.POLICY_DATA: "policies.services.GOVERNED_POLICY_DATA",
    Proposal.Setting.TRUST: "workflows.trust.GOVERNED_TRUST",
    Proposal.Setting.ADMINS: "policies.admins.GOVERNED_ADMINS",
    Proposal.Setting.QUOTAS: "policies.quotas.GOVERNED_QUOTAS",
}


def governed(setting: str) -> Governed:
    return import_string(GOVERNED[setting])


def diff_digest(diff: dict) -> str:
    return "sha256:" + hashlib.sha256(canonical_json(diff)).hexdigest()


def active_admin_ids(tenant_id: int, memberships=None) -> set[int]:
    """The tenant's tenant admins whose accounts are active."""
    memberships = memberships if memberships is not None else memberships_of(tenant_id)
    admins = [user_id for user_id, (role, _) in memberships.items() if role in ADMIN_ROLES]
    return set(get_user_model().objects.filter(pk__in=admins, is_active=True).values_list("pk", flat=True))


def propose_if_loosening(*, actor, tenant: Tenant, setting: str, before: dict, changes: dict, base_revision: int,
                         comment: str = "", confirmers: str = Confirmers.TENANT_ADMINS) -> Proposal | None:
    """Inside the setting's update transaction, with its lock held: None when ``changes``
    loosen nothing (the caller writes them at once), else the proposal that holds them, to be
    confirmed by a second tenant admin or (``confirmers``) a second platform admin. Fields of
    ``changes`` outside the setting's orders travel with the proposal to its write."""
    after = before | changes
    orders = governed(setting).orders
    sentences = loosening(orders, before, after)
    if not sentences:
        return None
    require_person(actor, "loosen a governed setting")
    if confirmers == Confirmers.PLATFORM_ADMINS:
        _require_platform_admins(actor, tenant, sentences)
    else:
        _require_tenant_admins(actor, tenant, setting, sentences, _first_loosened(orders, before, after))
    diff = {"setting": setting, "base_revision": base_revision,
            "fields": {field: {"before": before[field], "after": after[field]}
                       for field in orders if before[field] != after[field]},
            "loosening": sentences}
    now = timezone.now()
    proposal = Proposal.objects.create(
        tenant=tenant, setting=setting, changes=changes, diff=diff, diff_digest=diff_digest(diff),
        base_revision=base_revision, confirmers=confirmers, comment=comment[:500], proposed_by=actor,
        proposed_at=now, expires_at=now + timedelta(hours=settings.GOVERNED_PROPOSAL_TTL_HOURS))
    record(action="governed_change.propose", actor=actor_for(actor), tenant=tenant.slug,
           target=Target("governed_change", proposal.pk),
           data={"setting": setting, "base_revision": base_revision, "diff_digest": proposal.diff_digest,
                 "changed": sorted(diff["fields"]), "loosening": sentences, "confirmers": confirmers,
                 "expires_at": proposal.expires_at.isoformat()})
    return proposal


def _require_tenant_admins(actor, tenant: Tenant, setting: str, sentences: list[str], field: str) -> None:
    """The proposer is a tenant admin, and another active one can confirm."""
    memberships = memberships_of(tenant.pk)
    if memberships.get(actor.pk, (None,))[0] not in ADMIN_ROLES:
        raise Forbidden(f"Only a tenant admin of {tenant.slug} may propose loosening its settings.",
                        code="tenant_admin_required")
    if not active_admin_ids(tenant.pk, memberships) - {actor.pk}:
        raise Conflict(f"This change loosens the {governed(setting).label} ({'; '.join(sentences)}), and loosening "
                       f"needs a second tenant admin to confirm it: {tenant.slug} has only one. Ask the platform "
                       "admins for a second tenant admin (one proposes it, another confirms it).",
                       code="second_admin_required", field=field)


def _require_platform_admins(actor, tenant: Tenant, sentences: list[str]) -> None:
    """The proposer is a platform admin, and another active one can confirm."""
    if not is_platform_admin(actor):
        raise Forbidden("Only a platform admin may propose this.", code="platform_admin_required")
    if not get_user_model().objects.filter(is_superuser=True, is_active=True).exclude(pk=actor.pk).exists():
        raise Conflict(f"This change ({'; '.join(sentences)}) in {tenant.slug} needs a second platform admin to "
                       "confirm it, and there is only one: create another (manage.py create_platform_admin).",
                       code="second_platform_admin_required")


def _first_loosened(orders: dict, before: dict, after: dict) -> str:
    return next(field for field, order in orders.items() if order(before[field], after[field]))


def settle(*, actor, tenant: Tenant, setting: str, revision: int, applied: Proposal | None = None) -> None:
    """After a write of ``setting`` (its lock held): the open proposals made against an older
    revision are void, since what their confirmer would see is no longer what they apply to."""
    for proposal in Proposal.objects.select_for_update().filter(tenant=tenant, setting=setting,
                                                                state=Proposal.State.PROPOSED):
        if proposal != applied:
            _void(actor=actor, proposal=proposal,
                  reason=f"the {governed(setting).label} changed to revision {revision} after it was proposed")


def _void(*, actor, proposal: Proposal, reason: str) -> None:
    proposal.state, proposal.void_reason = Proposal.State.VOID, reason[:500]
    proposal.save(update_fields=["state", "void_reason"])
    record(action="governed_change.void", actor=actor_for(actor), tenant=proposal.tenant.slug,
           target=Target("governed_change", proposal.pk),
           data={"setting": proposal.setting, "diff_digest": proposal.diff_digest, "reason": reason})


def _check_confirmation(*, actor, proposal: Proposal, diff_digest: str) -> None:
    tenant = proposal.tenant
    by_platform = proposal.confirmers == Confirmers.PLATFORM_ADMINS
    if proposal.proposed_by_id == actor.pk:
        raise Forbidden("Loosening needs a second person: you proposed it, so another "
                        f"{'platform' if by_platform else 'tenant'} admin must confirm it.",
                        code="separation_of_duties")
    if by_platform:
        if not is_platform_admin(actor):
            raise Forbidden(f"A second platform admin confirms this proposal: {_why_platform_admins(proposal)}.",
                            code="platform_admin_required")
    else:
        role, since = memberships_of(tenant.pk).get(actor.pk, (None, None))
        if role not in ADMIN_ROLES:
            # A platform admin included: loosening a tenant is for that tenant's own admins.
            raise Forbidden(f"Only a tenant admin of {tenant.slug} may confirm loosening its settings.",
                            code="tenant_admin_required")
        if since > proposal.proposed_at:
            raise Forbidden("You became a tenant admin after this proposal was made, so you may not confirm it.",
                            code="role_granted_after_proposal")
    state = proposal.state_at(timezone.now())
    if state == "expired":
        raise Conflict(f"This proposal expired at {proposal.expires_at.isoformat()}; propose the change again.",
                       code="proposal_expired")
    if state == Proposal.State.VOID:
        raise Conflict(f"This proposal is void: {proposal.void_reason}. Propose the change again.",
                       code="proposal_stale")
    if state != Proposal.State.PROPOSED:
        raise Conflict(f"This proposal is {state}; only an open proposal can be confirmed.", code="proposal_not_open")
    if diff_digest != proposal.diff_digest:
        raise Conflict("The diff digest sent is not this proposal's: read the proposal again and confirm what it "
                       "actually changes.", code="diff_digest_mismatch", field="diff_digest")


def _stale(proposal: Proposal, revision: int) -> str:
    """Why an open proposal can no longer apply, its setting being at ``revision`` ("" while it can)."""
    if revision != proposal.base_revision:
        return (f"the {governed(proposal.setting).label} is at revision {revision}, not {proposal.base_revision} "
                "as proposed")
    return _proposer_lapse(proposal)


def judged(proposal: Proposal, moment) -> tuple[str, str]:
    """The proposal's state at ``moment`` and why it is void: an open one is ``expired`` past its
    expiry, and shows void at once once its setting moved on or its proposer no longer stands,
    as a confirmation would find (which then records it void)."""
    state = proposal.state_at(moment)
    if state != Proposal.State.PROPOSED:
        return state, proposal.void_reason
    stale = _stale(proposal, governed(proposal.setting).revision(proposal.tenant))
    return (Proposal.State.VOID, stale) if stale else (state, "")


def _why_platform_admins(proposal: Proposal) -> str:
    return governed(proposal.setting).why_platform_confirms(proposal)


def _proposer_lapse(proposal: Proposal) -> str:
    """Why the proposal no longer stands for its proposer's side ("" while it does): its
    proposer no longer holds the role, or the setting's own reason (``platform_lapse``)."""
    proposer = proposal.proposed_by
    if proposal.confirmers == Confirmers.TENANT_ADMINS:
        return standing_lapse(proposer, proposal.tenant_id, given_at=proposal.proposed_at, roles=ADMIN_ROLES)
    if not (proposer.is_active and proposer.is_superuser):
        return f"{proposer.username} is no longer a platform admin"
    lapse = governed(proposal.setting).platform_lapse
    return lapse(proposal) if lapse else ""


def governed_change_confirm(*, actor, proposal: Proposal, otp_token: str, diff_digest: str) -> Proposal:
    """A second tenant admin (or, as the proposal records, a second platform admin) confirms
    with a fresh one-time password; the change is written through its setting's update path,
    against the revision it was proposed on."""
    require_person(actor, "confirm loosening")
    tenant = proposal.tenant
    platform_may = proposal.confirmers == Proposal.Confirmers.PLATFORM_ADMINS
    require_governing(actor, tenant, platform_may=platform_may)
    _check_confirmation(actor=actor, proposal=proposal, diff_digest=diff_digest)  # before the code is spent
    device = step_up_verify(user=actor, otp_token=otp_token, purpose="governed_change.confirm")
    stale = ""
    with transaction.atomic():
        require_governing(actor, tenant, platform_may=platform_may)
        bind_rls(tenant_id=tenant.pk)
        setting = governed(proposal.setting)
        _, revision = setting.current(tenant)  # the setting's lock: no write lands in between
        proposal = Proposal.objects.select_for_update().select_related("tenant", "proposed_by").get(pk=proposal.pk)
        _check_confirmation(actor=actor, proposal=proposal, diff_digest=diff_digest)
        stale = _stale(proposal, revision)
        if stale:
            _void(actor=actor, proposal=proposal, reason=stale)
        else:
            proposal.state, proposal.confirmed_by, proposal.confirmed_at = Proposal.State.APPLIED, actor, timezone.now()
            written = setting.write(actor=actor, tenant=tenant, changes=proposal.changes, comment=proposal.comment,
                                    proposal=proposal)
            proposal.applied_revision = written.revision
            proposal.save(update_fields=["state", "confirmed_by", "confirmed_at", "applied_revision"])
            record(action="governed_change.confirm", actor=actor_for(actor), tenant=tenant.slug,
                   target=Target("governed_change", proposal.pk),
                   data={"setting": proposal.setting, "diff_digest": proposal.diff_digest,
                         "base_revision": proposal.base_revision, "applied_revision": written.revision,
                         "proposed_by": proposal.proposed_by.username, "loosening": proposal.diff["loosening"],
                         "confirmers": proposal.confirmers,
                         "otp_device": device.persistent_id})
    if stale:  # after the commit, so the proposal stays void
        raise Conflict(f"This proposal is void: {stale}. Propose the change again.", code="proposal_stale")
    return proposal


def may_confirm(actor, proposal: Proposal, state: str, *, is_tenant_admin: bool) -> bool:
    """Whether the console offers ``actor`` to confirm ``proposal`` (the confirmation checks it all again)."""
    if state != Proposal.State.PROPOSED or proposal.proposed_by_id == actor.pk:
        return False
    if proposal.confirmers == Confirmers.PLATFORM_ADMINS:
        return is_platform_admin(actor)
    return is_tenant_admin


def proposals_of(actor, tenant: Tenant):
    """The tenant's proposals, newest first (members who may view the tenant)."""
    return Proposal.objects.restrict(actor, "view").filter(tenant=tenant).select_related("tenant", "proposed_by",
                                                                                           "confirmed_by")
