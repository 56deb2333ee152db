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
from audit.checkpoints import checkpoint_body, parse_checkpoint, sign_note, verify_note
from audit.keys import platform_keyring
from audit.models import AuditTenantHead
from audit.sequencer import sequence_pending
from audit.verify_export import PackInvalid, verify_pack

from tests.support import ROOT
from .test_audit import record_events



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


@pytest.mark.embedded
def test_the_standalone_verifier_accepts_an_intact_export_without_django(pack):
    folder, key, earlier = pack
    result = run_verifier(folder, "--public-key", key, "--previous-checkpoint", earlier)
    assert result.returncode == 0, result.stderr
    assert "Verified: 6 event(s) of tenant acme-bank, complete up to its 6 event(s)" in result.stdout
    events = [json.loads(line) for line in (folder / "events.jsonl").read_text().splitlines()]
    assert {json.loads(e["canonical"])["tenant"] for e in events} == {"acme-bank"}  # no one else's events


@pytest.mark.parametrize("tamper", ["edited_event", "omitted_event", "edited_checkpoint", "edited_proof",
                                    "other_tenants_head", "extra_event_field", "edited_consistency",
                                    "malformed_consistency", "edited_manifest", "unsigned_manifest", "extra_file",
                                    "binary_checkpoint"])
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
    elif tamper == "extra_event_field":  # a claim slipped in beside the signed bytes
        event = json.loads(lines[0])
        event["approved_by"] = "nobody"
        lines[0] = json.dumps(event)
    elif tamper == "edited_consistency":
        records = (folder / "consistency.jsonl").read_text().splitlines()
        record = json.loads(records[0])
        record["from_root"] = "00" * 32
        (folder / "consistency.jsonl").write_text(json.dumps(record) + "\n")
    elif tamper == "malformed_consistency":
        (folder / "consistency.jsonl").write_text("[1, 2]\n")
    elif tamper == "edited_manifest":  # an unsigned-looking field: the manifest's signature covers it
        manifest = json.loads((folder / "manifest.json").read_text())
        manifest["since"] = "2020-01-01T00:00:00+00:00"
        (folder / "manifest.json").write_text(json.dumps(manifest))
    elif tamper == "unsigned_manifest":
        (folder / "manifest-signature.txt").unlink()
    elif tamper == "extra_file":
        (folder / "note-from-the-operator.txt").write_text("all fine")
    elif tamper == "binary_checkpoint":
        (folder / "checkpoint.txt").write_bytes(b"\xff\xfe" + (folder / "checkpoint.txt").read_bytes())
    (folder / "events.jsonl").write_text("".join(f"{line}\n" for line in lines))
    result = run_verifier(folder, "--public-key", key)
    assert result.returncode == 1 and result.stderr.startswith("The export does not verify:"), result.stderr
    expected = {"omitted_event": "tenant position 2 is missing",
                "extra_event_field": "event line 1 is not a valid export record",
                "edited_consistency": "consistency line 1 does not lead to the signed root",
                "malformed_consistency": "consistency line 1 is not a valid consistency record",
                "edited_manifest": "signs another manifest", "unsigned_manifest": "manifest-signature.txt",
                "extra_file": "files its manifest does not list: note-from-the-operator.txt",
                "binary_checkpoint": "checkpoint.txt is not UTF-8 text"}
    assert expected.get(tamper, "") in result.stderr


def test_an_export_since_a_kept_tenant_head_continues_it_without_a_gap(pack, tmp_path):
    """A regulator who kept the tenant head of the last export checks only what came after."""
    from django.utils import timezone

    folder, key, _ = pack
    kept = tmp_path / "kept-tenant-head.txt"
    kept.write_text((folder / "tenant-head.txt").read_text())  # acme-bank: 6 events
    since = timezone.now()
    record_events(3, tenant="acme-bank")
    later = tmp_path / "later"
    call_command("audit", "export", "--tenant", "acme-bank", "--since", since.isoformat(), "-o", str(later))
    result = run_verifier(later, "--public-key", key, "--previous-tenant-head", kept)
    assert result.returncode == 0, result.stderr
    assert "Verified: 3 event(s) of tenant acme-bank, complete up to its 9 event(s)" in result.stdout
    alone = run_verifier(later, "--public-key", key)  # without the kept head it must start at 0
    assert alone.returncode == 1 and "tenant position 0 is missing" in alone.stderr
    other = tmp_path / "other-tenant-head.txt"
    other.write_text(next(h.note for h in AuditTenantHead.objects.using("owner").filter(tenant="st-mary-hospital")))
    refused = run_verifier(later, "--public-key", key, "--previous-tenant-head", other)
    assert refused.returncode == 1 and "another tenant's" in refused.stderr


def test_a_signed_but_forked_earlier_checkpoint_is_refused(pack, settings):
    """An earlier checkpoint the platform really signed, for a tree this one does not extend
    (a split view): the signature verifies, the consistency proof does not."""
    folder, key, earlier = pack
    kept = parse_checkpoint(verify_note(earlier.read_text(), key.read_text()))
    origin = settings.AUDIT_LOG_ORIGIN
    forked = sign_note(checkpoint_body(origin, kept.size, bytes(32)), name=origin,
                       private_key=platform_keyring().active().private_key)
    with pytest.raises(PackInvalid, match="not consistent with the earlier checkpoint"):
        verify_pack(folder, key.read_text(), previous_checkpoint=forked)


def test_checkpoints_signed_by_a_retired_key_verify_with_every_key_given(pack, tmp_path):
    folder, key, earlier = pack
    platform_keyring().rotate()
    later = tmp_path / "after-rotation"
    record_events(1, tenant="acme-bank")
    call_command("audit", "export", "--tenant", "acme-bank", "-o", str(later))
    printed = io.StringIO()
    call_command("audit", "public-key", "--all", stdout=printed)
    keys = len(platform_keyring().keys())  # the session's keyring: rotated here, maybe before too
    assert printed.getvalue().count("BEGIN PUBLIC KEY") == keys >= 2
    assert printed.getvalue().count(", retired ") == keys - 1
    new_key = tmp_path / "new-key.pem"
    new_key.write_text(platform_keyring().active().public_pem)
    only_new = run_verifier(later, "--public-key", new_key, "--previous-checkpoint", earlier)
    assert only_new.returncode == 1 and "the earlier checkpoint does not verify" in only_new.stderr
    both = run_verifier(later, "--public-key", new_key, "--public-key", key, "--previous-checkpoint", earlier)
    assert both.returncode == 0, both.stderr


def test_the_verifier_never_imports_django(pack):
    folder, key, earlier = pack
    script = ("import sys; from audit.verify_export import main; code = main(sys.argv[1:]); "
              "assert 'django' not in sys.modules, sorted(m for m in sys.modules if m.startswith('django')); "
              "sys.exit(code)")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO", "DATABASE"))}
    result = subprocess.run([sys.executable, "-c", script, str(folder), "--public-key", str(key),
                             "--previous-checkpoint", str(earlier)], cwd=ROOT, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_a_key_from_elsewhere_is_refused(pack, tmp_path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    folder, _, _ = pack
    other = tmp_path / "other.pem"
    other.write_bytes(ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    with pytest.raises(PackInvalid, match="no signature on the note is by the given key"):
        verify_pack(folder, other.read_text())


def test_the_verifier_names_an_input_it_cannot_read_in_one_sentence(pack, tmp_path):
    folder, key, _ = pack
    binary = tmp_path / "binary.bin"
    binary.write_bytes(b"\xff\xfe\x00")
    for args, sentence in [
        ((tmp_path / "nowhere", "--public-key", key), f"The export folder {tmp_path / 'nowhere'} does not exist"),
        ((folder, "--public-key", tmp_path / "missing.pem"),
         f"The public key {tmp_path / 'missing.pem'} cannot be read: No such file or directory."),
        ((folder, "--public-key", key, "--previous-checkpoint", binary),
         f"The earlier checkpoint {binary} is not text"),
        ((folder, "--public-key", key, "--previous-tenant-head", tmp_path),
         f"The earlier tenant head {tmp_path} cannot be read: Is a directory."),
    ]:
        result = run_verifier(*args)
        assert result.returncode == 1 and result.stderr.startswith(sentence), result.stderr
        assert "Traceback" not in result.stderr and result.stderr.count("\n") == 1
    # A signed note that is not a checkpoint (the pack's own tenant head) given as the earlier checkpoint.
    result = run_verifier(folder, "--public-key", key, "--previous-checkpoint", folder / "tenant-head.txt")
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.startswith("The export does not verify: the earlier checkpoint does not verify: "
                                    "a checkpoint body is"), result.stderr


@pytest.mark.embedded
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


def test_a_kept_checkpoint_larger_than_the_packs_says_the_log_shrank(pack):
    """A regulator kept checkpoint N; a pack that ends before N means events were removed."""
    from audit.checkpointing import checkpoint_write
    from audit.sequencer import sequence_pending

    folder, key, _ = pack
    record_events(2, tenant="acme-bank")
    sequence_pending(using="owner")
    later = checkpoint_write(using="owner")
    with pytest.raises(PackInvalid, match=r"^the log shrank: the earlier checkpoint covers \d+ events, and this pack's "
                                          r"checkpoint only \d+"):
        verify_pack(folder, key.read_text(), previous_checkpoint=later.note)
