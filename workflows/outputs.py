"""What runs produce: outputs kept in the artifact store with a provenance statement the
platform signs, and the staging-run metrics that production promotions are judged by."""

from pathlib import Path

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from audit.keys import platform_keyring, platform_public_keys
from audit.log import Actor, Target, record
from tenants.models import Tenant

from . import attestations
from .metrics import check_metrics_file
from .models import Artifact, ArtifactKind, RunOutput, Stage, WorkflowVersion
from .digests import file_digest
from .store import get_store

PROVENANCE_PREDICATE = attestations.PROVENANCE_PREDICATE


def run_output_register(*, tenant: Tenant, version: WorkflowVersion, stage: str, run_id: str, name: str, kind: str,
                        path: Path, region: str, created_by, facts: dict, using: str) -> RunOutput:
    """Hash and store one output file, register it as an artifact of the tenant, and sign its
    provenance (``facts``: the run, its inputs, the version digest, the runner and devices).
    A metrics output must be a JSON object of finite numbers. Raises UploadRefused."""
    if kind == ArtifactKind.METRICS:
        check_metrics_file(path)
    digest = file_digest(path)
    size = path.stat().st_size
    with open(path, "rb") as stream:
        get_store().receive(stream, declared_size=size, expected_digest=digest,
                            max_bytes=settings.ARTIFACT_MAX_BYTES)
    statement = {"_type": attestations.STATEMENT_TYPE, "subject": [{"name": name, "digest": {"sha256": digest[7:]}}],
                 "predicateType": PROVENANCE_PREDICATE,
                 "predicate": {**facts, "output": name, "kind": kind, "size_bytes": size}}
    provenance = attestations.sign_statement(statement, platform_keyring())
    now = timezone.now()
    with transaction.atomic(using=using):
        artifact = Artifact.objects.using(using).filter(tenant=tenant, name=name, digest=digest).first()
        if artifact is None:
            artifact = Artifact.objects.using(using).create(
                tenant=tenant, name=name, kind=kind, digest=digest, size_bytes=size, region=region,
                created_by=created_by, created_at=now, stored_at=now)
        output = RunOutput.objects.using(using).create(
            tenant=tenant, artifact=artifact, version=version, stage=stage, run_id=run_id, output_name=name,
            provenance=provenance, created_at=now)
        record(action="run.output", actor=Actor.system("runner"), tenant=tenant.slug, target=Target("run", run_id),
               using=using, data={"output": name, "kind": kind, "digest": digest, "size_bytes": size})
    return output


def staging_run_metrics(version: WorkflowVersion) -> RunOutput | None:
    """The metrics output of the version's latest successful staging run whose platform
    provenance verifies (outputs are registered only when every step succeeded)."""
    return staging_run_metrics_of([version]).get(version.pk)


def staging_run_metrics_of(versions) -> dict[int, RunOutput]:
    """``staging_run_metrics`` of each of ``versions`` (by id; absent when none verifies), in one query."""
    digests = {version.pk: version.digest for version in versions}
    found, keys = {}, None
    for output in (RunOutput.objects.filter(version_id__in=list(digests), stage=Stage.STAGING,
                                            artifact__kind=ArtifactKind.METRICS)
                   .select_related("artifact").order_by("-created_at", "-id")):
        if output.version_id in found:
            continue
        keys = keys or platform_public_keys()
        try:
            statement = attestations.verify_attestation(output.provenance, keys, predicate_type=PROVENANCE_PREDICATE)
        except attestations.AttestationInvalid:
            continue
        if (statement["subject"][0]["digest"].get("sha256") == output.artifact.digest[7:]
                and statement["predicate"].get("version_digest") == digests[output.version_id]):
            found[output.version_id] = output
    return found
