"""The audit log's Merkle tree as stored: AuditTreeNode rows, one per complete subtree.

The sequencer appends the nodes each new leaf completes, in the transaction that sequences
it; roots and proofs read only the O(log n) stored subtrees they name, fetched in one query.
"""

from django.db import connections

from . import merkle
from .models import AuditLeaf, AuditTreeNode
from .rows import insert_rows


def frontier(size: int) -> list[tuple[int, int]]:
    """The complete subtrees a tree of ``size`` leaves ends with: what appending needs."""
    return [(level, (size >> level) - 1) for level in range(size.bit_length()) if size >> level & 1]


def _fetch(keys, using: str) -> dict[tuple[int, int], bytes]:
    """The stored hashes of ``keys`` ((level, index) pairs), in one query on the unique index.
    Written as a row-value IN (PostgreSQL and SQLite alike): the ORM's OR of ~25 Q terms cost
    more to build than the database took to answer."""
    if not keys:
        return {}
    table = AuditTreeNode._meta.db_table
    rows = ", ".join(["(%s, %s)"] * len(keys))
    with connections[using].cursor() as cursor:
        cursor.execute(f'SELECT "level", "index", "hash" FROM "{table}" WHERE ("level", "index") IN ({rows})',
                       [value for key in keys for value in key])
        return {(level, index): bytes.fromhex(value) for level, index, value in cursor.fetchall()}


def append(*, start: int, leaf_hashes: list[bytes], using: str) -> int:
    """Store the nodes that appending ``leaf_hashes`` at position ``start`` completes."""
    known = _fetch(frontier(start), using)
    rows = []
    for offset, leaf in enumerate(leaf_hashes):
        for level, index, value in merkle.completed_nodes(start + offset, leaf, lambda lv, ix: known[(lv, ix)]):
            known[(level, index)] = value
            rows.append((level, index, value.hex()))
    insert_rows(AuditTreeNode, ("level", "index", "hash"), rows, using=using)
    return len(rows)


def _with_nodes(compute, using: str):
    """Run ``compute(subtree)`` twice: first to learn which stored nodes it names (the shape
    of a proof depends only on sizes), then with those nodes fetched in one query."""
    wanted = set()

    def record(level, index):
        wanted.add((level, index))
        return bytes(32)

    compute(merkle.SubtreeHashes(record))
    nodes = _fetch(sorted(wanted), using)
    missing = wanted - nodes.keys()
    if missing:
        raise LookupError(f"the tree has no node {sorted(missing)[0]}: it is not built that far")
    return compute(merkle.SubtreeHashes(lambda level, index: nodes[(level, index)]))


def root(size: int, *, using: str) -> bytes:
    return _with_nodes(lambda subtree: subtree.root(size), using)


def inclusion_proof(position: int, size: int, *, using: str) -> list[bytes]:
    return _with_nodes(lambda subtree: merkle.inclusion_proof(position, size, subtree), using)


def consistency_proof(size1: int, size2: int, *, using: str) -> list[bytes]:
    return _with_nodes(lambda subtree: merkle.consistency_proof(size1, size2, subtree), using)


def build_missing(*, using: str, batch: int = 10000) -> int:
    """Store the nodes of leaves sequenced before the tree was (a one-off, in order)."""
    built = AuditTreeNode.objects.using(using).filter(level=0).count()
    added = 0
    while True:
        leaves = list(AuditLeaf.objects.using(using).filter(position__gte=built).order_by("position")
                      .values_list("leaf_hash", flat=True)[:batch])
        if not leaves:
            return added
        added += append(start=built, leaf_hashes=[bytes.fromhex(h) for h in leaves], using=using)
        built += len(leaves)
