"""The log checked against checkpoints kept outside the platform, on request (platform admins)."""

from datetime import timedelta

from django.conf import settings

from audit.keys import KeyringError
from audit.log import Target, record
from audit.verify import VerifyReport, kept_checkpoints_problem, keys, verify_log
from audit.verify_export import as_sentence
from tenants.access import actor_for, require_platform_admin
from tenants.db import PLATFORM_ALIAS
from tenants.errors import Invalid

MAX_KEPT = 100


def log_check(*, actor, kept: list[str]) -> VerifyReport:
    """``manage.py audit verify --checkpoint``'s check: every event, leaf, tree node, the
    sequencer's state and every checkpoint, and the log against each kept checkpoint. Audited."""
    require_platform_admin(actor)
    if not isinstance(kept, list) or not kept or len(kept) > MAX_KEPT or not all(isinstance(n, str) for n in kept):
        raise Invalid(f"checkpoints is a list of 1 to {MAX_KEPT} signed checkpoint notes.", field="checkpoints")
    try:
        problem = kept_checkpoints_problem(kept, keys())
    except KeyringError as exc:
        raise Invalid(str(exc)) from None
    if problem:
        raise Invalid(as_sentence(problem), field="checkpoints")
    report = verify_log(using=PLATFORM_ALIAS, kept=kept,
                        max_unsequenced=timedelta(seconds=settings.AUDIT_MAX_UNSEQUENCED_SECONDS))
    record(action="audit.verify", actor=actor_for(actor), target=Target("audit_log", "kept-checkpoints"),
           data={"kept": len(kept), "intact": report.ok, "leaves": report.leaves,
                 "problem": report.problems[0].sentence() if report.problems else None})
    return report
