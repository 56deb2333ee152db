"""Read-side helpers for workflows: what the console and API show about artifacts."""

from dataclasses import dataclass

from django.db.models import Prefetch

from .models import Artifact, Verification, WorkflowVersion


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
