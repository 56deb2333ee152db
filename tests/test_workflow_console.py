"""The console's workflow, artifact and trust pages, and the browser journey: a version with a
verified and an unverified artifact."""

import hashlib
import os

import pytest

from audit.models import AuditEvent
from workflows import signing
from workflows.models import TrustConfiguration

from tests.support.browser import sign_in_with_password

from tests.support.clients import issue_token, sign_in

from tests.support.otp import current_totp
from tests.support.governance import confirm_proposal, put_governed


SPEC = """
name: fraud-detector
steps:
  - name: train
    command: [python, train.py]
"""


def pipeline_registers_a_version(world, api, tmp_path):
    """What a CI pipeline does: two signed artifacts (one by a key the tenant trusts, one not),
    then a version that references both."""
    from tenants.services import gpu_flavor_create  # noqa: F401  (spec needs no GPU)

    trusted, untrusted = signing.generate_key_pair(), signing.generate_key_pair()
    put_governed(api, world.a, "/api/v1/tenants/acme-bank/trust/", {"public_keys": {"ci-2026": trusted[1].decode()}})
    pipeline = api(issue_token(world.a.developer, world.a.tenant))
    digests = []
    for name, key in (("weights", trusted[0]), ("tokenizer", untrusted[0])):
        path = tmp_path / f"{name}.bin"
        path.write_bytes(os.urandom(256 * 1024))
        digest = "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
        assert pipeline.client.generic(
            "PUT", f"/api/v1/tenants/acme-bank/artifacts/{name}/?digest={digest}&kind=model&region=eu",
            data=path.read_bytes(), content_type="application/octet-stream", **pipeline.headers).status_code == 201
        pipeline.client.generic("POST", f"/api/v1/tenants/acme-bank/artifacts/{name}/{digest}/signatures/",
                                data=signing.sign_path(path, private_key_pem=key, name=name).encode(),
                                content_type="application/json", **pipeline.headers)
        digests.append(digest)
    response = pipeline.post("/api/v1/tenants/acme-bank/workflows/fraud-detector/versions/",
                             {"spec": SPEC, "artifacts": digests})
    assert response.status_code == 201, response.content


@pytest.mark.embedded
def test_version_page_shows_each_artifacts_signature_status(world, api, client, tmp_path):
    pipeline_registers_a_version(world, api, tmp_path)
    sign_in(client, world.a.auditor)
    page = client.get("/t/acme-bank/workflows/fraud-detector/v1/").content.decode()
    assert "✓ verified · ci-2026" in page
    assert 'data-state="not_verified"' in page
    artifacts = client.get("/t/acme-bank/artifacts/").content.decode()
    assert artifacts.count('data-state="verified"') == 1 and artifacts.count('data-state="not_verified"') == 1


def test_tenant_admin_adds_and_removes_a_trusted_key_in_the_console(world, client, api):
    _, public_pem = signing.generate_key_pair()
    sign_in(client, world.a.admin)
    response = client.post("/t/acme-bank/trust/", {"action": "add-key", "key_id": "release", "public_key": public_pem.decode()})
    assert response.status_code == 302
    assert "waits for a second tenant admin" in client.get(response.url).content.decode()
    confirm_proposal(api, world.a)  # adding a key loosens trust: the second admin confirms it
    assert list(TrustConfiguration.objects.using("owner").get().public_keys) == ["release"]
    client.post("/t/acme-bank/trust/", {"action": "remove-key", "key_id": "release"})
    assert TrustConfiguration.objects.using("owner").get().public_keys == {}
    assert AuditEvent.objects.using("owner").filter(action="trust_config.update").count() == 2


def test_a_bad_key_shows_the_error_next_to_the_field(world, client):
    sign_in(client, world.a.admin)
    response = client.post("/t/acme-bank/trust/", {"action": "add-key", "key_id": "bad", "public_key": "nope"})
    assert response.status_code == 400
    assert '<p class="field-error" id="key_public_key-error">Key bad is not a PEM public key.</p>' in response.content.decode()
    assert not TrustConfiguration.objects.using("owner").exists()


def test_a_developer_cannot_change_trust_and_the_refusal_is_recorded(world, client):
    _, public_pem = signing.generate_key_pair()
    sign_in(client, world.a.developer)
    page = client.get("/t/acme-bank/trust/").content.decode()
    assert 'id="add-key"' not in page
    response = client.post("/t/acme-bank/trust/", {"action": "add-key", "key_id": "mine", "public_key": public_pem.decode()})
    assert response.status_code == 403
    assert not TrustConfiguration.objects.using("owner").exists()
    assert AuditEvent.objects.using("owner").filter(action="request.denied", tenant="acme-bank").exists()


@pytest.mark.browser
def test_browser_journey_a_version_with_a_verified_and_an_unverified_artifact(world, api, live_server, open_page,
                                                                           tmp_path):
    pipeline_registers_a_version(world, api, tmp_path)
    page = open_page()
    sign_in_with_password(page, live_server.url, world.a.developer.username)
    page.fill("#id_otp_token", current_totp(world.a.developer))
    with page.expect_navigation():
        page.click("button:has-text('Verify')")
    page.click("#tenant-list >> text=acme-bank")
    page.click(".links >> text=Workflows")
    page.click("#workflows >> text=fraud-detector")
    page.click("#versions >> text=v1")
    page.locator("#version-digest").wait_for()
    weights = page.locator('#artifacts tr[data-artifact="weights"] .signature')
    tokenizer = page.locator('#artifacts tr[data-artifact="tokenizer"] .signature')
    assert weights.inner_text() == "✓ verified · ci-2026"
    assert tokenizer.get_attribute("data-state") == "not_verified"
    assert "ci-2026" not in tokenizer.inner_text()
