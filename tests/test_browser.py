"""The console in a real browser: headless Chromium (Debian's package) driven by Playwright,
against pytest-django's live server on the test database. Real django-otp, no mocks."""

import os
import re
import time
from base64 import b32decode
from pathlib import Path

import pytest

from tests.support import ROOT

from tests.support.browser import sign_in_with_password

from tests.support.clients import issue_token

from tests.support.otp import current_totp

from tests.support.people import make_user

pytestmark = pytest.mark.browser

# `make screenshot` points this at docs/img/console.png to refresh the README picture.
SCREENSHOT = Path(os.environ.get("NEOCLOUD_SCREENSHOT", ROOT / "var" / "screenshots" / "console.png"))


def totp_for_secret(secret):
    from django_otp.oath import TOTP

    totp = TOTP(b32decode(secret), step=30, t0=0, digits=6, drift=0)
    totp.time = time.time()
    return f"{totp.token():06d}"


def test_a_new_tenant_admin_enrols_in_the_browser_and_adds_a_member(world, live_server, open_page):
    page = open_page()
    from tenants.models import ApiToken, Membership

    dana = make_user("dana-admin", device=False)
    Membership.objects.using("owner").create(tenant=world.a.tenant, user=dana, role="tenant_admin")
    base = live_server.url

    sign_in_with_password(page, base, dana.username)
    page.wait_for_url(re.compile(r"/login/enrol/"))
    assert page.locator(".qr svg").count() == 1, "the QR code is an inline SVG"
    secret = page.locator("#totp-secret").inner_text().strip()
    assert re.fullmatch(r"[A-Z2-7]{32}", secret)
    page.fill("#id_otp_token", totp_for_secret(secret))
    page.click("button:has-text('Confirm device')")

    page.wait_for_url(f"{base}/")
    assert page.locator("h1").inner_text() == "Tenants"
    tenant_link = page.locator("#tenant-list a", has_text=world.a.tenant.slug)
    assert tenant_link.count() == 1
    assert "dana-admin" in page.locator(".topbar .who").inner_text()

    tenant_link.click()
    page.wait_for_url(f"{base}/t/{world.a.tenant.slug}/")
    members = page.locator("#members tbody tr")
    assert members.count() == 7
    assert page.locator(f'#members tr[data-username="{world.outsider.username}"]').count() == 0

    form = page.locator("#member-add")
    form.locator("#member_username").fill(world.outsider.username)
    form.locator("#member_role").select_option("developer")
    with page.expect_navigation():
        form.locator("button:has-text('Add member')").click()

    assert page.url == f"{base}/t/{world.a.tenant.slug}/"
    row = page.locator(f'#members tr[data-username="{world.outsider.username}"]')
    row.wait_for()
    assert row.locator("td.role").inner_text() == "Developer"
    assert page.locator("#members tbody tr").count() == 8
    assert f"{world.outsider.username} is now developer" in page.locator(".messages").inner_text()
    assert Membership.objects.using("owner").get(tenant=world.a.tenant, user=world.outsider).role == "developer"

    # A service account and tokens, so the page shows what a tenant admin works with.
    issue_token(world.a.developer, world.a.tenant, name="laptop")
    account_form = page.locator("form[action$='/service-accounts/']")
    account_form.locator("input[name=name]").fill("audit-export")
    account_form.locator("select[name=role]").select_option("auditor")
    with page.expect_navigation():
        account_form.locator("button:has-text('Create service account')").click()
    assert page.locator("td", has_text="audit-export").count() == 1
    token_form = page.locator("form[action$='/tokens/']")
    token_form.locator("input[name=name]").fill("ci-pipeline")
    token_form.locator("input[name=service_account]").fill("audit-export")
    with page.expect_navigation():
        token_form.locator("button:has-text('Issue token')").click()
    issued = page.locator("#issued-token")
    plaintext = issued.inner_text().strip()
    assert plaintext.startswith("nct_")
    token = ApiToken.objects.using("owner").get(tenant=world.a.tenant, name="ci-pipeline")

    page.goto(f"{base}/t/{world.a.tenant.slug}/")
    assert page.locator("#issued-token").count() == 0
    assert plaintext not in page.content()
    assert page.locator(f"code:has-text('{token.public_id}')").count() == 1

    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOT), full_page=True)  # members, service accounts and tokens
    assert SCREENSHOT.stat().st_size > 10_000


@pytest.mark.embedded
def test_a_person_with_a_confirmed_device_signs_in_with_password_and_totp(world, live_server, open_page):
    page = open_page()
    base = live_server.url
    user = world.a.developer

    sign_in_with_password(page, base, user.username)
    page.wait_for_url(re.compile(r"/login/verify/"))
    assert page.locator("h1").inner_text() == "One-time password"
    page.fill("#id_otp_token", current_totp(user))
    page.click("button:has-text('Verify')")

    page.wait_for_url(f"{base}/")
    assert page.locator("#tenant-list a", has_text=world.a.tenant.slug).count() == 1
    assert page.locator("#tenant-list a", has_text=world.b.tenant.slug).count() == 0
    assert user.username in page.locator(".topbar .who").inner_text()

    from audit.models import AuditEvent

    assert AuditEvent.objects.using("owner").filter(action="auth.login", actor_name=user.username).count() == 1
