"""Tenant audit exports a regulator can verify without trusting the platform.

An export is a folder (or the same files in a zip):

- ``checkpoint.txt``: the signed checkpoint the export ends at;
- ``tenant-head.txt``: the tenant's signed head for that checkpoint (how many of its events
  it covers);
- ``events.jsonl``: one line per event of the tenant, in order: its exact canonical bytes
  (``canonical``), its sequencing entry (``leaf``), its global sequence number (``position``),
  its per-tenant position, and the inclusion proof against the checkpoint;
- ``consistency.jsonl``: a consistency proof from every earlier checkpoint to this one, so a
  regulator holding any earlier checkpoint can check this one extends it;
- ``manifest.json``: what was asked for, what the pack holds (tenant, tree size, tenant size,
  event count) and the SHA-256 of every other file;
- ``manifest-signature.txt``: a note signed with the checkpoint key over the manifest's SHA-256,
  so that nothing in the pack can be edited unseen.

Other tenants' events are not in it: their leaves appear only as hashes inside proofs.
``python -m audit.verify_export`` checks a pack with the standard library and cryptography.
"""

import hashlib
import io
import json
import zipfile
from pathlib import Path

from django.conf import settings
from django.utils import timezone

from . import tree
from .checkpointing import checkpoint_write
from .checkpoints import export_manifest_body, sign_note
from .keys import platform_keyring
from .models import AuditCheckpoint, AuditLeaf
from .sequencer import sequence_all
from .witnessing import cosigned_note, witness_latest

FORMAT = 1


class NothingToExport(Exception):
    pass


def signed_checkpoint(*, using: str, until=None) -> AuditCheckpoint:
    """A checkpoint signed now, covering every event so far; or with ``until``, the latest
    checkpoint signed by then."""
    if until is None:  # up to now: sequence what is pending and sign a checkpoint covering it
        sequence_all(using=using)
        checkpoint_write(using=using)
        witness_latest(using=using)  # so the pack carries the witnesses' cosignatures where they answer
    checkpoints = AuditCheckpoint.objects.using(using).order_by("-tree_size")
    if until is not None:
        checkpoints = checkpoints.filter(created_at__lte=until)
    checkpoint = checkpoints.first()
    if checkpoint is None:
        raise NothingToExport("No checkpoint has been signed in that period yet; run `manage.py audit checkpoint`.")
    return checkpoint


def proved_event(leaf: AuditLeaf, size: int, *, using: str) -> dict:
    """One event as an export line: its exact canonical bytes, its sequencing entry, its global
    and tenant positions, and its inclusion proof in the tree of ``size`` leaves."""
    return {"position": leaf.position, "tenant_position": leaf.tenant_position, "canonical": leaf.event.canonical,
            "leaf": leaf.leaf, "proof": [h.hex() for h in tree.inclusion_proof(leaf.position, size, using=using)]}


def consistency_proofs(size: int, *, using: str) -> list[dict]:
    """A consistency proof from every earlier checkpoint to the tree of ``size``: the platform
    does not know which one a regulator kept."""
    return [{"from": older.tree_size, "from_root": older.root_hash,
             "proof": [h.hex() for h in tree.consistency_proof(older.tree_size, size, using=using)]}
            for older in AuditCheckpoint.objects.using(using).filter(tree_size__lt=size).order_by("tree_size")]


def jsonl(records) -> bytes:
    return "".join(json.dumps(item, sort_keys=True) + "\n" for item in records).encode()


def export_files(*, tenant: str, since=None, until=None, using: str) -> dict[str, bytes]:
    """The export's files by name, ending at a checkpoint signed now (covering every event so
    far), or with ``until``, at the latest checkpoint signed by then;
    ``since`` leaves out the tenant's events before it (a regulator then checks the first
    position against the tenant head they kept)."""
    checkpoint = signed_checkpoint(using=using, until=until)
    head = checkpoint.tenant_heads.using(using).filter(tenant=tenant).first()
    if head is None:
        raise NothingToExport(f"The checkpoint of size {checkpoint.tree_size} covers no event of tenant {tenant}.")
    size = checkpoint.tree_size
    leaves = (AuditLeaf.objects.using(using).filter(tenant=tenant, position__lt=size).select_related("event")
              .order_by("position"))
    if since is not None:
        leaves = leaves.filter(event__occurred_at__gte=since)
    events = [proved_event(leaf, size, using=using) for leaf in leaves.iterator(chunk_size=1000)]
    consistency = consistency_proofs(size, using=using)
    files = {"checkpoint.txt": cosigned_note(checkpoint, using=using).encode(), "tenant-head.txt": head.note.encode(),
             "events.jsonl": jsonl(events), "consistency.jsonl": jsonl(consistency)}
    manifest = {"format": FORMAT, "tenant": tenant, "tree_size": size, "tenant_size": head.tenant_size,
                "events": len(events), "since": since.isoformat() if since else None,
                "until": until.isoformat() if until else None, "exported_at": timezone.now().isoformat(),
                "files": {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}}
    manifest_bytes = json.dumps(manifest, indent=2, sort_keys=True).encode()
    origin = settings.AUDIT_LOG_ORIGIN
    signature = sign_note(export_manifest_body(origin, manifest_bytes), name=origin,
                          private_key=platform_keyring().active().private_key)
    return {"manifest.json": manifest_bytes, "manifest-signature.txt": signature.encode(), **files}


def write_folder(files: dict[str, bytes], folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)


def as_zip(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return buffer.getvalue()
