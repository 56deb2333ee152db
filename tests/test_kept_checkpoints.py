"""Checking the log against checkpoints kept outside the platform.

Two checkpoints (sizes 8 and 12) leave the platform, as a regulator or WORM storage would keep
them; the log goes on (a third checkpoint, at 16). Then someone with the database owner's
powers works on it, triggers lifted: each kind of tampering docs/compliance.md lists, on rows,
leaves, tree nodes, sequencer state and checkpoints, removed, added or changed. ``verify_log``
with the kept checkpoints catches each one and names the first position that is missing or
different (or, for a rewrite that leaves nothing to compare but the root, the first position
after the last kept checkpoint that still matches).
"""

from datetime import timedelta

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connections, transaction
from django.utils import timezone

from audit.appendonly import triggers_suspended
from audit.checkpointing import checkpoint_write
from audit.hashing import canonical_json, leaf_hash
from audit.log import Actor, _build
from audit.models import AuditEvent, AuditLeaf
from audit.sequencer import sequence_pending
from audit.verify import verify_log

from .test_audit import record_events
from .test_audit_tree import _checkpointed_log, insert_event_at

pytestmark = pytest.mark.embedded

BOUND = timedelta(minutes=5)


@pytest.fixture
def kept(live_db):
    first, second = _checkpointed_log()
    assert (first.tree_size, second.tree_size) == (8, 12)
    record_events(3, tenant="acme-bank")
    sequence_pending(using="owner")
    assert checkpoint_write(using="owner").tree_size == 16
    sequence_pending(using="owner")  # the third checkpoint's own event: 17 leaves
    notes = [first.note, second.note]
    assert verify_log(using="owner", max_unsequenced=BOUND, kept=notes).ok
    return notes


def tamper(*statements):
    owner = connections["owner"]
    with transaction.atomic(using="owner"), triggers_suspended(owner), owner.cursor() as cursor:
        if owner.vendor == "postgresql":
            cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
        for statement in statements:
            statement(cursor) if callable(statement) else cursor.execute(statement)


def event_at(position: int) -> int:
    return AuditLeaf.objects.using("owner").get(position=position).event_id


def checkpoint_id(size: int) -> int:
    from audit.models import AuditCheckpoint

    return AuditCheckpoint.objects.using("owner").get(tree_size=size).pk


def append_leaf(cursor):
    """A leaf appended past the end for a made-up event, the tree and the sequencer left as they were."""
    size = AuditLeaf.objects.using("owner").count()
    event = _build(action="membership.grant", actor=Actor(type="user", id="1", name="alice"), tenant="acme-bank",
                   target=None, data={"role": "tenant_admin"}, outcome="success")
    event.save(using="owner")
    tenant_position = AuditLeaf.objects.using("owner").filter(tenant="acme-bank").count()
    body = AuditLeaf.leaf_body(event_hash=event.event_hash, tenant="acme-bank", tenant_position=tenant_position)
    AuditLeaf.objects.using("owner").create(position=size, event=event, tenant="acme-bank",
                                            tenant_position=tenant_position, leaf=body.decode(),
                                            leaf_hash=leaf_hash(body).hex(), sequenced_at=timezone.now())


def add_checkpoint(cursor):
    """A checkpoint at size 10 the platform never signed (signed by another key)."""
    from cryptography.hazmat.primitives.asymmetric import ec

    from audit import tree
    from audit.checkpoints import checkpoint_body, sign_note

    body = checkpoint_body("neocloud/audit-log", 10, tree.root(10, using="owner"))
    note = sign_note(body, name="neocloud/audit-log", private_key=ec.generate_private_key(ec.SECP256R1()))
    cursor.execute("INSERT INTO audit_auditcheckpoint (tree_size, root_hash, note, key_id, created_at) "
                   "VALUES (10, %s, %s, 'forged', %s)", [tree.root(10, using="owner").hex(), note, timezone.now()])


def delete_checkpoint(size):
    def statement(cursor):
        pk = checkpoint_id(size)
        cursor.execute("DELETE FROM audit_audittenanthead WHERE checkpoint_id = %s", [pk])
        cursor.execute("DELETE FROM audit_auditcheckpoint WHERE id = %s", [pk])
    return statement


TAMPERING = {
    # rows (the events themselves)
    "event changed": (lambda c: c.execute("UPDATE audit_auditevent SET action = 'tenant.create' WHERE id = %s",
                                          [event_at(5)]), 5),
    "event removed": (lambda c: (c.execute("DELETE FROM audit_auditleaf WHERE position = 5"),
                                 c.execute("DELETE FROM audit_auditevent WHERE id = %s", [event_at(4) + 1])), 5),
    "event added": (insert_event_at(9), 9),
    # leaves
    "leaf changed": ("UPDATE audit_auditleaf SET leaf_hash = '" + "0" * 64 + "' WHERE position = 6", 6),
    "leaf removed": ("DELETE FROM audit_auditleaf WHERE position = 6", 6),
    "leaf added": (append_leaf, 17),
    # tree nodes
    "node changed": ("UPDATE audit_audittreenode SET hash = '" + "0" * 64 + "' WHERE level = 1 AND \"index\" = 3", 6),
    "node removed": ("DELETE FROM audit_audittreenode WHERE level = 2 AND \"index\" = 1", 4),
    "node added": ("INSERT INTO audit_audittreenode (level, \"index\", hash) VALUES (3, 7, '" + "0" * 64 + "')", 17),
    # sequencer state
    "sequencer state changed": ("UPDATE audit_sequencerstate SET tree_size = 5", 5),
    "sequencer state removed": ("DELETE FROM audit_sequencerstate", 0),
    # checkpoints
    "checkpoint changed": (lambda c: c.execute("UPDATE audit_auditcheckpoint SET root_hash = %s WHERE id = %s",
                                               ["0" * 64, checkpoint_id(12)]), 12),
    "checkpoint removed": (delete_checkpoint(12), 12),  # the events up to 12 are intact
    "checkpoint added": (add_checkpoint, 8),
}


@pytest.mark.parametrize("kind", list(TAMPERING))
def test_tampering_after_the_latest_kept_checkpoint_is_caught_naming_the_first_bad_position(kept, kind):
    statement, position = TAMPERING[kind]
    tamper(statement)
    report = verify_log(using="owner", max_unsequenced=BOUND, kept=kept)
    assert not report.ok, kind
    assert report.problems[0].position == position, report.problems[0].sentence()


def rewrite_history_from(position: int):
    """What a superuser who owns the database can do without the signing key: change an event,
    its hash and canonical JSON consistently, drop the tree, the checkpoints and the sequencer's
    state, queue every event again, and let the platform sequence and sign the result."""
    def statement(cursor):
        event = AuditEvent.objects.using("owner").get(pk=event_at(position))
        event.data = {**event.data, "role": "tenant_admin"}
        canonical = canonical_json(event.canonical_body())
        cursor.execute("UPDATE audit_auditevent SET data = %s, canonical = %s, event_hash = %s WHERE id = %s",
                       [canonical_json(event.data).decode(), canonical.decode(), leaf_hash(canonical).hex(),
                        event.pk])
        for table in ("audit_audittenanthead", "audit_auditcheckpoint", "audit_audittreenode", "audit_auditleaf"):
            cursor.execute(f"DELETE FROM {table}")
        cursor.execute("UPDATE audit_sequencerstate SET tree_size = 0")
        cursor.execute("INSERT INTO audit_auditpending (event_id) SELECT id FROM audit_auditevent")
    return statement


def test_a_history_the_platform_signed_again_is_caught_only_against_kept_checkpoints(kept):
    tamper(rewrite_history_from(10))
    sequence_pending(using="owner")
    checkpoint_write(using="owner")
    sequence_pending(using="owner")
    assert verify_log(using="owner", max_unsequenced=BOUND).ok  # the platform's own checks see nothing
    report = verify_log(using="owner", max_unsequenced=BOUND, kept=kept, stop_at_first=False)
    assert [(p.position, p.reason) for p in report.problems] == [
        (8, "the platform's checkpoint 8, kept outside, is missing from the log"),
        # after the kept checkpoint that still matches, at or before the change (at 10)
        (8, "the events up to 12 no longer hash to the root of the checkpoint kept outside")]


def test_a_shorter_log_is_said_plainly(kept):
    tamper("DELETE FROM audit_audittenanthead",
           "DELETE FROM audit_auditcheckpoint WHERE tree_size > 8",
           "DELETE FROM audit_audittreenode WHERE ((\"index\" + 1) * (1 << level)) > 10",
           "DELETE FROM audit_auditleaf WHERE position >= 10",
           "UPDATE audit_sequencerstate SET tree_size = 10")
    problem = verify_log(using="owner", max_unsequenced=BOUND, kept=kept).problems[0]
    assert problem.position == 10
    assert problem.reason == ("the log is shorter than the checkpoint kept outside: it holds 10 sequenced "
                              "event(s), the kept checkpoint covers 12")


def test_the_command_checks_kept_checkpoint_files_and_folders(kept, tmp_path, settings, capsys):
    settings.DATABASES["platform"] = settings.DATABASES["owner"]
    folder = tmp_path / "worm"
    folder.mkdir()
    for number, note in enumerate(kept):
        (folder / f"checkpoint-{number}.txt").write_text(note)
    call_command("audit", "verify", "--checkpoint", str(folder))
    assert "it matches the 2 checkpoint(s) kept outside" in capsys.readouterr().out
    tamper("UPDATE audit_audittreenode SET hash = '" + "0" * 64 + "' WHERE level = 1 AND \"index\" = 3")
    with pytest.raises(CommandError, match=r"^Audit log is not intact at sequence number 6: the tree's stored node "):
        call_command("audit", "verify", "--checkpoint", str(folder / "checkpoint-1.txt"))
    (tmp_path / "not-a-note.txt").write_text("hello\n")
    with pytest.raises(CommandError, match="kept checkpoint 1 is not a note signed by a platform key"):
        call_command("audit", "verify", "--checkpoint", str(tmp_path / "not-a-note.txt"))
    with pytest.raises(CommandError, match=r"The kept checkpoint .*missing.txt cannot be read"):
        call_command("audit", "verify", "--checkpoint", str(tmp_path / "missing.txt"))


def test_the_api_offers_the_same_check_to_platform_admins(kept, world, api):
    from .test_api import assert_error

    operator = api(world.platform_admin)
    answer = operator.post("/api/v1/audit/check/", {"checkpoints": kept})
    assert answer.status_code == 200, answer.content
    assert (answer.json()["intact"], answer.json()["kept_checkpoints"], answer.json()["problem"]) == (True, 2, None)
    assert_error(api(world.a.auditor).post("/api/v1/audit/check/", {"checkpoints": kept}), 403, "permission_denied")
    body = assert_error(operator.post("/api/v1/audit/check/", {"checkpoints": ["hello\n"]}), 400, "invalid")
    assert body["fields"] == {"checkpoints": ["Kept checkpoint 1 is not a note signed by a platform key."]}

    tamper("DELETE FROM audit_auditleaf WHERE position = 6")
    problem = operator.post("/api/v1/audit/check/", {"checkpoints": kept}).json()["problem"]
    assert (problem["position"], problem["reason"]) == (6, "gap in the sequence: this position is missing")
    assert AuditEvent.objects.using("owner").filter(action="audit.verify").count() == 2
