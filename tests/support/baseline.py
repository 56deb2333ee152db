"""Accepting the platform baseline running now, as two platform admins would."""

from tests.support.otp import fresh_totp
from tests.support.people import make_user


def accept_running_baseline(world, second_username="ops-second"):
    from django.contrib.auth import get_user_model

    from policies.baseline import baseline_accept, baseline_propose

    second = (get_user_model().objects.filter(username=second_username).first()
              or make_user(second_username, platform_admin=True))
    proposal = baseline_propose(actor=world.platform_admin)
    return baseline_accept(actor=second, revision=proposal.revision, otp_token=fresh_totp(second))
