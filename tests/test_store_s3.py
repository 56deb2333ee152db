"""The S3 artifact store (``workflows.store.S3Store``), end to end through the API.

There is no real S3 here. The bucket lives in a FAKE S3 server: moto's standalone
``moto_server``, run as a subprocess on 127.0.0.1, which speaks S3's HTTP wire protocol.
The platform reaches it with boto3 over HTTP exactly as it would reach AWS, MinIO or Ceph;
nothing in this process is patched. The tests look into the bucket with their own client,
and use it to change an object behind the platform's back.
"""

import hashlib
import os
import secrets
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import boto3
import pytest
from django.conf import settings as django_settings

from workflows import signing
from workflows.models import Artifact, Verification
from workflows.store import S3Store, StoredBytesChanged, get_store

from tests.support.clients import issue_token
from .test_api import assert_error
from tests.support.governance import put_governed


ROOT = Path(__file__).resolve().parent.parent
REGION = "eu-central-1"
BLOB = os.urandom(3 * 1024 * 1024 + 17)
DIGEST = "sha256:" + hashlib.sha256(BLOB).hexdigest()


def key_of(digest: str) -> str:
    hexdigest = digest.split(":")[1]
    return f"artifacts/sha256/{hexdigest[:2]}/{hexdigest}"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="session")
def fake_s3_server(tmp_path_factory):
    """The FAKE S3 server's endpoint URL: moto_server in a subprocess on 127.0.0.1."""
    port = _free_port()
    log_path = tmp_path_factory.mktemp("fake-s3") / "moto_server.log"
    command = [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                pytest.fail(f"The fake S3 server did not start:\n{log_path.read_text(errors='replace')[-3000:]}")
            time.sleep(0.1)
    yield f"http://127.0.0.1:{port}"
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()


class FakeBucket:
    """A fresh bucket in the fake S3 server, seen through the test's own client."""

    def __init__(self, endpoint_url: str):
        self.name = f"neocloud-{uuid.uuid4().hex[:16]}"
        self.client = boto3.session.Session().client(
            "s3", endpoint_url=endpoint_url, region_name=REGION,
            aws_access_key_id="fake-access-key", aws_secret_access_key="fake-secret-key")
        self.client.create_bucket(Bucket=self.name, CreateBucketConfiguration={"LocationConstraint": REGION})
        # Every PUT of a key makes a version, so a skipped re-upload is visible.
        self.client.put_bucket_versioning(Bucket=self.name, VersioningConfiguration={"Status": "Enabled"})

    def keys(self) -> list[str]:
        listed = self.client.list_objects_v2(Bucket=self.name)
        return sorted(item["Key"] for item in listed.get("Contents", []))

    def versions(self, key: str) -> int:
        listed = self.client.list_object_versions(Bucket=self.name, Prefix=key)
        return len([v for v in listed.get("Versions", []) if v["Key"] == key])

    def read(self, key: str) -> bytes:
        return self.client.get_object(Bucket=self.name, Key=key)["Body"].read()


@pytest.fixture
def fake_s3_bucket(fake_s3_server, settings):
    """The platform configured for ``S3Store`` on a fresh bucket in the fake S3 server."""
    bucket = FakeBucket(fake_s3_server)
    settings.ARTIFACT_STORE = "workflows.store.S3Store"
    settings.ARTIFACT_S3_BUCKET = bucket.name
    settings.ARTIFACT_S3_ENDPOINT_URL = fake_s3_server
    settings.ARTIFACT_S3_REGION = REGION
    settings.ARTIFACT_S3_ACCESS_KEY_ID = "fake-access-key"
    settings.ARTIFACT_S3_SECRET_ACCESS_KEY = "fake-secret-key"
    settings.ARTIFACT_S3_PREFIX = "artifacts/"
    return bucket


def local_files() -> list[Path]:
    """Whatever the store left on local disk: nothing, when the bytes live in S3."""
    root = Path(django_settings.DATA_DIR) / "artifacts"
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


@pytest.fixture
def developer(world, api):
    return api(issue_token(world.a.developer, world.a.tenant))


def upload(client, data=BLOB, *, name="weights", digest=DIGEST, kind="model"):
    url = f"/api/v1/tenants/acme-bank/artifacts/{name}/?digest={digest}&kind={kind}&region=eu"
    return client.client.generic("PUT", url, data=data, content_type="application/octet-stream", **client.headers)


def download(client, digest=DIGEST, name="weights") -> bytes:
    response = client.get(f"/api/v1/tenants/acme-bank/artifacts/{name}/{digest}/content")
    assert response.status_code == 200
    assert response["ETag"] == f'"{digest}"'
    return b"".join(response.streaming_content)


def test_an_upload_lands_in_the_bucket_under_its_digest_and_downloads_byte_identical(fake_s3_bucket, developer):
    response = upload(developer)
    assert response.status_code == 201, response.content
    assert response.json()["digest"] == DIGEST and response.json()["size_bytes"] == len(BLOB)
    assert fake_s3_bucket.keys() == [key_of(DIGEST)]
    assert fake_s3_bucket.read(key_of(DIGEST)) == BLOB
    assert download(developer) == BLOB
    assert Artifact.objects.using("owner").get().stored_at is not None
    assert local_files() == []  # the staging file went to S3 and was removed


def test_the_same_bytes_under_another_name_are_not_uploaded_again(fake_s3_bucket, developer):
    assert upload(developer).status_code == 201
    assert upload(developer, name="weights-copy").status_code == 201
    assert fake_s3_bucket.keys() == [key_of(DIGEST)] and fake_s3_bucket.versions(key_of(DIGEST)) == 1
    assert download(developer, name="weights-copy") == BLOB


def test_a_large_upload_goes_to_s3_in_parts(fake_s3_bucket, developer, monkeypatch):
    monkeypatch.setattr(S3Store, "MULTIPART_BYTES", 5 * 1024 * 1024)  # S3's smallest part
    large = os.urandom(11 * 1024 * 1024)
    digest = "sha256:" + hashlib.sha256(large).hexdigest()
    assert upload(developer, large, name="large", digest=digest).status_code == 201
    head = fake_s3_bucket.client.head_object(Bucket=fake_s3_bucket.name, Key=key_of(digest))
    assert head["ETag"].endswith('-3"')  # S3 marks a multipart object's ETag with its part count
    assert download(developer, digest, name="large") == large
    with get_store().local_copy(digest) as path:
        assert path.read_bytes() == large


def metrics(payload: bytes) -> dict:
    return {"data": payload, "name": "eval-scores", "kind": "metrics",
            "digest": "sha256:" + hashlib.sha256(payload).hexdigest()}


@pytest.mark.parametrize("arguments, max_bytes, status, code", [
    ({"digest": "sha256:" + "0" * 64}, 10 * 1024**3, 400, "digest_mismatch"),
    ({}, 1024 * 1024, 413, "too_large"),
    (metrics(b'{"auc": "high"}'), 10 * 1024**3, 400, "invalid_metrics"),
])
def test_a_refused_upload_leaves_nothing_in_the_bucket(fake_s3_bucket, developer, settings, arguments, max_bytes,
                                                       status, code):
    settings.ARTIFACT_MAX_BYTES = max_bytes
    assert_error(upload(developer, **arguments), status, code)
    assert fake_s3_bucket.keys() == []
    assert not Artifact.objects.using("owner").exists() and local_files() == []


@pytest.fixture
def trusted_key(world, api):
    """acme-bank trusts the key 'ci-2026'; returns its private key."""
    private_pem, public_pem = signing.generate_key_pair()
    response = put_governed(api, world.a, "/api/v1/tenants/acme-bank/trust/",
                            {"public_keys": {"ci-2026": public_pem.decode()}})
    assert response.status_code == 200, response.content
    return private_pem


def sign_and_attach(client, private_pem, tmp_path):
    model = tmp_path / "model.safetensors"
    model.write_bytes(BLOB)
    bundle = signing.sign_path(model, private_key_pem=private_pem, name="weights")
    return client.client.generic("POST", f"/api/v1/tenants/acme-bank/artifacts/weights/{DIGEST}/signatures/",
                                 data=bundle.encode() if isinstance(bundle, str) else bundle,
                                 content_type="application/json", **client.headers)


def test_a_signature_on_an_s3_stored_artifact_verifies(fake_s3_bucket, developer, trusted_key, tmp_path):
    assert upload(developer).status_code == 201
    response = sign_and_attach(developer, trusted_key, tmp_path)
    assert response.status_code == 201, response.content
    verification = response.json()["verification"]
    assert (verification["verified"], verification["mode"], verification["identity"]) == (True, "key", "ci-2026")
    assert local_files() == []  # the verification copy was removed


def test_bytes_changed_in_the_bucket_fail_verification_with_the_reason(fake_s3_bucket, developer, trusted_key,
                                                                       tmp_path):
    assert upload(developer).status_code == 201
    altered = bytes([BLOB[0] ^ 1]) + BLOB[1:]  # one bit, same length
    fake_s3_bucket.client.put_object(Bucket=fake_s3_bucket.name, Key=key_of(DIGEST), Body=altered)
    body = assert_error(sign_and_attach(developer, trusted_key, tmp_path), 422, "signature_not_verified")
    actual = "sha256:" + hashlib.sha256(altered).hexdigest()
    reason = (f"The artifact store's bytes for {DIGEST} hash to {actual}: "
              f"s3://{fake_s3_bucket.name}/{key_of(DIGEST)} was changed after upload.")
    assert body["detail"] == reason and body["verification"]["verified"] is False
    assert Verification.objects.using("owner").get().reason == reason
    with pytest.raises(StoredBytesChanged):
        with get_store().local_copy(DIGEST):
            pass
    assert local_files() == []


def test_a_missing_object_reads_as_a_missing_file(fake_s3_bucket):
    store = get_store()
    assert not store.exists(DIGEST)
    with pytest.raises(FileNotFoundError):
        store.open(DIGEST)
    with pytest.raises(FileNotFoundError):
        with store.local_copy(DIGEST):
            pass


# Configuration, checked the way production starts: manage.py in a fresh process -------

@pytest.fixture
def production(tmp_path):
    from audit.keys import Keyring, read_kek, write_new_kek

    kek, keyring = tmp_path / "kek", tmp_path / "keyring.json"
    write_new_kek(kek)
    Keyring.create(keyring, read_kek(kek))
    return {"NEOCLOUD_ENV": "production", "SECRET_KEY": secrets.token_urlsafe(64),
            "DATABASE_URL": "postgresql://neocloud_app@db.internal:5432/neocloud",
            "ALLOWED_HOSTS": "neocloud.example.org", "PLATFORM_KEK_FILE": str(kek),
            "PLATFORM_KEYRING_FILE": str(keyring), "ARTIFACT_STORE": "workflows.store.S3Store"}


def manage(*args, env):
    clean = {k: v for k, v in os.environ.items()
             if not k.endswith("DATABASE_URL") and k not in ("SECRET_KEY", "ALLOWED_HOSTS", "NEOCLOUD_ENV")
             and not k.startswith("ARTIFACT_")}
    return subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env={**clean, **env},
                          capture_output=True, text=True, timeout=120)


def test_the_s3_store_without_a_bucket_stops_start_up(production):
    result = manage("check", env=production)
    assert result.returncode == 2
    assert result.stderr == ("neocloud: ARTIFACT_S3_BUCKET must be set when ARTIFACT_STORE is "
                             "workflows.store.S3Store.\n")


def test_the_s3_store_reads_its_secret_from_a_file_and_passes_deploy_checks(production, tmp_path):
    secret_file = tmp_path / "s3-secret"
    secret_file.write_text("secret-from-a-file\n")
    env = {**production, "ARTIFACT_S3_BUCKET": "models", "ARTIFACT_S3_ENDPOINT_URL": "https://minio.internal:9000",
           "ARTIFACT_S3_REGION": REGION, "ARTIFACT_S3_ACCESS_KEY_ID": "neocloud",
           "ARTIFACT_S3_SECRET_ACCESS_KEY_FILE": str(secret_file)}
    result = manage("check", "--deploy", "--fail-level", "WARNING", env=env)
    assert result.returncode == 0, result.stderr
    script = ("from django.conf import settings; from workflows.store import get_store; s = get_store(); "
              "print(s.bucket, s.key_for('sha256:' + 'ab' * 32), s.client.meta.endpoint_url, "
              "settings.ARTIFACT_S3_SECRET_ACCESS_KEY)")
    shown = manage("shell", "--no-imports", "-c", script, env=env)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.split() == ["models", f"artifacts/sha256/ab/{'ab' * 32}", "https://minio.internal:9000",
                                    "secret-from-a-file"]
