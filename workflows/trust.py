"""Trust configuration, signatures and their verification (domain functions).

Tenants sign on their side; the platform only verifies, against the tenant's trust
configuration, and stores every verification with its reason. Verification reads the
artifact's bytes, which can take a while, so it runs outside any database transaction.
"""

import hashlib
import json
import tempfile
from contextlib import contextmanager
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from audit.log import Target, record
from policies import governance, loosening
from policies.models import GovernedChangeProposal
from tenants.access import actor_for, require
from tenants.db import bind_rls
from tenants.errors import Invalid, TooLarge
from tenants.models import Tenant

from . import signing
from .models import Artifact, ArtifactLayout, Signature, TrustConfiguration, Verification
from .store import StoredBytesChanged, get_store

MAX_TRUST_ENTRIES = 100


_fingerprint = loosening.pem_fingerprint


def _check_public_keys(public_keys) -> dict[str, str]:
    if not isinstance(public_keys, dict) or len(public_keys) > MAX_TRUST_ENTRIES:
        raise Invalid("public_keys maps key ids to PEM public keys.", field="public_keys")
    for key_id, pem in public_keys.items():
        if not isinstance(key_id, str) or not key_id.strip() or len(key_id) > 100 or not isinstance(pem, str):
            raise Invalid("Each key needs an id of 1 to 100 characters and a PEM text.", field="public_keys")
        try:
            serialization.load_pem_public_key(pem.encode())
        except (ValueError, TypeError):
            raise Invalid(f"Key {key_id} is not a PEM public key.", field=f"public_keys.{key_id}") from None
    return public_keys


def _check_ca_roots(ca_roots) -> list[str]:
    if not isinstance(ca_roots, list) or len(ca_roots) > MAX_TRUST_ENTRIES:
        raise Invalid("ca_roots is a list of PEM certificates.", field="ca_roots")
    for index, pem in enumerate(ca_roots):
        try:
            certificate = x509.load_pem_x509_certificate(pem.encode())
            is_ca = certificate.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        except (ValueError, TypeError, AttributeError, x509.ExtensionNotFound):
            is_ca = None
        if not is_ca:
            raise Invalid("Not a PEM CA certificate (it needs basicConstraints CA:TRUE).", field=f"ca_roots[{index}]")
    return ca_roots


def _check_strings(values, field) -> list:
    if not isinstance(values, list) or len(values) > MAX_TRUST_ENTRIES or not all(
            isinstance(v, str) and 0 < len(v) <= 500 for v in values):
        raise Invalid(f"{field} is a list of non-empty strings.", field=field)
    return values


def _check_sigstore_identities(pairs) -> list[list[str]]:
    if not isinstance(pairs, list) or len(pairs) > MAX_TRUST_ENTRIES or not all(
            isinstance(p, (list, tuple)) and len(p) == 2 and all(isinstance(v, str) and v for v in p) for p in pairs):
        raise Invalid("sigstore_identities is a list of [identity, issuer] pairs.", field="sigstore_identities")
    return [list(p) for p in pairs]


def trust_config_of(tenant: Tenant) -> TrustConfiguration:
    return TrustConfiguration.objects.filter(tenant=tenant).first() or TrustConfiguration(tenant=tenant)


def trust_config_update(*, actor, tenant: Tenant, public_keys=None, ca_roots=None, allowed_identities=None,
                        sigstore_identities=None) -> TrustConfiguration | GovernedChangeProposal:
    """Replace the given parts of a tenant's trust configuration (tenant admins). A change that
    trusts anything more is not written: it returns the proposal a second tenant admin must
    confirm (policies.governance)."""
    changes = {}
    if public_keys is not None:
        changes["public_keys"] = _check_public_keys(public_keys)
    if ca_roots is not None:
        changes["ca_roots"] = _check_ca_roots(ca_roots)
    if allowed_identities is not None:
        changes["allowed_identities"] = _check_strings(allowed_identities, "allowed_identities")
    if sigstore_identities is not None:
        changes["sigstore_identities"] = _check_sigstore_identities(sigstore_identities)
    with transaction.atomic():
        require(actor, tenant, "admin")
        bind_rls(tenant_id=tenant.pk)
        before, revision = _current_trust(tenant)
        proposal = governance.propose_if_loosening(actor=actor, tenant=tenant, setting="trust", before=before,
                                                   changes=changes, base_revision=revision)
        return proposal or _write_trust(actor=actor, tenant=tenant, changes=changes)


def _current_trust(tenant: Tenant) -> tuple[dict, int]:
    config = TrustConfiguration.objects.select_for_update().filter(tenant=tenant).first() \
        or TrustConfiguration(tenant=tenant)
    return {field: getattr(config, field) for field in TRUST_FIELDS}, config.revision


def _write_trust(*, actor, tenant: Tenant, changes: dict, comment: str = "", proposal=None) -> TrustConfiguration:
    """Write the next revision (the configuration locked): a tightening at once, or a
    loosening its second admin confirmed (``proposal``)."""
    config = TrustConfiguration.objects.select_for_update().filter(tenant=tenant).first() \
        or TrustConfiguration(tenant=tenant)
    before = _signers(config)
    for field, value in changes.items():
        setattr(config, field, value)
    config.revision += 1
    config.updated_at = timezone.now()
    config.save()
    record(action="trust_config.update", actor=actor_for(actor), tenant=tenant.slug,
           target=Target("trust_configuration", tenant.slug),
           data={"revision": config.revision,
                 "public_keys": {k: _fingerprint(v) for k, v in config.public_keys.items()},
                 "ca_roots": [_fingerprint(pem) for pem in config.ca_roots],
                 "allowed_identities": config.allowed_identities,
                 "sigstore_identities": config.sigstore_identities,
                 "proposal": proposal.pk if proposal else None})
    _revoke_removed_signers(actor=actor, tenant=tenant, before=before, config=config)
    governance.settle(actor=actor, tenant=tenant, setting="trust", revision=config.revision, applied=proposal)
    return config


TRUST_FIELDS = ("public_keys", "ca_roots", "allowed_identities", "sigstore_identities")
GOVERNED_TRUST = governance.Governed(
    orders=loosening.TRUST, current=_current_trust, write=_write_trust, label="trust configuration",
    revision=lambda tenant: TrustConfiguration.objects.filter(tenant=tenant).values_list("revision", flat=True).first()
    or 0)


def _signers(config: TrustConfiguration) -> dict:
    """Who the configuration trusts, by verification mode: what a passing verification names."""
    return {"key": {(kid, _fingerprint(pem)) for kid, pem in config.public_keys.items()},
            "certificate": set(config.allowed_identities),
            "keyless": {tuple(pair) for pair in config.sigstore_identities}, "roots": set(config.ca_roots)}


def _revoke_removed_signers(*, actor, tenant: Tenant, before: dict, config: TrustConfiguration) -> None:
    """A signer removed from the trust configuration no longer vouches for anything: every
    artifact whose standing verification it backed gets a failed verification on record, so
    the versions using it cannot be promoted (nor run in production) until re-signed."""
    after = _signers(config)
    # By the name a verification records: a key id whose key changed, an identity whose issuer changed.
    removed = {"key": {kid for kid, _ in before["key"] - after["key"]},
               "certificate": before["certificate"] - after["certificate"],
               "keyless": {identity for identity, _ in before["keyless"] - after["keyless"]}}
    roots_removed = bool(before["roots"] - after["roots"])  # any certificate may chain to the removed root
    latest = {}
    for verification in Verification.objects.filter(tenant=tenant).select_related("artifact").order_by("performed_at", "id"):
        latest[verification.signature_id] = verification
    for verification in latest.values():
        if not verification.verified:
            continue
        mode = verification.mode
        if verification.identity in removed.get(mode, ()) or (mode == "certificate" and roots_removed):
            what = "a CA root" if verification.identity not in removed.get(mode, ()) else verification.identity
            reason = (f"Revoked: {what} was removed from the trust configuration (revision {config.revision}); "
                      "re-sign the artifact with a trusted signer.")
            Verification.objects.create(
                tenant=tenant, artifact_id=verification.artifact_id, signature_id=verification.signature_id,
                verified=False, mode=mode, identity=verification.identity, reason=reason,
                trust_revision=config.revision, performed_by=actor.username)
            artifact = verification.artifact
            record(action="signature.revoke", actor=actor_for(actor), tenant=tenant.slug,
                   target=Target("artifact", f"{artifact.name}@{artifact.digest}"), outcome="failed",
                   data={"signature": verification.signature_id, "identity": verification.identity, "mode": mode,
                         "trust_revision": config.revision})


def _library_trust(config: TrustConfiguration) -> signing.TrustConfig:
    return signing.TrustConfig(
        public_keys=dict(config.public_keys), ca_roots=list(config.ca_roots),
        allowed_identities=list(config.allowed_identities),
        sigstore_identities=[tuple(p) for p in config.sigstore_identities])


@contextmanager
def _artifact_on_disk(artifact: Artifact):
    """The path verification reads: the stored file, or a directory unpacked from its archive."""
    with get_store().local_copy(artifact.digest) as stored:
        if artifact.layout == ArtifactLayout.FILE:
            yield stored
            return
        from .archive import unpack_archive

        with tempfile.TemporaryDirectory(prefix="neocloud-verify-") as scratch:
            target = Path(scratch) / artifact.name
            unpack_archive(stored, target, max_total_bytes=settings.ARTIFACT_MAX_BYTES)
            yield target


def _verify_and_record(*, actor, tenant, artifact, signature, config) -> Verification:
    try:
        with _artifact_on_disk(artifact) as path:
            # The bundle must describe this artifact: its subject named as the artifact is registered.
            result = signing.verify_path(path, signature.bundle, trust=_library_trust(config), name=artifact.name,
                                         received_at=signature.received_at,
                                         max_bundle_bytes=settings.SIGNATURE_BUNDLE_MAX_BYTES)
    except (ValueError, StoredBytesChanged) as exc:  # an archive it will not unpack, or bytes altered in the store
        result = signing.VerificationResult(verified=False, mode=None, identity="", reason=str(exc), digest="",
                                            signed_at=None)
    with transaction.atomic():
        bind_rls(tenant_id=tenant.pk)
        current = TrustConfiguration.objects.select_for_update().filter(tenant=tenant).first()
        if result.verified and current is not None and current.revision != config.revision:
            # The trust configuration changed while this verification ran (perhaps revoking its
            # signer): it must not land after the revocation as the artifact's standing status.
            result = signing.VerificationResult(
                verified=False, mode=result.mode, identity=result.identity, digest=result.digest, signed_at=None,
                reason=f"The trust configuration changed during verification (revision {config.revision} -> "
                       f"{current.revision}); verify again.")
        verification = Verification.objects.create(
            tenant=tenant, artifact=artifact, signature=signature, verified=result.verified,
            mode=result.mode.value if result.mode else "", identity=result.identity[:500], reason=result.reason,
            trust_revision=config.revision, performed_by=actor.username)
        record(action="signature.verify", actor=actor_for(actor), tenant=tenant.slug,
               target=Target("artifact", f"{artifact.name}@{artifact.digest}"),
               outcome="success" if result.verified else "failed",
               data={"signature": signature.pk, "verified": result.verified, "mode": verification.mode,
                     "identity": verification.identity, "reason": result.reason,
                     "trust_revision": config.revision})
    return verification


def signature_attach(*, actor, tenant: Tenant, artifact: Artifact, bundle: bytes) -> Verification:
    """Store a bundle for an artifact and verify it at once; return the verification.

    A bundle over the size limit or not JSON is refused and nothing is stored. Any other
    bundle is stored with its verification, verified or not, so the reason stays on record.
    """
    if len(bundle) > settings.SIGNATURE_BUNDLE_MAX_BYTES:
        raise TooLarge(f"The bundle is {len(bundle)} bytes; the limit is {settings.SIGNATURE_BUNDLE_MAX_BYTES}.",
                       field="bundle", code="bundle_too_large")
    try:
        document = json.loads(bundle)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise Invalid(f"The bundle is not valid JSON: {exc}.", field="bundle", code="malformed_bundle") from None
    if not isinstance(document, dict) or "mediaType" not in document:
        raise Invalid("The bundle is not a Sigstore bundle (it has no mediaType).", field="bundle",
                      code="malformed_bundle")
    with transaction.atomic():
        require(actor, tenant, "develop")
        bind_rls(tenant_id=tenant.pk)
        signature = Signature.objects.create(
            tenant=tenant, artifact=artifact, bundle=bundle.decode(), received_at=timezone.now(),
            bundle_digest="sha256:" + hashlib.sha256(bundle).hexdigest(), uploaded_by=actor)
        config = trust_config_of(tenant)
    return _verify_and_record(actor=actor, tenant=tenant, artifact=artifact, signature=signature, config=config)


def artifact_verify(*, actor, tenant: Tenant, artifact: Artifact) -> list[Verification]:
    """Verify every signature of an artifact again, against today's trust configuration and
    each bundle's original receipt time."""
    with transaction.atomic():
        require(actor, tenant, "view")
        bind_rls(tenant_id=tenant.pk)
        signatures = list(Signature.objects.filter(artifact=artifact).order_by("received_at"))
        config = trust_config_of(tenant)
    return [_verify_and_record(actor=actor, tenant=tenant, artifact=artifact, signature=s, config=config)
            for s in signatures]
