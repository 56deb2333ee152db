"""The promotion console: the approver's queue, the promotion page explained rule by rule, and
decisions with a one-time password; one journey in a real browser."""

import os
import re
from pathlib import Path

import pytest

from tests.support import ROOT

from tests.support.browser import VIEWPORT, sign_in_with_password

from tests.support.clients import sign_in

from tests.support.otp import fresh_totp
from tests.test_promotions import Gate


# `make screenshot` points this at docs/img/promotion.png for the README.
SCREENSHOT = Path(os.environ.get("NEOCLOUD_PROMOTION_SCREENSHOT", ROOT / "var" / "screenshots" / "promotion.png"))


@pytest.fixture
def gate(world, api, tmp_path):
    return Gate(world, api, tmp_path)


@pytest.mark.embedded
def test_the_promotion_page_explains_each_rule_and_shows_metrics_and_approvals(gate, world, client):
    number = gate.version(accuracy=0.5)
    gate.promote(number, "development")
    body = gate.request(number, "staging").json()
    page = sign_in(client, world.a.approver).get(f"/t/acme-bank/promotions/{body['id']}/")
    html = page.content.decode()
    assert page.status_code == 200
    assert 'data-rule="baseline.metrics_thresholds"' in html and "accuracy is 0.5, below the threshold 0.9" in html
    assert 'data-metric="accuracy"' in html and "not met" in html
    assert 'data-artifact="scorer"' in html and "Held by soft-mandatory" not in html
    queue = client.get("/t/acme-bank/promotions/").content.decode()
    assert f'data-promotion="{body["id"]}"' in queue


def test_a_console_approval_needs_a_valid_code_shown_next_to_the_field(gate, world, client):
    number = gate.version()
    gate.promote(number, "development")
    body = gate.request(number, "staging").json()
    url = f"/t/acme-bank/promotions/{body['id']}/"
    response = sign_in(client, world.a.approver).post(url, {"action": "approve", "otp_token": "123"})
    assert response.status_code == 400
    assert 'id="stepup_otp_token-error"' in response.content.decode()
    response = client.post(url, {"action": "approve", "otp_token": fresh_totp(world.a.approver),
                                 "binding_digest": body["binding_digest"]})
    assert response.status_code == 302
    assert gate.developer.get(f"/api/v1/tenants/acme-bank/promotions/{body['id']}/").json()["state"] == "promoted"


def test_another_tenants_promotion_page_is_404(gate, world, client):
    number = gate.version()
    body = gate.request(number, "development").json()
    assert sign_in(client, world.b.admin).get(f"/t/acme-bank/promotions/{body['id']}/").status_code == 404
    assert client.get(f"/t/st-mary-hospital/promotions/{body['id']}/").status_code == 404


def test_policy_data_is_edited_in_the_console_and_the_floor_is_shown_next_to_the_field(gate, world, client):
    sign_in(client, world.a.admin)
    response = client.post("/t/acme-bank/policy/", {"action": "data", "min_approvals": 1, "rollback_min_approvals": 1,
                                                    "base_model_allowlist": "mistralai/*", "metrics_thresholds": "",
                                                    "allowed_regions": ""})
    assert response.status_code == 400
    assert "cannot go below the platform floor of 2" in response.content.decode()
    response = client.post("/t/acme-bank/policy/", {"action": "data", "min_approvals": 3, "rollback_min_approvals": 1,
                                                    "base_model_allowlist": "mistralai/*",
                                                    "metrics_thresholds": "accuracy 0.92", "allowed_regions": "eu"})
    assert response.status_code == 302
    data = gate.admin.get("/api/v1/tenants/acme-bank/policy-data/").json()
    assert data["min_approvals"] == 3 and data["metrics_thresholds"] == {"accuracy": 0.92}


@pytest.mark.browser
def test_journey_denied_with_reasons_fixed_approved_twice_and_promoted(gate, world, live_server, open_page):
    base = live_server.url
    number = gate.version()
    gate.promote(number, "development")

    developer = open_page()
    _sign_in(developer, base, world.a.developer)
    developer.goto(f"{base}/t/acme-bank/promotions/")
    _request(developer, number, "production")
    assert developer.locator("#promotion-state").inner_text() == "Rejected"
    assert "must reach staging before production" in developer.locator("#close-reason").inner_text()
    row = developer.locator('#rules tr[data-rule="baseline.staging_before_production"]')
    assert "violated" in row.inner_text() and "hard-mandatory" in row.inner_text()

    gate.promote(number, "staging")  # the fix: staging first, with its approval,
    gate.staging_run(number, {"accuracy": 0.95})  # and a staging run whose platform-signed metrics production judges
    developer.goto(f"{base}/t/acme-bank/promotions/")
    _request(developer, number, "production")
    assert developer.locator("#promotion-state").inner_text() == "Awaiting approval"
    promotion_url = developer.url

    for person, state in [(world.a.approver, "Awaiting approval"), (world.a.approver2, "Promoted")]:
        context = developer.context.browser.new_context(viewport=VIEWPORT)
        page = context.new_page()
        _sign_in(page, base, person)
        page.goto(promotion_url)
        assert page.locator('#rules tr[data-rule="baseline.min_approvals"]').count() == 1
        page.fill("#stepup_otp_token", fresh_totp(person))
        with page.expect_navigation():
            page.click("#decide button[value=approve]")
        assert page.locator("#promotion-state").inner_text() == state
        assert page.locator(f'#approvals tr[data-approver="{person.username}"]').count() == 1
        context.close()
    developer.reload()
    assert "attestation" in developer.locator("#promoted").inner_text()
    assert developer.locator('#approvals tr[data-approver]').count() == 2
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    developer.screenshot(path=str(SCREENSHOT), full_page=True)
    assert SCREENSHOT.stat().st_size > 10_000


def _sign_in(page, base, user):
    sign_in_with_password(page, base, user.username)
    page.wait_for_url(re.compile(r"/login/verify/"))
    page.fill("#id_otp_token", fresh_totp(user))
    with page.expect_navigation():
        page.click("button:has-text('Verify')")


def _request(page, number, stage):
    form = page.locator("#promotion-request")
    form.locator("#promotion_workflow").fill("fraud-detector")
    form.locator("#promotion_version").fill(str(number))
    form.locator("#promotion_stage").select_option(stage)
    with page.expect_navigation():
        form.locator("button[type=submit]").click()


def test_a_waiver_is_asked_for_and_approved_in_the_console_by_two_people(gate, world, client):
    from datetime import timedelta

    from django.test import Client
    from django.utils import timezone

    from policies.models import Waiver

    in_ten_days = (timezone.now() + timedelta(days=10)).strftime("%Y-%m-%d %H:%M")

    admin = sign_in(client, world.a.admin)
    response = admin.post("/t/acme-bank/policy/", {"action": "waiver", "rule": "baseline.dataset_residency",
                                                   "reason": "r", "ticket_url": "https://tickets.example/9",
                                                   "expires_at": "2099-01-01 00:00"})
    assert response.status_code == 400 and "hard-mandatory baseline rule" in response.content.decode()
    response = admin.post("/t/acme-bank/policy/", {"action": "waiver", "rule": "baseline.base_model_allowed",
                                                   "reason": "Pilot", "ticket_url": "https://tickets.example/9",
                                                   "expires_at": in_ten_days})
    assert response.status_code == 302, response.content.decode()[:2000]
    waiver = Waiver.objects.using("owner").get()
    second_admin = sign_in(Client(), world.a.admin2)
    response = second_admin.post("/t/acme-bank/policy/", {"action": "approve", "waiver": waiver.pk, "otp_token": "1"})
    assert response.status_code == 400 and 'id="approve_otp_token-error"' in response.content.decode()
    response = second_admin.post("/t/acme-bank/policy/", {"action": "approve", "waiver": waiver.pk,
                                                          "otp_token": fresh_totp(world.a.admin2)})
    assert response.status_code == 302
    waiver.refresh_from_db()
    assert waiver.approved_by_id == world.a.admin2.pk
