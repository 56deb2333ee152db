"""`neocloud sign` and `neocloud verify`: offline, with the platform's own signing library."""

from datetime import UTC, datetime
from pathlib import Path

from . import local_files
from .errors import NOT_VERIFIED, OK, input_error, sentence, usage_error
from .output import Output


def signed_bundle(path: Path, args) -> str:
    """Sign `path` (a file or a model directory) with the key options of `args`; the bundle JSON.

    The statement's subject is named `args.name`, the artifact name: the server refuses a
    signature that does not name the artifact it is attached to, whatever the local path is called.
    """
    from workflows.signing import sign_path  # slow to import: only when signing

    if args.chain and not args.cert:
        raise usage_error("--chain needs --cert: the chain is the CA certificates above the signing certificate.")
    password = local_files.password_from(args.password_env)
    key = local_files.private_key_pem(args.key, password)
    certificate = local_files.certificate_pems([args.cert], "certificate file")[0] if args.cert else None
    chain = local_files.certificate_pems(args.chain, "chain file")
    try:
        return sign_path(path, private_key_pem=key, certificate_pem=certificate, chain_pem=chain, password=password,
                         name=args.name)
    except (ValueError, TypeError) as exc:
        raise input_error(_first_sentence(exc), code="cannot_sign") from None
    except OSError as exc:
        raise input_error(f"Cannot read {exc.filename or path}: {(exc.strerror or str(exc)).lower()}.") from None


def _first_sentence(error: Exception) -> str:
    # model-signing's messages add advice about its own API after the first sentence.
    text = " ".join(str(error).split())
    return sentence(text.split(". ")[0])


def mode_of(args) -> str:
    return "certificate" if args.cert else "key"


def sign(args, out: Output) -> int:
    from workflows.signing import model_name

    path = local_files.existing_path(args.path)
    bundle = signed_bundle(path, args)
    try:
        Path(args.output).write_text(bundle, encoding="utf-8")
    except OSError as exc:
        raise input_error(f"Cannot write the bundle to {args.output}: {(exc.strerror or str(exc)).lower()}.") from None
    name = model_name(path) if args.name is None else args.name
    out.result({"signed": str(path), "name": name, "mode": mode_of(args), "bundle": str(args.output)},
               [f"Signed {path} as {name} in {mode_of(args)} mode; the bundle is in {args.output}."])
    return OK


def verify(args, out: Output) -> int:
    from workflows.signing import verify_path  # slow to import: only when verifying

    trust = trust_from(args)
    path = local_files.existing_path(args.path)
    bundle = local_files.read_bytes(args.bundle, "bundle file")
    result = verify_path(path, bundle, trust=trust, received_at=datetime.now(UTC), name=args.name)
    data = {"verified": result.verified, "mode": result.mode.value if result.mode else None,
            "identity": result.identity, "reason": result.reason, "digest": result.digest,
            "signed_at": result.signed_at.isoformat() if result.signed_at else None}
    out.result(data, [f"Verified: {result.reason}" if result.verified else f"Not verified: {result.reason}"])
    return OK if result.verified else NOT_VERIFIED


def trust_from(args):
    """The TrustConfig the verify options describe; at least one kind of trust is required."""
    from workflows.signing import TrustConfig

    if not (args.public_key or args.ca_root or args.sigstore_identity):
        raise usage_error("Say whom to trust: --public-key ID=PEMFILE, --ca-root PEMFILE with --identity, "
                          "or --sigstore-identity with --sigstore-issuer.")
    if bool(args.ca_root) != bool(args.identity):
        raise usage_error("Certificate trust needs both --ca-root and at least one allowed --identity.")
    if len(args.sigstore_identity) != len(args.sigstore_issuer):
        raise usage_error("Give one --sigstore-issuer for each --sigstore-identity, in the same order.")
    trusted_root = (local_files.read_bytes(args.trusted_root, "trusted root file").decode("utf-8", "replace")
                    if args.trusted_root else None)
    return TrustConfig(
        public_keys=dict(_public_key_entry(entry) for entry in args.public_key),
        ca_roots=[pem.decode() for pem in local_files.certificate_pems(args.ca_root, "CA root file")],
        allowed_identities=list(args.identity),
        sigstore_identities=list(zip(args.sigstore_identity, args.sigstore_issuer)),
        trusted_root_json=trusted_root)


def _public_key_entry(entry: str) -> tuple[str, str]:
    key_id, separator, pem_file = entry.partition("=")
    if not separator or not key_id or not pem_file:
        raise usage_error(f"Give --public-key as ID=PEMFILE (such as ci-2025=ci.pub), not {entry!r}.")
    return key_id, local_files.public_key_pem(pem_file)

