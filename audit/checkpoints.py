"""Signed checkpoints of the audit tree, and a signed head per tenant with each.

A checkpoint is a C2SP signed note, as Rekor writes them:

    <origin>\\n<tree size>\\n<base64 root hash>\\n\\n— <origin> <base64(key hint || signature)>\\n

signed with the platform's active key (ECDSA P-256 over the note body; the key hint is the
first four bytes of SHA-256 over the key's DER public key). A tenant head is a note of the same
form whose body is ``<origin>/tenant``, the tenant, its event count, the checkpoint size and
root. An export's manifest is signed by a note whose body is ``<origin>/export`` and the
SHA-256 of its ``manifest.json``. ``parse_note`` and ``verify_note`` need only the standard
library and ``cryptography``: the standalone export verifier uses them.
"""

import base64
import hashlib
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

SIGNATURE_PREFIX = "\u2014 "  # an em dash and a space open every signature line


class NoteInvalid(Exception):
    pass


@dataclass(frozen=True)
class Checkpoint:
    origin: str
    size: int
    root: bytes


def key_hint(public_pem: str) -> bytes:
    public = serialization.load_pem_public_key(public_pem.encode())
    der = public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).digest()[:4]


def checkpoint_body(origin: str, size: int, root: bytes) -> str:
    return f"{origin}\n{size}\n{base64.b64encode(root).decode()}\n"


PLATFORM_TENANT = "-"  # the platform's own events (no tenant): a note has no empty body lines


def tenant_head_body(origin: str, tenant: str, tenant_size: int, size: int, root: bytes) -> str:
    return (f"{origin}/tenant\n{tenant or PLATFORM_TENANT}\n{tenant_size}\n{size}\n"
            f"{base64.b64encode(root).decode()}\n")


def export_manifest_body(origin: str, manifest: bytes) -> str:
    """What an export's manifest signature signs (it can parse as neither a checkpoint nor a head)."""
    return f"{origin}/export\nsha256:{hashlib.sha256(manifest).hexdigest()}\n"


def sign_note(body: str, *, name: str, private_key: ec.EllipticCurvePrivateKey) -> str:
    public_pem = private_key.public_key().public_bytes(serialization.Encoding.PEM,
                                                       serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    signature = private_key.sign(body.encode(), ec.ECDSA(hashes.SHA256()))
    return f"{body}\n{SIGNATURE_PREFIX}{name} {base64.b64encode(key_hint(public_pem) + signature).decode()}\n"


def verify_note(note: str, public_pem: str) -> str:
    """Return the note's body if a signature on it verifies under ``public_pem``."""
    body, separator, signatures = note.partition("\n\n")
    if not separator or not body:
        raise NoteInvalid("a signed note is a body, a blank line and signature lines")
    body += "\n"
    hint = key_hint(public_pem)
    public = serialization.load_pem_public_key(public_pem.encode())
    for line in signatures.splitlines():
        if not line.startswith(SIGNATURE_PREFIX):
            raise NoteInvalid("a signature line starts with an em dash")
        try:
            blob = base64.b64decode(line.rsplit(" ", 1)[1], validate=True)
        except (IndexError, ValueError):
            raise NoteInvalid("a signature is base64") from None
        if blob[:4] != hint:
            continue
        try:
            public.verify(blob[4:], body.encode(), ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            raise NoteInvalid("the signature does not match the note") from None
        return body
    raise NoteInvalid("no signature on the note is by the given key")


def parse_checkpoint(body: str) -> Checkpoint:
    lines = body.split("\n")
    try:
        origin, size, root = lines[0], int(lines[1]), base64.b64decode(lines[2], validate=True)
    except (IndexError, ValueError):
        raise NoteInvalid("a checkpoint body is an origin, a size and a base64 root hash") from None
    if len(root) != 32 or size < 0:
        raise NoteInvalid("a checkpoint's root is 32 bytes and its size is not negative")
    return Checkpoint(origin=origin, size=size, root=root)


def parse_tenant_head(body: str) -> tuple[str, str, int, int, bytes]:
    """(origin, tenant, tenant size, checkpoint size, root) from a tenant head's body."""
    lines = body.split("\n")
    try:
        origin, tenant, tenant_size, size = lines[0], lines[1], int(lines[2]), int(lines[3])
        root = base64.b64decode(lines[4], validate=True)
    except (IndexError, ValueError):
        raise NoteInvalid("a tenant head is an origin, a tenant, its size, a checkpoint size and a root") from None
    if not origin.endswith("/tenant"):
        raise NoteInvalid("this note is not a tenant head")
    return origin.removesuffix("/tenant"), "" if tenant == PLATFORM_TENANT else tenant, tenant_size, size, root
