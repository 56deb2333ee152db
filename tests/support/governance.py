"""Changing a governed setting (policy data, trust configuration) as set-up: a change that
loosens it is proposed by one tenant admin and confirmed by the other (admin2) with a fresh
one-time password, as two people would; a tightening applies at once."""

from tests.support.otp import fresh_totp


def put_governed(api, people, path, body, *, proposer=None):
    """PUT ``body`` to a governed setting's API ``path`` as ``people.admin`` (or ``proposer``);
    a 202 proposal is confirmed as ``people.admin2``. Returns the setting's response: the PUT's
    own when it applied at once or was refused, else a GET of the setting after the confirmation."""
    proposer = proposer or people.admin
    response = api(proposer).put(path, body)
    if response.status_code != 202:
        return response
    confirm_proposal(api, people, response.json())
    return api(proposer).get(path)


def confirm_proposal(api, people, proposal=None):
    """Confirm ``proposal`` (its API body), or the tenant's newest one, as ``people.admin2``."""
    proposals = f"/api/v1/tenants/{people.tenant.slug}/proposals/"
    proposal = proposal or api(people.admin2).get(proposals).json()["results"][0]
    confirm = api(people.admin2).post(f"{proposals}{proposal['id']}/confirm/",
                                      {"otp_token": fresh_totp(people.admin2), "diff_digest": proposal["diff_digest"]})
    assert confirm.status_code == 200, confirm.content
    return confirm.json()


def update_governed(update, *, tenant, proposer, confirmer, **changes):
    """Call a governed setting's domain update function (``tenant_policy_update``,
    ``trust_config_update``); a loosening proposal is confirmed by ``confirmer``. Returns the
    written revision, or the confirmed proposal."""
    from policies.governance import governed_change_confirm
    from policies.models import GovernedChangeProposal

    result = update(actor=proposer, tenant=tenant, **changes)
    if isinstance(result, GovernedChangeProposal):
        result = governed_change_confirm(actor=confirmer, proposal=result, otp_token=fresh_totp(confirmer),
                                         diff_digest=result.diff_digest)
    return result


def propose_admin(api, proposer, tenant, username):
    """``proposer`` proposes making ``username`` a tenant admin of ``tenant``: the API response."""
    return api(proposer).post(f"/api/v1/tenants/{tenant.slug}/admin-proposals/", {"username": username})


def confirm_as(api, confirmer, tenant, proposal, digest=None):
    """``confirmer`` confirms ``proposal`` (its API body) with a fresh one-time password: the API response."""
    return api(confirmer).post(f"/api/v1/tenants/{tenant.slug}/proposals/{proposal['id']}/confirm/",
                               {"otp_token": fresh_totp(confirmer), "diff_digest": digest or proposal["diff_digest"]})


def make_admin(api, tenant, username, *, proposer, confirmer):
    """Make ``username`` a tenant admin as two people would: one proposes, the other confirms."""
    proposal = propose_admin(api, proposer, tenant, username)
    assert proposal.status_code == 202, proposal.content
    confirmed = confirm_as(api, confirmer, tenant, proposal.json())
    assert confirmed.status_code == 200, confirmed.content
    return confirmed.json()


def second_platform_admin():
    """A second platform admin (ops-second), made on first use: the one who confirms what
    world.platform_admin proposes."""
    from django.contrib.auth import get_user_model

    from tests.support.people import make_user

    found = get_user_model().objects.using("owner").filter(username="ops-second").first()
    return found or make_user("ops-second", platform_admin=True)


def set_quota(world, tenant, flavor, **values):
    """Set a tenant's GPU quota as the platform admins would: world.platform_admin sets it, and
    a raise (a proposal) is confirmed by the second platform admin."""
    from policies.quotas import tenant_quota_set

    return update_governed(tenant_quota_set, tenant=tenant, proposer=world.platform_admin,
                           confirmer=second_platform_admin(), flavor=flavor, **values)


def put_quota(api, world, body, *, flavor="h100-80gb", tenant=None):
    """PUT a GPU quota as world.platform_admin through the API; a raise (202, a proposal) is
    confirmed by the second platform admin. Returns the PUT's own answer, or a GET of the quota
    after the confirmation."""
    tenant = tenant or world.a.tenant
    path = f"/api/v1/tenants/{tenant.slug}/quota/{flavor}/"
    confirmer = second_platform_admin()
    response = api(world.platform_admin).put(path, body)
    if response.status_code != 202:
        return response
    confirmed = confirm_as(api, confirmer, tenant, response.json())
    assert confirmed.status_code == 200, confirmed.content
    return api(world.platform_admin).get(path)

