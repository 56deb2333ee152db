"""The platform's catalogue of jurisdictions and regions.

Membership is an exact lookup: a value is an entry or it is refused with a sentence. No prefix
or pattern says which jurisdiction a region is in ("eu-evil" is not in eu because it starts
with "eu-"); only the region's catalogue entry does. Platform admins add entries; entries are
never renamed or removed, because artifacts, nodes and tenants refer to them. A new region is
loosening (data and work may go where they could not), so it counts only once a second platform
admin has accepted it with a fresh one-time password.
"""

import unicodedata

from django.db import transaction

from audit.log import Target, record

from .access import actor_for, require_platform_admin
from .errors import Conflict, Invalid, NotFound, clean_or_invalid
from .models import Jurisdiction, Region
from .stepup import accepted_by_second_platform_admin, require_person


def exact_entry_problem(kind: str, value, entries) -> str | None:
    """Why ``value`` is not one of ``entries``, in one sentence, or None when it is. A near
    miss (whitespace, a control character, another case) is named, never corrected."""
    if isinstance(value, str) and value in entries:
        return None
    if not isinstance(value, str):
        return f"A {kind} is a string."
    if value != value.strip() or any(unicodedata.category(c).startswith("C") for c in value):
        return f"{kind.capitalize()} {value!r} has whitespace or control characters; name an exact catalogue entry."
    near = sorted(entry for entry in entries if entry.casefold() == value.casefold())
    if near:
        return f"{kind.capitalize()} {value!r} is not in the catalogue; entries are case-sensitive ({near[0]} is)."
    return f"{kind.capitalize()} {value!r} is not in the platform's catalogue."


def _codes(queryset) -> set[str]:
    return set(queryset.values_list("code", flat=True))


def jurisdiction_problem(code, *, using: str = "default") -> str | None:
    return exact_entry_problem("jurisdiction", code, _codes(Jurisdiction.objects.using(using)))


def region_problem(code, *, using: str = "default") -> str | None:
    return exact_entry_problem("region", code, _codes(Region.objects.using(using).in_force()))


def region_jurisdictions(codes, *, using: str = "default") -> dict[str, str]:
    """Each catalogue region among ``codes`` with its jurisdiction; codes not in the catalogue are absent."""
    return dict(Region.objects.using(using).in_force().filter(code__in=list(codes)).values_list("code", "jurisdiction_id"))


def region_in_jurisdiction(region: str, jurisdiction: str, *, using: str = "default") -> bool:
    """Whether the catalogue puts ``region`` in ``jurisdiction``: exact entries, nothing else."""
    return Region.objects.using(using).in_force().filter(code=region, jurisdiction_id=jurisdiction).exists()


def residency_problem(region, jurisdiction: str, *, whose: str) -> str | None:
    """Why bytes or work in ``region`` may not be ``whose`` (in ``jurisdiction``), or None."""
    problem = region_problem(region)
    if problem:
        return problem
    if not region_in_jurisdiction(region, jurisdiction):
        return f"Region {region} is outside {whose} jurisdiction ({jurisdiction})."
    return None


def jurisdiction_create(*, actor, code: str, name: str) -> Jurisdiction:
    require_platform_admin(actor)
    jurisdiction = Jurisdiction(code=code, name=name)
    clean_or_invalid(jurisdiction)
    with transaction.atomic():
        if Jurisdiction.objects.filter(code=code).exists():
            raise Conflict(f"The catalogue already has jurisdiction {code}.", field="code")
        jurisdiction.save()
        record(action="catalogue.jurisdiction_create", actor=actor_for(actor), target=Target("jurisdiction", code),
               data={"name": name})
    return jurisdiction


def region_create(*, actor, code: str, name: str, jurisdiction: str) -> Region:
    """A platform admin proposes a region; it is in force once another one accepts it."""
    require_person(actor, "add a region")
    require_platform_admin(actor)
    problem = jurisdiction_problem(jurisdiction)
    if problem:
        raise Invalid(problem, field="jurisdiction")
    region = Region(code=code, name=name, jurisdiction_id=jurisdiction, proposed_by=actor)
    clean_or_invalid(region, exclude=["jurisdiction", "proposed_by", "accepted_by"])
    with transaction.atomic():
        if Region.objects.filter(code=code).exists():
            raise Conflict(f"The catalogue already has region {code}.", field="code")
        region.save()
        record(action="catalogue.region_create", actor=actor_for(actor), target=Target("region", code),
               data={"name": name, "jurisdiction": jurisdiction})
    return region


def region_accept(*, actor, code: str, otp_token: str) -> Region:
    """A second platform admin, not the proposer, puts a proposed region in force."""
    require_person(actor, "accept a region")
    require_platform_admin(actor)
    region = Region.objects.filter(code=code).select_related("proposed_by").first()
    if region is None:
        raise NotFound(f"No region {code} in the catalogue.")
    with accepted_by_second_platform_admin(
            actor=actor, proposed=region, otp_token=otp_token, purpose="catalogue.region_accept",
            what="A new region", already=f"Region {code} is already in force.",
            already_code="region_accepted") as (region, device):
        record(action="catalogue.region_accept", actor=actor_for(actor), target=Target("region", code),
               data={"jurisdiction": region.jurisdiction_id, "proposed_by": region.proposed_by.username,
                     "otp_device": device.persistent_id})
    return region
