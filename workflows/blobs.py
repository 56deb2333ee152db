"""Model directories uploaded file by file: each file as a blob, then the directory
assembled from a manifest of relative paths and digests.

The server packs the directory itself, into the same deterministic archive the CLI makes
(``workflows.archive.pack_directory``), so a directory has one digest however it arrived.
"""

import shutil
import tempfile
from pathlib import Path, PurePosixPath

from django.db import transaction

from audit.log import Target, record
from tenants.access import actor_for, require
from tenants.db import bind_rls
from tenants.errors import Invalid
from tenants.models import Tenant

from .archive import DEFAULT_MAX_MEMBERS, pack_directory
from .models import ArtifactLayout, Blob
from .services import artifact_upload, receive_bytes, refuse_unheld_digest
from .spec import DIGEST
from .store import get_store


def blob_upload(*, actor, tenant: Tenant, digest: str, declared_size: int, stream) -> tuple[Blob, bool]:
    """Receive one file of a model directory; return (blob, created)."""
    if not DIGEST.fullmatch(digest or ""):
        raise Invalid("A digest is 'sha256:' followed by 64 lowercase hex digits.", field="digest")
    with transaction.atomic():
        require(actor, tenant, "develop")
        bind_rls(tenant_id=tenant.pk)
        existing = Blob.objects.filter(tenant=tenant, digest=digest).first()
    if existing is not None:
        return existing, False
    received = receive_bytes(stream, declared_size=declared_size, digest=digest)
    with transaction.atomic():
        require(actor, tenant, "develop")
        bind_rls(tenant_id=tenant.pk)
        blob, created = Blob.objects.get_or_create(
            tenant=tenant, digest=received.digest, defaults={"size_bytes": received.size, "created_by": actor})
        if created:
            record(action="artifact.file_upload", actor=actor_for(actor), tenant=tenant.slug,
                   target=Target("blob", received.digest), data={"size_bytes": received.size})
    return blob, created


def _checked_manifest(files) -> dict[PurePosixPath, str]:
    if not isinstance(files, dict) or not files:
        raise Invalid("files maps each relative path in the directory to its sha256 digest.", field="files")
    if len(files) > DEFAULT_MAX_MEMBERS:
        raise Invalid(f"A directory may hold at most {DEFAULT_MAX_MEMBERS} files.", field="files")
    manifest = {}
    for name, digest in files.items():
        path = PurePosixPath(name) if isinstance(name, str) else None
        if path is None or not name or path.is_absolute() or ".." in path.parts or name != str(path):
            raise Invalid(f"{name!r} is not a plain relative path inside the directory.", field=f"files.{name}")
        if not isinstance(digest, str) or not DIGEST.fullmatch(digest):
            raise Invalid("A digest is 'sha256:' followed by 64 lowercase hex digits.", field=f"files.{name}")
        manifest[path] = digest
    names = set(manifest)
    for path in manifest:
        if any(parent in names for parent in path.parents):
            raise Invalid(f"{path} lies under a path that is itself a file.", field=f"files.{path}")
    return manifest


def artifact_assemble(*, actor, tenant: Tenant, name: str, kind: str, region: str, digest: str,
                      files) -> tuple:
    """Assemble a model directory from blobs this tenant uploaded, pack it, and register it
    as a directory artifact whose digest must equal ``digest`` (what the CLI computed)."""
    manifest = _checked_manifest(files)
    with transaction.atomic():
        require(actor, tenant, "develop")
        bind_rls(tenant_id=tenant.pk)
        held = set(Blob.objects.filter(tenant=tenant, digest__in=set(manifest.values()))
                   .values_list("digest", flat=True))
    for path, file_digest in manifest.items():
        if file_digest not in held:
            refuse_unheld_digest(actor=actor, tenant=tenant, digest=file_digest, field=f"files.{path}")
            raise Invalid(f"No uploaded file with digest {file_digest} in {tenant.slug}; upload it first.",
                          field=f"files.{path}")
    store = get_store()
    with tempfile.TemporaryDirectory(prefix="neocloud-assemble-") as scratch:
        root = Path(scratch) / "directory"
        for path, file_digest in manifest.items():
            target = root / path
            target.parent.mkdir(parents=True, exist_ok=True)
            with store.open(file_digest) as source, open(target, "wb") as sink:
                shutil.copyfileobj(source, sink, 1024 * 1024)
        archive = Path(scratch) / "directory.tar"
        with open(archive, "wb") as out:
            pack_directory(root, out)
        with open(archive, "rb") as stream:
            return artifact_upload(actor=actor, tenant=tenant, name=name, kind=kind, region=region, digest=digest,
                                   declared_size=archive.stat().st_size, stream=stream,
                                   layout=ArtifactLayout.DIRECTORY)
