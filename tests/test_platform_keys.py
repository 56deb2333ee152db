"""The platform's signing identity: keys under a KEK, key ids, rotation."""

import json
import stat

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from audit.keys import Keyring, KeyringError, read_kek, write_new_kek



@pytest.fixture
def kek(tmp_path):
    path = tmp_path / "kek"
    write_new_kek(path)
    return read_kek(path)


def test_a_signature_verifies_under_its_key_id_and_nothing_else(tmp_path, kek):
    keyring = Keyring.create(tmp_path / "keyring.json", kek)
    kid, signature = keyring.sign(b"promotion attestation")
    assert kid.startswith("platform-") and keyring.verify(kid, b"promotion attestation", signature)
    assert not keyring.verify(kid, b"promotion attestation!", signature)
    assert not keyring.verify("platform-unknown", b"promotion attestation", signature)


def test_rotation_keeps_old_signatures_verifying(tmp_path, kek):
    keyring = Keyring.create(tmp_path / "keyring.json", kek)
    old_kid, old_signature = keyring.sign(b"checkpoint 1")
    new_key = keyring.rotate()
    assert new_key.kid != old_kid
    reloaded = Keyring.load(tmp_path / "keyring.json", kek)
    assert reloaded.active().kid == new_key.kid
    assert reloaded.verify(old_kid, b"checkpoint 1", old_signature)
    new_kid, new_signature = reloaded.sign(b"checkpoint 2")
    assert new_kid == new_key.kid and reloaded.verify(new_kid, b"checkpoint 2", new_signature)
    assert [k.retired_at is None for k in reloaded.keys()] == [False, True]


def test_private_keys_are_stored_only_encrypted_and_the_files_are_private(tmp_path, kek):
    Keyring.create(tmp_path / "keyring.json", kek)
    text = (tmp_path / "keyring.json").read_text()
    assert "PRIVATE KEY" not in text and "BEGIN PUBLIC KEY" in text
    assert stat.S_IMODE((tmp_path / "keyring.json").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "kek").stat().st_mode) == 0o600


def test_the_wrong_kek_is_refused_at_load(tmp_path, kek):
    Keyring.create(tmp_path / "keyring.json", kek)
    write_new_kek(tmp_path / "other")
    with pytest.raises(KeyringError, match="does not decrypt: wrong key-encryption key, or the keyring was altered"):
        Keyring.load(tmp_path / "keyring.json", read_kek(tmp_path / "other"))


def test_a_key_moved_to_another_id_does_not_decrypt(tmp_path, kek):
    keyring = Keyring.create(tmp_path / "keyring.json", kek)
    document = json.loads((tmp_path / "keyring.json").read_text())
    document["keys"][0]["kid"] = "platform-0000000000000000"
    (tmp_path / "keyring.json").write_text(json.dumps(document))
    with pytest.raises(KeyringError, match="does not decrypt"):
        Keyring.load(tmp_path / "keyring.json", kek)
    assert keyring.active().kid != "platform-0000000000000000"


@pytest.mark.parametrize("content", [b"", b"not base64!", b"c2hvcnQ="])
def test_a_malformed_kek_file_is_one_sentence(tmp_path, content):
    (tmp_path / "kek").write_bytes(content)
    with pytest.raises(KeyringError, match=r"must hold 32 random bytes in base64\.$"):
        read_kek(tmp_path / "kek")


def test_the_command_creates_rotates_and_lists_keys(tmp_path, settings, capsys):
    settings.PLATFORM_KEK_FILE = tmp_path / "kek"
    settings.PLATFORM_KEYRING_FILE = tmp_path / "keyring.json"
    call_command("platform_keys", "init")
    created = capsys.readouterr().out
    assert "Created a key-encryption key" in created and "Created the platform keyring" in created
    call_command("platform_keys", "init")
    assert "Platform keyring ready; active key platform-" in capsys.readouterr().out
    call_command("platform_keys", "rotate")
    call_command("platform_keys", "list")
    listing = capsys.readouterr().out.splitlines()[-2:]
    assert "retired" in listing[0] and listing[1].endswith("active")


def test_production_never_generates_a_kek(tmp_path, settings):
    settings.PRODUCTION = True
    settings.PLATFORM_KEK_FILE = tmp_path / "kek"
    settings.PLATFORM_KEYRING_FILE = tmp_path / "keyring.json"
    with pytest.raises(CommandError, match="must be provided"):
        call_command("platform_keys", "init")
    assert not (tmp_path / "kek").exists()


KEYED_COMMANDS = [("audit", "checkpoint"), ("audit", "public-key"), ("audit", "export", "--tenant", "acme-bank",
                                                                     "-o", "out"),
                  ("platform_keys", "rotate"), ("platform_keys", "list")]


@pytest.mark.embedded
@pytest.mark.parametrize("missing", ["kek", "keyring"])
@pytest.mark.parametrize("command", KEYED_COMMANDS, ids=lambda command: " ".join(command[:2]))
def test_a_command_run_before_the_keys_exist_names_the_missing_file_and_how_to_create_it(
        live_db, tmp_path, settings, command, missing):
    settings.PLATFORM_KEK_FILE = tmp_path / "kek"
    settings.PLATFORM_KEYRING_FILE = tmp_path / "keyring.json"
    if missing == "keyring":
        write_new_kek(tmp_path / "kek")
    missing_file = {"kek": tmp_path / "kek", "keyring": tmp_path / "keyring.json"}[missing]
    with pytest.raises(CommandError) as refused:
        call_command(*command)
    sentence = str(refused.value)
    assert sentence.endswith("does not exist; run `manage.py platform_keys init` to create it.")
    assert str(missing_file) in sentence and "\n" not in sentence


def test_the_command_line_prints_the_sentence_and_no_traceback(tmp_path):
    """As a person runs it: one line on stderr, exit status 1."""
    import os
    import subprocess
    import sys

    from tests.support.processes import ROOT

    env = {**os.environ, "NEOCLOUD_DATA_DIR": str(tmp_path), "DATABASE_URL": f"sqlite:///{tmp_path}/db.sqlite3",
           "CELERY_BROKER_URL": "filesystem://"}
    done = subprocess.run([sys.executable, "manage.py", "audit", "public-key"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.strip().splitlines() == [
        f"CommandError: The key-encryption key file {tmp_path}/platform-kek does not exist; run "
        "`manage.py platform_keys init` to create it."]
