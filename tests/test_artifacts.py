"""The artifact store: streamed uploads hashed by the server, tenant-scoped downloads."""

import hashlib
import os
import socket
from pathlib import Path
from urllib.parse import urlparse

import pytest
from django.conf import settings

from audit.models import AuditEvent
from workflows.models import Artifact

from tests.support.clients import issue_token
from .test_api import assert_error


BLOB = os.urandom(3 * 1024 * 1024 + 17)  # a few MB: larger than the API's 1 MiB JSON body limit
DIGEST = "sha256:" + hashlib.sha256(BLOB).hexdigest()


def upload(client, data=BLOB, *, name="weights", digest=DIGEST, kind="model", region="eu", **extra):
    url = f"/api/v1/tenants/acme-bank/artifacts/{name}/?digest={digest}&kind={kind}&region={region}"
    return client.client.generic("PUT", url, data=data, content_type="application/octet-stream",
                                 **client.headers, **extra)


def store_files():
    root = Path(settings.DATA_DIR) / "artifacts" / "sha256"
    return sorted(p.name for p in root.rglob("*") if p.is_file()) if root.exists() else []


@pytest.fixture
def developer(world, api):
    return api(issue_token(world.a.developer, world.a.tenant))


@pytest.mark.embedded
def test_an_upload_is_hashed_by_the_server_stored_by_digest_and_audited(developer):
    response = upload(developer)
    assert response.status_code == 201, response.content
    assert response.json()["digest"] == DIGEST and response.json()["size_bytes"] == len(BLOB)
    assert DIGEST.split(":")[1] in store_files()
    artifact = Artifact.objects.using("owner").get()
    assert artifact.stored_at is not None and artifact.region == "eu"
    [event] = AuditEvent.objects.using("owner").filter(action="artifact.register")
    assert event.target_id == f"weights@{DIGEST}"


def test_the_same_bytes_again_return_the_existing_artifact(developer):
    upload(developer)
    again = upload(developer)
    assert again.status_code == 200
    assert Artifact.objects.using("owner").count() == 1


def test_a_digest_mismatch_is_refused_and_nothing_is_kept(developer):
    wrong = "sha256:" + "0" * 64
    body = assert_error(upload(developer, digest=wrong), 400, "digest_mismatch")
    assert body["detail"] == f"The bytes hash to {DIGEST}, not the declared {wrong}."
    assert not Artifact.objects.using("owner").exists() and store_files() == []


def test_an_upload_over_the_size_limit_is_a_413(developer, settings):
    settings.ARTIFACT_MAX_BYTES = 1024 * 1024
    body = assert_error(upload(developer), 413, "too_large")
    assert body["fields"] == {"content": [f"The upload is {len(BLOB)} bytes; the limit is {1024 * 1024}."]}
    assert store_files() == []


@pytest.mark.embedded
def test_a_truncated_upload_is_refused(world, live_server):
    token = issue_token(world.a.developer, world.a.tenant)
    url = urlparse(live_server.url)
    head = (f"PUT /api/v1/tenants/acme-bank/artifacts/weights/?digest={DIGEST}&kind=model&region=eu HTTP/1.1\r\n"
            f"Host: {url.hostname}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/octet-stream\r\n"
            f"Content-Length: {len(BLOB)}\r\nConnection: close\r\n\r\n").encode()
    with socket.create_connection((url.hostname, url.port), timeout=30) as connection:
        connection.sendall(head + BLOB[: len(BLOB) // 2])
        connection.shutdown(socket.SHUT_WR)  # the client goes away mid-upload
        reply = b""
        while chunk := connection.recv(65536):
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 400"), reply[:200]
    assert b'"code":"truncated_upload"' in reply
    assert f"ended after {len(BLOB) // 2} of the {len(BLOB)} bytes".encode() in reply
    assert not Artifact.objects.using("owner").exists() and store_files() == []


def test_a_region_outside_the_tenants_jurisdiction_is_refused(developer):
    body = assert_error(upload(developer, region="us"), 400, "invalid")
    assert body["fields"] == {"region": ["Region us is outside acme-bank's jurisdiction (eu)."]}
    assert upload(developer, region="eu-west1").status_code == 201


@pytest.mark.parametrize("params, field", [({"digest": "md5:abc"}, "digest"), ({"kind": "weights"}, "kind")])
def test_bad_upload_parameters_name_the_field(developer, params, field):
    assert field in assert_error(upload(developer, **params), 400, "invalid")["fields"]


def test_an_upload_needs_the_develop_role(world, api):
    auditor = api(issue_token(world.a.auditor, world.a.tenant))
    assert_error(upload(auditor), 403, "permission_denied")
    assert store_files() == []


@pytest.mark.embedded
def test_download_returns_the_bytes_with_the_digest_as_etag(developer):
    upload(developer)
    response = developer.get(f"/api/v1/tenants/acme-bank/artifacts/weights/{DIGEST}/content")
    assert response.status_code == 200
    assert b"".join(response.streaming_content) == BLOB
    assert response["ETag"] == f'"{DIGEST}"'
    listed = developer.get("/api/v1/tenants/acme-bank/artifacts/?kind=model").json()["results"]
    assert [(a["name"], a["digest"]) for a in listed] == [("weights", DIGEST)]


def metrics_upload(client, payload: bytes):
    digest = "sha256:" + hashlib.sha256(payload).hexdigest()
    return upload(client, payload, name="eval-scores", digest=digest, kind="metrics")


def test_a_metrics_artifact_of_named_numbers_is_accepted(developer):
    response = metrics_upload(developer, b'{"auc": 0.931, "recall_at_1pct_fpr": 0.42, "n": 120000, "tokens": 1e17}')
    assert response.status_code == 201, response.content
    assert response.json()["kind"] == "metrics"


@pytest.mark.parametrize("payload, reason", [
    (b'[0.9]', "it must be a non-empty object"),
    (b'{"auc": "high"}', """'auc' is "high", not a finite number"""),
    (b'{"auc": true}', "'auc' is true, not a finite number"),
    (b'{"auc": NaN}', "NaN is not a number"),
    (b'{"auc": 0.9', "it is not valid JSON"),
    (b'{"tokens": 100000000000000000}', "'tokens' is an integer past 2**53, which a JSON number cannot hold exactly; "
                                        "write it with an exponent (such as 1.000e+17)"),
    (b'{"\\ud800": 0.9}', 'the metric name "\\ud800" is not valid Unicode text'),
])
def test_a_metrics_artifact_that_is_not_named_numbers_is_refused(developer, payload, reason):
    body = assert_error(metrics_upload(developer, payload), 400, "invalid_metrics")
    assert body["detail"].startswith("A metrics artifact is a JSON object of named numbers: ")
    assert reason in body["detail"]
    assert not Artifact.objects.using("owner").exists() and store_files() == []
