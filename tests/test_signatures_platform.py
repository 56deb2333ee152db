"""The bad inputs of signing, refused by the platform itself (through the API), on model
directories uploaded as archives and on certificate-mode bundles from an enterprise CA."""

import hashlib
import io
from datetime import UTC, datetime, timedelta

import pytest

from workflows import signing
from workflows.archive import pack_directory
from workflows.models import Artifact, Verification

from tests.support.clients import issue_token
from .test_api import assert_error
from .test_signing import SIGNER_EMAIL, make_ca, make_leaf
from tests.support.governance import put_governed


NOW = datetime.now(UTC)


@pytest.fixture
def developer(world, api):
    return api(issue_token(world.a.developer, world.a.tenant))


@pytest.fixture
def pki():
    root = make_ca("Acme Bank Root CA", not_before=NOW - timedelta(days=30), not_after=NOW + timedelta(days=3650))
    intermediate = make_ca("Acme Bank Code Signing CA", issuer=root, not_before=NOW - timedelta(days=30),
                           not_after=NOW + timedelta(days=3650))
    return root, intermediate


def push_directory(client, directory, name="scorer"):
    archive = io.BytesIO()
    pack_directory(directory, archive)
    data = archive.getvalue()
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    response = client.client.generic(
        "PUT", f"/api/v1/tenants/acme-bank/artifacts/{name}/?digest={digest}&kind=model&region=eu", data=data,
        content_type="application/x-tar", **client.headers)
    assert response.status_code == 201, response.content
    assert response.json()["layout"] == "directory"
    return digest


def attach(client, digest, bundle, name="scorer"):
    return client.client.generic("POST", f"/api/v1/tenants/acme-bank/artifacts/{name}/{digest}/signatures/",
                                 data=bundle.encode(), content_type="application/json", **client.headers)


def trust_key(world, api, public_pem):
    put_governed(api, world.a, "/api/v1/tenants/acme-bank/trust/", {"public_keys": {"release": public_pem.decode()}})


def trust_ca(world, api, root, identities=(SIGNER_EMAIL,)):
    put_governed(api, world.a, "/api/v1/tenants/acme-bank/trust/", {
        "ca_roots": [root.pem.decode()], "allowed_identities": list(identities)})


def test_a_signed_model_directory_uploaded_as_an_archive_verifies(world, api, developer, model_dir):
    private_pem, public_pem = signing.generate_key_pair()
    trust_key(world, api, public_pem)
    bundle = signing.sign_path(model_dir, private_key_pem=private_pem, name="scorer")
    response = attach(developer, push_directory(developer, model_dir), bundle)
    assert response.status_code == 201, response.content
    assert response.json()["verification"]["reason"].startswith("Signed by key release over 5 files")


@pytest.mark.parametrize("change, reason", [
    ("extra", "backdoor.py is not covered by the signature"),
    ("removed", "missing"),
    ("renamed", "renamed"),
])
def test_a_changed_model_directory_is_refused_with_the_file_named(world, api, developer, model_dir, change, reason):
    private_pem, public_pem = signing.generate_key_pair()
    trust_key(world, api, public_pem)
    bundle = signing.sign_path(model_dir, private_key_pem=private_pem, name="scorer")
    if change == "extra":
        (model_dir / "backdoor.py").write_text("import os\n")
    elif change == "removed":
        (model_dir / "config.json").unlink()
    else:
        (model_dir / "config.json").rename(model_dir / "generation_config.json")
    body = assert_error(attach(developer, push_directory(developer, model_dir), bundle), 422,
                        "signature_not_verified")
    assert reason in body["detail"]
    assert not Verification.objects.using("owner").filter(verified=True).exists()


def test_a_directory_signed_under_its_local_name_is_refused_naming_both(world, api, developer, model_dir):
    # model-signing names the subject after the directory it hashed; the artifact is called scorer.
    private_pem, public_pem = signing.generate_key_pair()
    trust_key(world, api, public_pem)
    digest = push_directory(developer, model_dir)

    unnamed = attach(developer, digest, signing.sign_path(model_dir, private_key_pem=private_pem))
    body = assert_error(unnamed, 422, "signature_not_verified")
    assert body["detail"] == ("The signature's subject is named acme-credit-scorer, not scorer, "
                              "the artifact it is attached to.")

    named = attach(developer, digest, signing.sign_path(model_dir, private_key_pem=private_pem, name="scorer"))
    assert named.status_code == 201, named.content
    verifications = Verification.objects.using("owner").order_by("id").values_list("verified", flat=True)
    assert list(verifications) == [False, True]


def sign_with_leaf(path, leaf, intermediate):
    return signing.sign_path(path, private_key_pem=leaf.key_pem, certificate_pem=leaf.pem,
                             chain_pem=[intermediate.pem], name="scorer")


def test_a_bundle_from_the_enterprise_ca_verifies_with_the_signers_identity(world, api, developer, model_dir, pki):
    root, intermediate = pki
    trust_ca(world, api, root)
    leaf = make_leaf(intermediate, not_before=NOW - timedelta(hours=1), not_after=NOW + timedelta(days=1))
    response = attach(developer, push_directory(developer, model_dir), sign_with_leaf(model_dir, leaf, intermediate))
    assert response.status_code == 201, response.content
    assert response.json()["verification"]["mode"] == "certificate"
    assert response.json()["verification"]["identity"] == SIGNER_EMAIL


@pytest.mark.parametrize("leaf_options, reason", [
    ({"not_before": NOW - timedelta(days=2), "not_after": NOW - timedelta(days=1)}, "expired"),
    ({"not_before": NOW + timedelta(days=1), "not_after": NOW + timedelta(days=2)}, "not yet valid"),
    ({"code_signing": False}, "code-signing"),
])
def test_a_certificate_the_platform_must_not_accept_is_refused(world, api, developer, model_dir, pki, leaf_options,
                                                              reason):
    root, intermediate = pki
    trust_ca(world, api, root)
    options = {"not_before": NOW - timedelta(hours=1), "not_after": NOW + timedelta(days=1), **leaf_options}
    leaf = make_leaf(intermediate, **options)
    body = assert_error(attach(developer, push_directory(developer, model_dir), sign_with_leaf(model_dir, leaf, intermediate)),
                        422, "signature_not_verified")
    assert reason in body["detail"]


def test_an_identity_the_tenant_does_not_allow_is_refused(world, api, developer, model_dir, pki):
    root, intermediate = pki
    trust_ca(world, api, root, identities=["someone-else@acme-bank.example"])
    leaf = make_leaf(intermediate, not_before=NOW - timedelta(hours=1), not_after=NOW + timedelta(days=1))
    body = assert_error(attach(developer, push_directory(developer, model_dir), sign_with_leaf(model_dir, leaf, intermediate)),
                        422, "signature_not_verified")
    assert SIGNER_EMAIL in body["detail"] and "not" in body["detail"]
    assert Artifact.objects.using("owner").count() == 1
