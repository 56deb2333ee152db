"""The RFC 6962/9162 tree: every independent test vector (transparency-dev/merkle, in
tests/data/merkle) verifies on its happy path and is rejected on each mutation, and proofs
the tree generates verify at every index and size up to 70."""

import base64
import json
from pathlib import Path

import pytest

from audit import merkle


VECTORS = Path(__file__).parent / "data" / "merkle"


def _b(text):
    return base64.b64decode(text) if text is not None else None


def _cases(kind):
    return sorted(VECTORS.glob(f"{kind}/**/*.json"))


@pytest.mark.parametrize("path", _cases("inclusion"), ids=lambda p: str(p.relative_to(VECTORS)))
def test_inclusion_vectors(path):
    case = json.loads(path.read_text())
    proof = [_b(p) for p in case["proof"] or []]
    if case["wantErr"]:
        with pytest.raises(merkle.ProofError):
            merkle.verify_inclusion(case["leafIdx"], case["treeSize"], _b(case["leafHash"]), proof, _b(case["root"]))
    else:
        merkle.verify_inclusion(case["leafIdx"], case["treeSize"], _b(case["leafHash"]), proof, _b(case["root"]))


@pytest.mark.parametrize("path", _cases("consistency"), ids=lambda p: str(p.relative_to(VECTORS)))
def test_consistency_vectors(path):
    case = json.loads(path.read_text())
    proof = [_b(p) for p in case["proof"] or []]
    args = (case["size1"], case["size2"], _b(case["root1"]), _b(case["root2"]), proof)
    if case["wantErr"]:
        with pytest.raises(merkle.ProofError):
            merkle.verify_consistency(*args)
    else:
        merkle.verify_consistency(*args)


def test_there_are_vectors_of_both_kinds_with_happy_paths_and_mutations():
    cases = [json.loads(p.read_text()) for p in _cases("inclusion") + _cases("consistency")]
    assert len(cases) == 196
    assert sum(not c["wantErr"] for c in cases) >= 10 and sum(c["wantErr"] for c in cases) >= 150


def test_generated_proofs_verify_at_every_index_and_size_and_fail_when_altered():
    tree = merkle.MemoryTree()
    leaves = []
    for n in range(70):
        leaf = merkle.leaf_hash(f"event {n}".encode())
        leaves.append(leaf)
        tree.append(leaf)
        size = n + 1
        root = tree.subtree.root(size)
        assert root == merkle.root_of(leaves)
        for index in range(size):
            proof = merkle.inclusion_proof(index, size, tree.subtree)
            merkle.verify_inclusion(index, size, leaves[index], proof, root)
            if proof:
                with pytest.raises(merkle.ProofError):
                    merkle.verify_inclusion(index, size, leaves[index], proof[:-1], root)
        for old in range(1, size):
            proof = merkle.consistency_proof(old, size, tree.subtree)
            merkle.verify_consistency(old, size, merkle.root_of(leaves[:old]), root, proof)
            with pytest.raises(merkle.ProofError):
                merkle.verify_consistency(old, size, merkle.root_of(leaves[:old - 1] + [b"x" * 32]), root, proof)


def test_the_tree_stores_each_complete_subtree_once_about_two_per_leaf():
    tree = merkle.MemoryTree()
    for n in range(1024):
        tree.append(merkle.leaf_hash(str(n).encode()))
    assert len(tree.nodes) == 2047  # 1024 leaves + 1023 inner nodes of the complete tree


def test_sigstores_own_inclusion_verifier_accepts_our_proofs():
    """sigstore-python checks Rekor's proofs with its own code; it must accept ours. A real
    public-good entry is the template; its leaf, index, size, root and path become ours."""
    from sigstore._internal.merkle import verify_merkle_inclusion
    from sigstore.errors import VerificationError
    from sigstore.models import TransparencyLogEntry
    from sigstore_models.rekor.v1 import TransparencyLogEntry as RekorEntry

    bundle = json.loads((Path(__file__).parent / "data" / "sigstore" / "rfc8785-0.1.2-py3-none-any.whl.sigstore")
                        .read_text())
    template = bundle["verificationMaterial"]["tlogEntries"][0]
    bodies = [json.dumps({"event_hash": f"{n:064x}", "tenant": "acme-bank", "tenant_position": n}).encode()
              for n in range(13)]
    tree = merkle.MemoryTree()
    for body in bodies:
        tree.append(merkle.leaf_hash(body))
    for index in (0, 5, 12):
        proof = merkle.inclusion_proof(index, 13, tree.subtree)
        entry = {**template, "logIndex": str(index), "canonicalizedBody": base64.b64encode(bodies[index]).decode(),
                 "inclusionProof": {**template["inclusionProof"], "logIndex": str(index), "treeSize": "13",
                                    "rootHash": base64.b64encode(tree.subtree.root(13)).decode(),
                                    "hashes": [base64.b64encode(h).decode() for h in proof]}}
        verify_merkle_inclusion(TransparencyLogEntry(RekorEntry.from_dict(entry)))
        entry["inclusionProof"]["rootHash"] = base64.b64encode(tree.subtree.root(12)).decode()  # another tree
        with pytest.raises(VerificationError):
            verify_merkle_inclusion(TransparencyLogEntry(RekorEntry.from_dict(entry)))
