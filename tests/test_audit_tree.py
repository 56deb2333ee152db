"""The stored Merkle tree: the sequencer appends each leaf's completed subtrees in the same
transaction, the root at any size matches a full recomputation, and proofs read from the
database verify; the table is append-only like the log."""

import pytest
from django.db import connections

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
