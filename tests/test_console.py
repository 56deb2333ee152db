"""The web console through Django's test client: sign-in with a password and a one-time
password (real django-otp), enrolment, lockout, and the tenant pages."""

import html
import re
import time
from base64 import b32decode

import pytest
from django.test import Client
from django.urls import reverse

from tests.support.clients import sign_in

from tests.support.otp import current_totp

from tests.support.people import PASSWORD, make_user



# Helpers -------------------------------------------------------------------------------


def events(action, **filters):
    """Audit events of one action, read as the owner (the app role is under row-level security)."""
    from audit.models import AuditEvent

    return AuditEvent.objects.using("owner").filter(action=action, **filters)


def membership(tenant, user):
    from tenants.models import Membership

    return Membership.objects.using("owner").filter(tenant=tenant, user=user).first()


def confirmed_devices(user):
    from django_otp.plugins.otp_totp.models import TOTPDevice

    return TOTPDevice.objects.using("owner").filter(user=user, confirmed=True)


def totp_for_secret(secret, at=None):
    """The code an authenticator app shows for a base32 secret, as django-otp computes it."""
    from django_otp.oath import TOTP

    totp = TOTP(b32decode(secret), step=30, t0=0, digits=6, drift=0)
    totp.time = time.time() if at is None else at
    return f"{totp.token():06d}"


def wrong_totp(user):
    """A six-digit code that no step in the device's tolerance window accepts."""
    from django_otp.oath import TOTP
    from django_otp.plugins.otp_totp.models import TOTPDevice

    device = TOTPDevice.objects.using("owner").get(user=user, confirmed=True)
    accepted = set()
    for offset in range(-(device.tolerance + 1), device.tolerance + 2):
        totp = TOTP(device.bin_key, device.step, device.t0, device.digits, device.drift)
        totp.time = time.time() + offset * device.step
        accepted.add(f"{totp.token():06d}")
    return next(code for code in (f"{n:06d}" for n in range(123456, 999999, 7919)) if code not in accepted)


def sign_in_with_password(client, user, password=PASSWORD, **extra):
    return client.post(reverse("login"), {"username": user.username, "password": password}, **extra)


def text(response):
    return html.unescape(response.content.decode())


def location(response):
    return response["Location"].split("?")[0]


# Signing in ----------------------------------------------------------------------------


@pytest.mark.embedded
def test_a_person_with_a_device_signs_in_with_password_then_totp_and_reaches_the_home_page(world):
    client = Client()
    response = sign_in_with_password(client, world.a.developer)
    assert response.status_code == 302
    assert location(response) == reverse("login-verify")

    response = client.post(reverse("login-verify"), {"otp_token": current_totp(world.a.developer), "next": "/"})
    assert response.status_code == 302, text(response)
    assert response["Location"] == reverse("home")

    home = client.get(reverse("home"))
    assert home.status_code == 200
    assert world.a.tenant.slug in text(home)
    assert events("auth.login", actor_name=world.a.developer.username).count() == 1


def test_a_wrong_password_shows_an_error_next_to_the_form_and_is_audited(world):
    client = Client()
    response = sign_in_with_password(client, world.a.developer, password="not-the-password-at-all")
    assert response.status_code == 400
    assert '<p class="form-error">That username and password do not match.</p>' in text(response)
    assert '<form method="post" action="/login/">' in text(response)
    failed = events("auth.login_failed")
    assert failed.count() == 1
    event = failed.get()
    assert (event.actor_type, event.actor_name, event.outcome) == ("anonymous", world.a.developer.username, "denied")
    assert client.get(reverse("home")).status_code == 302


def test_a_session_with_only_a_password_reaches_only_enrolment_verification_and_sign_out(world, client):
    user = world.a.admin
    assert sign_in_with_password(client, user).status_code == 302

    for path in ["/", f"/t/{world.a.tenant.slug}/", f"/t/{world.a.tenant.slug}/audit/", "/audit/"]:
        response = client.get(path)
        assert response.status_code == 302, path
        assert response["Location"] == reverse("login-verify"), path
    response = client.post(reverse("tenant-member-add", args=[world.a.tenant.slug]),
                           {"username": world.outsider.username, "role": "developer"})
    assert response.status_code == 302
    assert response["Location"] == reverse("login-verify")
    assert membership(world.a.tenant, world.outsider) is None

    assert client.get(reverse("login-verify")).status_code == 200

    me = client.get("/api/v1/me")
    assert me.status_code == 401
    assert me["Content-Type"].startswith("application/json")
    assert me.json()["code"] == "not_authenticated"

    response = client.post(reverse("logout"))
    assert response.status_code == 302
    assert response["Location"] == reverse("login")
    assert client.get("/").status_code == 302
    assert client.get("/")["Location"].startswith(reverse("login"))


def test_a_password_only_session_without_a_device_is_sent_to_enrolment_from_every_console_page(world, client):
    newcomer = make_user("newcomer", device=False)
    assert location(sign_in_with_password(client, newcomer)) == reverse("login-enrol")
    for path in ["/", f"/t/{world.a.tenant.slug}/", "/audit/", reverse("login-verify")]:
        response = client.get(path)
        assert response.status_code == 302, path
        assert response["Location"] == reverse("login-enrol"), path
    assert client.get("/api/v1/me").status_code == 401


# Enrolment -----------------------------------------------------------------------------


def test_a_person_without_a_device_enrols_with_the_qr_code_page_and_is_signed_in(world, client):
    newcomer = make_user("newcomer", device=False)
    response = sign_in_with_password(client, newcomer)
    assert location(response) == reverse("login-enrol")

    page = client.get(response["Location"])
    assert page.status_code == 200
    body = text(page)
    assert re.search(r'<div class="qr"><svg [^>]*>.*</svg></div>', body, re.S), "no inline SVG QR code"
    assert "<img" not in body and "https://" not in body.split('<div class="qr">')[1].split("</div>")[0]
    secret = re.search(r'<code id="totp-secret">([A-Z2-7]+)</code>', body).group(1)
    assert len(b32decode(secret)) == 20
    assert not confirmed_devices(newcomer).exists()

    response = client.post(reverse("login-enrol"), {"otp_token": totp_for_secret(secret), "next": "/"})
    assert response.status_code == 302, text(response)
    assert response["Location"] == reverse("home")
    assert confirmed_devices(newcomer).count() == 1
    assert events("otp.device_enrol", actor_name="newcomer").count() == 1
    assert events("auth.login", actor_name="newcomer").count() == 1

    home = client.get(reverse("home"))
    assert home.status_code == 200
    assert "You do not belong to any tenant yet." in text(home)
    assert client.get("/api/v1/me").status_code == 200


def test_a_wrong_enrolment_code_shows_a_field_error_and_confirms_nothing(world, client):
    newcomer = make_user("newcomer", device=False)
    sign_in_with_password(client, newcomer)
    secret = re.search(r'<code id="totp-secret">([A-Z2-7]+)</code>', text(client.get(reverse("login-enrol")))).group(1)
    good = {totp_for_secret(secret, time.time() + k * 30) for k in (-2, -1, 0, 1, 2)}
    bad = next(c for c in ("000000", "111111", "222222") if c not in good)

    response = client.post(reverse("login-enrol"), {"otp_token": bad})
    assert response.status_code == 400
    assert re.search(r'<p class="field-error" id="id_otp_token-error">That code does not match', text(response))
    assert f'<code id="totp-secret">{secret}</code>' in text(response), "the same secret is offered again"
    assert not confirmed_devices(newcomer).exists()
    assert client.get("/")["Location"] == reverse("login-enrol")


def test_a_person_with_a_confirmed_device_who_has_not_verified_cannot_open_enrolment(world, client):
    sign_in_with_password(client, world.a.developer)
    for method in ("get", "post"):
        response = getattr(client, method)(reverse("login-enrol"))
        assert response.status_code == 302, method
        assert response["Location"] == reverse("login-verify"), method
    from django_otp.plugins.otp_totp.models import TOTPDevice

    assert TOTPDevice.objects.using("owner").filter(user=world.a.developer).count() == 1


def test_a_verified_session_opening_enrolment_adds_no_second_confirmed_device(world, client):
    sign_in(client, world.a.developer)
    response = client.get(reverse("login-enrol"))
    assert response.status_code == 200
    assert confirmed_devices(world.a.developer).count() == 1


# One-time passwords and lockout --------------------------------------------------------


def test_a_wrong_totp_code_gives_a_field_error_and_an_otp_failed_event(world, client):
    user = world.a.developer
    sign_in_with_password(client, user)
    response = client.post(reverse("login-verify"), {"otp_token": wrong_totp(user)})
    assert response.status_code == 400
    assert re.search(r'<p class="field-error" id="id_otp_token-error">That code is not valid\.', text(response))
    failed = events("auth.otp_failed", actor_name=user.username)
    assert failed.count() == 1
    assert failed.get().outcome == "denied"
    assert client.get("/")["Location"] == reverse("login-verify")
    assert not events("auth.login").exists()


def test_a_malformed_totp_code_is_refused_by_the_form(world, client):
    sign_in_with_password(client, world.a.developer)
    response = client.post(reverse("login-verify"), {"otp_token": "12ab"})
    assert response.status_code == 400
    assert "Enter the 6-digit code from your authenticator app." in text(response)


def test_after_five_failed_passwords_even_the_right_password_is_refused_with_429(world, client):
    user = world.a.developer
    statuses = [sign_in_with_password(client, user, password=f"wrong-password-{n}").status_code for n in range(5)]
    assert statuses[:4] == [400, 400, 400, 400]
    assert statuses[4] in (400, 429)

    response = sign_in_with_password(client, user)
    assert response.status_code == 429
    assert "Too many failed sign-ins" in text(response)
    assert client.get("/").status_code == 302
    assert client.get("/")["Location"].startswith(reverse("login"))
    # Anonymous refusals are aggregated per source address: the first is an event, and every one is counted.
    assert events("auth.login_failed", actor_name=user.username).count() == 1
    assert refusals_met("auth.login_failed") >= 4
    assert refusals_met("auth.locked_out") >= 1

    other = Client()
    assert sign_in_with_password(other, world.a.approver).status_code == 302, "the lockout is per username"


def refusals_met(action: str) -> int:
    """Every refusal of ``action`` met: recorded at once or counted since (audit/denials.py)."""
    from audit.models import DenialCount

    return sum(c.count for c in DenialCount.objects.using("owner").all() if c.sample.get("action") == action)


def test_a_locked_out_attempt_is_recorded_once(world, client):
    user = world.a.developer
    for n in range(5):
        sign_in_with_password(client, user, password=f"wrong-password-{n}")
    before = refusals_met("auth.locked_out")
    assert sign_in_with_password(client, user).status_code == 429
    assert refusals_met("auth.locked_out") == before + 1
    assert events("auth.locked_out", actor_name=user.username).count() == 1  # the first; the rest are counted


# Members -------------------------------------------------------------------------------


def member_add(client, tenant, username, role="developer"):
    return client.post(reverse("tenant-member-add", args=[tenant.slug]), {"username": username, "role": role})


@pytest.mark.embedded
def test_a_tenant_admin_adds_a_member_through_the_console_form(world, client):
    sign_in(client, world.a.admin)
    response = member_add(client, world.a.tenant, world.outsider.username)
    assert response.status_code == 302, text(response)
    assert response["Location"] == reverse("tenant", args=[world.a.tenant.slug])

    granted = membership(world.a.tenant, world.outsider)
    assert granted is not None and granted.role == "developer"
    event = events("membership.grant", tenant=world.a.tenant.slug, target_id=world.outsider.username).get()
    assert event.actor_name == world.a.admin.username
    assert event.data["role"] == "developer"

    page = client.get(response["Location"])
    assert f'<tr data-username="{world.outsider.username}">' in text(page)
    assert f"{world.outsider.username} is now developer in {world.a.tenant.slug}." in text(page)


def test_adding_an_unknown_username_shows_the_error_next_to_the_username_field(world, client):
    from tenants.models import Membership

    sign_in(client, world.a.admin)
    before = Membership.objects.using("owner").count()
    response = member_add(client, world.a.tenant, "nobody-by-that-name")
    assert response.status_code == 400
    assert '<p class="field-error" id="member_username-error">No user named nobody-by-that-name.</p>' in text(response)
    assert 'value="nobody-by-that-name"' in text(response), "the form keeps what was typed"
    assert Membership.objects.using("owner").count() == before
    assert not events("membership.grant").exists()


def test_a_developer_posting_the_member_form_is_refused_with_403_and_nothing_changes(world, client):
    from tenants.models import Membership

    sign_in(client, world.a.developer)
    tenant_page = text(client.get(reverse("tenant", args=[world.a.tenant.slug])))
    assert 'id="member-add"' not in tenant_page, "a developer is not offered the form"
    before = Membership.objects.using("owner").count()
    response = member_add(client, world.a.tenant, world.outsider.username, role="tenant_admin")
    assert response.status_code == 403
    assert f"Your role in {world.a.tenant.slug} does not allow this." in text(response)
    assert membership(world.a.tenant, world.outsider) is None
    assert Membership.objects.using("owner").count() == before
    assert not events("membership.grant").exists()
    denial = events("request.denied", actor_name=world.a.developer.username).get()
    assert (denial.tenant, denial.data["status"]) == (world.a.tenant.slug, 403)


def test_a_member_of_the_other_tenant_gets_404_and_nothing_changes(world, client):
    sign_in(client, world.b.admin)
    response = member_add(client, world.a.tenant, world.outsider.username)
    assert response.status_code == 404
    assert membership(world.a.tenant, world.outsider) is None
    assert client.get(reverse("tenant", args=[world.a.tenant.slug])).status_code == 404
    denial = events("request.denied", actor_name=world.b.admin.username).first()
    assert denial is not None and denial.data["requested_tenant"] == world.a.tenant.slug


# Tokens --------------------------------------------------------------------------------


@pytest.mark.embedded
def test_issuing_a_token_shows_the_plaintext_once_and_a_reload_never_shows_it_again(world, client):
    from tenants.models import ApiToken

    sign_in(client, world.a.developer)
    response = client.post(reverse("tenant-token-issue", args=[world.a.tenant.slug]),
                           {"name": "laptop", "expires_in_days": "30", "service_account": ""})
    assert response.status_code == 200, text(response)
    match = re.search(r'<pre id="issued-token">(nct_[^<]+)</pre>', text(response))
    assert match, "the new token is shown"
    plaintext = match.group(1)
    token = ApiToken.objects.using("owner").get(tenant=world.a.tenant, name="laptop")
    assert token.user_id == world.a.developer.pk
    assert plaintext not in token.key_hash

    reloaded = text(client.get(reverse("tenant", args=[world.a.tenant.slug])))
    assert plaintext not in reloaded
    assert 'id="issued-token"' not in reloaded
    assert f"<code>{token.public_id}</code>" in reloaded

    api = Client(HTTP_AUTHORIZATION=f"Bearer {plaintext}")
    me = api.get("/api/v1/me")
    assert me.status_code == 200, me.content


# Audit page ----------------------------------------------------------------------------


def test_the_tenant_audit_page_lists_events_for_the_tenants_auditor(world, client):
    admin = sign_in(Client(), world.a.admin)
    assert member_add(admin, world.a.tenant, world.outsider.username).status_code == 302

    sign_in(client, world.a.auditor)
    tenant_page = text(client.get(reverse("tenant", args=[world.a.tenant.slug])))
    assert reverse("tenant-audit", args=[world.a.tenant.slug]) in tenant_page
    response = client.get(reverse("tenant-audit", args=[world.a.tenant.slug]))
    assert response.status_code == 200
    body = text(response)
    rows = re.search(r'<table class="grid" id="audit-events">(.*?)</table>', body, re.S).group(1)
    assert "membership.grant" in rows
    assert world.a.admin.username in rows
    assert "No events match." not in rows


def test_the_tenant_audit_page_shows_no_other_tenants_events(world, client):
    assert member_add(sign_in(Client(), world.b.admin), world.b.tenant, world.outsider.username).status_code == 302
    sign_in(client, world.a.auditor)
    rows = re.search(r'<table class="grid" id="audit-events">(.*?)</table>',
                     text(client.get(reverse("tenant-audit", args=[world.a.tenant.slug]))), re.S).group(1)
    assert world.b.tenant.slug not in rows
    assert "No events match." in rows


def test_a_developer_cannot_open_the_tenant_audit_page(world, client):
    sign_in(client, world.a.developer)
    tenant_page = text(client.get(reverse("tenant", args=[world.a.tenant.slug])))
    assert reverse("tenant-audit", args=[world.a.tenant.slug]) not in tenant_page
    response = client.get(reverse("tenant-audit", args=[world.a.tenant.slug]))
    assert response.status_code == 403
    assert "Your role here does not include the audit trail." in text(response)
