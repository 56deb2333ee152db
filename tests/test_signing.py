"""Signing and verification with real keys, a real test CA and a real Sigstore bundle.

Nothing here is mocked: model-signing signs and verifies real model files of a few MB, the CA
is built with cryptography.x509, and the keyless bundle is a public-good Sigstore bundle
verified offline against the trusted root embedded in sigstore-python.
"""

import base64
import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from google.protobuf import struct_pb2
from model_signing import hashing as ms_hashing
from model_signing import signing as ms_signing
from model_signing import verifying as ms_verifying
from model_signing._signing import sign_ec_key

from workflows.digests import file_digest
from workflows.signing import (
    Mode,
    TrustConfig,
    generate_key_pair,
    sign_keyless,
    sign_path,
    verify_path,
)


SIGSTORE_DATA = Path(__file__).parent / "data" / "sigstore"
WHEEL = SIGSTORE_DATA / "rfc8785-0.1.2-py3-none-any.whl"
WHEEL_BUNDLE = SIGSTORE_DATA / "rfc8785-0.1.2-py3-none-any.whl.sigstore"
WHEEL_IDENTITY = "https://github.com/trailofbits/rfc8785.py/.github/workflows/release.yml@refs/tags/v0.1.2"
GITHUB_ISSUER = "https://token.actions.githubusercontent.com"

# Bundles received a month ago: a leaf valid for two hours around then has long expired.
RECEIVED_AT = (datetime.now(UTC) - timedelta(days=30)).replace(microsecond=0)
SIGNER_EMAIL = "ml-release@acme-bank.example"
SIGNER_URI = "https://ci.acme-bank.example/pipelines/model-release"
SIGNER_SANS = (x509.RFC822Name(SIGNER_EMAIL), x509.UniformResourceIdentifier(SIGNER_URI))


# Model files -------------------------------------------------------------------------------


@pytest.fixture
def ci_key():
    private_pem, public_pem = generate_key_pair()
    return private_pem, public_pem.decode()


def key_trust(**public_keys):
    return TrustConfig(public_keys=public_keys)


def flip_one_byte(path, offset=1000):
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


# A test CA ---------------------------------------------------------------------------------


@dataclass
class Issued:
    key: ec.EllipticCurvePrivateKey
    certificate: x509.Certificate

    @property
    def key_pem(self):
        return self.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption())

    @property
    def pem(self):
        return self.certificate.public_bytes(serialization.Encoding.PEM)


def _name(common_name):
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Acme Bank"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _builder(subject, key, issuer, not_before, not_after):
    return (x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer.certificate.subject if issuer else subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False))


def make_ca(common_name, issuer=None, *, not_before=None, not_after=None):
    key = ec.generate_private_key(ec.SECP256R1())
    builder = _builder(_name(common_name), key, issuer,
                       not_before or RECEIVED_AT - timedelta(days=365),
                       not_after or RECEIVED_AT + timedelta(days=3650))
    builder = (builder
               .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False,
                                            key_encipherment=False, data_encipherment=False,
                                            key_agreement=False, key_cert_sign=True, crl_sign=True,
                                            encipher_only=False, decipher_only=False), critical=True))
    if issuer:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()), critical=False)
    return Issued(key, builder.sign((issuer or Issued(key, None)).key, hashes.SHA256()))


def make_leaf(issuer, *, sans=SIGNER_SANS, code_signing=True, not_before=None, not_after=None):
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (_builder(_name("model release signer"), key, issuer,
                        not_before or RECEIVED_AT - timedelta(hours=1),
                        not_after or RECEIVED_AT + timedelta(hours=1))
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                            key_encipherment=False, data_encipherment=False,
                                            key_agreement=False, key_cert_sign=False, crl_sign=False,
                                            encipher_only=False, decipher_only=False), critical=True)
               .add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()),
                              critical=False))
    if code_signing:
        builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]),
                                        critical=False)
    return Issued(key, builder.sign(issuer.key, hashes.SHA256()))


@pytest.fixture(scope="module")
def pki():
    root = make_ca("Acme Bank Root CA")
    intermediate = make_ca("Acme Bank Code Signing CA", issuer=root)
    return root, intermediate


def certificate_trust(root, identities=(SIGNER_EMAIL,)):
    return TrustConfig(ca_roots=[root.pem.decode()], allowed_identities=list(identities))


def sign_with_certificate(path, leaf, intermediate):
    return sign_path(path, private_key_pem=leaf.key_pem, certificate_pem=leaf.pem,
                     chain_pem=[intermediate.pem])


# KEY mode ----------------------------------------------------------------------------------


def test_a_model_directory_signed_with_a_key_verifies_and_names_the_key(model_dir, ci_key):
    bundle = sign_path(model_dir, private_key_pem=ci_key[0])

    result = verify_path(model_dir, bundle, trust=key_trust(**{"ci-2026": ci_key[1]}), received_at=RECEIVED_AT)

    assert result.verified, result.reason
    assert result.mode is Mode.KEY
    assert result.identity == "ci-2026"
    assert result.reason == "Signed by key ci-2026 over 5 files."
    assert result.digest.startswith("sha256:") and len(result.digest) == 7 + 64
    assert result.signed_at is None


def test_a_single_file_signed_with_a_key_verifies_and_reports_the_files_sha256(model_dir, ci_key):
    weights = model_dir / "model-00001-of-00003.safetensors"
    bundle = sign_path(weights, private_key_pem=ci_key[0])

    result = verify_path(weights, bundle, trust=key_trust(**{"ci-2026": ci_key[1]}), received_at=RECEIVED_AT)

    assert result.verified, result.reason
    assert result.reason == "Signed by key ci-2026 over 1 file."
    assert result.digest == file_digest(weights)


def test_an_encrypted_private_key_signs_with_its_password(model_dir):
    private_pem, public_pem = generate_key_pair(password=b"correct horse")
    bundle = sign_path(model_dir, private_key_pem=private_pem, password=b"correct horse")

    result = verify_path(model_dir, bundle, trust=key_trust(release=public_pem.decode()), received_at=RECEIVED_AT)

    assert result.verified, result.reason


def test_an_old_signature_still_verifies_after_the_tenant_rotates_to_a_new_key(model_dir, ci_key):
    bundle = sign_path(model_dir, private_key_pem=ci_key[0])
    new_key = generate_key_pair()[1].decode()

    result = verify_path(model_dir, bundle, trust=key_trust(**{"ci-2027": new_key, "ci-2026": ci_key[1]}),
                         received_at=RECEIVED_AT)

    assert result.verified, result.reason
    assert result.identity == "ci-2026"


def test_a_bundle_for_one_file_does_not_verify_another_file(model_dir, ci_key):
    file_a = model_dir / "model-00001-of-00003.safetensors"
    file_b = model_dir / "model-00002-of-00003.safetensors"
    bundle_for_a = sign_path(file_a, private_key_pem=ci_key[0], name="weights")

    # Registered under the name the bundle gives, but other bytes: the subject digest differs.
    result = verify_path(file_b, bundle_for_a, trust=key_trust(ci=ci_key[1]), received_at=RECEIVED_AT, name="weights")

    assert not result.verified
    assert result.reason == ("The artifact does not match its signature: "
                             "the file's content differs from the signed content.")
    assert result.digest == file_digest(file_b)


def test_a_bundle_signed_with_a_key_the_tenant_does_not_trust_does_not_verify(model_dir, ci_key):
    bundle = sign_path(model_dir, private_key_pem=ci_key[0])
    other_key = generate_key_pair()[1].decode()

    result = verify_path(model_dir, bundle, trust=key_trust(**{"ci-2027": other_key}), received_at=RECEIVED_AT)

    assert not result.verified
    assert result.mode is Mode.KEY
    assert result.reason == "The bundle was not signed by any key this tenant trusts (trusted key ids: ci-2027)."


def test_a_bundle_whose_key_hint_is_swapped_for_a_trusted_key_fails_the_signature_check(model_dir, ci_key):
    bundle = json.loads(sign_path(model_dir, private_key_pem=ci_key[0]))
    trusted_pem = generate_key_pair()[1]
    bundle["verificationMaterial"]["publicKey"]["hint"] = hashlib.sha256(trusted_pem).hexdigest()

    result = verify_path(model_dir, json.dumps(bundle), trust=key_trust(ops=trusted_pem.decode()),
                         received_at=RECEIVED_AT)

    assert not result.verified
    assert result.reason == "The bundle's signature does not verify with key ops."


def test_a_bundle_whose_manifest_was_edited_to_match_tampered_files_fails_the_signature_check(model_dir, ci_key):
    weights = model_dir / "model-00002-of-00003.safetensors"
    bundle = json.loads(sign_path(model_dir, private_key_pem=ci_key[0]))
    flip_one_byte(weights)
    envelope = bundle["dsseEnvelope"]
    statement = json.loads(base64.b64decode(envelope["payload"]))
    resources = statement["predicate"]["resources"]
    next(item for item in resources if item["name"] == weights.name)["digest"] = file_digest(weights)[7:]
    statement["subject"][0]["digest"]["sha256"] = hashlib.sha256(
        b"".join(bytes.fromhex(item["digest"]) for item in resources)).hexdigest()
    envelope["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()

    result = verify_path(model_dir, json.dumps(bundle), trust=key_trust(ci=ci_key[1]), received_at=RECEIVED_AT)

    assert not result.verified
    assert result.reason == "The bundle's signature does not verify with key ci."


def test_a_tampered_byte_in_one_model_file_fails_verification(model_dir, ci_key):
    bundle = sign_path(model_dir, private_key_pem=ci_key[0])
    flip_one_byte(model_dir / "model-00002-of-00003.safetensors")

    result = verify_path(model_dir, bundle, trust=key_trust(ci=ci_key[1]), received_at=RECEIVED_AT)

    assert not result.verified
    assert result.reason == ("The artifact does not match its signature: "
                             "model-00002-of-00003.safetensors differs from its signed content.")


def test_an_extra_file_in_the_model_directory_fails_verification(model_dir, ci_key):
    bundle = sign_path(model_dir, private_key_pem=ci_key[0])
    (model_dir / "tokenizer" / "added_tokens.json").write_text("{}")

    result = verify_path(model_dir, bundle, trust=key_trust(ci=ci_key[1]), received_at=RECEIVED_AT)

    assert not result.verified
    assert result.reason == ("The artifact does not match its signature: "
                             "tokenizer/added_tokens.json is not covered by the signature.")


def test_an_injected_git_metadata_file_is_not_ignored(model_dir, ci_key):
    # model-signing ignores .gitattributes and friends by default; the platform hashes them.
    bundle = sign_path(model_dir, private_key_pem=ci_key[0])
    (model_dir / ".gitattributes").write_text("*.safetensors filter=lfs\n")

    result = verify_path(model_dir, bundle, trust=key_trust(ci=ci_key[1]), received_at=RECEIVED_AT)

    assert not result.verified
    assert result.reason == "The artifact does not match its signature: .gitattributes is not covered by the signature."


def test_a_removed_file_fails_verification(model_dir, ci_key):
    bundle = sign_path(model_dir, private_key_pem=ci_key[0])
    (model_dir / "model-00003-of-00003.safetensors").unlink()

    result = verify_path(model_dir, bundle, trust=key_trust(ci=ci_key[1]), received_at=RECEIVED_AT)

    assert not result.verified
    assert result.reason == ("The artifact does not match its signature: "
                             "signed file model-00003-of-00003.safetensors is missing.")


def test_a_renamed_file_fails_verification_and_is_reported_as_renamed(model_dir, ci_key):
    bundle = sign_path(model_dir, private_key_pem=ci_key[0])
    (model_dir / "config.json").rename(model_dir / "generation_config.json")

    result = verify_path(model_dir, bundle, trust=key_trust(ci=ci_key[1]), received_at=RECEIVED_AT)

    assert not result.verified
    assert result.reason == ("The artifact does not match its signature: "
                             "signed file config.json was renamed to generation_config.json.")


def test_a_symlink_in_the_model_directory_is_refused_rather_than_followed(model_dir, ci_key, tmp_path):
    bundle = sign_path(model_dir, private_key_pem=ci_key[0])
    (tmp_path / "outside.bin").write_bytes(b"not part of the model")
    (model_dir / "linked.bin").symlink_to(tmp_path / "outside.bin")

    result = verify_path(model_dir, bundle, trust=key_trust(ci=ci_key[1]), received_at=RECEIVED_AT)

    assert not result.verified
    assert result.reason.startswith("The artifact cannot be hashed (Cannot use ")
    assert "because it is a symlink" in result.reason


def test_model_signing_alone_accepts_an_injected_file_when_told_to_ignore_unsigned_files(model_dir, ci_key,
                                                                                          tmp_path):
    # Why the platform never calls set_ignore_unsigned_files(True).
    bundle_path = tmp_path / "model.sig"
    bundle_path.write_text(sign_path(model_dir, private_key_pem=ci_key[0]))
    (tmp_path / "key.pub").write_text(ci_key[1])
    (model_dir / "backdoor.py").write_text("import os\n")
    config = (ms_verifying.Config().use_elliptic_key_verifier(public_key=tmp_path / "key.pub")
              .set_hashing_config(ms_hashing.Config().use_file_serialization(hashing_algorithm="sha256"))
              .set_ignore_unsigned_files(True))

    config.verify(model_dir, bundle_path)  # raises on failure; it accepts the injected file

    result = verify_path(model_dir, bundle_path.read_text(), trust=key_trust(ci=ci_key[1]), received_at=RECEIVED_AT)
    assert result.reason == "The artifact does not match its signature: backdoor.py is not covered by the signature."


# CERTIFICATE mode --------------------------------------------------------------------------


def test_a_model_directory_signed_through_an_intermediate_ca_verifies_in_certificate_mode(model_dir, pki):
    root, intermediate = pki
    leaf = make_leaf(intermediate)
    bundle = sign_with_certificate(model_dir, leaf, intermediate)

    result = verify_path(model_dir, bundle, trust=certificate_trust(root), received_at=RECEIVED_AT)

    assert result.verified, result.reason
    assert result.mode is Mode.CERTIFICATE
    assert result.identity == SIGNER_EMAIL
    assert result.reason == (f"Signed by certificate {SIGNER_EMAIL} (issued by "
                             "CN=Acme Bank Code Signing CA,O=Acme Bank) over 5 files.")
    assert result.signed_at is None


def test_a_certificate_is_allowed_by_its_uri_identity_too(model_dir, pki):
    root, intermediate = pki
    bundle = sign_with_certificate(model_dir, make_leaf(intermediate), intermediate)

    result = verify_path(model_dir, bundle, trust=certificate_trust(root, [SIGNER_URI]), received_at=RECEIVED_AT)

    assert result.verified, result.reason
    assert result.identity == SIGNER_URI


def test_reverification_later_with_the_original_receipt_time_still_verifies_an_expired_leaf(model_dir, pki):
    root, intermediate = pki
    leaf = make_leaf(intermediate)  # valid for one hour either side of RECEIVED_AT, a month ago
    bundle = sign_with_certificate(model_dir, leaf, intermediate)
    assert leaf.certificate.not_valid_after_utc < datetime.now(UTC)

    result = verify_path(model_dir, bundle, trust=certificate_trust(root), received_at=RECEIVED_AT)

    assert result.verified, result.reason


def test_a_receipt_time_after_the_leaf_expired_fails(model_dir, pki):
    root, intermediate = pki
    leaf = make_leaf(intermediate)
    bundle = sign_with_certificate(model_dir, leaf, intermediate)
    late = RECEIVED_AT + timedelta(hours=2)

    result = verify_path(model_dir, bundle, trust=certificate_trust(root), received_at=late)

    assert not result.verified
    assert result.reason.startswith("The signing certificate (CN=model release signer,O=Acme Bank) had expired "
                                    f"when the bundle was received ({late.isoformat()})")


def test_an_expired_certificate_fails(model_dir, pki):
    root, intermediate = pki
    leaf = make_leaf(intermediate, not_before=RECEIVED_AT - timedelta(days=10),
                     not_after=RECEIVED_AT - timedelta(days=1))
    bundle = sign_with_certificate(model_dir, leaf, intermediate)

    result = verify_path(model_dir, bundle, trust=certificate_trust(root), received_at=RECEIVED_AT)

    assert not result.verified
    assert result.mode is Mode.CERTIFICATE
    assert "had expired when the bundle was received" in result.reason
    assert f"it expired at {(RECEIVED_AT - timedelta(days=1)).isoformat()}" in result.reason


def test_a_not_yet_valid_certificate_fails(model_dir, pki):
    root, intermediate = pki
    leaf = make_leaf(intermediate, not_before=RECEIVED_AT + timedelta(days=1),
                     not_after=RECEIVED_AT + timedelta(days=30))
    bundle = sign_with_certificate(model_dir, leaf, intermediate)

    result = verify_path(model_dir, bundle, trust=certificate_trust(root), received_at=RECEIVED_AT)

    assert not result.verified
    assert "was not yet valid when the bundle was received" in result.reason
    assert f"it is valid from {(RECEIVED_AT + timedelta(days=1)).isoformat()}" in result.reason


def test_an_expired_intermediate_fails_even_when_the_leaf_is_valid(model_dir, pki):
    root, _ = pki
    stale_intermediate = make_ca("Old Code Signing CA", issuer=root, not_before=RECEIVED_AT - timedelta(days=30),
                                 not_after=RECEIVED_AT - timedelta(minutes=5))
    leaf = make_leaf(stale_intermediate)
    bundle = sign_with_certificate(model_dir, leaf, stale_intermediate)

    result = verify_path(model_dir, bundle, trust=certificate_trust(root), received_at=RECEIVED_AT)

    assert not result.verified
    assert result.reason.startswith("The intermediate certificate (CN=Old Code Signing CA,O=Acme Bank) had expired")


def test_a_certificate_without_the_code_signing_usage_fails(model_dir, pki):
    root, intermediate = pki
    leaf = make_leaf(intermediate, code_signing=False)
    bundle = sign_with_certificate(model_dir, leaf, intermediate)

    result = verify_path(model_dir, bundle, trust=certificate_trust(root), received_at=RECEIVED_AT)

    assert not result.verified
    assert result.reason == ("The signing certificate has no extended key usage; "
                             "the code-signing usage (1.3.6.1.5.5.7.3.3) is required.")


def test_a_certificate_with_an_identity_the_tenant_does_not_allow_fails(model_dir, pki):
    root, intermediate = pki
    leaf = make_leaf(intermediate, sans=[x509.RFC822Name("intern@acme-bank.example")])
    bundle = sign_with_certificate(model_dir, leaf, intermediate)

    result = verify_path(model_dir, bundle, trust=certificate_trust(root), received_at=RECEIVED_AT)

    assert not result.verified
    assert result.reason == ("The signing certificate names intern@acme-bank.example, "
                             "which this tenant does not allow to sign.")


def test_a_certificate_from_another_ca_fails(model_dir, pki):
    root, _ = pki
    foreign_ca = make_ca("Somebody Else CA")
    leaf = make_leaf(foreign_ca)
    bundle = sign_path(model_dir, private_key_pem=leaf.key_pem, certificate_pem=leaf.pem)

    result = verify_path(model_dir, bundle, trust=certificate_trust(root), received_at=RECEIVED_AT)

    assert not result.verified
    assert result.reason.startswith("The signing certificate does not chain to a trusted CA root of this tenant")


def test_a_tenant_without_ca_roots_rejects_certificate_bundles_instead_of_trusting_the_web_pki(model_dir, pki):
    _, intermediate = pki
    leaf = make_leaf(intermediate)
    bundle = sign_with_certificate(model_dir, leaf, intermediate)

    result = verify_path(model_dir, bundle, trust=TrustConfig(allowed_identities=[SIGNER_EMAIL]),
                         received_at=RECEIVED_AT)

    assert not result.verified
    assert result.reason == "The tenant trusts no CA roots, so a certificate-signed bundle cannot verify."


def test_a_tampered_byte_fails_in_certificate_mode_too(model_dir, pki):
    root, intermediate = pki
    bundle = sign_with_certificate(model_dir, make_leaf(intermediate), intermediate)
    flip_one_byte(model_dir / "tokenizer" / "vocab.bin")

    result = verify_path(model_dir, bundle, trust=certificate_trust(root), received_at=RECEIVED_AT)

    assert not result.verified
    assert result.identity == SIGNER_EMAIL
    assert result.reason == ("The artifact does not match its signature: "
                             "tokenizer/vocab.bin differs from its signed content.")


def test_model_signing_alone_accepts_an_expired_certificate_with_an_unknown_identity(model_dir, pki, tmp_path):
    # Why the platform checks validity at receipt, the code-signing usage and the identity.
    root, intermediate = pki
    leaf = make_leaf(intermediate, sans=[x509.RFC822Name("anyone@elsewhere.example")], code_signing=False,
                     not_before=RECEIVED_AT - timedelta(days=10), not_after=RECEIVED_AT - timedelta(days=1))
    bundle_path = tmp_path / "model.sig"
    bundle_path.write_text(sign_with_certificate(model_dir, leaf, intermediate))
    (tmp_path / "root.pem").write_bytes(root.pem)
    config = (ms_verifying.Config().use_certificate_verifier(certificate_chain=[tmp_path / "root.pem"])
              .set_hashing_config(ms_hashing.Config().use_file_serialization(hashing_algorithm="sha256")))

    config.verify(model_dir, bundle_path)  # raises on failure; it accepts

    result = verify_path(model_dir, bundle_path.read_text(), trust=certificate_trust(root), received_at=RECEIVED_AT)
    assert not result.verified


# What a signature must describe ------------------------------------------------------------


def statement_of(bundle: str) -> dict:
    return json.loads(base64.b64decode(json.loads(bundle)["dsseEnvelope"]["payload"]))


def key_bundle_over(statement: dict, private_pem: bytes, tmp_path) -> str:
    """A key bundle over any in-toto statement, signed by model-signing's own EC signer."""
    key_path = tmp_path / "statement-signer.pem"
    key_path.write_bytes(private_pem)
    body = struct_pb2.Struct()
    body.update(statement)
    return sign_ec_key.Signer(key_path).sign(SimpleNamespace(statement=SimpleNamespace(pb=body))).bundle.to_json()


def test_a_file_bundle_names_the_artifact_and_carries_the_sha256_of_the_files_sha256(model_dir, ci_key):
    weights = model_dir / "model-00001-of-00003.safetensors"
    bundle = sign_path(weights, private_key_pem=ci_key[0], name="weights")

    file_sha256 = hashlib.sha256(weights.read_bytes()).digest()
    assert statement_of(bundle)["subject"] == [{"name": "weights",
                                                "digest": {"sha256": hashlib.sha256(file_sha256).hexdigest()}}]
    result = verify_path(weights, bundle, trust=key_trust(ci=ci_key[1]), received_at=RECEIVED_AT, name="weights")
    assert result.verified, result.reason
    assert result.digest == file_digest(weights)


def test_a_directory_bundle_names_the_artifact_and_carries_the_manifest_digest(model_dir, ci_key):
    bundle = sign_path(model_dir, private_key_pem=ci_key[0], name="scorer")

    result = verify_path(model_dir, bundle, trust=key_trust(ci=ci_key[1]), received_at=RECEIVED_AT, name="scorer")

    assert result.verified, result.reason
    assert statement_of(bundle)["subject"] == [{"name": "scorer", "digest": {"sha256": result.digest[7:]}}]


def test_without_a_name_the_subject_is_the_paths_final_component_as_model_signing_names_it(model_dir, ci_key):
    bundle = sign_path(model_dir, private_key_pem=ci_key[0])
    assert statement_of(bundle)["subject"][0]["name"] == "acme-credit-scorer"
    assert verify_path(model_dir, bundle, trust=key_trust(ci=ci_key[1]), received_at=RECEIVED_AT).verified

    result = verify_path(model_dir, bundle, trust=key_trust(ci=ci_key[1]), received_at=RECEIVED_AT, name="scorer")

    assert not result.verified
    assert result.identity == "ci"
    assert result.reason == ("The signature's subject is named acme-credit-scorer, not scorer, "
                             "the artifact it is attached to.")


def test_model_signings_own_api_names_the_subject_after_the_directory(model_dir, ci_key, tmp_path):
    # A signer using model-signing directly complies by naming the directory as the artifact.
    (tmp_path / "key.pem").write_bytes(ci_key[0])
    config = (ms_signing.Config().use_elliptic_key_signer(private_key=tmp_path / "key.pem")
              .set_hashing_config(ms_hashing.Config().use_file_serialization(hashing_algorithm="sha256")))
    scorer = model_dir.rename(model_dir.parent / "scorer")
    config.sign(scorer, tmp_path / "scorer.sig")
    bundle = (tmp_path / "scorer.sig").read_text()

    assert verify_path(scorer, bundle, trust=key_trust(ci=ci_key[1]), received_at=RECEIVED_AT, name="scorer").verified
    other = verify_path(scorer, bundle, trust=key_trust(ci=ci_key[1]), received_at=RECEIVED_AT, name="weights")
    assert other.reason == "The signature's subject is named scorer, not weights, the artifact it is attached to."


@pytest.mark.parametrize("signed_as, shown", [
    ("Weights", "Weights"),
    ("weights\n", '"weights\\n"'),
    ("w" * 300, '"' + "w" * 100 + '"…'),
])
def test_the_subject_name_must_be_the_artifacts_name_exactly(model_dir, ci_key, signed_as, shown):
    weights = model_dir / "model-00001-of-00003.safetensors"
    bundle = sign_path(weights, private_key_pem=ci_key[0], name=signed_as)

    result = verify_path(weights, bundle, trust=key_trust(ci=ci_key[1]), received_at=RECEIVED_AT, name="weights")

    assert not result.verified
    assert result.reason == f"The signature's subject is named {shown}, not weights, the artifact it is attached to."


def test_the_subject_name_is_checked_in_certificate_mode_too(model_dir, pki):
    root, intermediate = pki
    bundle = sign_with_certificate(model_dir, make_leaf(intermediate), intermediate)

    result = verify_path(model_dir, bundle, trust=certificate_trust(root), received_at=RECEIVED_AT, name="scorer")

    assert not result.verified
    assert (result.mode, result.identity) == (Mode.CERTIFICATE, SIGNER_EMAIL)
    assert result.reason == ("The signature's subject is named acme-credit-scorer, not scorer, "
                             "the artifact it is attached to.")


def test_a_subject_digest_that_is_not_the_manifest_digest_fails_though_every_file_matches(model_dir, ci_key,
                                                                                          tmp_path):
    # Resources listed out of name order, with a subject digest over that order: model-signing
    # finds the statement consistent and every file matches, but the subject is not the artifact's.
    statement = statement_of(sign_path(model_dir, private_key_pem=ci_key[0], name="scorer"))
    expected = statement["subject"][0]["digest"]["sha256"]
    resources = statement["predicate"]["resources"][::-1]
    statement["predicate"]["resources"] = resources
    claimed = hashlib.sha256(b"".join(bytes.fromhex(item["digest"]) for item in resources)).hexdigest()
    statement["subject"][0]["digest"]["sha256"] = claimed

    result = verify_path(model_dir, key_bundle_over(statement, ci_key[0], tmp_path), trust=key_trust(ci=ci_key[1]),
                         received_at=RECEIVED_AT, name="scorer")

    assert not result.verified
    assert result.reason == (f"The signature's subject digest is sha256:{claimed}, not sha256:{expected}, "
                             "the manifest digest of scorer, the artifact it is attached to.")


def test_a_statement_listing_each_file_as_a_subject_is_refused(model_dir, ci_key, tmp_path):
    # model-signing 0.2's format: one subject per file. model-signing still reads it, files and all.
    resources = statement_of(sign_path(model_dir, private_key_pem=ci_key[0]))["predicate"]["resources"]
    statement = {"_type": "https://in-toto.io/Statement/v1", "predicateType": "https://model_signing/Digests/v0.1",
                 "subject": [{"name": item["name"], "digest": {"sha256": item["digest"]}} for item in resources],
                 "predicate": {}}

    result = verify_path(model_dir, key_bundle_over(statement, ci_key[0], tmp_path), trust=key_trust(ci=ci_key[1]),
                         received_at=RECEIVED_AT, name="scorer")

    assert not result.verified
    assert result.reason == ("The signature's statement has 5 subjects; it must describe exactly one, "
                             "the artifact it is attached to.")


def test_a_current_statement_with_two_subjects_is_refused(model_dir, ci_key, tmp_path):
    statement = statement_of(sign_path(model_dir, private_key_pem=ci_key[0], name="scorer"))
    statement["subject"].append({**statement["subject"][0], "name": "weights"})

    result = verify_path(model_dir, key_bundle_over(statement, ci_key[0], tmp_path), trust=key_trust(ci=ci_key[1]),
                         received_at=RECEIVED_AT, name="scorer")

    assert not result.verified
    assert result.reason.startswith("The bundle cannot be verified as a model-signing bundle (Expected only one "
                                    "subject")


def test_a_plain_sigstore_bundle_names_nothing_so_only_the_files_sha256_is_bound():
    # No in-toto statement: the bundle signs the wheel's sha256, under no name.
    assert "dsseEnvelope" not in json.loads(WHEEL_BUNDLE.read_text())

    result = verify_path(WHEEL, WHEEL_BUNDLE.read_text(), trust=keyless_trust(), received_at=RECEIVED_AT,
                         name="rfc8785-wheel")

    assert result.verified, result.reason


# Malformed input ---------------------------------------------------------------------------


def test_malformed_bundle_json_is_a_plain_refusal_not_an_exception(model_dir, ci_key):
    result = verify_path(model_dir, '{"mediaType": "application/vnd.dev.sigstore.bundle', trust=key_trust(ci=ci_key[1]),
                         received_at=RECEIVED_AT)

    assert not result.verified
    assert result.mode is None
    assert result.reason.startswith("The bundle is not valid JSON (")


def test_json_that_is_not_a_bundle_is_refused(model_dir, ci_key):
    result = verify_path(model_dir, b'["not", "a", "bundle"]', trust=key_trust(ci=ci_key[1]), received_at=RECEIVED_AT)

    assert result.reason == "The bundle is not a Sigstore bundle: it has no verification material."


def test_a_bundle_over_the_size_limit_is_refused_before_parsing(model_dir, ci_key):
    bundle = sign_path(model_dir, private_key_pem=ci_key[0])
    padded = bundle[:-1] + ', "padding": "' + "x" * 2_000_000 + '"}'

    result = verify_path(model_dir, padded, trust=key_trust(ci=ci_key[1]), received_at=RECEIVED_AT)

    assert not result.verified
    assert result.reason == f"The bundle is {len(padded):,} bytes, over the 1,048,576-byte limit."


def test_a_naive_receipt_time_is_refused(model_dir, ci_key):
    bundle = sign_path(model_dir, private_key_pem=ci_key[0])

    result = verify_path(model_dir, bundle, trust=key_trust(ci=ci_key[1]), received_at=datetime(2026, 1, 1))

    assert result.reason == "The receipt time must be a timezone-aware datetime."


def test_a_missing_artifact_is_reported(model_dir, ci_key):
    bundle = sign_path(model_dir, private_key_pem=ci_key[0])

    result = verify_path(model_dir.parent / "gone", bundle, trust=key_trust(ci=ci_key[1]), received_at=RECEIVED_AT)

    assert not result.verified
    assert result.reason == "The artifact gone does not exist."


# KEYLESS mode (the public-good fixture, offline) ------------------------------------------


def keyless_trust(identity=WHEEL_IDENTITY, issuer=GITHUB_ISSUER):
    return TrustConfig(sigstore_identities=[(identity, issuer)])


def test_a_public_good_sigstore_bundle_verifies_offline_with_the_right_identity_and_issuer():
    result = verify_path(WHEEL, WHEEL_BUNDLE.read_text(), trust=keyless_trust(), received_at=RECEIVED_AT)

    assert result.verified, result.reason
    assert result.mode is Mode.KEYLESS
    assert result.identity == WHEEL_IDENTITY
    assert result.digest == "sha256:c4e92e9ecc828bef2aa7dba1de8ac983511f7532a0df11c770d39099a25cf201"
    assert result.signed_at == datetime(2024, 3, 19, 22, 41, 16, tzinfo=UTC)
    assert result.reason.startswith(f"Signed keylessly by {WHEEL_IDENTITY} (issuer {GITHUB_ISSUER})")


def test_any_one_allowed_sigstore_identity_is_enough():
    trust = TrustConfig(sigstore_identities=[("someone@example.com", "https://accounts.google.com"),
                                             (WHEEL_IDENTITY, GITHUB_ISSUER)])

    result = verify_path(WHEEL, WHEEL_BUNDLE.read_text(), trust=trust, received_at=RECEIVED_AT)

    assert result.verified, result.reason


def test_a_keyless_bundle_fails_for_a_changed_artifact_byte(tmp_path):
    changed = tmp_path / WHEEL.name
    changed.write_bytes(WHEEL.read_bytes())
    flip_one_byte(changed, offset=500)

    result = verify_path(changed, WHEEL_BUNDLE.read_text(), trust=keyless_trust(), received_at=RECEIVED_AT)

    assert not result.verified
    assert result.reason == "The file's sha256 does not match the digest this bundle signs."
    assert result.digest == file_digest(changed)


def test_a_keyless_bundle_with_its_digest_field_removed_still_fails_for_a_changed_artifact(tmp_path):
    # Without the pre-check's digest, sigstore's signature check must catch the change itself.
    bundle = json.loads(WHEEL_BUNDLE.read_text())
    del bundle["messageSignature"]["messageDigest"]
    changed = tmp_path / WHEEL.name
    changed.write_bytes(WHEEL.read_bytes())
    flip_one_byte(changed, offset=500)

    result = verify_path(changed, json.dumps(bundle), trust=keyless_trust(), received_at=RECEIVED_AT)

    assert not result.verified
    assert result.reason.startswith("Sigstore verification failed: ")


def test_a_keyless_bundle_fails_for_another_identity():
    other = "https://github.com/trailofbits/rfc8785.py/.github/workflows/other.yml@refs/heads/main"

    result = verify_path(WHEEL, WHEEL_BUNDLE.read_text(), trust=keyless_trust(identity=other), received_at=RECEIVED_AT)

    assert not result.verified
    assert result.mode is Mode.KEYLESS
    assert result.reason == (f"The bundle was signed by {WHEEL_IDENTITY} (issuer {GITHUB_ISSUER}), "
                             "which is not a Sigstore identity this tenant allows.")


def test_a_keyless_bundle_fails_for_another_issuer():
    result = verify_path(WHEEL, WHEEL_BUNDLE.read_text(),
                         trust=keyless_trust(issuer="https://gitlab.com"), received_at=RECEIVED_AT)

    assert not result.verified
    assert result.reason == (f"The bundle was signed by {WHEEL_IDENTITY} (issuer {GITHUB_ISSUER}), "
                             "which is not a Sigstore identity this tenant allows.")


def test_a_keyless_bundle_fails_for_an_edited_inclusion_proof_hash():
    bundle = json.loads(WHEEL_BUNDLE.read_text())
    proof = bundle["verificationMaterial"]["tlogEntries"][0]["inclusionProof"]
    first = bytearray(base64.b64decode(proof["hashes"][0]))
    first[0] ^= 0xFF
    proof["hashes"][0] = base64.b64encode(bytes(first)).decode()

    result = verify_path(WHEEL, json.dumps(bundle), trust=keyless_trust(), received_at=RECEIVED_AT)

    assert not result.verified
    assert result.reason.startswith("Sigstore verification failed: invalid log entry: ")


def test_a_single_file_keyless_bundle_does_not_verify_a_directory(model_dir):
    result = verify_path(model_dir, WHEEL_BUNDLE.read_text(), trust=keyless_trust(), received_at=RECEIVED_AT)

    assert not result.verified
    assert result.reason == "This keyless bundle signs a single file's digest, but the artifact is not a file."


def test_a_tenant_without_sigstore_identities_rejects_keyless_bundles():
    result = verify_path(WHEEL, WHEEL_BUNDLE.read_text(), trust=TrustConfig(), received_at=RECEIVED_AT)

    assert not result.verified
    assert result.reason == "The tenant allows no Sigstore identities, so a keyless bundle cannot verify."


@pytest.mark.parametrize("token", [None, "", "   "])
def test_keyless_signing_refuses_clearly_without_an_identity_token(model_dir, token):
    with pytest.raises(ValueError, match="Keyless signing needs an OIDC identity token"):
        sign_keyless(model_dir, identity_token=token)


def test_keyless_signing_refuses_a_token_that_is_not_an_oidc_jwt(model_dir):
    with pytest.raises(ValueError, match="The identity token cannot be used for Sigstore signing"):
        sign_keyless(model_dir, identity_token="not-a-jwt")
