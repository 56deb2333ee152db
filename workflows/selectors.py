"""Read-side helpers for workflows: what the console, the API and the gate read about
artifacts, versions and promotions."""

from dataclasses import dataclass

from django.db.models import Prefetch

from tenants.errors import NotFound
from tenants.models import Tenant

from .models import Artifact, Promotion, Signature, Verification, VersionArtifact, WorkflowVersion


@dataclass(frozen=True)
class SignatureStatus:
    state: str  # verified, not_verified, unsigned
    identity: str = ""
    reason: str = ""

    @property
    def verified(self):
        return self.state == "verified"


def version_named(user, tenant, workflow: str, number: int) -> WorkflowVersion | None:
    """A version by its workflow's name and its number, read through the choke point."""
    return (WorkflowVersion.objects.restrict(user, "view")
            .filter(tenant=tenant, workflow__name=workflow, number=number)
            .select_related("workflow", "created_by").first())


def with_verifications(artifacts):
    """Prefetch what signature_status needs, in one query."""
    return artifacts.prefetch_related(
        Prefetch("verifications", queryset=Verification.objects.order_by("-performed_at", "-id")))


def signature_status(artifact: Artifact) -> SignatureStatus:
    """Verified when the latest verification of any of its signatures passed; otherwise the
    latest reason. Expects ``with_verifications``."""
    latest_per_signature = {}
    for verification in artifact.verifications.all():  # newest first
        latest_per_signature.setdefault(verification.signature_id, verification)
    if not latest_per_signature:
        return SignatureStatus("unsigned", reason="No signature has been attached.")
    passing = [v for v in latest_per_signature.values() if v.verified]
    if passing:
        return SignatureStatus("verified", identity=passing[0].identity, reason=passing[0].reason)
    newest = max(latest_per_signature.values(), key=lambda v: (v.performed_at, v.pk))
    return SignatureStatus("not_verified", identity=newest.identity, reason=newest.reason)


def promotion_by_id(*, actor, tenant: Tenant, public_id) -> Promotion:
    promotion = (Promotion.objects.restrict(actor, "view").filter(tenant=tenant, public_id=public_id)
                 .select_related("tenant", "workflow", "version__created_by", "requested_by", "metrics_artifact")
                 .first())
    if promotion is None:
        raise NotFound("No such promotion.")
    return promotion


def artifacts_with_status(version: WorkflowVersion) -> list[tuple[Artifact, object]]:
    return artifacts_by_version([version])[version.pk]


def artifacts_by_version(versions) -> dict[int, list[tuple[Artifact, object]]]:
    """Each version's artifacts with their signature status, by name and digest, in three queries."""
    links = VersionArtifact.objects.filter(version_id__in=[v.pk for v in versions]).select_related(
        "artifact").prefetch_related(
        Prefetch("artifact__verifications", queryset=Verification.objects.order_by("-performed_at", "-id")),
        Prefetch("artifact__signatures", queryset=Signature.objects.only("id", "artifact_id", "bundle_digest")))
    found = {version.pk: [] for version in versions}
    for link in links:
        found[link.version_id].append((link.artifact, signature_status(link.artifact)))
    for artifacts in found.values():
        artifacts.sort(key=lambda pair: (pair[0].name, pair[0].digest))
    return found


def signature_set(artifact: Artifact) -> list[dict]:
    """Every signature of the artifact with its latest verification's signer and result: the
    complete set an approval binds to, not only whether one of them verifies."""
    latest = {}
    for verification in artifact.verifications.all():  # newest first
        latest.setdefault(verification.signature_id, verification)
    signatures = [{"bundle_digest": s.bundle_digest,
                   "identity": latest[s.pk].identity if s.pk in latest else "",
                   "verified": latest[s.pk].verified if s.pk in latest else False} for s in artifact.signatures.all()]
    return sorted(signatures, key=lambda s: (s["bundle_digest"], s["identity"], s["verified"]))
