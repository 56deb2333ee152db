"""Who is a tenant admin, as a governed setting (policies/governance.py).

Making someone a tenant admin is loosening: it is proposed, and applies only when a second
person confirms it with a fresh one-time password. While the tenant has two or more active
tenant admins, one of them proposes and another confirms. With fewer (a new tenant, or one
left with a single admin), a platform admin proposes and a second platform admin confirms;
which kind of confirmer a proposal needs is recorded when it is made. Removing or demoting a
tenant admin tightens, and applies at once (tenants.services, under the last-admin rule).
"""

from dataclasses import dataclass

from django.contrib.auth import get_user_model
from django.db import transaction

from tenants.access import is_platform_admin, require_governing
from tenants.db import bind_rls
from tenants.errors import Conflict
from tenants.models import Membership, Tenant
from tenants.roles import Role
from tenants.services import membership_grant
from tenants.stepup import require_person

from . import governance, loosening
from .models import GovernedChangeProposal as Proposal

SETTING = Proposal.Setting.ADMINS


@dataclass(frozen=True)
class AdminsWritten:
    revision: int
    membership: Membership


def tenant_admin_propose(*, actor, tenant: Tenant, user, comment: str = "") -> Proposal:
    """Propose making ``user`` a tenant admin of ``tenant``; governance.governed_change_confirm
    applies it."""
    require_person(actor, "make a tenant admin")
    with transaction.atomic():
        require_governing(actor, tenant, platform_may=True)  # _confirmers says when a platform admin may
        bind_rls(tenant_id=tenant.pk)
        before, revision = _current_admins(tenant)
        if user.username in before["admins"]:
            raise Conflict(f"{user.username} is already a tenant admin of {tenant.slug}.", code="already_admin",
                           field="username")
        return governance.propose_if_loosening(
            actor=actor, tenant=tenant, setting=SETTING, before=before,
            changes={"admins": sorted([*before["admins"], user.username]), "user_id": user.pk},
            base_revision=revision, comment=comment, confirmers=_confirmers(actor, tenant))


def _confirmers(actor, tenant: Tenant) -> str:
    if len(governance.active_admin_ids(tenant.pk)) >= 2:
        return Proposal.Confirmers.TENANT_ADMINS
    if is_platform_admin(actor):
        return Proposal.Confirmers.PLATFORM_ADMINS
    raise Conflict(f"{tenant.slug} has fewer than two tenant admins, so its next one is made by the platform "
                   "admins: one proposes it and a second one confirms it. Ask a platform admin.",
                   code="second_admin_required", field="username")


def _current_admins(tenant: Tenant) -> tuple[dict, int]:
    """The tenant's admins and their revision, the tenant's row locked (as membership changes lock it)."""
    locked = Tenant.objects.select_for_update().get(pk=tenant.pk)
    admins = Membership.objects.filter(tenant=tenant, role=Role.TENANT_ADMIN).values_list("user__username", flat=True)
    return {"admins": sorted(admins)}, locked.admins_revision


def _write_admins(*, actor, tenant: Tenant, changes: dict, comment: str, proposal: Proposal) -> AdminsWritten:
    """Grant the role a confirmed proposal names (the tenant's row locked)."""
    user = get_user_model().objects.filter(pk=changes["user_id"], is_active=True).first()
    if user is None:
        raise Conflict("The person this proposal makes a tenant admin no longer has an active account.",
                       code="user_inactive")
    membership = membership_grant(actor=actor, tenant=tenant, user=user, role=Role.TENANT_ADMIN, proposal=proposal.pk)
    revision = Tenant.objects.values_list("admins_revision", flat=True).get(pk=tenant.pk)
    governance.settle(actor=actor, tenant=tenant, setting=SETTING, revision=revision, applied=proposal)
    return AdminsWritten(revision=revision, membership=membership)


def _platform_lapse(proposal: Proposal) -> str:
    """Once the tenant has two tenant admins, they decide, and no platform admin confirms in their place."""
    if len(governance.active_admin_ids(proposal.tenant_id)) >= 2:
        return f"{proposal.tenant.slug} has two tenant admins now, so they decide who else becomes one"
    return ""


GOVERNED_ADMINS = governance.Governed(
    orders=loosening.ADMINS, current=_current_admins, write=_write_admins, label="list of tenant admins",
    revision=lambda tenant: Tenant.objects.values_list("admins_revision", flat=True).get(pk=tenant.pk),
    why_platform_confirms=lambda proposal: f"{proposal.tenant.slug} had fewer than two tenant admins when it was "
                                           "proposed",
    platform_lapse=_platform_lapse)
