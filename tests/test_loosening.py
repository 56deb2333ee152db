"""Loosening takes two people: a change to the policy data or the trust configuration that
would allow something refused or held becomes a proposal, applied only when a second tenant
admin confirms it with a fresh one-time password."""

import hashlib
from datetime import timedelta

import pytest
from django.utils import timezone

from audit.hashing import canonical_json
from audit.models import AuditEvent
from policies import loosening
from policies.models import GovernedChangeProposal
from tenants.models import Membership
from tests.support.clients import issue_token, sign_in
from tests.support.governance import confirm_as, make_admin, put_governed
from tests.support.otp import fresh_totp
from workflows import signing

from .test_api import assert_error

T = "/api/v1/tenants/acme-bank"


def confirm(api, who, proposal, digest=None):
    return api(who).post(f"{T}/proposals/{proposal['id']}/confirm/",
                         {"otp_token": fresh_totp(who), "diff_digest": digest or proposal["diff_digest"]})


@pytest.fixture
def proposal(world, api):
    """acme-bank's admin proposes to allow meta-llama models (the list starts empty)."""
    response = api(world.a.admin).put(f"{T}/policy-data/", {"base_model_allowlist": ["meta-llama/*"]})
    assert response.status_code == 202, response.content
    return response.json()


# The order of each setting --------------------------------------------------------------

PEM_A, PEM_B = (signing.generate_key_pair()[1].decode() for _ in range(2))

ORDERS = [
    (loosening.POLICY_DATA["min_approvals"], 3, 2, ["min_approvals 3 → 2"]),
    (loosening.POLICY_DATA["min_approvals"], 2, 3, []),
    (loosening.POLICY_DATA["rollback_min_approvals"], 2, 1, ["rollback_min_approvals 2 → 1"]),
    (loosening.base_model_allowlist, ["mistralai/*"], ["mistralai/*", "meta-llama/*"],
     ["adds base-model pattern meta-llama/*"]),
    (loosening.base_model_allowlist, ["mistralai/*", "meta-llama/*"], ["mistralai/*"], []),
    (loosening.base_model_allowlist, ["mistralai/*"], [], []),  # empty allows no base model
    (loosening.metrics_thresholds, {"accuracy": 0.9}, {"accuracy": 0.8}, ["metrics_thresholds.accuracy 0.9 → 0.8"]),
    (loosening.metrics_thresholds, {"accuracy": 0.9}, {}, ["removes the accuracy threshold (0.9)"]),
    (loosening.metrics_thresholds, {"accuracy": 0.9}, {"accuracy": 0.95, "auc": 0.8}, []),
    (loosening.allowed_regions, ["eu-west1"], [], ["allows any region of the jurisdiction (the list becomes empty)"]),
    (loosening.allowed_regions, ["eu-west1"], ["eu-west1", "eu-central1"], ["adds allowed region eu-central1"]),
    (loosening.allowed_regions, [], ["eu-west1"], []),
    (loosening.allowed_regions, ["eu-west1", "eu-central1"], ["eu-west1"], []),
    (loosening.max_gpus, {"h100": 2}, {"h100": 4}, ["max_gpus.h100 2 → 4"]),
    (loosening.max_gpus, {"h100": 2}, {}, ["removes the h100 cap (2)"]),
    (loosening.max_gpus, {}, {"h100": 2}, []),
    (loosening.rule_levels, {"tenant.max_gpus": "hard-mandatory"}, {"tenant.max_gpus": "soft-mandatory"},
     ["rule_levels.tenant.max_gpus hard-mandatory → soft-mandatory"]),
    (loosening.rule_levels, {"tenant.max_gpus": "hard-mandatory"}, {},
     ["removes the raised level of tenant.max_gpus (hard-mandatory)"]),
    (loosening.rule_levels, {}, {"tenant.max_gpus": "hard-mandatory"}, []),
    (loosening.public_keys, {}, {"ci-2027": PEM_A}, ["adds trusted key ci-2027"]),
    (loosening.public_keys, {"ci-2026": PEM_A}, {"ci-2026": PEM_B}, ["replaces key ci-2026's PEM (direction undecidable)"]),
    (loosening.public_keys, {"ci-2026": PEM_A}, {}, []),
    (loosening.ca_roots, [], [PEM_A], [f"adds CA root {loosening.pem_fingerprint(PEM_A)}"]),
    (loosening.ca_roots, [PEM_A], [], []),
    (loosening.allowed_identities, ["a@x"], ["a@x", "b@x"], ["adds allowed certificate identity b@x"]),
    (loosening.allowed_identities, ["a@x", "b@x"], ["a@x"], []),
    (loosening.sigstore_identities, [["a@x", "https://issuer"]], [["a@x", "https://other"]],
     ["adds Sigstore identity a@x (issuer https://other)"]),
    (loosening.sigstore_identities, [["a@x", "https://issuer"]], [], []),
]


@pytest.mark.parametrize("order, before, after, expected", ORDERS,
                         ids=[f"{o[0].__name__}-{i}" for i, o in enumerate(ORDERS)])
def test_each_setting_declares_which_way_is_looser(order, before, after, expected):
    assert order(before, after) == expected


def test_every_governed_field_has_an_order():
    from policies.services import POLICY_DATA_FIELDS
    from workflows.trust import TRUST_FIELDS

    assert set(loosening.POLICY_DATA) == set(POLICY_DATA_FIELDS)
    assert set(loosening.TRUST) == set(TRUST_FIELDS)


# Through the API ------------------------------------------------------------------------


def test_a_tightening_applies_at_once(world, api):
    response = api(world.a.admin).put(f"{T}/policy-data/", {"min_approvals": 3, "metrics_thresholds": {"auc": 0.8}})
    assert response.status_code == 200
    assert response.json()["revision"] == 1 and response.json()["min_approvals"] == 3


def test_a_loosening_becomes_a_proposal_with_its_diff_and_does_not_apply(world, api, proposal):
    assert proposal["setting"] == "policy_data" and proposal["state"] == "proposed"
    assert proposal["proposed_by"] == world.a.admin.username and proposal["base_revision"] == 0
    assert proposal["diff"]["fields"] == {"base_model_allowlist": {"before": [], "after": ["meta-llama/*"]}}
    assert proposal["diff"]["loosening"] == ["adds base-model pattern meta-llama/*"]
    assert proposal["diff_digest"] == "sha256:" + hashlib.sha256(canonical_json(proposal["diff"])).hexdigest()
    assert api(world.a.admin).get(f"{T}/policy-data/").json()["revision"] == 0
    listed = api(world.a.auditor).get(f"{T}/proposals/").json()["results"]
    assert [p["id"] for p in listed] == [proposal["id"]]
    assert api(world.a.developer).get(f"{T}/proposals/{proposal['id']}/").json()["diff_digest"] == proposal["diff_digest"]
    assert_error(api(world.b.admin).get(f"{T}/proposals/{proposal['id']}/"), 404, "not_found")
    assert AuditEvent.objects.using("owner").filter(action="governed_change.propose").count() == 1


def test_a_second_admin_confirms_and_the_change_is_written_as_the_next_revision(world, api, proposal):
    response = confirm(api, world.a.admin2, proposal)
    assert response.status_code == 200, response.content
    assert response.json()["state"] == "applied" and response.json()["applied_revision"] == 1
    assert response.json()["confirmed_by"] == world.a.admin2.username
    assert api(world.a.admin).get(f"{T}/policy-data/").json()["base_model_allowlist"] == ["meta-llama/*"]
    assert AuditEvent.objects.using("owner").filter(action="governed_change.confirm").count() == 1
    assert_error(confirm(api, world.a.admin2, proposal), 409, "proposal_not_open")


def test_the_proposer_cannot_confirm(world, api, proposal):
    assert_error(confirm(api, world.a.admin, proposal), 403, "separation_of_duties")


def test_a_platform_admin_cannot_confirm_for_the_tenant(world, api, proposal):
    assert_error(confirm(api, world.platform_admin, proposal), 403, "tenant_admin_required")
    assert_error(confirm(api, world.a.approver, proposal), 403, "permission_denied")


def test_an_admin_granted_after_the_proposal_cannot_confirm_it(world, api, proposal):
    Membership.objects.using("owner").filter(user=world.a.admin2).update(role_since=timezone.now())
    assert_error(confirm(api, world.a.admin2, proposal), 403, "role_granted_after_proposal")


def test_a_service_account_token_never_proposes_or_confirms_loosening(world, api, proposal):
    from tenants.services import service_account_create

    account = service_account_create(actor=world.a.developer, tenant=world.a.tenant, name="ci", role="developer")
    token = api(issue_token(world.a.developer, world.a.tenant, service_account=account))
    assert_error(token.put(f"{T}/policy-data/", {"base_model_allowlist": ["x/*"]}), 403, "permission_denied")
    assert_error(token.post(f"{T}/proposals/{proposal['id']}/confirm/",
                            {"otp_token": "123456", "diff_digest": proposal["diff_digest"]}), 403,
                 "service_account_forbidden")


def test_a_wrong_diff_digest_is_refused(world, api, proposal):
    response = confirm(api, world.a.admin2, proposal, digest="sha256:" + "0" * 64)
    assert "read the proposal again" in assert_error(response, 409, "diff_digest_mismatch")["detail"]
    assert api(world.a.admin).get(f"{T}/policy-data/").json()["revision"] == 0


def test_a_change_to_the_setting_in_between_voids_the_proposal(world, api, proposal):
    assert api(world.a.admin).put(f"{T}/policy-data/", {"min_approvals": 4}).status_code == 200
    assert api(world.a.admin).get(f"{T}/proposals/{proposal['id']}/").json()["state"] == "void"
    assert_error(confirm(api, world.a.admin2, proposal), 409, "proposal_stale")
    assert api(world.a.admin).get(f"{T}/policy-data/").json()["base_model_allowlist"] == []


def test_an_expired_proposal_cannot_be_confirmed(world, api, proposal):
    GovernedChangeProposal.objects.using("owner").filter(pk=proposal["id"]).update(
        expires_at=timezone.now() - timedelta(seconds=1))
    assert api(world.a.admin).get(f"{T}/proposals/{proposal['id']}/").json()["state"] == "expired"
    assert_error(confirm(api, world.a.admin2, proposal), 409, "proposal_expired")


def test_a_tenant_with_one_admin_cannot_loosen(world, api):
    Membership.objects.using("owner").filter(user=world.a.admin2).update(role="approver")
    response = api(world.a.admin).put(f"{T}/policy-data/", {"base_model_allowlist": ["meta-llama/*"]})
    assert "a second tenant admin to confirm it" in assert_error(response, 409, "second_admin_required")["detail"]
    assert api(world.a.admin).put(f"{T}/policy-data/", {"min_approvals": 3}).status_code == 200  # tightening still


def test_the_console_shows_the_one_admin_refusal_next_to_the_field(world, client):
    Membership.objects.using("owner").filter(user=world.a.admin2).update(role="approver")
    sign_in(client, world.a.admin)
    response = client.post("/t/acme-bank/policy/", {"action": "data", "min_approvals": "2",
                                                    "rollback_min_approvals": "1",
                                                    "base_model_allowlist": "meta-llama/*"})
    assert response.status_code == 400
    page = response.content.decode()
    assert 'id="data_base_model_allowlist-error"' in page and "a second tenant admin to confirm it" in page


def test_the_console_refuses_a_trust_key_with_one_admin_next_to_the_field(world, client):
    Membership.objects.using("owner").filter(user=world.a.admin2).update(role="approver")
    sign_in(client, world.a.admin)
    response = client.post("/t/acme-bank/trust/", {"action": "add-key", "key_id": "ci", "public_key": PEM_A})
    assert response.status_code == 400
    assert 'id="key_public_key-error"' in response.content.decode()


def test_replacing_a_trusted_keys_pem_counts_as_loosening(world, api):
    assert put_governed(api, world.a, f"{T}/trust/", {"public_keys": {"ci-2026": PEM_A}}).json()["revision"] == 1
    response = api(world.a.admin).put(f"{T}/trust/", {"public_keys": {"ci-2026": PEM_B}})
    assert response.status_code == 202
    assert response.json()["diff"]["loosening"] == ["replaces key ci-2026's PEM (direction undecidable)"]
    assert response.json()["base_revision"] == 1
    assert api(world.a.admin).get(f"{T}/trust/").json()["public_keys"] == {"ci-2026": PEM_A}
    confirmed = confirm(api, world.a.admin2, response.json())
    assert confirmed.status_code == 200, confirmed.content
    assert api(world.a.admin).get(f"{T}/trust/").json()["public_keys"] == {"ci-2026": PEM_B}
    # Removing the key only trusts less: it applies at once.
    assert api(world.a.admin).put(f"{T}/trust/", {"public_keys": {}}).json()["revision"] == 3


# Through the console -------------------------------------------------------------------


def test_a_second_admin_sees_the_diff_and_confirms_it_in_the_console(world, api, client, proposal):
    sign_in(client, world.a.admin)
    page = client.get("/t/acme-bank/policy/").content.decode()
    row = page[page.index(f'data-proposal="{proposal["id"]}"'):]
    row = row[:row.index("</tr>")]
    assert "adds base-model pattern meta-llama/*" in row and "Confirm" not in row  # not for its proposer

    sign_in(client, world.a.admin2)
    page = client.get("/t/acme-bank/policy/").content.decode()
    assert "adds base-model pattern meta-llama/*" in page and proposal["diff_digest"] in page
    form = {"action": "confirm", "proposal": proposal["id"], "diff_digest": proposal["diff_digest"]}
    tampered = client.post("/t/acme-bank/policy/", {**form, "diff_digest": "sha256:" + "0" * 64,
                                                    "otp_token": fresh_totp(world.a.admin2)})
    assert tampered.status_code == 400 and "diff digest sent is not this proposal" in tampered.content.decode()
    assert api(world.a.admin).get(f"{T}/policy-data/").json()["revision"] == 0
    confirmed = client.post("/t/acme-bank/policy/", {**form, "otp_token": fresh_totp(world.a.admin2)})
    assert confirmed.status_code == 302, confirmed.content.decode()[:500]
    assert api(world.a.admin).get(f"{T}/policy-data/").json()["base_model_allowlist"] == ["meta-llama/*"]
    assert "applied" in client.get("/t/acme-bank/policy/").content.decode()


def test_a_proposal_shows_void_at_once_when_its_proposer_no_longer_stands(world, api, client, proposal):
    """Its proposer demoted, a proposal no longer stands: the API and the console say so at
    once, and a confirmation is refused, without anyone having to try first."""
    make_admin(api, world.a.tenant, world.a.approver.username, proposer=world.a.admin, confirmer=world.a.admin2)
    assert api(world.a.admin2).patch(f"{T}/members/{world.a.admin.username}/", {"role": "developer"}).status_code == 200
    shown = api(world.a.admin2).get(f"{T}/proposals/{proposal['id']}/").json()
    assert shown["state"] == "void" and "acme-bank-admin's role changed after they gave it" in shown["void_reason"]
    sign_in(client, world.a.admin2)
    row = client.get("/t/acme-bank/policy/").content.decode()
    row = row[row.index(f'data-proposal="{proposal["id"]}"'):]
    row = row[:row.index("</tr>")]
    assert "void: acme-bank-admin&#x27;s role changed after they gave it" in row and "Confirm<" not in row
    assert_error(confirm_as(api, world.a.admin2, world.a.tenant, proposal), 409, "proposal_stale")

