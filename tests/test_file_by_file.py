"""Model directories uploaded file by file, then assembled by the server into the same
deterministic archive the CLI would have uploaded whole."""

import hashlib
import io

import pytest

from workflows import signing
from workflows.archive import pack_directory
from workflows.models import Artifact, Blob

from tests.support.clients import issue_token
from .test_api import assert_error
from tests.support.governance import put_governed



def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def archive_digest(directory) -> str:
    out = io.BytesIO()
    pack_directory(directory, out)
    return sha256(out.getvalue())


def put_blob(client, data: bytes, digest=None, tenant="acme-bank"):
    return client.client.generic("PUT", f"/api/v1/tenants/{tenant}/blobs/{digest or sha256(data)}", data=data,
                                 content_type="application/octet-stream", **client.headers)


def files_of(directory) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def assemble(client, files: dict[str, str], digest, name="scorer"):
    return client.post(f"/api/v1/tenants/acme-bank/artifacts/{name}/?digest={digest}&kind=model&region=eu",
                       {"files": files})


@pytest.fixture
def developer(world, api):
    return api(issue_token(world.a.developer, world.a.tenant))


@pytest.mark.embedded
def test_a_directory_uploaded_file_by_file_is_assembled_and_its_signature_verifies(world, api, developer, model_dir):
    private_pem, public_pem = signing.generate_key_pair()
    put_governed(api, world.a, "/api/v1/tenants/acme-bank/trust/", {"public_keys": {"release": public_pem.decode()}})
    manifest = {}
    for name, data in files_of(model_dir).items():
        assert put_blob(developer, data).status_code == 201
        manifest[name] = sha256(data)
    digest = archive_digest(model_dir)
    response = assemble(developer, manifest, digest)
    assert response.status_code == 201, response.content
    assert (response.json()["digest"], response.json()["layout"]) == (digest, "directory")
    bundle = signing.sign_path(model_dir, private_key_pem=private_pem, name="scorer")
    attached = developer.client.generic("POST", f"/api/v1/tenants/acme-bank/artifacts/scorer/{digest}/signatures/",
                                        data=bundle.encode(), content_type="application/json", **developer.headers)
    assert attached.status_code == 201, attached.content
    assert Blob.objects.using("owner").count() == len(manifest)


def test_a_file_uploaded_by_another_tenant_cannot_be_assembled(world, api, developer, model_dir):
    files = files_of(model_dir)
    theirs = api(issue_token(world.b.developer, world.b.tenant))
    secret = files.pop("config.json")
    assert put_blob(theirs, secret, tenant="st-mary-hospital").status_code == 201
    for data in files.values():
        put_blob(developer, data)
    manifest = {name: sha256(data) for name, data in files.items()} | {"config.json": sha256(secret)}
    body = assert_error(assemble(developer, manifest, archive_digest(model_dir)), 400, "invalid")
    assert body["fields"] == {"files.config.json": [
        f"No uploaded file with digest {sha256(secret)} in acme-bank; upload it first."]}
    assert not Artifact.objects.using("owner").exists()


@pytest.mark.parametrize("path", ["../escape", "/etc/passwd", "a/../../b", "./config.json"])
def test_a_path_outside_the_directory_is_refused(developer, path):
    data = b"weights"
    put_blob(developer, data)
    body = assert_error(assemble(developer, {path: sha256(data)}, sha256(b"x")), 400, "invalid")
    assert "is not a plain relative path inside the directory" in body["detail"]


def test_a_path_under_a_file_is_refused(developer):
    put_blob(developer, b"w")
    body = assert_error(assemble(developer, {"a": sha256(b"w"), "a/b": sha256(b"w")}, sha256(b"x")), 400, "invalid")
    assert body["detail"] == "a/b lies under a path that is itself a file."


def test_an_assembled_directory_must_hash_to_the_declared_digest(developer, model_dir):
    manifest = {}
    for name, data in files_of(model_dir).items():
        put_blob(developer, data)
        manifest[name] = sha256(data)
    body = assert_error(assemble(developer, manifest, "sha256:" + "0" * 64), 400, "digest_mismatch")
    assert body["detail"].endswith(f"not the declared sha256:{'0' * 64}.")
    assert not Artifact.objects.using("owner").exists()


def test_a_file_whose_bytes_do_not_match_its_digest_is_refused(developer):
    body = assert_error(put_blob(developer, b"weights", digest=sha256(b"other")), 400, "digest_mismatch")
    assert body["fields"]["content"][0].startswith("The bytes hash to ")
    assert not Blob.objects.using("owner").exists()
