"""Strict inputs: a pattern decides a whole value.

Python's ``$`` also matches just before a final newline, so ``acme-bank\\n`` used to pass as a
slug and ``sha256:…\\n`` as a digest. Each value that a pattern checks is tried through the
public API with a final newline, and refused on its field; the same value without it passes.
"""

import hashlib

import pytest

from tests.support.clients import issue_token
from .test_api import assert_error

DIGEST = "sha256:" + hashlib.sha256(b"amount,label\n10,0\n").hexdigest()
H100 = {"name": "h100-80gb", "memory_gb": 80, "billing_weight": "1.0"}


@pytest.mark.parametrize("field, bad", [("slug", "nordic-insure\n"), ("jurisdiction", "eu\n")])
def test_a_tenant_field_with_a_final_newline_is_refused(world, api, field, bad):
    admin = api(world.platform_admin)
    good = {"slug": "nordic-insure", "name": "Nordic Insurance", "jurisdiction": "eu"}
    body = assert_error(admin.post("/api/v1/tenants/", {**good, field: bad}), 400, "invalid")
    assert field in body["fields"], body
    assert admin.post("/api/v1/tenants/", good).status_code == 201


def test_a_flavor_or_service_account_name_with_a_final_newline_is_refused(world, api):
    admin = api(world.platform_admin)
    assert "name" in assert_error(admin.post("/api/v1/gpu-flavors/", {**H100, "name": "h100-80gb\n"}),
                                  400, "invalid")["fields"]
    assert admin.post("/api/v1/gpu-flavors/", H100).status_code == 201
    accounts = api(world.a.developer)
    path = "/api/v1/tenants/acme-bank/service-accounts/"
    assert "name" in assert_error(accounts.post(path, {"name": "nightly\n", "role": "developer"}),
                                  400, "invalid")["fields"]
    assert accounts.post(path, {"name": "nightly", "role": "developer"}).status_code == 201


def test_a_digest_with_a_final_newline_is_refused_at_upload_and_in_a_spec(world, api):
    developer = api(issue_token(world.a.developer, world.a.tenant))
    data = b"amount,label\n10,0\n"

    def upload(digest):
        return developer.client.generic(
            "PUT", f"/api/v1/tenants/acme-bank/artifacts/transactions/?digest={digest}%0A&kind=dataset&region=eu"
            if digest.endswith("\n") else
            f"/api/v1/tenants/acme-bank/artifacts/transactions/?digest={digest}&kind=dataset&region=eu",
            data=data, content_type="application/octet-stream", **developer.headers)

    assert "digest" in assert_error(upload(DIGEST + "\n"), 400, "invalid")["fields"]
    assert upload(DIGEST).status_code == 201
    spec = {"name": "fraud-detector", "steps": [{"name": "train", "command": ["python", "train.py"]}],
            "inputs": [{"name": "transactions", "region": "eu", "uri": "store", "digest": DIGEST + "\n"}]}
    versions = "/api/v1/tenants/acme-bank/workflows/fraud-detector/versions/"
    body = assert_error(developer.post(versions, {"spec": spec}), 400, "invalid_spec")
    assert body["fields"] == {"$.inputs[0].digest": ["a digest is 'sha256:' followed by 64 lowercase hex digits"]}
    spec["inputs"][0]["digest"] = DIGEST
    assert developer.post(versions, {"spec": spec}).status_code == 201


@pytest.mark.parametrize("kind", ["symlink", "hardlink", "fifo", "escape"])
def test_an_archive_holding_a_link_a_device_or_a_path_outside_itself_is_refused_at_upload(world, api, kind):
    import io
    import tarfile

    from workflows.models import Artifact

    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as archive:
        config = tarfile.TarInfo("model/config.json")
        config.size = 2
        archive.addfile(config, io.BytesIO(b"{}"))
        member = tarfile.TarInfo({"escape": "../outside.bin"}.get(kind, "model/other"))
        member.type = {"symlink": tarfile.SYMTYPE, "hardlink": tarfile.LNKTYPE, "fifo": tarfile.FIFOTYPE,
                       "escape": tarfile.REGTYPE}[kind]
        member.linkname = "/etc/passwd" if kind in ("symlink", "hardlink") else ""
        archive.addfile(member, io.BytesIO(b"") if kind == "escape" else None)
    data = out.getvalue()
    developer = api(issue_token(world.a.developer, world.a.tenant))
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    response = developer.client.generic(
        "PUT", f"/api/v1/tenants/acme-bank/artifacts/scorer/?digest={digest}&kind=model&region=eu", data=data,
        content_type="application/x-tar", **developer.headers)
    body = assert_error(response, 400, "invalid_archive")
    assert body["detail"].startswith("The archive member '"), body
    assert not Artifact.objects.using("owner").exists()


def test_a_console_form_shows_a_final_newline_as_an_error_next_to_its_field(world, client):
    from tenants.models import ServiceAccount
    from tests.support.clients import sign_in

    sign_in(client, world.a.developer)
    response = client.post("/t/acme-bank/service-accounts/", {"name": "nightly\n", "role": "developer"})
    assert response.status_code == 400
    page = response.content.decode()
    assert 'class="field-error" id="account_name-error"' in page, page[-2000:]
    assert not ServiceAccount.objects.using("owner").exists()
    assert client.post("/t/acme-bank/service-accounts/", {"name": "nightly", "role": "developer"}).status_code == 302
    assert ServiceAccount.objects.using("owner").get().name == "nightly"
