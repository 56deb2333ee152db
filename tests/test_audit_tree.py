"""The stored Merkle tree: the sequencer appends each leaf's completed subtrees in the same
transaction, the root at any size matches a full recomputation, and proofs read from the
database verify; the table is append-only like the log."""

import pytest
from django.db import connections, transaction

from audit import merkle, tree
from audit.models import AuditLeaf, AuditTreeNode
from audit.sequencer import sequence_pending

from .test_audit import record_events

pytestmark = pytest.mark.embedded


def leaf_hashes():
    return [bytes.fromhex(h) for h in AuditLeaf.objects.using("owner").order_by("position")
            .values_list("leaf_hash", flat=True)]


def test_the_sequencer_grows_the_tree_and_proofs_from_the_database_verify(live_db):
    sizes = []
    for batch in (1, 2, 5, 13, 20):  # sequenced in uneven batches
        record_events(batch, tenant="acme-bank" if batch % 2 else "st-mary-hospital")
        sequence_pending(batch=7, using="owner")
        sequence_pending(using="owner")
        sizes.append(AuditLeaf.objects.using("owner").count())
    hashes = leaf_hashes()
    assert len(hashes) == 41
    assert AuditTreeNode.objects.using("owner").count() == 41 + 41 - bin(41).count("1")  # every complete subtree
    for size in sizes:
        assert tree.root(size, using="owner") == merkle.root_of(hashes[:size])
    root = tree.root(41, using="owner")
    for position in (0, 17, 40):
        merkle.verify_inclusion(position, 41, hashes[position], tree.inclusion_proof(position, 41, using="owner"),
                                root)
    for older in sizes[:-1]:
        merkle.verify_consistency(older, 41, merkle.root_of(hashes[:older]), root,
                                  tree.consistency_proof(older, 41, using="owner"))


def test_a_tree_node_cannot_be_changed(live_db):
    record_events(2)
    sequence_pending(using="owner")
    with pytest.raises(Exception, match="append-only"):
        with connections["owner"].cursor() as cursor:
            cursor.execute("UPDATE audit_audittreenode SET hash = %s WHERE level = 0", ["00" * 32])


def test_proofs_past_the_built_tree_are_refused(live_db):
    record_events(3)
    sequence_pending(using="owner")
    with pytest.raises(LookupError):
        tree.root(4, using="owner")


def _checkpointed_log(count=6):
    from audit.checkpointing import checkpoint_write

    record_events(count, tenant="acme-bank")
    record_events(2, tenant="st-mary-hospital")
    sequence_pending(using="owner")
    first = checkpoint_write(using="owner")
    record_events(3, tenant="acme-bank")
    sequence_pending(using="owner")
    second = checkpoint_write(using="owner")
    return first, second


def test_checkpoints_are_signed_notes_with_a_head_per_tenant_and_verify_passes(live_db):
    from datetime import timedelta

    from audit.checkpoints import parse_checkpoint, parse_tenant_head, verify_note
    from audit.keys import platform_keyring
    from audit.verify import verify_log

    first, second = _checkpointed_log()
    assert (first.tree_size, second.tree_size) == (8, 12)  # the first checkpoint's own event is leaf 8
    pem = platform_keyring().active().public_pem
    checkpoint = parse_checkpoint(verify_note(second.note, pem))
    assert checkpoint.size == 12 and checkpoint.root == tree.root(12, using="owner")
    assert second.note.splitlines()[-1].startswith("\u2014 neocloud/audit-log ")
    heads = {h.tenant: h for h in second.tenant_heads.all()}
    assert heads["acme-bank"].tenant_size == 9 and heads["st-mary-hospital"].tenant_size == 2
    origin, tenant, size, checkpoint_size, root = parse_tenant_head(verify_note(heads["acme-bank"].note, pem))
    assert (tenant, size, checkpoint_size, root) == ("acme-bank", 9, 12, checkpoint.root)
    sequence_pending(using="owner")
    assert verify_log(using="owner", max_unsequenced=timedelta(minutes=5)).ok


def insert_event_at(position: int):
    """A made-up event slipped into the sequence at ``position``, well formed; later ones move up."""
    def statement(cursor):
        from django.utils import timezone

        from audit import hashing
        from audit.log import Actor, _build

        cursor.execute("UPDATE audit_auditleaf SET position = -position - 1 WHERE position >= %s", [position])
        cursor.execute("UPDATE audit_auditleaf SET position = -position WHERE position < 0")
        event = _build(action="membership.grant", actor=Actor(type="user", id="1", name="alice"),
                       tenant="acme-bank-shadow", target=None, data={"role": "tenant_admin"}, outcome="success")
        event.save(using="owner")
        body = AuditLeaf.leaf_body(event_hash=event.event_hash, tenant="acme-bank-shadow", tenant_position=0)
        AuditLeaf.objects.using("owner").create(
            position=position, event=event, tenant="acme-bank-shadow", tenant_position=0, leaf=body.decode(),
            leaf_hash=hashing.leaf_hash(body).hex(), sequenced_at=timezone.now())
    return statement


@pytest.mark.parametrize("tamper", ["forged_checkpoint", "reordered", "deleted_leaf", "inserted"])
def test_verify_detects_tampering_and_names_where(live_db, tamper):
    from datetime import timedelta

    from audit.appendonly import triggers_suspended
    from audit.models import AuditCheckpoint
    from audit.verify import verify_log

    first, second = _checkpointed_log()
    sequence_pending(using="owner")
    owner = connections["owner"]
    with transaction.atomic(using="owner"), triggers_suspended(owner), owner.cursor() as cursor:
        if owner.vendor == "postgresql":
            cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")  # nothing left pending when the triggers return
        if tamper == "forged_checkpoint":
            forged = second.note.replace(second.note.split("\n")[2], "A" * 43 + "=")
            cursor.execute("UPDATE audit_auditcheckpoint SET note = %s WHERE id = %s", [forged, second.pk])
        elif tamper == "reordered":  # two leaves swap places (and positions) in the sequence
            cursor.execute("UPDATE audit_auditleaf SET position = -1 WHERE position = 9")
            cursor.execute("UPDATE audit_auditleaf SET position = 9 WHERE position = 10")
            cursor.execute("UPDATE audit_auditleaf SET position = 10 WHERE position = -1")
        elif tamper == "deleted_leaf":
            cursor.execute("DELETE FROM audit_auditleaf WHERE position = 3")
        elif tamper == "inserted":
            insert_event_at(11)(cursor)
    report = verify_log(using="owner", max_unsequenced=timedelta(minutes=5))
    assert not report.ok
    problem = report.problems[0]
    expected = {"forged_checkpoint": 8, "reordered": 9, "deleted_leaf": 3, "inserted": 11}[tamper]
    assert problem.position == expected, problem.sentence()
    assert AuditCheckpoint.objects.using("owner").count() == 2


def test_proofs_and_the_public_key_through_the_api_and_the_command(world, api, client, capsys):
    from django.core.management import call_command

    from audit.checkpoints import parse_checkpoint, verify_note
    from audit.models import AuditLeaf

    first, second = _checkpointed_log()
    key = client.get("/api/v1/audit/public-key/").json()  # served to anyone; keep it from elsewhere too
    checkpoint = api(world.a.auditor).get("/api/v1/audit/checkpoint/").json()
    assert checkpoint["tree_size"] == 12
    signed = parse_checkpoint(verify_note(checkpoint["note"], key["public_key_pem"]))

    mine = AuditLeaf.objects.using("owner").filter(tenant="acme-bank").order_by("position").last()
    body = api(world.a.auditor).get(f"/api/v1/audit/proofs/inclusion/?position={mine.position}").json()
    merkle.verify_inclusion(mine.position, signed.size, bytes.fromhex(body["leaf_hash"]),
                            [bytes.fromhex(h) for h in body["proof"]], signed.root)
    theirs = AuditLeaf.objects.using("owner").filter(tenant="st-mary-hospital").first()
    assert api(world.a.auditor).get(f"/api/v1/audit/proofs/inclusion/?position={theirs.position}").status_code == 404
    assert api(world.a.auditor).get("/api/v1/audit/proofs/inclusion/?position=x").json()["code"] == "invalid"

    body = api(world.a.auditor).get("/api/v1/audit/proofs/consistency/?from=8&to=12").json()
    merkle.verify_consistency(8, 12, bytes.fromhex(first.root_hash), signed.root,
                              [bytes.fromhex(h) for h in body["proof"]])

    call_command("audit", "public-key")
    printed = capsys.readouterr().out
    assert key["key_id"] in printed and key["public_key_pem"].strip() in printed


def test_a_checkpoint_is_due_every_n_events_or_t_seconds_and_beats_task_writes_it(live_db, settings):
    from datetime import timedelta

    from audit.checkpointing import checkpoint_due, checkpoint_write
    from audit.models import AuditCheckpoint, AuditEvent
    from audit.sequencer import sequence_all
    from audit.tasks import sequence_pending as beat_task

    settings.AUDIT_CHECKPOINT_EVERY = 5
    record_events(2, tenant="acme-bank")
    sequence_all(using="owner")
    seconds = timedelta(seconds=settings.AUDIT_CHECKPOINT_SECONDS)
    assert not checkpoint_due(using="owner")  # the first: 2 of 5 events, and T counts from the first leaf
    started = AuditLeaf.objects.using("owner").get(position=0).sequenced_at
    assert checkpoint_due(using="owner", moment=started + seconds)
    first = checkpoint_write(using="owner")
    assert first is not None and not checkpoint_due(using="owner")  # its own event does not make one due
    record_events(4, tenant="acme-bank")
    sequence_all(using="owner")
    assert not checkpoint_due(using="owner")  # 4 of 5 events
    assert checkpoint_due(using="owner", moment=first.created_at + seconds)  # or T seconds, whichever first
    assert not checkpoint_due(using="owner", moment=first.created_at + seconds - timedelta(seconds=1))
    record_events(1, tenant="acme-bank")
    sequence_all(using="owner")
    assert checkpoint_due(using="owner")  # the 5th event

    beat_task()  # what beat runs: sequence, then sign the checkpoint that is due
    latest = AuditCheckpoint.objects.using("owner").order_by("-tree_size").first()
    assert latest.tree_size == first.tree_size + 1 + 5  # the first one's own event, then five
    assert AuditEvent.objects.using("owner").filter(action="audit.checkpoint", target_id=str(latest.tree_size),
                                                    data__root_hash=latest.root_hash).count() == 1
    assert not checkpoint_due(using="owner")


def test_sigstores_inclusion_verifier_accepts_proofs_from_the_stored_tree(live_db):
    """The real sequencing entries and the proofs the platform serves (from the stored
    subtrees), in a Rekor entry that sigstore-python checks with its own code."""
    import base64
    import json
    from pathlib import Path

    from sigstore._internal.merkle import verify_merkle_inclusion
    from sigstore.errors import VerificationError
    from sigstore.models import TransparencyLogEntry
    from sigstore_models.rekor.v1 import TransparencyLogEntry as RekorEntry

    record_events(9, tenant="acme-bank")
    record_events(4, tenant="st-mary-hospital")
    sequence_pending(using="owner")
    size = AuditLeaf.objects.using("owner").count()
    bundle = json.loads((Path(__file__).parent / "data" / "sigstore" / "rfc8785-0.1.2-py3-none-any.whl.sigstore")
                        .read_text())
    template = bundle["verificationMaterial"]["tlogEntries"][0]
    root = base64.b64encode(tree.root(size, using="owner")).decode()
    for leaf in AuditLeaf.objects.using("owner").filter(position__in=(0, 6, size - 1)):
        proof = tree.inclusion_proof(leaf.position, size, using="owner")
        entry = {**template, "logIndex": str(leaf.position),
                 "canonicalizedBody": base64.b64encode(leaf.leaf.encode()).decode(),
                 "inclusionProof": {**template["inclusionProof"], "logIndex": str(leaf.position),
                                    "treeSize": str(size), "rootHash": root,
                                    "hashes": [base64.b64encode(h).decode() for h in proof]}}
        verify_merkle_inclusion(TransparencyLogEntry(RekorEntry.from_dict(entry)))
        edited = leaf.leaf.replace('"event_hash":"', '"event_hash":"0', 1)
        entry["canonicalizedBody"] = base64.b64encode(edited.encode()).decode()
        with pytest.raises(VerificationError):  # an edited entry does not lead to the root
            verify_merkle_inclusion(TransparencyLogEntry(RekorEntry.from_dict(entry)))
