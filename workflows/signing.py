"""Signing and verification of model artifacts as Sigstore bundles.

Three modes, all producing or reading a Sigstore bundle:

- KEY: an elliptic-curve key (model-signing); for bootstrap, tests and the platform's own keys.
- CERTIFICATE: a key with an enterprise CA chain (model-signing), for air-gapped sites.
- KEYLESS: Sigstore (Fulcio + Rekor), verified offline by sigstore-python against a pinned
  trusted root.

What is signed. KEY and CERTIFICATE bundles (and bundles from `sign_keyless`) carry a
model-signing manifest: an in-toto statement in DSSE listing every file of the model with its
sha256. A single file is a one-entry manifest. KEYLESS verification also accepts plain Sigstore
bundles over one file's digest (what `sigstore sign` makes).

What a signature must describe. A bundle is attached to an artifact, which the platform knows by
its name and its bytes, and its in-toto statement must describe exactly that artifact: exactly
one subject, named as the artifact is registered (model-signing takes the subject name from the
path it hashes, so `sign_path` sets it explicitly), whose sha256 is model-signing's manifest
digest of the artifact's bytes. A plain Sigstore bundle has no statement: it binds the file's
sha256 and names nothing. docs/signing.md states the rule.

What the platform adds to model-signing 1.1.1, whose gaps the design notes list:

- the hashing configuration is always explicit (sha256, one digest per file, no symlinks, no
  ignored paths), never guessed from the bundle (guessed shard hashing crashes);
- every file present must be signed: unsigned files are never ignored, and the ignore paths a
  bundle declares are not honoured (model-signing's `verify` adds them to the hashing config);
- certificate bundles are checked for the code-signing EKU, an allowed SAN, and a chain to the
  tenant's roots valid at the platform's receipt time (model-signing checks the chain at the
  leaf's notBefore and never looks at the identity);
- keys, certificates and bundles stay in memory: model-signing's signers and verifiers only read
  files, so thin subclasses here load them from PEM bytes instead of writing keys to disk.

`verify_path` never raises: every failure is a VerificationResult with a one-sentence reason.
"""

from __future__ import annotations

import base64
import binascii
import copy
import functools
import hashlib
import importlib.resources
import json
import logging
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import Enum
from pathlib import Path

from cryptography import exceptions as crypto_exceptions
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from google.protobuf import json_format
from model_signing import hashing
from model_signing import manifest as manifest_module
from model_signing._signing import sign_certificate, sign_ec_key, sign_sigstore_pb, signing
from OpenSSL import crypto as openssl_crypto
from sigstore import dsse as sigstore_dsse
from sigstore.errors import Error as SigstoreError
from sigstore.hashes import Hashed
from sigstore.models import Bundle, ClientTrustConfig, TrustedRoot
from sigstore.oidc import IdentityError, IdentityToken
from sigstore.sign import SigningContext
from sigstore.verify import Verifier, policy
from sigstore_models.bundle import v1 as bundle_pb
from sigstore_models.common.v1 import HashAlgorithm

from workflows import certs
from workflows.digests import HASH_CHUNK_BYTES, sha256_of_file

logger = logging.getLogger(__name__)

DEFAULT_MAX_BUNDLE_BYTES = 1_048_576
# The Sigstore public-good root shipped inside sigstore-python (pinned with its version).
_EMBEDDED_PRODUCTION_ROOT = ("_store", "https%3A%2F%2Ftuf-repo-cdn.sigstore.dev", "trusted_root.json")
# Fulcio's OIDC issuer extensions: v1 holds raw bytes, v2 a DER UTF8String.
_FULCIO_ISSUER_V1 = x509.ObjectIdentifier("1.3.6.1.4.1.57264.1.1")
_FULCIO_ISSUER_V2 = x509.ObjectIdentifier("1.3.6.1.4.1.57264.1.8")
_IN_TOTO_PAYLOAD_TYPE = "application/vnd.in-toto+json"
_PROBLEMS_SHOWN = 5


class Mode(str, Enum):
    KEY = "key"
    CERTIFICATE = "certificate"
    KEYLESS = "keyless"


@dataclass
class TrustConfig:
    """What one tenant trusts.

    `trusted_root_json` is a Sigstore trusted root (JSON); None means the public-good root
    embedded in the installed sigstore-python, read offline. Fetch a current one through TUF for
    bundles signed after that release's roots changed.
    """

    public_keys: dict[str, str] = field(default_factory=dict)  # key id -> PEM public key
    ca_roots: list[str] = field(default_factory=list)  # PEM
    allowed_identities: list[str] = field(default_factory=list)  # SAN email or URI, CERTIFICATE mode
    sigstore_identities: list[tuple[str, str]] = field(default_factory=list)  # (identity, issuer)
    trusted_root_json: str | None = None


@dataclass
class VerificationResult:
    """The outcome of one verification.

    `digest` is the sha256 the platform computed: of the file for a single file, and for a
    directory the model-signing manifest digest (sha256 over the sorted per-file sha256
    digests, the in-toto subject digest; for a single file the subject digest is that manifest
    digest too, the sha256 of the file's sha256). It is "" when the artifact was never hashed.
    `signed_at` is a verified signing time: the Rekor integration time for KEYLESS, None for
    KEY and CERTIFICATE bundles, which carry no trusted time.
    """

    verified: bool
    mode: Mode | None
    identity: str
    reason: str
    digest: str
    signed_at: datetime | None


@dataclass(frozen=True)
class _Artifact:
    """What a bundle is attached to: the bytes on disk and the name the artifact is registered under."""

    path: Path
    name: str


@dataclass(frozen=True)
class _Subject:
    """The one subject of a signed in-toto statement: what the signer says it signed."""

    name: str
    digest: str  # sha256:<hex>


class _Rejected(Exception):
    """A verification failure with the sentence the caller will see."""

    def __init__(self, reason: str, *, identity: str = "", digest: str = ""):
        super().__init__(reason)
        self.reason = reason
        self.identity = identity
        self.digest = digest


# Hashing -------------------------------------------------------------------------------------


def hashing_config() -> hashing.Config:
    """The one hashing configuration used to sign and to verify (never guessed from a bundle).

    One sha256 per file, files hashed in parallel on one thread per core (hashlib releases the
    GIL); a single large file is hashed on one core.
    """
    return (hashing.Config()
            .set_ignored_paths(paths=[], ignore_git_paths=False)
            .use_file_serialization(hashing_algorithm="sha256", chunk_size=HASH_CHUNK_BYTES,
                                    max_workers=os.cpu_count(), allow_symlinks=False))


def manifest_digest(manifest: manifest_module.Manifest) -> str:
    """The manifest digest: sha256 over the per-file digests in name order (in-toto subject).

    model-signing's subject digest, for a directory and for a single file alike (a one-entry
    manifest, so the sha256 of the file's sha256)."""
    digest = hashlib.sha256()
    for descriptor in manifest.resource_descriptors():
        digest.update(descriptor.digest.digest_value)
    return "sha256:" + digest.hexdigest()


def _artifact_digest(path: Path, manifest: manifest_module.Manifest) -> str:
    if path.is_file():
        only = next(manifest.resource_descriptors())
        return f"{only.digest.algorithm}:{only.digest.digest_hex}"
    return manifest_digest(manifest)


def _hash_model(path: Path) -> manifest_module.Manifest:
    return hashing_config().hash(path)


def model_name(path: Path | str) -> str:
    """The subject name model-signing gives what it hashes: the path's final component (of the
    resolved path for '.' and '..'). A bundle signed without a name carries this one."""
    path = Path(path)
    return path.name if path.name not in ("", "..") else path.resolve().name


def _named(manifest: manifest_module.Manifest, name: str) -> manifest_module.Manifest:
    """The same manifest under another model name, which becomes the in-toto subject name."""
    serialization_type = manifest_module.SerializationType.from_args(manifest.serialization_type)
    items = [serialization_type.new_item(descriptor.identifier, descriptor.digest)
             for descriptor in manifest.resource_descriptors()]
    return manifest_module.Manifest(name, items, serialization_type)


# Keys ----------------------------------------------------------------------------------------


def generate_key_pair(password: bytes | None = None) -> tuple[bytes, bytes]:
    """A new EC P-256 key pair as (private PKCS#8 PEM, public SubjectPublicKeyInfo PEM)."""
    private_key = ec.generate_private_key(ec.SECP256R1())
    encryption = (serialization.BestAvailableEncryption(password) if password
                  else serialization.NoEncryption())
    private_pem = private_key.private_bytes(serialization.Encoding.PEM,
                                            serialization.PrivateFormat.PKCS8, encryption)
    return private_pem, _public_pem(private_key.public_key())


def _public_pem(public_key) -> bytes:
    return public_key.public_bytes(serialization.Encoding.PEM,
                                   serialization.PublicFormat.SubjectPublicKeyInfo)


def _key_hint(public_key) -> str:
    """model-signing's public key hint: sha256 of the key's PEM."""
    return hashlib.sha256(_public_pem(public_key)).hexdigest()


# model-signing's signers and verifiers, loaded from memory ----------------------------------


class _KeySigner(sign_ec_key.Signer):
    """model-signing's EC key signer, given a loaded key (its own __init__ reads a file)."""

    def __init__(self, private_key: ec.EllipticCurvePrivateKey):
        sign_ec_key._check_supported_ec_key(private_key.public_key())
        self._private_key = private_key


class _CertificateSigner(sign_certificate.Signer):
    """model-signing's certificate signer, given a loaded key, leaf and chain."""

    def __init__(self, private_key: ec.EllipticCurvePrivateKey, leaf: x509.Certificate,
                 chain: list[x509.Certificate]):
        sign_ec_key._check_supported_ec_key(private_key.public_key())
        if private_key.public_key() != leaf.public_key():
            raise ValueError("The signing certificate does not certify this private key.")
        self._private_key = private_key
        self._signing_certificate = leaf
        self._trust_chain = chain


class _KeyVerifier(sign_ec_key.Verifier):
    def __init__(self, public_key: ec.EllipticCurvePublicKey):
        sign_ec_key._check_supported_ec_key(public_key)
        self._public_key = public_key


class _CertificateVerifier(sign_certificate.Verifier):
    """model-signing's certificate verifier over the tenant's roots only.

    Given no roots, model-signing would trust certifi's web PKI bundle; callers refuse that case.
    """

    def __init__(self, roots: list[x509.Certificate]):
        self._log_fingerprints = False
        self._store = openssl_crypto.X509Store()
        for root in roots:
            self._store.add_cert(openssl_crypto.X509.from_cryptography(root))


# Signing -------------------------------------------------------------------------------------


def sign_path(path: Path, *, private_key_pem: bytes, certificate_pem: bytes | None = None,
              chain_pem: Sequence[bytes] = (), password: bytes | None = None, name: str | None = None) -> str:
    """Sign a model directory or a single file; return the Sigstore bundle JSON.

    `name` is the statement's subject name: the name the artifact will be registered under,
    which verification requires. None keeps model-signing's name, `model_name(path)`.

    With only a key: KEY mode. With a certificate (and the CA certificates above it):
    CERTIFICATE mode. Works offline. Raises ValueError for an unusable path, key, certificate
    or password, and TypeError for a key that is not elliptic-curve (or a password mismatch in
    kind: one given for a plain key, or none for an encrypted one).
    """
    path = Path(path)
    private_key = serialization.load_pem_private_key(private_key_pem, password)
    if not isinstance(private_key, ec.EllipticCurvePrivateKey):
        raise TypeError("model-signing signs with elliptic-curve keys only (P-256, P-384, P-521).")
    signer = _signer_for(private_key, certificate_pem, chain_pem)
    payload = signing.Payload(_manifest_to_sign(path, name))
    return signer.sign(payload).bundle.to_json()


def _signer_for(private_key, certificate_pem: bytes | None, chain_pem: Sequence[bytes]) -> signing.Signer:
    if certificate_pem is None:
        if chain_pem:
            raise ValueError("A certificate chain was given without a signing certificate.")
        return _KeySigner(private_key)
    leaf = x509.load_pem_x509_certificate(certificate_pem)
    return _CertificateSigner(private_key, leaf, certs.load_pem_certificates(list(chain_pem)))


def _manifest_to_sign(path: Path, name: str | None) -> manifest_module.Manifest:
    if not path.exists():
        raise ValueError(f"Nothing to sign: {path} does not exist.")
    manifest = _hash_model(path)
    if not any(True for _ in manifest.resource_descriptors()):
        raise ValueError(f"Nothing to sign: {path} holds no files.")
    return manifest if name is None else _named(manifest, name)


def sign_keyless(path: Path, *, identity_token: str | None,
                 client_trust_config_json: str | None = None, name: str | None = None) -> str:
    """Sign a model directory or file keylessly through Sigstore; return the bundle JSON.

    The bundle is a model-signing manifest in DSSE (as `sign_path` makes, subject `name`
    included), signed with an ephemeral key whose certificate Fulcio issues for
    `identity_token` (an OIDC token, such as a CI job's), and logged in Rekor.
    `client_trust_config_json` is a Sigstore client trust config (trusted root plus
    Fulcio/Rekor/TSA URLs) for a private instance; None means the public-good instance, whose
    configuration is refreshed through TUF.

    This needs the network (Fulcio, Rekor, and TUF for the public-good instance), so the test
    suite only checks that it refuses clearly without a usable token; the token is checked
    before anything is contacted. It takes a token rather than running sigstore's `Issuer`
    flow: a server cannot open a browser, and model-signing's Sigstore signer contacts the
    issuer's discovery URL even when handed a token.
    """
    token = _identity_token(identity_token)
    statement = sigstore_dsse.Statement(
        json_format.MessageToJson(signing.Payload(_manifest_to_sign(Path(path), name)).statement.pb).encode())
    trust_config = (ClientTrustConfig.from_json(client_trust_config_json) if client_trust_config_json
                    else ClientTrustConfig.production())
    context = SigningContext.from_trust_config(trust_config)
    with context.signer(token, cache=False) as signer:
        return signer.sign_dsse(statement).to_json()


def _identity_token(raw: str | None) -> IdentityToken:
    if not raw or not raw.strip():
        raise ValueError("Keyless signing needs an OIDC identity token (for example the CI job's "
                         "ambient token); none was given.")
    try:
        return IdentityToken(raw.strip())
    except IdentityError as exc:
        raise ValueError(f"The identity token cannot be used for Sigstore signing: {exc}.") from exc


# Verification --------------------------------------------------------------------------------


def verify_path(path: Path, bundle_json: str | bytes, *, trust: TrustConfig, received_at: datetime,
                name: str | None = None, max_bundle_bytes: int = DEFAULT_MAX_BUNDLE_BYTES) -> VerificationResult:
    """Verify a model directory or file against a bundle, for one tenant's trust. Never raises.

    `name` is the name the artifact is registered under, which the bundle's in-toto subject
    must carry; None means `model_name(path)`, the name model-signing would give it.
    `received_at` is when the platform first received the bundle (timezone-aware). Certificate
    bundles carry no trusted timestamp, so certificate validity is judged at that time, on
    every re-verification.
    """
    mode = None
    try:
        raw = _bundle_bytes(bundle_json, max_bundle_bytes)
        document = _parse_bundle(raw)
        _require_aware(received_at)
        mode = _detect_mode(document, trust)
        artifact = _Artifact(Path(path), model_name(path) if name is None else name)
        return _VERIFIERS[mode](artifact, document, raw, trust, received_at)
    except _Rejected as rejection:
        return VerificationResult(False, mode, rejection.identity, rejection.reason, rejection.digest, None)
    except Exception as exc:  # a gate answers; it does not crash on hostile input
        logger.exception("Unexpected error while verifying %s", path)
        return VerificationResult(False, mode, "", f"Verification failed unexpectedly: {exc}.", "", None)


def _bundle_bytes(bundle_json: str | bytes, limit: int) -> bytes:
    raw = bundle_json.encode("utf-8") if isinstance(bundle_json, str) else bytes(bundle_json)
    if len(raw) > limit:
        raise _Rejected(f"The bundle is {len(raw):,} bytes, over the {limit:,}-byte limit.")
    return raw


def _parse_bundle(raw: bytes) -> dict:
    try:
        document = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _Rejected(f"The bundle is not valid JSON ({exc}).") from None
    if not isinstance(document, dict) or not isinstance(document.get("verificationMaterial"), dict):
        raise _Rejected("The bundle is not a Sigstore bundle: it has no verification material.")
    return document


def _require_aware(received_at: datetime) -> None:
    if not isinstance(received_at, datetime) or received_at.tzinfo is None:
        raise _Rejected("The receipt time must be a timezone-aware datetime.")


def _detect_mode(document: dict, trust: TrustConfig) -> Mode:
    material = document["verificationMaterial"]
    if "publicKey" in material:
        return Mode.KEY
    chain = _bundle_certificates(material)
    if not chain:
        raise _Rejected("The bundle names neither a public key nor a certificate.")
    if material.get("tlogEntries") and _issued_by_fulcio(chain[0], trust):
        return Mode.KEYLESS
    return Mode.CERTIFICATE


def _bundle_certificates(material: dict) -> list[x509.Certificate]:
    """Leaf first: an x509CertificateChain (bundle v0.1-0.2, model-signing) or one certificate (v0.3)."""
    try:
        if "x509CertificateChain" in material:
            entries = material["x509CertificateChain"]["certificates"]
        elif "certificate" in material:
            entries = [material["certificate"]]
        else:
            return []
        return [x509.load_der_x509_certificate(base64.b64decode(entry["rawBytes"])) for entry in entries]
    except (KeyError, TypeError, ValueError, binascii.Error) as exc:
        raise _Rejected(f"The bundle's certificates cannot be read ({exc}).") from None


def _issued_by_fulcio(leaf: x509.Certificate, trust: TrustConfig) -> bool:
    try:
        root = _trusted_root(trust.trusted_root_json)
    except (SigstoreError, ValueError, OSError) as exc:
        raise _Rejected(f"The tenant's Sigstore trusted root cannot be read ({exc}).") from None
    return any(leaf.issuer == fulcio.subject for fulcio in root.get_fulcio_certs())


def _model_signing_signature(document: dict, *, missing_hint: str | None = None) -> sign_sigstore_pb.Signature:
    """The bundle as model-signing reads it (the same normalisation as its Signature.read).

    `missing_hint` fills an absent key hint (unsigned metadata), so that model-signing does not
    print its old-format warning to stdout for every key tried.
    """
    document = copy.deepcopy(document)
    material = document["verificationMaterial"]
    material.setdefault("tlogEntries", [])
    if isinstance(material.get("publicKey"), dict):
        material["publicKey"]["hint"] = material["publicKey"].get("hint") or missing_hint
        for legacy in ("rawBytes", "keyDetails"):
            material["publicKey"].pop(legacy, None)
    try:
        return sign_sigstore_pb.Signature(bundle_pb.Bundle.from_dict(document))
    except Exception as exc:  # noqa: BLE001 - sigstore-models raises pydantic and value errors alike
        raise _Rejected(f"The bundle is not a well-formed Sigstore bundle ({exc}).") from None


def _signed_manifest(verifier: signing.Verifier, signature: sign_sigstore_pb.Signature,
                     signer: str) -> manifest_module.Manifest:
    """Check the DSSE signature with model-signing and return the manifest it signs."""
    try:
        return verifier.verify(signature)
    except crypto_exceptions.InvalidSignature:
        raise _Rejected(f"The bundle's signature does not verify with {signer}.") from None
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        raise _Rejected(f"The bundle cannot be verified as a model-signing bundle ({exc}).") from None


# KEY mode ------------------------------------------------------------------------------------


def _verify_with_key(artifact: _Artifact, document: dict, raw: bytes, trust: TrustConfig,
                     received_at: datetime) -> VerificationResult:
    if not trust.public_keys:
        raise _Rejected("The tenant trusts no public keys, so a key-signed bundle cannot verify.")
    key_material = document["verificationMaterial"]["publicKey"]
    if not isinstance(key_material, dict):
        raise _Rejected("The bundle's public key entry is malformed.")
    candidates = _keys_matching_hint(trust.public_keys, key_material.get("hint"))
    if not candidates:
        raise _Rejected("The bundle was not signed by any key this tenant trusts "
                        f"(trusted key ids: {', '.join(sorted(trust.public_keys))}).")
    expected, key_id = _manifest_from_first_key(document, candidates)
    digest, count = _match_manifest(artifact, document, expected, identity=key_id)
    return VerificationResult(True, Mode.KEY, key_id, f"Signed by key {key_id} over {_files(count)}.",
                              digest, None)


def _keys_matching_hint(public_keys: dict[str, str], hint: str | None) -> list[tuple[str, object]]:
    """(key id, key) pairs worth trying: those whose hint matches, or all when there is none."""
    candidates = []
    for key_id, pem in sorted(public_keys.items()):
        try:
            public_key = serialization.load_pem_public_key(pem.encode())
        except ValueError:
            logger.warning("Trusted public key %s is not a PEM public key; skipped", key_id)
            continue
        if not hint or _key_hint(public_key) == hint:
            candidates.append((key_id, public_key))
    return candidates


def _manifest_from_first_key(document: dict, candidates) -> tuple[manifest_module.Manifest, str]:
    last_rejection = None
    for key_id, public_key in candidates:
        try:
            verifier = _KeyVerifier(public_key)
        except (ValueError, AttributeError):
            continue  # not an EC key on a curve model-signing supports
        signature = _model_signing_signature(document, missing_hint=_key_hint(public_key))
        try:
            return _signed_manifest(verifier, signature, f"key {key_id}"), key_id
        except _Rejected as rejection:
            last_rejection = rejection
    raise last_rejection or _Rejected("No trusted key of this tenant is a supported EC key.")


# CERTIFICATE mode ----------------------------------------------------------------------------


def _verify_with_certificate(artifact: _Artifact, document: dict, raw: bytes, trust: TrustConfig,
                             received_at: datetime) -> VerificationResult:
    chain = _bundle_certificates(document["verificationMaterial"])
    leaf, intermediates = chain[0], chain[1:]
    roots = _tenant_roots(trust)
    identity = _check_certificate_policy(leaf, intermediates, roots, trust, received_at)
    if not isinstance(leaf.public_key(), ec.EllipticCurvePublicKey):
        raise _Rejected("The signing certificate holds a key that is not elliptic-curve; model-signing "
                        "verifies EC signatures only.", identity=identity)
    expected = _signed_manifest(_CertificateVerifier(roots), _model_signing_signature(document),
                                f"the certificate for {identity}")
    digest, count = _match_manifest(artifact, document, expected, identity=identity)
    reason = (f"Signed by certificate {identity} (issued by {leaf.issuer.rfc4514_string()}) "
              f"over {_files(count)}.")
    return VerificationResult(True, Mode.CERTIFICATE, identity, reason, digest, None)


def _tenant_roots(trust: TrustConfig) -> list[x509.Certificate]:
    # Without roots model-signing falls back to certifi's web PKI; never let it.
    try:
        roots = certs.load_pem_certificates(trust.ca_roots)
    except ValueError as exc:
        raise _Rejected(f"The tenant's CA roots cannot be read ({exc}).") from None
    if not roots:
        raise _Rejected("The tenant trusts no CA roots, so a certificate-signed bundle cannot verify.")
    return roots


def _check_certificate_policy(leaf, intermediates, roots, trust: TrustConfig, received_at: datetime) -> str:
    """The checks model-signing lacks; returns the allowed identity the leaf names."""
    problems = [certs.validity_problem(leaf, received_at, "signing")]
    problems += [certs.validity_problem(ca, received_at, "intermediate") for ca in intermediates]
    problems += [certs.chain_problem(leaf, intermediates, roots, received_at),
                 certs.code_signing_problem(leaf)]
    first = next((problem for problem in problems if problem), None)
    if first:
        raise _Rejected(first)
    identity = certs.allowed_identity(leaf, trust.allowed_identities)
    if identity is None:
        names = ", ".join(certs.subject_alternative_names(leaf)) or "no email or URI"
        raise _Rejected(f"The signing certificate names {names}, which this tenant does not allow to sign.")
    return identity


# KEYLESS mode --------------------------------------------------------------------------------


def _verify_keyless(artifact: _Artifact, document: dict, raw: bytes, trust: TrustConfig,
                    received_at: datetime) -> VerificationResult:
    if not trust.sigstore_identities:
        raise _Rejected("The tenant allows no Sigstore identities, so a keyless bundle cannot verify.")
    try:
        bundle = Bundle.from_json(raw)
    except (SigstoreError, ValueError) as exc:
        raise _Rejected(f"The bundle is not a valid Sigstore bundle ({exc}).") from None
    identity_policy, identity = _allowed_sigstore_policy(bundle.signing_certificate, trust)
    verifier = _sigstore_verifier(trust.trusted_root_json)
    if "dsseEnvelope" in document:
        digest, what = _verify_keyless_manifest(artifact, document, bundle, verifier, identity_policy, identity)
    else:  # a plain Sigstore bundle: no statement, so it binds the file's sha256 and names nothing
        digest, what = _verify_keyless_file(artifact.path, document, bundle, verifier, identity_policy, identity)
    signed_at = _integrated_time(document)
    logged = f", logged in Rekor at {signed_at.isoformat()}" if signed_at else ""
    issuer = _fulcio_issuer(bundle.signing_certificate)
    reason = f"Signed keylessly by {identity} (issuer {issuer}) over {what}{logged}."
    return VerificationResult(True, Mode.KEYLESS, identity, reason, digest, signed_at)


def _allowed_sigstore_policy(certificate: x509.Certificate, trust: TrustConfig):
    """The first allowed (identity, issuer) the certificate matches, as a sigstore policy.

    Checking here first only picks the policy and the reason; sigstore verifies it again."""
    for identity, issuer in trust.sigstore_identities:
        candidate = policy.Identity(identity=identity, issuer=issuer)
        try:
            candidate.verify(certificate)
        except SigstoreError:
            continue
        return candidate, identity
    names = ", ".join(certs.subject_alternative_names(certificate)) or "an unnamed identity"
    raise _Rejected(f"The bundle was signed by {names} (issuer {_fulcio_issuer(certificate)}), "
                    "which is not a Sigstore identity this tenant allows.")


def _verify_keyless_file(path, document, bundle, verifier, identity_policy, identity) -> tuple[str, str]:
    if not path.is_file():
        raise _Rejected("This keyless bundle signs a single file's digest, but the artifact is not a file.",
                        identity=identity)
    raw_digest = sha256_of_file(path)
    digest = "sha256:" + raw_digest.hex()
    if _bundle_message_digest(document) not in (None, raw_digest):
        raise _Rejected("The file's sha256 does not match the digest this bundle signs.",
                        identity=identity, digest=digest)
    _sigstore_verify(lambda: verifier.verify_artifact(
        Hashed(algorithm=HashAlgorithm.SHA2_256, digest=raw_digest), bundle, identity_policy),
        identity, digest)
    return digest, f"the file {digest}"


def _verify_keyless_manifest(artifact, document, bundle, verifier, identity_policy, identity) -> tuple[str, str]:
    payload_type, payload = _sigstore_verify(lambda: verifier.verify_dsse(bundle, identity_policy),
                                             identity, "")
    if payload_type != _IN_TOTO_PAYLOAD_TYPE:
        raise _Rejected(f"The keyless bundle signs a {payload_type} payload, not an in-toto manifest.",
                        identity=identity)
    try:
        expected = signing.dsse_payload_to_manifest(json.loads(payload))
    except (ValueError, KeyError, TypeError) as exc:
        raise _Rejected(f"The bundle's signed payload is not a model-signing manifest ({exc}).",
                        identity=identity) from None
    digest, count = _match_manifest(artifact, document, expected, identity=identity)
    return digest, _files(count)


def _sigstore_verify(check: Callable, identity: str, digest: str):
    try:
        return check()
    except (SigstoreError, ValueError) as exc:
        raise _Rejected(f"Sigstore verification failed: {exc}.", identity=identity, digest=digest) from None


def _bundle_message_digest(document: dict) -> bytes | None:
    try:
        encoded = document["messageSignature"]["messageDigest"]["digest"]
        return base64.b64decode(encoded)
    except (KeyError, TypeError, ValueError, binascii.Error):
        return None


def _integrated_time(document: dict) -> datetime | None:
    """Rekor's integration time of the first log entry (sigstore verified it via the SET)."""
    try:
        seconds = int(document["verificationMaterial"]["tlogEntries"][0]["integratedTime"])
    except (KeyError, IndexError, TypeError, ValueError):
        return None
    return datetime.fromtimestamp(seconds, tz=UTC) if seconds else None


def _fulcio_issuer(certificate: x509.Certificate) -> str:
    for oid, decode in ((_FULCIO_ISSUER_V1, lambda value: value),
                        (_FULCIO_ISSUER_V2, lambda value: value[2:])):  # skip the DER tag and length
        try:
            value = certificate.extensions.get_extension_for_oid(oid).value.value
        except x509.ExtensionNotFound:
            continue
        return decode(value).decode("utf-8", "replace")
    return "unknown"


@functools.lru_cache(maxsize=16)
def _trusted_root(trusted_root_json: str | None) -> TrustedRoot:
    """A Sigstore trusted root, read offline: the tenant's, or the embedded public-good one.

    Not `ClientTrustConfig.production(offline=True)`: that reads whatever an earlier run left in
    the user's TUF cache, unverified, and writes under $HOME.
    """
    if trusted_root_json is None:
        resource = importlib.resources.files("sigstore").joinpath(*_EMBEDDED_PRODUCTION_ROOT)
        with importlib.resources.as_file(resource) as root_path:
            return TrustedRoot.from_file(str(root_path))
    with tempfile.TemporaryDirectory() as directory:
        root_path = os.path.join(directory, "trusted_root.json")
        Path(root_path).write_text(trusted_root_json, encoding="utf-8")
        return TrustedRoot.from_file(root_path)


@functools.lru_cache(maxsize=16)
def _sigstore_verifier(trusted_root_json: str | None) -> Verifier:
    return Verifier(trusted_root=_trusted_root(trusted_root_json))


# Manifest comparison -------------------------------------------------------------------------


def _match_manifest(artifact: _Artifact, document: dict, expected: manifest_module.Manifest, *,
                    identity: str) -> tuple[str, int]:
    """Check that the verified statement describes the artifact: its subject's name, then each
    file, then the subject's digest. Return (digest, file count)."""
    _require_platform_hashing(expected, identity)
    path = artifact.path
    if not path.exists():
        raise _Rejected(f"The artifact {path.name} does not exist.", identity=identity)
    subject = _signed_subject(document, identity)
    # The name first: refusing a misnamed bundle needs no hashing of a large model.
    if subject.name != artifact.name:
        raise _Rejected(f"The signature's subject is named {_shown(subject.name)}, not {artifact.name}, "
                        "the artifact it is attached to.", identity=identity)
    try:
        actual = _hash_model(path)
    except (ValueError, OSError) as exc:
        raise _Rejected(f"The artifact cannot be hashed ({exc}).", identity=identity) from None
    digest = _artifact_digest(path, actual) if any(True for _ in actual.resource_descriptors()) else ""
    problems = _manifest_differences(expected, actual)
    if problems:
        shown = problems[:_PROBLEMS_SHOWN]
        more = f"; and {len(problems) - len(shown)} more" if len(problems) > len(shown) else ""
        raise _Rejected(f"The artifact does not match its signature: {'; '.join(shown)}{more}.",
                        identity=identity, digest=digest)
    # Every file matched, but the subject digest is what other documents cite for the artifact.
    described = manifest_digest(actual)
    if subject.digest != described:
        raise _Rejected(f"The signature's subject digest is {_shown(subject.digest)}, not {described}, the "
                        f"manifest digest of {artifact.name}, the artifact it is attached to.",
                        identity=identity, digest=digest)
    return digest, sum(1 for _ in expected.resource_descriptors())


def _signed_subject(document: dict, identity: str) -> _Subject:
    """The subject of the bundle's statement, read once its signature has verified.

    The DSSE payload in the document is the one model-signing or sigstore verified. model-signing
    already refuses a v1.0 statement with other than one subject; v0.2 statements list one
    subject per file, and are refused here.
    """
    try:
        statement = json.loads(base64.b64decode(document["dsseEnvelope"]["payload"], validate=True))
        subjects = statement["subject"]
    except (KeyError, TypeError, ValueError, binascii.Error) as exc:
        raise _Rejected(f"The bundle's signed statement cannot be read ({exc}).", identity=identity) from None
    if not isinstance(subjects, list) or len(subjects) != 1:
        count = len(subjects) if isinstance(subjects, list) else 0
        raise _Rejected(f"The signature's statement has {count} subjects; it must describe exactly one, "
                        "the artifact it is attached to.", identity=identity)
    subject = subjects[0] if isinstance(subjects[0], dict) else {}
    name, digests = subject.get("name"), subject.get("digest")
    sha256 = digests.get("sha256") if isinstance(digests, dict) else None
    if not isinstance(name, str) or not isinstance(sha256, str):
        raise _Rejected("The signature's subject lacks a name or a sha256 digest.", identity=identity)
    return _Subject(name, f"sha256:{sha256}")


def _shown(text: str, limit: int = 100) -> str:
    """Signer-supplied text as a reason quotes it: plain when short and printable, else escaped."""
    if text and text.isprintable() and len(text) <= limit:
        return text
    return json.dumps(text[:limit]) + ("…" if len(text) > limit else "")


def _require_platform_hashing(expected: manifest_module.Manifest, identity: str) -> None:
    serialization_type = expected.serialization_type
    method, hash_type = serialization_type.get("method"), serialization_type.get("hash_type")
    if (method, hash_type) != ("files", "sha256"):
        raise _Rejected(f"The bundle's manifest uses {method}/{hash_type} hashing; the platform "
                        "verifies sha256 per-file manifests only.", identity=identity)
    if not any(True for _ in expected.resource_descriptors()):
        raise _Rejected("The bundle signs no files.", identity=identity)


def _manifest_differences(expected: manifest_module.Manifest, actual: manifest_module.Manifest) -> list[str]:
    signed = {item.identifier: item.digest.digest_hex for item in expected.resource_descriptors()}
    present = {item.identifier: item.digest.digest_hex for item in actual.resource_descriptors()}
    missing = sorted(signed.keys() - present.keys())
    extra = sorted(present.keys() - signed.keys())
    problems = []
    for old_name in list(missing):
        new_name = next((name for name in extra if present[name] == signed[old_name]), None)
        if new_name:
            problems.append(f"signed file {old_name} was renamed to {new_name}")
            missing.remove(old_name)
            extra.remove(new_name)
    for name in sorted(signed.keys() & present.keys()):
        if signed[name] != present[name]:
            problems.append("the file's content differs from the signed content" if name == "."
                            else f"{name} differs from its signed content")
    problems += [f"signed file {name} is missing" for name in missing]
    problems += [f"{name} is not covered by the signature" for name in extra]
    return problems


def _files(count: int) -> str:
    return f"{count} file" if count == 1 else f"{count} files"


_VERIFIERS = {
    Mode.KEY: _verify_with_key,
    Mode.CERTIFICATE: _verify_with_certificate,
    Mode.KEYLESS: _verify_keyless,
}
