"""RFC 6962 / RFC 9162 Merkle tree hashing, proofs and their verification.

leaf = SHA-256(0x00 || entry), node = SHA-256(0x01 || left || right). Proof generation works
over any ``subtree(start, end)`` that returns MTH(D[start:end]); ``SubtreeHashes`` builds that
from the stored hashes of complete, aligned subtrees (what ``audit.tree`` keeps), so a root or
a proof at any size costs O(log n) stored hashes per subtree it names, never a rebuild.
Verification follows RFC 9162 sections 2.1.3.2 and 2.1.4.2 and needs only this module.
"""

import hashlib
from collections.abc import Callable

EMPTY_ROOT = hashlib.sha256(b"").digest()
HASH_SIZE = 32


class ProofError(Exception):
    """A proof that does not verify; the message says why."""


def leaf_hash(entry: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + entry).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def split_point(size: int) -> int:
    """The largest power of two smaller than ``size`` (size > 1)."""
    return 1 << ((size - 1).bit_length() - 1)


def root_of(leaf_hashes: list[bytes]) -> bytes:
    """MTH over leaf hashes, for small trees and tests."""
    if not leaf_hashes:
        return EMPTY_ROOT
    if len(leaf_hashes) == 1:
        return leaf_hashes[0]
    k = split_point(len(leaf_hashes))
    return node_hash(root_of(leaf_hashes[:k]), root_of(leaf_hashes[k:]))


Subtree = Callable[[int, int], bytes]


def inclusion_proof(index: int, size: int, subtree: Subtree) -> list[bytes]:
    """PATH(index, D[0:size]), leaf end first (RFC 9162 2.1.3.1)."""
    if not 0 <= index < size:
        raise ValueError(f"leaf {index} is not in a tree of size {size}")
    path: list[bytes] = []
    start, end = 0, size
    while end - start > 1:
        k = split_point(end - start)
        if index - start < k:
            path.append(subtree(start + k, end))
            end = start + k
        else:
            path.append(subtree(start, start + k))
            start += k
    return path[::-1]


def consistency_proof(size1: int, size2: int, subtree: Subtree) -> list[bytes]:
    """PROOF(size1, D[0:size2]) (RFC 9162 2.1.4.1)."""
    if not 0 < size1 <= size2:
        raise ValueError(f"no consistency proof from size {size1} to {size2}")
    proof: list[bytes] = []
    start, end, m, complete = 0, size2, size1, True
    while m != end - start:
        k = split_point(end - start)
        if m <= k:
            proof.append(subtree(start + k, end))
            end = start + k
        else:
            proof.append(subtree(start, start + k))
            start, m, complete = start + k, m - k, False
    if not complete:
        proof.append(subtree(start, end))
    return proof[::-1]


def _check_hashes(**named) -> None:
    for name, value in named.items():
        values = value if isinstance(value, list) else [value]
        if any(not isinstance(v, bytes) or len(v) != HASH_SIZE for v in values):
            raise ProofError(f"every {name} hash is {HASH_SIZE} bytes")


def verify_inclusion(index: int, size: int, leaf: bytes, proof: list[bytes], root: bytes) -> None:
    """Raise ProofError unless ``proof`` shows ``leaf`` at ``index`` in the tree ``root``."""
    _check_hashes(leaf=leaf, root=root, proof=proof)
    if index >= size or index < 0:
        raise ProofError(f"leaf index {index} is outside a tree of size {size}")
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            raise ProofError("the proof is longer than the tree is high")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while fn and not fn & 1:
                    fn, sn = fn >> 1, sn >> 1
        else:
            r = node_hash(r, p)
        fn, sn = fn >> 1, sn >> 1
    if sn != 0:
        raise ProofError("the proof is shorter than the tree is high")
    if r != root:
        raise ProofError("the proof does not lead to the root")


def verify_consistency(size1: int, size2: int, root1: bytes, root2: bytes, proof: list[bytes]) -> None:
    """Raise ProofError unless ``proof`` shows the tree ``root2`` extends the tree ``root1``."""
    _check_hashes(proof=proof)
    if size1 > size2:
        raise ProofError(f"size {size1} is larger than size {size2}")
    if size1 == 0:
        raise ProofError("a consistency proof from the empty tree proves nothing")
    if size1 == size2:
        if proof:
            raise ProofError("trees of the same size need an empty proof")
        if root1 != root2:
            raise ProofError("trees of the same size have different roots")
        return
    _check_hashes(root=[root1, root2])
    if not proof:
        raise ProofError("the proof is empty")
    path = list(proof)
    if size1 & (size1 - 1) == 0:  # an exact power of two: the old root is a node of the new tree
        path.insert(0, root1)
    fn, sn = size1 - 1, size2 - 1
    while fn & 1:
        fn, sn = fn >> 1, sn >> 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise ProofError("the proof is longer than the tree is high")
        if fn & 1 or fn == sn:
            fr, sr = node_hash(c, fr), node_hash(c, sr)
            if not fn & 1:
                while fn and not fn & 1:
                    fn, sn = fn >> 1, sn >> 1
        else:
            sr = node_hash(sr, c)
        fn, sn = fn >> 1, sn >> 1
    if sn != 0:
        raise ProofError("the proof is shorter than the tree is high")
    if fr != root1:
        raise ProofError("the proof does not lead to the older root")
    if sr != root2:
        raise ProofError("the proof does not lead to the newer root")


class SubtreeHashes:
    """MTH(D[start:end]) from the hashes of complete, aligned subtrees: ``node(level, index)``
    is the hash of leaves [index * 2**level, (index + 1) * 2**level)."""

    def __init__(self, node: Callable[[int, int], bytes]):
        self.node = node

    def __call__(self, start: int, end: int) -> bytes:
        size = end - start
        if size <= 0:
            return EMPTY_ROOT
        if size & (size - 1) == 0 and start % size == 0:
            return self.node(size.bit_length() - 1, start // size)
        k = split_point(size)
        return node_hash(self(start, start + k), self(start + k, end))

    def root(self, size: int) -> bytes:
        return self(0, size)


class MemoryTree:
    """An append-only tree kept in memory the way ``audit.tree`` keeps it in the database:
    every complete, aligned subtree's hash, each written once."""

    def __init__(self):
        self.nodes: dict[tuple[int, int], bytes] = {}
        self.size = 0
        self.subtree = SubtreeHashes(lambda level, index: self.nodes[(level, index)])

    def append(self, leaf: bytes) -> None:
        for level, index, value in completed_nodes(self.size, leaf, lambda lv, ix: self.nodes[(lv, ix)]):
            self.nodes[(level, index)] = value
        self.size += 1


def completed_nodes(position: int, leaf: bytes, node: Callable[[int, int], bytes]):
    """The nodes that appending ``leaf`` at ``position`` completes: the leaf itself, then each
    parent whose right child it finishes (amortized two per leaf)."""
    level, index, value = 0, position, leaf
    yield level, index, value
    while index & 1:
        value = node_hash(node(level, index - 1), value)
        level, index = level + 1, index >> 1
        yield level, index, value


class Frontier:
    """The right edge of a growing tree: the complete subtrees its size decomposes into,
    largest first. O(log n) memory; the root at the current size at any time."""

    def __init__(self):
        self.size = 0
        self.stack: list[tuple[int, bytes]] = []  # (level, hash)

    def append(self, leaf: bytes) -> None:
        level, value = 0, leaf
        while self.stack and self.stack[-1][0] == level:
            _, left = self.stack.pop()
            level, value = level + 1, node_hash(left, value)
        self.stack.append((level, value))
        self.size += 1

    def root(self) -> bytes:
        if not self.stack:
            return EMPTY_ROOT
        value = self.stack[-1][1]
        for _, left in reversed(self.stack[:-1]):
            value = node_hash(left, value)
        return value
