"""The platform baseline follows the two-person rule.

Whether a change to Rego loosens cannot be decided, so every revision of the baseline counts as
loosening: promotions are decided under a revision only once two platform admins have taken it
on, one proposing it and another accepting it with a fresh one-time password. The revision the
platform was installed with is accepted by the install (policies migration 0007).
"""

from django.db import transaction

from audit.log import Target, record
from tenants.access import actor_for, require_platform_admin
from tenants.errors import Conflict, NotFound
from tenants.stepup import accepted_by_second_platform_admin, require_person

from .engines import get_engine
from .models import BaselineRevision


def running_revision() -> str:
    return get_engine().revision


def is_accepted(revision: str) -> bool:
    return BaselineRevision.objects.filter(revision=revision, accepted_at__isnull=False).exists()


def baseline_status(*, actor) -> tuple[str, bool, list[BaselineRevision]]:
    """For a platform admin: the revision running now, whether it is accepted, every revision on record."""
    require_platform_admin(actor)
    revision = running_revision()
    return revision, is_accepted(revision), list(BaselineRevision.objects.select_related("proposed_by",
                                                                                          "accepted_by"))


def baseline_propose(*, actor) -> BaselineRevision:
    """A platform admin proposes the revision running now; another one accepts it."""
    require_person(actor, "propose a platform baseline")
    require_platform_admin(actor)
    revision = running_revision()
    with transaction.atomic():
        found = BaselineRevision.objects.select_for_update().filter(revision=revision).first()
        if found is not None and found.accepted_at is not None:
            raise Conflict(f"The baseline revision {revision} is already accepted.", code="baseline_accepted")
        if found is not None:
            raise Conflict(f"The baseline revision {revision} was already proposed by "
                           f"{found.proposed_by.username}; a second platform admin accepts it.",
                           code="baseline_proposed")
        proposal = BaselineRevision.objects.create(revision=revision, proposed_by=actor)
        record(action="policy.baseline_propose", actor=actor_for(actor), target=Target("policy_revision", revision))
    return proposal


def baseline_accept(*, actor, revision: str, otp_token: str) -> BaselineRevision:
    """A second platform admin, not the proposer, accepts a proposed revision."""
    require_person(actor, "accept a platform baseline")
    require_platform_admin(actor)
    proposal = BaselineRevision.objects.filter(revision=revision).select_related("proposed_by").first()
    if proposal is None:
        raise NotFound(f"No proposal of the baseline revision {revision}.")
    with accepted_by_second_platform_admin(
            actor=actor, proposed=proposal, otp_token=otp_token, purpose="policy.baseline_accept",
            what="A baseline revision", already=f"The baseline revision {revision} is already accepted.",
            already_code="baseline_accepted") as (proposal, device):
        record(action="policy.baseline_accept", actor=actor_for(actor), target=Target("policy_revision", revision),
               data={"proposed_by": proposal.proposed_by.username, "otp_device": device.persistent_id})
    return proposal
