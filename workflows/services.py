"""Domain functions for workflows and versions."""

from django.conf import settings
from django.db import transaction
from django.db.models import Max
from django.utils import timezone

from audit.log import Target, record, record_denial
from tenants.access import actor_for, require
from tenants.db import bind_rls
from tenants.errors import Invalid, TooLarge, clean_or_invalid
from tenants.catalogue import region_problem, residency_problem
from tenants.models import GpuFlavor, Tenant

from .archive import check_archive
from .digests import version_digest
from .metrics import check_metrics_file
from .models import Artifact, ArtifactKind, ArtifactLayout, VersionArtifact, Workflow, WorkflowVersion
from .spec import DIGEST, SpecInvalid, SpecProblem, parse, uses_images, validate
from .store import UploadRefused, get_store

MAX_ARTIFACTS_PER_VERSION = 100


class SpecRejected(Invalid):
    code = "invalid_spec"

    def __init__(self, problems):
        self.problems = problems
        first = problems[0]
        super().__init__(f"{first.path}: {first.reason}")

    @property
    def fields(self):
        fields = {}
        for problem in self.problems:
            fields.setdefault(problem.path, []).append(problem.reason)
        return fields


def _spec_document(spec) -> dict:
    """A spec arrives as YAML/JSON text or as a parsed object; both meet the size limit."""
    try:
        return parse(spec)
    except SpecInvalid as exc:
        raise SpecRejected(exc.problems) from None


def workflow_version_register(*, actor, tenant: Tenant, spec, artifact_digests=(),
                              workflow_name: str | None = None) -> tuple[WorkflowVersion, bool]:
    """Register a version of the workflow the spec names; return (version, created).

    Identical content (same spec, same artifacts) returns the existing version. With
    ``workflow_name``, the spec must name that workflow.
    """
    document = _spec_document(spec)
    if workflow_name is not None and document.get("name") != workflow_name:
        raise Invalid(f"The spec names workflow '{document.get('name')}', not '{workflow_name}'.", field="spec.name")
    digests = list(dict.fromkeys(artifact_digests))
    if len(digests) > MAX_ARTIFACTS_PER_VERSION:
        raise Invalid(f"A version may reference at most {MAX_ARTIFACTS_PER_VERSION} artifacts.", field="artifacts")
    with transaction.atomic():
        require(actor, tenant, "develop")
        bind_rls(tenant_id=tenant.pk)
        known = set(GpuFlavor.objects.filter(is_active=True).values_list("name", flat=True))
        try:
            validate(document, known_flavors=known)
        except SpecInvalid as exc:
            raise SpecRejected(exc.problems) from None
        artifacts = {a.digest: a for a in Artifact.objects.filter(tenant=tenant, digest__in=digests)}
        for index, digest in enumerate(digests):
            if digest not in artifacts:
                refuse_unheld_digest(actor=actor, tenant=tenant, digest=digest, field=f"artifacts[{index}]")
                raise Invalid(f"No artifact with digest {digest} in {tenant.slug}.", field=f"artifacts[{index}]")
        _check_inputs_held(actor=actor, tenant=tenant, document=document)
        digest, canonical = version_digest(document, digests)
        workflow, created_workflow = Workflow.objects.get_or_create(
            tenant=tenant, name=document["name"],
            defaults={"created_by": actor, "description": document.get("description", "")})
        if created_workflow:
            record(action="workflow.create", actor=actor_for(actor), tenant=tenant.slug,
                   target=Target("workflow", workflow.name))
        workflow = Workflow.objects.select_for_update().get(pk=workflow.pk)
        existing = workflow.versions.filter(digest=digest).first()
        if existing is not None:
            return existing, False
        number = (workflow.versions.aggregate(top=Max("number"))["top"] or 0) + 1
        version = WorkflowVersion.objects.create(
            tenant=tenant, workflow=workflow, number=number, spec=document, spec_canonical=canonical,
            digest=digest, artifact_digests=sorted(digests), uses_images=uses_images(document), created_by=actor)
        VersionArtifact.objects.bulk_create(
            [VersionArtifact(tenant=tenant, version=version, artifact=artifacts[d]) for d in digests])
        record(action="workflow_version.register", actor=actor_for(actor), tenant=tenant.slug,
               target=Target("workflow_version", f"{workflow.name}@{number}"),
               data={"digest": digest, "artifacts": sorted(digests), "uses_images": version.uses_images})
    return version, True


def check_directory_archive(path) -> None:
    """A model directory's archive holds only files and directories inside itself: refused at
    upload, not only when it is signed or run."""
    try:
        check_archive(path)
    except ValueError as exc:
        raise UploadRefused("invalid_archive", str(exc)) from None


def held_digests(tenant: Tenant, digests) -> set[str]:
    """The digests among ``digests`` whose bytes ``tenant`` holds as a stored artifact. This is
    the one way a digest leads to bytes: through the asking tenant's own artifact records."""
    return set(Artifact.objects.filter(tenant=tenant, digest__in=set(digests), stored_at__isnull=False)
               .values_list("digest", flat=True))


def refuse_unheld_digest(*, actor, tenant: Tenant, digest: str, field: str) -> None:
    """Audit, in the caller's tenant, a digest it named but does not hold. An unknown digest
    and another tenant's are recorded alike, so neither the answer nor the trail tells
    whether anyone else holds those bytes."""
    record_denial(action="artifact.access_refused", actor=actor_for(actor), tenant=tenant.slug,
                  target=Target("artifact", digest), data={"field": field})


def _check_inputs_held(*, actor, tenant: Tenant, document: dict) -> None:
    """Every spec input is an artifact of the tenant (a run copies exactly those bytes), and
    names a region of the platform's catalogue."""
    inputs = document.get("inputs", [])
    held = held_digests(tenant, [item["digest"] for item in inputs])
    problems = []
    for index, item in enumerate(inputs):
        problem = region_problem(item["region"])
        if problem:
            problems.append(SpecProblem(f"$.inputs[{index}].region", problem))
        if item["digest"] not in held:
            path = f"$.inputs[{index}].digest"
            refuse_unheld_digest(actor=actor, tenant=tenant, digest=item["digest"], field=path)
            problems.append(SpecProblem(path, f"no artifact of {tenant.slug} has this digest: "
                                              "upload the input as an artifact first"))
    if problems:
        raise SpecRejected(problems)


# Artifacts ------------------------------------------------------------------------------

def receive_bytes(stream, *, declared_size: int, digest: str, check=None):
    """Stream bytes into the store; the store's refusals become API errors on ``content``."""
    try:
        return get_store().receive(stream, declared_size=declared_size, expected_digest=digest,
                                   max_bytes=settings.ARTIFACT_MAX_BYTES, check=check)
    except UploadRefused as exc:
        error = TooLarge if exc.code == "too_large" else Invalid
        raise error(str(exc), field="content", code=exc.code) from None


def artifact_upload(*, actor, tenant: Tenant, name: str, kind: str, region: str, digest: str,
                    declared_size: int, stream, layout: str = ArtifactLayout.FILE) -> tuple[Artifact, bool]:
    """Receive an artifact's bytes into the store and register it; return (artifact, created).

    The stream is read outside any database transaction (an upload may take minutes); the
    permission check runs before it and again, with the write, after it.
    """
    probe = Artifact(tenant=tenant, name=name, kind=kind, region=region, digest=digest, size_bytes=declared_size,
                     created_by=actor, layout=layout)
    clean_or_invalid(probe, exclude=["tenant", "created_by", "digest", "size_bytes"])
    if not DIGEST.fullmatch(digest or ""):
        raise Invalid("A digest is 'sha256:' followed by 64 lowercase hex digits.", field="digest")
    problem = residency_problem(region, tenant.jurisdiction, whose=f"{tenant.slug}'s")
    if problem:
        raise Invalid(problem, field="region")
    with transaction.atomic():
        require(actor, tenant, "develop")
        bind_rls(tenant_id=tenant.pk)
        existing = Artifact.objects.filter(tenant=tenant, name=name, digest=digest, stored_at__isnull=False).first()
    if existing is not None:
        return existing, False
    check = (check_metrics_file if kind == ArtifactKind.METRICS else
             check_directory_archive if layout == ArtifactLayout.DIRECTORY else None)
    received = receive_bytes(stream, declared_size=declared_size, digest=digest, check=check)
    with transaction.atomic():
        require(actor, tenant, "develop")
        bind_rls(tenant_id=tenant.pk)
        artifact, created = Artifact.objects.get_or_create(
            tenant=tenant, name=name, digest=received.digest,
            defaults={"kind": kind, "region": region, "size_bytes": received.size, "created_by": actor,
                      "layout": layout, "stored_at": timezone.now()})
        if created:
            record(action="artifact.register", actor=actor_for(actor), tenant=tenant.slug,
                   target=Target("artifact", f"{name}@{received.digest}"),
                   data={"kind": kind, "region": region, "size_bytes": received.size, "layout": layout})
    return artifact, created

