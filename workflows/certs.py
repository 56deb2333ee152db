"""X.509 checks that model-signing's certificate verifier leaves out.

model-signing 1.1.1 validates the chain at the leaf's notBefore (so an expired certificate
passes), accepts a leaf with only the digitalSignature key usage, and never looks at who the
certificate names. Each function here returns a plain sentence describing the problem, or None.
"""

from datetime import datetime

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.verification import (
    Criticality,
    ExtensionPolicy,
    PolicyBuilder,
    Store,
    VerificationError,
)

CODE_SIGNING = ExtendedKeyUsageOID.CODE_SIGNING  # 1.3.6.1.5.5.7.3.3


def load_pem_certificates(pems: list[str] | list[bytes]) -> list[x509.Certificate]:
    """Every certificate in a list of PEM texts (each text may hold several)."""
    certificates = []
    for pem in pems:
        data = pem.encode() if isinstance(pem, str) else pem
        certificates.extend(x509.load_pem_x509_certificates(data))
    return certificates


def describe(certificate: x509.Certificate) -> str:
    return certificate.subject.rfc4514_string() or "(empty subject)"


def validity_problem(certificate: x509.Certificate, at: datetime, role: str) -> str | None:
    """Why `certificate` is not valid at `at`, or None when it is."""
    if at < certificate.not_valid_before_utc:
        return (f"The {role} certificate ({describe(certificate)}) was not yet valid when the bundle "
                f"was received ({at.isoformat()}); it is valid from "
                f"{certificate.not_valid_before_utc.isoformat()}.")
    if at > certificate.not_valid_after_utc:
        return (f"The {role} certificate ({describe(certificate)}) had expired when the bundle was "
                f"received ({at.isoformat()}); it expired at {certificate.not_valid_after_utc.isoformat()}.")
    return None


def code_signing_problem(certificate: x509.Certificate) -> str | None:
    """Why the leaf may not sign code: the code-signing extended key usage is required."""
    try:
        usages = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return ("The signing certificate has no extended key usage; the code-signing usage "
                "(1.3.6.1.5.5.7.3.3) is required.")
    if CODE_SIGNING not in usages:
        return ("The signing certificate does not carry the code-signing extended key usage "
                "(1.3.6.1.5.5.7.3.3).")
    return None


def subject_alternative_names(certificate: x509.Certificate) -> list[str]:
    """The certificate's email and URI SAN values, in certificate order."""
    try:
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return san.get_values_for_type(x509.RFC822Name) + san.get_values_for_type(x509.UniformResourceIdentifier)


def allowed_identity(certificate: x509.Certificate, allowed: list[str]) -> str | None:
    """The first SAN of the certificate that the tenant allows, or None."""
    return next((name for name in subject_alternative_names(certificate) if name in allowed), None)


def chain_problem(leaf: x509.Certificate, intermediates: list[x509.Certificate],
                  roots: list[x509.Certificate], at: datetime) -> str | None:
    """Why no path leads from `leaf` through `intermediates` to one of `roots` at time `at`."""
    # The client verifier wants the clientAuth usage by default; code signing is checked apart,
    # as sigstore-python does for Fulcio certificates.
    ca_policy = ExtensionPolicy.webpki_defaults_ca().may_be_present(
        x509.ExtendedKeyUsage, Criticality.AGNOSTIC, None)
    ee_policy = ExtensionPolicy.webpki_defaults_ee().may_be_present(
        x509.ExtendedKeyUsage, Criticality.AGNOSTIC, None)
    verifier = (PolicyBuilder().store(Store(roots)).time(at)
                .extension_policies(ca_policy=ca_policy, ee_policy=ee_policy)
                .build_client_verifier())
    try:
        verifier.verify(leaf, intermediates)
    except (VerificationError, ValueError) as exc:
        return f"The signing certificate does not chain to a trusted CA root of this tenant ({exc})."
    return None
