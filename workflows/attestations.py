"""Signed promotion attestations: an in-toto Statement in a DSSE envelope, in a Sigstore bundle,
signed by the platform's key.

Anyone holding the platform's public keys (``GET /api/v1/platform/keys``) verifies one offline
with ``verify_attestation``: it needs only ``cryptography``. The bundle names the key by id in
``verificationMaterial.publicKey.hint``; there is no transparency-log entry (the platform's own
audit log, with its signed checkpoints, plays that part).
"""

import base64
import hashlib
import json

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from audit.hashing import canonical_json

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PAYLOAD_TYPE = "application/vnd.in-toto+json"
PREDICATE_TYPE = "https://neocloud.dev/attestations/promotion/v1"
PROVENANCE_PREDICATE = "https://neocloud.dev/provenance/run/v1"  # what the platform signs for a run's outputs
BUNDLE_MEDIA_TYPE = "application/vnd.dev.sigstore.bundle.v0.3+json"


class AttestationInvalid(Exception):
    """The attestation does not verify; the message says why in one sentence."""


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE pre-authentication encoding: what the signature covers."""
    kind = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(kind), kind, len(payload), payload)


def statement(*, subject_name: str, digest: str, predicate: dict) -> dict:
    algorithm, _, value = digest.partition(":")
    return {"_type": STATEMENT_TYPE, "subject": [{"name": subject_name, "digest": {algorithm: value}}],
            "predicateType": PREDICATE_TYPE, "predicate": predicate}


def sign_statement(document: dict, keyring) -> str:
    """The Sigstore bundle (JSON text) of ``document`` signed by the keyring's active key."""
    payload = canonical_json(document)
    kid, signature = keyring.sign(pae(PAYLOAD_TYPE, payload))
    bundle = {
        "mediaType": BUNDLE_MEDIA_TYPE,
        "verificationMaterial": {"publicKey": {"hint": kid}, "tlogEntries": []},
        "dsseEnvelope": {"payload": base64.b64encode(payload).decode(), "payloadType": PAYLOAD_TYPE,
                         "signatures": [{"sig": base64.b64encode(signature).decode(), "keyid": kid}]},
    }
    return json.dumps(bundle, sort_keys=True)


def bundle_digest(bundle_json: str) -> str:
    return "sha256:" + hashlib.sha256(bundle_json.encode()).hexdigest()


def verify_attestation(bundle_json: str | bytes, public_keys: dict[str, str], *,
                       predicate_type: str = PREDICATE_TYPE) -> dict:
    """Verify a platform-signed statement (a promotion attestation unless ``predicate_type``
    says otherwise) against ``{key id: PEM}``; return the statement."""
    try:
        bundle = json.loads(bundle_json)
        envelope = bundle["dsseEnvelope"]
        payload = base64.b64decode(envelope["payload"], validate=True)
        signatures = envelope["signatures"]
        payload_type = envelope["payloadType"]
    except (ValueError, KeyError, TypeError):
        raise AttestationInvalid("The attestation is not a Sigstore bundle with a DSSE envelope.") from None
    if payload_type != PAYLOAD_TYPE:
        raise AttestationInvalid(f"The envelope carries {payload_type}, not an in-toto statement.")
    for entry in signatures if isinstance(signatures, list) else []:
        pem = public_keys.get(entry.get("keyid", "")) if isinstance(entry, dict) else None
        if pem is None:
            continue
        key = serialization.load_pem_public_key(pem.encode())
        try:
            key.verify(base64.b64decode(entry.get("sig", "")), pae(payload_type, payload), ec.ECDSA(hashes.SHA256()))
        except (InvalidSignature, ValueError):
            raise AttestationInvalid(f"The signature by {entry['keyid']} does not match the statement.") from None
        document = json.loads(payload)
        if document.get("_type") != STATEMENT_TYPE or document.get("predicateType") != predicate_type:
            raise AttestationInvalid(f"The statement is not a {predicate_type} statement.")
        return document
    raise AttestationInvalid("No signature on the attestation was made by a known platform key.")
