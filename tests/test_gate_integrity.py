"""Gate integrity: hard facts the platform checks itself, distinct people, final revocation.

The policy engine decides what policy decides; the promotion code checks on its own the facts
no exception may replace (the stage order, the signed metrics of a successful staging run, the
approval count, separation of duties), so a policy that allows everything still cannot move a
version past them. One person plays one part on a promotion, and an approval whose approver's
membership was revoked or changed never counts again.
"""

from datetime import timedelta

import pytest
from django.utils import timezone

from tests.support.clients import sign_in
from tests.support.otp import fresh_totp
from tests.support.baseline import accept_running_baseline
from .test_api import assert_error
from .test_policies import bundle_url, opa_double  # noqa: F401 (fixtures)
from .test_promotions import T, Gate

# A real Rego module in the platform policy's place that allows every promotion: what a
# broken or subverted policy would answer.
ALLOW_EVERYTHING = """package neocloud.platform.promotion

import rego.v1

decision := {"allow": true, "violations": []}
"""


@pytest.fixture
def gate(world, api, tmp_path):
    return Gate(world, api, tmp_path)


@pytest.fixture
def allow_everything(world, monkeypatch, tmp_path):
    """The policy in force, accepted by two platform admins as every baseline revision must be."""
    root = tmp_path / "rego"
    (root / "platform").mkdir(parents=True)
    (root / "platform" / "promotion.rego").write_text(ALLOW_EVERYTHING)
    monkeypatch.setattr("policies.bundle.REGO_DIR", root)
    accept_running_baseline(world)


@pytest.mark.parametrize("engine", ["embedded", "opa"])
def test_the_platform_checks_its_hard_facts_whatever_the_policy_answers(gate, world, allow_everything, engine,
                                                                        request, settings, monkeypatch):
    if engine == "opa":  # an OPA server (a test double on OPA's REST API) that pulled the same policy
        from policies import engines

        double = request.getfixturevalue("opa_double")
        settings.POLICY_ENGINE, settings.OPA_URL = "opa", double.url
        monkeypatch.setattr(engines, "_engines", {})
    number = gate.version()
    skipped = gate.request(number, "staging").json()
    assert skipped["state"] == "rejected", skipped
    assert "has not been promoted to development" in skipped["close_reason"]
    assert gate.request(number, "development").json()["state"] == "promoted"

    early = gate.developer.post(f"{T}/promotions/", {"workflow": "fraud-detector", "version": number,
                                                      "stage": "production"}).json()
    assert early["state"] == "rejected"
    assert "has not been promoted to staging" in early["close_reason"]
    assert "platform-signed metrics of a successful staging run" in early["close_reason"]

    # The policy asks for no approval; the platform's floor still does, from distinct people.
    staging = gate.request(number, "staging").json()
    assert (staging["state"], staging["required_approvals"]) == ("awaiting_approval", 1), staging
    assert_error(gate.approve(staging["id"], world.a.developer), 403, "permission_denied")
    assert gate.approve(staging["id"], world.a.approver).json()["state"] == "promoted"

    production = gate.request(number, "production").json()  # with a staging run's signed metrics
    assert (production["state"], production["required_approvals"]) == ("awaiting_approval", 2), production
    assert gate.approve(production["id"], world.a.approver).json()["state"] == "awaiting_approval"
    assert gate.approve(production["id"], world.a.approver2).json()["state"] == "promoted"
    from policies.models import PolicyDecision

    assert set(PolicyDecision.objects.using("owner").values_list("engine", flat=True)) == {engine}


def test_a_waiver_never_stands_in_for_the_staging_runs_metrics(gate, world, api):
    number = gate.version()
    gate.promote(number, "development")
    gate.promote(number, "staging")
    later = (timezone.now() + timedelta(days=7)).isoformat()
    waiver = gate.admin.post(f"{T}/waivers/", {"rule": "baseline.metrics_thresholds", "reason": "No eval yet",
                                               "ticket_url": "https://tickets.example/9", "expires_at": later}).json()
    approved = api(world.a.admin2).post(f"{T}/waivers/{waiver['id']}/approve/",
                                        {"otp_token": fresh_totp(world.a.admin2)}).json()
    assert approved["state"] == "active", approved
    # No staging run has left signed metrics: the waiver lifts the rule, not the missing fact.
    body = gate.developer.post(f"{T}/promotions/", {"workflow": "fraud-detector", "version": number,
                                                     "stage": "production"}).json()
    assert body["state"] == "rejected", body
    assert "production needs the platform-signed metrics of a successful staging run" in body["close_reason"]


def test_whoever_confirmed_an_exception_does_not_also_approve(gate, world, api):
    number = gate.version(accuracy=0.5)
    gate.promote(number, "development")
    body = gate.request(number, "staging").json()
    assert body["state"] == "checked"
    overrides = f"{T}/promotions/{body['id']}/overrides/"
    override = gate.admin.post(overrides, {"rule": "baseline.metrics_thresholds",
                                           "justification": "Holdout set is biased; see ticket RISK-12"}).json()
    confirmed = api(world.a.approver).post(f"{overrides}{override['id']}/confirm/",
                                           {"otp_token": fresh_totp(world.a.approver)}).json()
    # The confirmation is not an approval: the request still waits for one.
    assert (confirmed["state"], confirmed["required_approvals"]) == ("awaiting_approval", 1), confirmed
    refused = gate.approve(body["id"], world.a.approver)
    assert "exception" in assert_error(refused, 403, "separation_of_duties")["detail"]
    assert gate.approve(body["id"], world.a.approver2).json()["state"] == "promoted"


def test_a_waiver_stops_applying_once_its_approvers_role_changes(gate, world, api):
    number = gate.version(spec_changes={"base_model": {"name": "meta-llama/Llama-3-8B"}})  # not allow-listed
    later = (timezone.now() + timedelta(days=7)).isoformat()
    waiver = gate.admin.post(f"{T}/waivers/", {"rule": "baseline.base_model_allowed", "reason": "Pilot of Llama 3",
                                               "ticket_url": "https://tickets.example/4", "expires_at": later}).json()
    approved = api(world.a.admin2).post(f"{T}/waivers/{waiver['id']}/approve/", {"otp_token": fresh_totp(world.a.admin2)})
    assert approved.json()["state"] == "active"
    assert gate.request(number, "development").json()["state"] == "promoted"
    # The waiver's approver is made an approver: their approval of the waiver was given as a
    # tenant admin, and no longer stands, so the waiver lifts nothing from here on.
    assert gate.admin.patch(f"{T}/members/{world.a.admin2.username}/", {"role": "approver"}).status_code == 200
    body = gate.request(number, "staging").json()
    assert body["state"] == "checked" and "baseline.base_model_allowed" in {v["rule"] for v in body["violations"]}


@pytest.mark.parametrize("lapse", ["role changed and changed back", "membership revoked and granted again"])
def test_an_approval_is_void_for_good_once_its_approvers_membership_changes(gate, world, api, client, lapse):
    number = gate.version()
    gate.promote(number, "development")
    gate.promote(number, "staging")
    body = gate.request(number, "production").json()
    assert gate.approve(body["id"], world.a.approver).json()["state"] == "awaiting_approval"
    members = f"{T}/members/"
    approver = world.a.approver.username
    if lapse == "role changed and changed back":
        assert gate.admin.patch(f"{members}{approver}/", {"role": "developer"}).status_code == 200
        assert gate.admin.patch(f"{members}{approver}/", {"role": "approver"}).status_code == 200
    else:
        assert gate.admin.delete(f"{members}{approver}/").status_code == 204
        assert gate.admin.post(members, {"username": approver, "role": "approver"}).status_code == 201
    # Shown void at once, with its reason, before anyone acts again.
    [shown] = gate.developer.get(f"{T}/promotions/{body['id']}/").json()["approvals"]
    assert shown["current"] is False
    assert shown["void_reason"] == f"{approver}'s role changed after they gave it"
    sign_in(client, world.a.developer)
    page = client.get(f"/t/acme-bank/promotions/{body['id']}/").content.decode()
    assert f"void: {approver}&#x27;s role changed after they gave it" in page
    # The second approval does not complete the count: the first no longer counts, and the same
    # person cannot approve the same facts twice.
    assert gate.approve(body["id"], world.a.approver2).json()["state"] == "awaiting_approval"
    assert_error(gate.approve(body["id"], world.a.approver), 409, "already_decided")


def test_an_approval_shows_void_at_once_when_a_signature_is_added_to_what_it_approved(gate, world):
    number = gate.version()
    gate.promote(number, "development")
    gate.promote(number, "staging")
    body = gate.request(number, "production").json()
    assert gate.approve(body["id"], world.a.approver).json()["state"] == "awaiting_approval"

    def shown_in_list():
        [listed] = [p for p in gate.developer.get(f"{T}/promotions/").json()["results"] if p["id"] == body["id"]]
        return listed["approvals"]

    assert [a["current"] for a in shown_in_list()] == [True]
    # A second, valid signature on the model: the signature set the approver reviewed changed.
    [model] = gate.developer.get(f"{T}/artifacts/?name=scorer").json()["results"]
    data = gate.developer.get(f"{T}/artifacts/scorer/{model['digest']}/content")
    gate.sign("scorer", model["digest"], b"".join(data.streaming_content))
    for shown in (gate.developer.get(f"{T}/promotions/{body['id']}/").json()["approvals"][0], shown_in_list()[0]):
        assert shown["current"] is False  # in the detail and in the list alike
        assert shown["void_reason"].startswith("what it approved has changed since")


def test_an_override_is_judged_by_the_facts_now_not_by_the_last_check(gate, world, api):
    number = gate.version(spec_changes={"base_model": {"name": "meta-llama/Llama-3-8B"}})  # not allow-listed
    held = gate.request(number, "development").json()
    assert held["state"] == "checked", held
    later = (timezone.now() + timedelta(days=7)).isoformat()
    waiver = api(world.a.admin2).post(f"{T}/waivers/", {"rule": "baseline.base_model_allowed", "reason": "Pilot",
                                                        "ticket_url": "https://tickets.example/5",
                                                        "expires_at": later}).json()
    assert api(world.a.admin).post(f"{T}/waivers/{waiver['id']}/approve/",
                                   {"otp_token": fresh_totp(world.a.admin)}).json()["state"] == "active"
    # The stored check still says "checked"; the override request checks again first, and the
    # waiver now in force has let the request through.
    refused = gate.admin.post(f"{T}/promotions/{held['id']}/overrides/",
                                       {"rule": "baseline.base_model_allowed", "justification": "Pilot"})
    assert_error(refused, 409, "promotion_not_checked")
    assert gate.developer.get(f"{T}/promotions/{held['id']}/").json()["state"] == "promoted"


# In the console, where people act --------------------------------------------------------


def test_the_console_shows_a_missing_fact_and_refuses_a_second_part(gate, world, api, client):
    number = gate.version(accuracy=0.5)
    skipped = gate.request(number, "staging").json()
    page = sign_in(client, world.a.approver).get(f"/t/acme-bank/promotions/{skipped['id']}/").content.decode()
    assert "has not been promoted to development" in page[page.index('id="close-reason"'):]

    gate.promote(number, "development")
    body = gate.request(number, "staging").json()
    overrides = f"{T}/promotions/{body['id']}/overrides/"
    override = gate.admin.post(overrides, {"rule": "baseline.metrics_thresholds", "justification": "RISK-12"}).json()
    assert api(world.a.approver).post(f"{overrides}{override['id']}/confirm/",
                                      {"otp_token": fresh_totp(world.a.approver)}).json()["state"] == "awaiting_approval"
    # The approver who confirmed the override tries to approve it too, in the console.
    refused = client.post(f"/t/acme-bank/promotions/{body['id']}/",
                          {"action": "approve", "otp_token": fresh_totp(world.a.approver), "comment": ""})
    assert refused.status_code == 403
    assert "asked for or confirmed an exception" in refused.content.decode().replace("&#x27;", "'")
    assert gate.developer.get(f"{T}/promotions/{body['id']}/").json()["state"] == "awaiting_approval"
