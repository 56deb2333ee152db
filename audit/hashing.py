"""Canonical JSON and RFC 6962 hashing for audit events and sequencing entries."""

import hashlib
import json
from datetime import UTC, datetime

import rfc8785

LEAF_PREFIX = b"\x00"
NODE_PREFIX = b"\x01"

# RFC 8785 numbers are IEEE doubles: integers beyond this are refused (rfc8785.IntegerDomainError).
SAFE_INTEGER = 2**53 - 1
_PLAIN_ITEMS = 100_000
_json_encode = json.JSONEncoder(ensure_ascii=False, sort_keys=True, separators=(",", ":"), allow_nan=False).encode


def canonical_json(value) -> bytes:
    """RFC 8785 (JCS) bytes: the one serialisation every hash here is taken over.

    Audit events, specs and policy inputs hold strings, safe integers, booleans and nulls; for
    those, the standard library's C encoder writes exactly the JCS bytes (the same string
    escapes, lowercase ``\\u00xx``, no spaces, keys in code-point order, which is UTF-16 order
    when no key holds a character above U+D7FF). It is several times faster than the
    pure-Python ``rfc8785`` package, which still serialises anything else (floats,
    tuples, subclasses, exotic keys) and raises its errors.
    """
    if _plain(value):
        try:
            return _json_encode(value).encode()
        except UnicodeEncodeError:  # a lone surrogate: let rfc8785 refuse it in its own words
            pass
    return rfc8785.dumps(value)


def _plain(value) -> bool:
    """Whether ``value`` holds only what json writes as JCS writes it (a loop, not recursion:
    verify runs this once per event). Past _PLAIN_ITEMS items the answer is no, so a value
    that contains itself goes to rfc8785 (which refuses it) instead of looping for ever."""
    stack = [value]
    for _ in range(_PLAIN_ITEMS):
        if not stack:
            return True
        item = stack.pop()
        kind = type(item)
        if kind is str or kind is bool or item is None:
            continue
        if kind is int:
            if not -SAFE_INTEGER <= item <= SAFE_INTEGER:
                return False
        elif kind is dict:
            try:
                keys = "".join(item)
            except TypeError:  # a key that is not a string
                return False
            if not keys.isascii() and max(keys) >= "\ud800":
                return False
            stack.extend(item.values())
        elif kind is list:
            stack.extend(item)
        else:
            return False
    return False


def leaf_hash(data: bytes) -> bytes:
    """RFC 6962 leaf hash: SHA-256(0x00 || data)."""
    return hashlib.sha256(LEAF_PREFIX + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """RFC 6962 interior node hash: SHA-256(0x01 || left || right)."""
    return hashlib.sha256(NODE_PREFIX + left + right).digest()


def timestamp(moment: datetime) -> str:
    """A fixed, microsecond-precision UTC form, stable across database round trips."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
