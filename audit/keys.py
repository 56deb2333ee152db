"""The platform's own signing identity: what signs promotion attestations, run provenance
and audit checkpoints.

Private keys (ECDSA P-256) live in a keyring file, each encrypted with AES-256-GCM under a
key-encryption key (KEK) read from a file (``PLATFORM_KEK_FILE``; in production it comes from
a secret store or KMS mount). Every key has a key id. Rotation adds a new active key and
retires the old one, which stays in the keyring so old signatures keep verifying.
"""

import base64
import hashlib
import json
import os
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

KEK_BYTES = 32
KEYRING_FORMAT = "neocloud-platform-keyring/1"


class KeyringError(Exception):
    """A keyring or KEK that cannot be used; the message is one plain sentence."""


@dataclass(frozen=True)
class PlatformKey:
    kid: str
    public_pem: str
    created_at: str
    retired_at: str | None
    private_key: ec.EllipticCurvePrivateKey | None = None

    @property
    def public_key(self) -> ec.EllipticCurvePublicKey:
        return serialization.load_pem_public_key(self.public_pem.encode())


CREATE_KEYS = "run `manage.py platform_keys init` to create it"


def read_kek(path: Path) -> bytes:
    try:
        raw = Path(path).read_bytes().strip()
    except FileNotFoundError:
        raise KeyringError(f"The key-encryption key file {path} does not exist; {CREATE_KEYS}.") from None
    except OSError as exc:
        raise KeyringError(f"The key-encryption key file {path} cannot be read ({exc.strerror}).") from None
    try:
        kek = base64.b64decode(raw, validate=True)
    except ValueError:
        kek = b""
    if len(kek) != KEK_BYTES:
        raise KeyringError(f"The key-encryption key file {path} must hold {KEK_BYTES} random bytes in base64.")
    return kek


def write_new_kek(path: Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(base64.b64encode(secrets.token_bytes(KEK_BYTES)) + b"\n")


def _kid_for(public_der: bytes) -> str:
    return "platform-" + hashlib.sha256(public_der).hexdigest()[:16]


def kid_of_pem(public_pem: str) -> str:
    """The key id of a public key given as PEM, as a verifier holding only the PEM computes it."""
    public = serialization.load_pem_public_key(public_pem.encode())
    return _kid_for(public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo))


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Keyring:
    def __init__(self, path: Path, kek: bytes, entries: list[dict]):
        self.path, self._kek, self._entries = Path(path), kek, entries

    # Loading and saving ------------------------------------------------------------------

    @classmethod
    def load(cls, path: Path, kek: bytes) -> "Keyring":
        try:
            document = json.loads(Path(path).read_text())
        except FileNotFoundError:
            raise KeyringError(f"The platform keyring {path} does not exist; {CREATE_KEYS}.") from None
        except OSError as exc:
            raise KeyringError(f"The platform keyring {path} cannot be read ({exc.strerror}).") from None
        except ValueError:
            raise KeyringError(f"The platform keyring {path} is not valid JSON.") from None
        if not isinstance(document, dict) or document.get("format") != KEYRING_FORMAT:
            raise KeyringError(f"The platform keyring {path} is not a {KEYRING_FORMAT} file.")
        keyring = cls(path, kek, list(document.get("keys", [])))
        keyring.active()  # decrypts the active key: a wrong KEK fails here, at start-up
        return keyring

    @classmethod
    def create(cls, path: Path, kek: bytes) -> "Keyring":
        if Path(path).exists():
            raise KeyringError(f"The platform keyring {path} already exists.")
        keyring = cls(path, kek, [])
        keyring._add_key()
        return keyring

    def _save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_suffix(".tmp")
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            json.dump({"format": KEYRING_FORMAT, "keys": self._entries}, handle, indent=2)
        os.replace(temporary, self.path)

    # Keys --------------------------------------------------------------------------------

    def _add_key(self) -> PlatformKey:
        private_key = ec.generate_private_key(ec.SECP256R1())
        public_der = private_key.public_key().public_bytes(serialization.Encoding.DER,
                                                           serialization.PublicFormat.SubjectPublicKeyInfo)
        kid = _kid_for(public_der)
        private_der = private_key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                                serialization.NoEncryption())
        nonce = secrets.token_bytes(12)
        sealed = AESGCM(self._kek).encrypt(nonce, private_der, kid.encode())
        self._entries.append({
            "kid": kid,
            "public_key": private_key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode(),
            "private_key": base64.b64encode(nonce + sealed).decode(),
            "created_at": _now(),
            "retired_at": None,
        })
        self._save()
        return self.key(kid, with_private=True)

    def key(self, kid: str, *, with_private: bool = False) -> PlatformKey:
        entry = next((e for e in self._entries if e["kid"] == kid), None)
        if entry is None:
            raise KeyringError(f"The platform keyring has no key {kid}.")
        private_key = self._unseal(entry) if with_private else None
        return PlatformKey(kid=entry["kid"], public_pem=entry["public_key"], created_at=entry["created_at"],
                           retired_at=entry["retired_at"], private_key=private_key)

    def _unseal(self, entry) -> ec.EllipticCurvePrivateKey:
        blob = base64.b64decode(entry["private_key"])
        try:
            private_der = AESGCM(self._kek).decrypt(blob[:12], blob[12:], entry["kid"].encode())
        except InvalidTag:
            raise KeyringError(f"Platform key {entry['kid']} does not decrypt: wrong key-encryption key, "
                               "or the keyring was altered.") from None
        return serialization.load_der_private_key(private_der, password=None)

    def keys(self) -> list[PlatformKey]:
        return [self.key(entry["kid"]) for entry in self._entries]

    def active(self) -> PlatformKey:
        live = [e for e in self._entries if e["retired_at"] is None]
        if not live:
            raise KeyringError(f"The platform keyring {self.path} has no active key.")
        return self.key(live[-1]["kid"], with_private=True)

    def rotate(self) -> PlatformKey:
        """Retire the active key (it keeps verifying) and make a new one active."""
        for entry in self._entries:
            if entry["retired_at"] is None:
                entry["retired_at"] = _now()
        return self._add_key()

    # Signing -----------------------------------------------------------------------------

    def sign(self, payload: bytes) -> tuple[str, bytes]:
        key = self.active()
        return key.kid, key.private_key.sign(payload, ec.ECDSA(hashes.SHA256()))

    def verify(self, kid: str, payload: bytes, signature: bytes) -> bool:
        try:
            public_key = self.key(kid).public_key
        except KeyringError:
            return False
        try:
            public_key.verify(signature, payload, ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            return False
        return True


def platform_keyring() -> Keyring:
    """The configured keyring (PLATFORM_KEK_FILE, PLATFORM_KEYRING_FILE)."""
    from django.conf import settings

    return Keyring.load(settings.PLATFORM_KEYRING_FILE, read_kek(settings.PLATFORM_KEK_FILE))


def platform_public_keys() -> dict[str, str]:
    """Every platform public key (retired ones included) by key id: what verifies the
    platform's attestations and provenance."""
    return {key.kid: key.public_pem for key in platform_keyring().keys()}
