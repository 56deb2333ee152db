"""Step-up: a decision that needs a person (approve, reject, confirm an override or a waiver)
needs that person's fresh one-time password in the same request.

The code is checked and consumed in its own committed transaction, before the decision, so
a code once used can never be used again, even when the decision that follows is refused.
Callers therefore run outside the request's transaction: their routes are non-atomic.
"""

from contextlib import contextmanager

from django.db import connection, transaction
from django.utils import timezone
from django_otp.plugins.otp_totp.models import TOTPDevice

from audit.log import Target, record_denial

from .access import actor_for, token_of
from .errors import Conflict, Forbidden, Invalid


def require_person(user, what: str) -> None:
    """Service-account tokens act for pipelines; they never decide for a person."""
    token = token_of(user)
    if token is not None and token.service_account_id is not None:
        raise Forbidden(f"A service-account token cannot {what}; a person must, with their own one-time password.",
                        code="service_account_forbidden")


def step_up_verify(*, user, otp_token: str, purpose: str) -> TOTPDevice:
    """Check and consume ``otp_token`` for ``user``; return the device that verified it."""
    if connection.in_atomic_block:
        raise RuntimeError("step-up must commit on its own: call it outside any transaction")
    code = (otp_token or "").strip()
    if not code:
        raise Invalid("A fresh one-time password from your authenticator is required.", field="otp_token",
                      code="otp_required")
    if not (code.isdigit() and len(code) in (6, 8)):
        raise Invalid("A one-time password is 6 digits.", field="otp_token", code="otp_invalid")
    with transaction.atomic():
        # Locked, so two requests cannot both spend the same code.
        device = TOTPDevice.objects.select_for_update().filter(user=user, confirmed=True).first()
        if device is None:
            raise Forbidden("You have no confirmed authenticator; enrol one before you decide anything.",
                            code="otp_device_required")
        allowed, _ = device.verify_is_allowed()
        verified = allowed and device.verify_token(code)
    if not verified:
        record_denial(action="auth.otp_failed", actor=actor_for(user), target=Target("user", user.username),
                      data={"purpose": purpose, "throttled": not allowed})
        detail = ("Too many wrong codes; wait a little and try again." if not allowed else
                  "That one-time password is wrong, already used, or too old. Use the current code.")
        raise Forbidden(detail, code="otp_throttled" if not allowed else "otp_invalid")
    return device


@contextmanager
def accepted_by_second_platform_admin(*, actor, proposed, otp_token: str, purpose: str, what: str,
                                      already: str, already_code: str):
    """Accept ``proposed`` (a row with ``proposed_by``, ``accepted_by`` and ``accepted_at``: a
    baseline revision, a region) as the second of two platform admins: never its proposer, with a
    fresh one-time password. Yields the locked, accepted row and the device inside the
    transaction, where the caller records the acceptance."""
    if proposed.proposed_by_id == actor.pk:
        raise Forbidden(f"{what} needs a second platform admin: you proposed it, so another one must accept it.",
                        code="separation_of_duties")
    device = step_up_verify(user=actor, otp_token=otp_token, purpose=purpose)
    with transaction.atomic():
        row = type(proposed).objects.select_for_update(of=("self",)).select_related("proposed_by").get(pk=proposed.pk)
        if row.accepted_at is not None:
            raise Conflict(already, code=already_code)
        row.accepted_by, row.accepted_at = actor, timezone.now()
        row.save(update_fields=["accepted_by", "accepted_at"])
        yield row, device

