"""Content digests of versions: sha256 over RFC 8785 JSON, written ``sha256:<hex>``."""

import hashlib

from audit.hashing import canonical_json


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def version_digest(spec: dict, artifact_digests: list[str]) -> tuple[str, str]:
    """Return (digest, canonical spec JSON). The digest covers the spec and every
    referenced artifact's digest, order-independent."""
    canonical_spec = canonical_json(spec)
    body = canonical_json({"spec": spec, "artifacts": sorted(set(artifact_digests))})
    return sha256_digest(body), canonical_spec.decode()
