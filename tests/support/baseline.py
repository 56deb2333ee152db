"""Accepting the platform baseline running now, as two platform admins would."""

from tests.support.governance import second_platform_admin
from tests.support.otp import fresh_totp


def accept_running_baseline(world):
    from policies.baseline import baseline_accept, baseline_propose

    second = second_platform_admin()
    proposal = baseline_propose(actor=world.platform_admin)
    return baseline_accept(actor=second, revision=proposal.revision, otp_token=fresh_totp(second))
