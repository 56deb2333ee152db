"""The platform and a real witness process: each checkpoint goes to the witness with a
consistency proof from the last one it co-signed, the cosignature comes back and is kept;
a witness that is down holds nothing up and shows as missing; the verifier says "witnessed"
or "not witnessed", and fails with --require-witness when it is not."""

import io

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from audit.checkpointing import checkpoint_write
from audit.keys import platform_keyring
from audit.models import AuditCosignature
from audit.sequencer import sequence_pending
from audit.witness import main as witness_main, public_pem
from audit.witnessing import configured_witnesses, witness_latest

from .test_audit import record_events
from .test_witness import WitnessProcess

pytestmark = pytest.mark.embedded

NAME = "regulator.example/witness"


@pytest.fixture
def witness(live_db, tmp_path, settings):
    log_key = tmp_path / "platform-key.pem"
    log_key.write_text(platform_keyring().active().public_pem)
    state = tmp_path / "witness"
    assert witness_main(["init", "--state", str(state), "--name", NAME]) == 0
    key_file = tmp_path / "witness-key.pem"
    key_file.write_text(public_pem(state))
    process = WitnessProcess(state, log_key)
    settings.AUDIT_WITNESSES = [{"name": NAME, "url": process.url, "public_key_file": str(key_file)}]
    settings.DATABASES["platform"] = settings.DATABASES["owner"]  # the command's alias, on the test database
    configured_witnesses.cache_clear()
    yield process, key_file
    configured_witnesses.cache_clear()
    if process.process.poll() is None:
        process.stop()


def checkpoint(count):
    record_events(count)
    sequence_pending(using="owner")
    return checkpoint_write(using="owner")


def verify(*options) -> str:
    printed = io.StringIO()
    call_command("audit", "verify", *options, stdout=printed)
    return printed.getvalue()


def test_each_checkpoint_is_cosigned_by_the_witness_and_the_cosignature_kept(witness):
    process, key_file = witness
    first = checkpoint(3)
    assert witness_latest(using="owner") == {NAME: "cosigned"}
    second = checkpoint(5)  # the witness checks a consistency proof from the first
    assert witness_latest(using="owner") == {NAME: "cosigned"}
    assert witness_latest(using="owner") == {NAME: "already"}
    kept = list(AuditCosignature.objects.using("owner").order_by("checkpoint__tree_size"))
    assert [c.checkpoint_id for c in kept] == [first.pk, second.pk]
    assert all(c.line.startswith(f"\u2014 {NAME} ") for c in kept)

    sequence_pending(using="owner")
    output = verify("--witness-key", f"{NAME}={key_file}", "--require-witness")
    assert f"checkpoint {second.tree_size} is witnessed by {NAME}" in output


def test_the_api_serves_the_latest_checkpoint_with_its_cosignatures(witness, world, api):
    from audit.witness import cosignature_time, load_public_key

    process, key_file = witness
    checkpoint(3)
    witness_latest(using="owner")
    served = api(world.a.auditor).get("/api/v1/audit/checkpoint/").json()
    assert [w["witness"] for w in served["witnessed_by"]] == [NAME]
    assert cosignature_time(served["note"], name=NAME, public=load_public_key(key_file.read_text()))


def test_a_witness_that_is_down_holds_nothing_up_and_shows_as_missing(witness, client, world):
    from tests.support.clients import sign_in

    process, key_file = witness
    checkpoint(2)
    witness_latest(using="owner")
    process.stop()
    later = checkpoint(3)  # checkpoints go on
    outcome = witness_latest(using="owner")[NAME]
    assert outcome.startswith("it cannot be reached")
    assert not AuditCosignature.objects.using("owner").filter(checkpoint=later).exists()

    sequence_pending(using="owner")
    assert verify().rstrip().endswith("is not witnessed (no witness key given).")
    with pytest.raises(CommandError, match=rf"not witnessed: no cosignature from {NAME}\.$"):
        verify("--witness-key", f"{NAME}={key_file}", "--require-witness")
    page = sign_in(client, world.platform_admin).get("/audit/").content.decode()
    assert f"Not co-signed by {NAME}" in page


def test_an_export_carries_the_cosignature_and_its_verifier_says_witnessed(witness, tmp_path):
    from .test_audit_export import run_verifier

    process, key_file = witness
    checkpoint(4)
    folder = tmp_path / "export"
    call_command("audit", "export", "--tenant", "acme-bank", "-o", str(folder))  # signs one and asks the witness
    assert f"\u2014 {NAME} " in (folder / "checkpoint.txt").read_text()
    platform_key = tmp_path / "platform.pem"
    platform_key.write_text(platform_keyring().active().public_pem)

    witnessed = run_verifier(folder, "--public-key", platform_key, "--witness-key", f"{NAME}={key_file}",
                             "--require-witness")
    assert witnessed.returncode == 0, witnessed.stderr
    assert witnessed.stdout.rstrip().endswith(f"is witnessed by {NAME}.")
    alone = run_verifier(folder, "--public-key", platform_key)
    assert alone.returncode == 0 and alone.stdout.rstrip().endswith("is not witnessed (no witness key given).")
    other_state = tmp_path / "other-witness"
    assert witness_main(["init", "--state", str(other_state), "--name", "other.example/w"]) == 0
    other_key = tmp_path / "other.pem"
    other_key.write_text(public_pem(other_state))
    refused = run_verifier(folder, "--public-key", platform_key, "--witness-key", f"other.example/w={other_key}",
                           "--require-witness")
    assert refused.returncode == 1
    assert "is not witnessed: no cosignature from other.example/w" in refused.stderr

