"""Tenant audit exports: `manage.py audit export` and the API write a pack that the standalone
verifier (standard library and cryptography only, run here without Django) accepts, and any
edit to the pack, an omitted event or a foreign key is detected."""

import io
import json
import os
import subprocess
import sys
import zipfile

import pytest
from django.core.management import call_command

from audit.checkpointing import checkpoint_write
from audit.keys import platform_keyring
from audit.sequencer import sequence_pending
from audit.verify_export import PackInvalid, verify_pack

from .conftest import ROOT
from .test_audit import record_events

pytestmark = pytest.mark.embedded


@pytest.fixture
def pack(live_db, tmp_path):
    record_events(4, tenant="acme-bank")
    record_events(3, tenant="st-mary-hospital")
    sequence_pending(using="owner")
    first = checkpoint_write(using="owner")
    record_events(2, tenant="acme-bank")
    sequence_pending(using="owner")
    checkpoint_write(using="owner")
    folder = tmp_path / "export"
    call_command("audit", "export", "--tenant", "acme-bank", "-o", str(folder))
    key = tmp_path / "checkpoint-key.pem"
    key.write_text(platform_keyring().active().public_pem)
    earlier = tmp_path / "earlier-checkpoint.txt"
    earlier.write_text(first.note)
    return folder, key, earlier


def run_verifier(*args):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO", "DATABASE"))}
    return subprocess.run([sys.executable, "-m", "audit.verify_export", *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True)


def test_the_standalone_verifier_accepts_an_intact_export_without_django(pack):
    folder, key, earlier = pack
    result = run_verifier(folder, "--public-key", key, "--previous-checkpoint", earlier)
    assert result.returncode == 0, result.stderr
    assert "Verified: 6 event(s) of tenant acme-bank, complete up to its 6 event(s)" in result.stdout
    events = [json.loads(line) for line in (folder / "events.jsonl").read_text().splitlines()]
    assert {json.loads(e["canonical"])["tenant"] for e in events} == {"acme-bank"}  # no one else's events


@pytest.mark.parametrize("tamper", ["edited_event", "omitted_event", "edited_checkpoint", "edited_proof",
                                    "other_tenants_head"])
def test_any_edit_to_the_pack_is_detected(pack, tamper):
    folder, key, _ = pack
    lines = (folder / "events.jsonl").read_text().splitlines()
    if tamper == "edited_event":
        event = json.loads(lines[1])
        event["canonical"] = event["canonical"].replace('"developer"', '"tenant_admin"')
        lines[1] = json.dumps(event)
    elif tamper == "omitted_event":  # a denial, say, left out
        del lines[2]
    elif tamper == "edited_proof":
        event = json.loads(lines[0])
        event["proof"][0] = "00" * 32
        lines[0] = json.dumps(event)
    elif tamper == "edited_checkpoint":
        note = (folder / "checkpoint.txt").read_text().split("\n")
        note[1] = str(int(note[1]) + 1)
        (folder / "checkpoint.txt").write_text("\n".join(note))
    elif tamper == "other_tenants_head":
        (folder / "tenant-head.txt").write_text("neocloud/audit-log/tenant\nst-mary-hospital\n3\n")
    (folder / "events.jsonl").write_text("".join(f"{line}\n" for line in lines))
    result = run_verifier(folder, "--public-key", key)
    assert result.returncode == 1 and result.stderr.startswith("The export does not verify:"), result.stderr
    if tamper == "omitted_event":
        assert "tenant position 2 is missing" in result.stderr


def test_a_key_from_elsewhere_is_refused(pack, tmp_path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    folder, _, _ = pack
    other = tmp_path / "other.pem"
    other.write_bytes(ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    with pytest.raises(PackInvalid, match="no signature on the note is by the given key"):
        verify_pack(folder, other.read_text())


def test_the_api_serves_the_export_to_auditors_only(pack, world, api, tmp_path):
    folder, key, _ = pack
    response = api(world.a.auditor).client.get("/api/v1/tenants/acme-bank/audit/export/",
                                               **api(world.a.auditor).headers)
    assert response.status_code == 200 and response["Content-Type"] == "application/zip"
    unpacked = tmp_path / "from-api"
    zipfile.ZipFile(io.BytesIO(response.content)).extractall(unpacked)
    assert verify_pack(unpacked, key.read_text())["events"] >= 6
    assert api(world.a.developer).get("/api/v1/tenants/acme-bank/audit/export/").status_code == 403
    assert api(world.b.auditor).get("/api/v1/tenants/acme-bank/audit/export/").status_code == 404
