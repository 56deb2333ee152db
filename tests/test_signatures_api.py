"""Signatures through the API: the tenant's trust configuration decides, every verification
is stored with its reason, and bad input is refused with nothing stored as verified."""

import hashlib
import json
import os

import pytest

from audit.models import AuditEvent
from workflows import signing
from workflows.models import Signature, TrustConfiguration, Verification

from tests.support.clients import issue_token
from .test_api import assert_error
from tests.support.governance import put_governed



@pytest.fixture
def keys():
    return {"ci": signing.generate_key_pair(), "other": signing.generate_key_pair()}


@pytest.fixture
def trusted(world, api, keys):
    """acme-bank trusts the key 'ci-2026'."""
    response = put_governed(api, world.a, "/api/v1/tenants/acme-bank/trust/",
                            {"public_keys": {"ci-2026": keys["ci"][1].decode()}})
    assert response.status_code == 200, response.content
    return response.json()


@pytest.fixture
def model_file(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(os.urandom(2 * 1024 * 1024))
    return path


def push(client, path, name="weights"):
    data = path.read_bytes()
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    response = client.client.generic(
        "PUT", f"/api/v1/tenants/acme-bank/artifacts/{name}/?digest={digest}&kind=model&region=eu", data=data,
        content_type="application/octet-stream", **client.headers)
    assert response.status_code == 201, response.content
    return digest


def sign(path, private_pem, name="weights"):
    """A key bundle whose subject is named as the artifact it will be attached to."""
    return signing.sign_path(path, private_key_pem=private_pem, name=name)


def attach(client, digest, bundle, name="weights"):
    body = bundle if isinstance(bundle, bytes) else bundle.encode()
    return client.client.generic("POST", f"/api/v1/tenants/acme-bank/artifacts/{name}/{digest}/signatures/",
                                 data=body, content_type="application/json", **client.headers)


@pytest.fixture
def developer(world, api):
    return api(issue_token(world.a.developer, world.a.tenant))


@pytest.mark.embedded
def test_trust_configuration_is_managed_by_tenant_admins_and_audited(trusted, world, api, keys):
    assert trusted["revision"] == 1 and list(trusted["public_keys"]) == ["ci-2026"]
    assert_error(api(world.a.developer).put("/api/v1/tenants/acme-bank/trust/", {"public_keys": {}}),
                 403, "permission_denied")
    [event] = AuditEvent.objects.using("owner").filter(action="trust_config.update")
    assert list(event.data["public_keys"]) == ["ci-2026"] and "BEGIN PUBLIC KEY" not in event.canonical


@pytest.mark.parametrize("body, field", [
    ({"public_keys": {"k": "not a pem"}}, "public_keys.k"),
    ({"ca_roots": ["-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----"]}, "ca_roots[0]"),
    ({"sigstore_identities": [["only-identity"]]}, "sigstore_identities"),
])
def test_a_malformed_trust_entry_names_its_field(world, api, body, field):
    response = api(world.a.admin).put("/api/v1/tenants/acme-bank/trust/", body)
    assert assert_error(response, 400, "invalid")["fields"] == {field: [response.json()["detail"]]}
    assert not TrustConfiguration.objects.using("owner").exists()


@pytest.mark.embedded
def test_a_signed_file_verifies_and_the_verification_is_stored_and_audited(trusted, developer, keys, model_file):
    digest = push(developer, model_file)
    bundle = sign(model_file, keys["ci"][0])
    response = attach(developer, digest, bundle)
    assert response.status_code == 201, response.content
    verification = response.json()["verification"]
    assert (verification["verified"], verification["mode"], verification["identity"]) == (True, "key", "ci-2026")
    stored = Verification.objects.using("owner").get()
    assert stored.verified and stored.trust_revision == 1 and stored.performed_by == "acme-bank-developer"
    [event] = AuditEvent.objects.using("owner").filter(action="signature.verify")
    assert event.outcome == "success" and event.data["identity"] == "ci-2026"
    detail = developer.get(f"/api/v1/tenants/acme-bank/artifacts/weights/{digest}/").json()
    assert detail["signatures"][0]["latest_verification"]["verified"] is True


def test_the_wrong_key_is_refused_with_its_reason_and_kept_on_record(trusted, developer, keys, model_file):
    digest = push(developer, model_file)
    response = attach(developer, digest, sign(model_file, keys["other"][0]))
    body = assert_error(response, 422, "signature_not_verified")
    assert body["verification"]["verified"] is False and body["detail"] == body["verification"]["reason"]
    assert not Verification.objects.using("owner").filter(verified=True).exists()
    assert Signature.objects.using("owner").count() == 1
    [event] = AuditEvent.objects.using("owner").filter(action="signature.verify")
    assert event.outcome == "failed" and event.data["reason"] == body["detail"]


def test_a_bundle_for_another_digest_is_refused(trusted, developer, keys, model_file, tmp_path):
    other = tmp_path / "other.bin"
    other.write_bytes(os.urandom(1024))
    digest = push(developer, model_file)
    # Named as the artifact, but signed over other bytes: its subject digest is not the artifact's.
    response = attach(developer, digest, sign(other, keys["ci"][0]))
    body = assert_error(response, 422, "signature_not_verified")
    assert body["verification"]["verified"] is False
    assert body["detail"] == ("The artifact does not match its signature: "
                              "the file's content differs from the signed content.")


@pytest.mark.parametrize("subject, named", [("scorer-v1", "scorer-v1"), (None, "model.safetensors")])
def test_a_bundle_whose_subject_names_another_artifact_is_refused_saying_both_names(
        trusted, developer, keys, model_file, subject, named):
    # subject None: model-signing's own name for what it hashed, the local file name.
    digest = push(developer, model_file)
    bundle = signing.sign_path(model_file, private_key_pem=keys["ci"][0], name=subject)
    reason = f"The signature's subject is named {named}, not weights, the artifact it is attached to."

    body = assert_error(attach(developer, digest, bundle), 422, "signature_not_verified")
    assert body["detail"] == body["verification"]["reason"] == reason
    assert body["verification"]["verified"] is False
    again = assert_error(developer.post(f"/api/v1/tenants/acme-bank/artifacts/weights/{digest}/verify/"), 422,
                         "signature_not_verified")
    assert again["verifications"][0]["reason"] == reason
    assert not Verification.objects.using("owner").filter(verified=True).exists()
    events = AuditEvent.objects.using("owner").filter(action="signature.verify")
    assert [(event.outcome, event.data["reason"]) for event in events] == [("failed", reason)] * 2


def test_the_bundle_verifies_on_the_artifact_its_subject_names(trusted, developer, keys, model_file):
    bundle = sign(model_file, keys["ci"][0], name="scorer-v1")
    digest = push(developer, model_file)
    assert_error(attach(developer, digest, bundle), 422, "signature_not_verified")

    # The same bytes registered under the name the signature describes.
    assert push(developer, model_file, name="scorer-v1") == digest
    response = attach(developer, digest, bundle, name="scorer-v1")
    assert response.status_code == 201, response.content
    assert response.json()["verification"]["reason"] == "Signed by key ci-2026 over 1 file."


def test_malformed_bundle_json_is_refused_and_nothing_is_stored(trusted, developer, model_file):
    digest = push(developer, model_file)
    assert_error(attach(developer, digest, "{not json"), 400, "malformed_bundle")
    assert_error(attach(developer, digest, json.dumps({"hello": "world"})), 400, "malformed_bundle")
    assert not Signature.objects.using("owner").exists() and not Verification.objects.using("owner").exists()


def test_a_bundle_over_the_size_limit_is_a_413(trusted, developer, model_file, settings):
    settings.SIGNATURE_BUNDLE_MAX_BYTES = 2048
    digest = push(developer, model_file)
    body = json.dumps({"mediaType": "application/vnd.dev.sigstore.bundle.v0.3+json", "pad": "x" * 4096})
    assert_error(attach(developer, digest, body), 413, "bundle_too_large")
    assert not Signature.objects.using("owner").exists()


def test_reverification_uses_todays_trust_configuration(trusted, world, api, developer, keys, model_file):
    digest = push(developer, model_file)
    attach(developer, digest, sign(model_file, keys["ci"][0]))
    verify_url = f"/api/v1/tenants/acme-bank/artifacts/weights/{digest}/verify/"
    assert developer.post(verify_url).json()["verified"] is True
    api(world.a.admin).put("/api/v1/tenants/acme-bank/trust/", {"public_keys": {}})  # the key is withdrawn
    body = assert_error(developer.post(verify_url), 422, "signature_not_verified")
    assert body["verifications"][0]["trust_revision"] == 2
    # Withdrawing the key revoked the standing verification at once; re-verifying fails too.
    rows = list(Verification.objects.using("owner").order_by("id").values_list("verified", "reason"))
    assert [verified for verified, _ in rows] == [True, True, False, False]
    assert rows[2][1].startswith("Revoked: ci-2026 was removed from the trust configuration")


def test_only_developers_attach_signatures(trusted, world, api, keys, developer, model_file):
    digest = push(developer, model_file)
    auditor = api(issue_token(world.a.auditor, world.a.tenant))
    response = attach(auditor, digest, sign(model_file, keys["ci"][0]))
    assert_error(response, 403, "permission_denied")
    assert not Signature.objects.using("owner").exists()
