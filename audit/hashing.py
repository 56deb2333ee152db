"""Canonical JSON and RFC 6962 hashing for audit events and sequencing entries."""

import hashlib
from datetime import UTC, datetime

import rfc8785

LEAF_PREFIX = b"\x00"
NODE_PREFIX = b"\x01"


def canonical_json(value) -> bytes:
    """RFC 8785 (JCS) bytes: the one serialisation every hash here is taken over."""
    return rfc8785.dumps(value)


def leaf_hash(data: bytes) -> bytes:
    """RFC 6962 leaf hash: SHA-256(0x00 || data)."""
    return hashlib.sha256(LEAF_PREFIX + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """RFC 6962 interior node hash: SHA-256(0x01 || left || right)."""
    return hashlib.sha256(NODE_PREFIX + left + right).digest()


def timestamp(moment: datetime) -> str:
    """A fixed, microsecond-precision UTC form, stable across database round trips."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
