"""Sending checkpoints to independent witnesses (``audit.witness``), and keeping their cosignatures.

After each checkpoint the platform asks every configured witness (AUDIT_WITNESSES) to co-sign
the latest one, with a consistency proof from the last checkpoint that witness co-signed. A
witness that is down, slow or refuses is logged and asked again on the next round; checkpoints
never wait for one. What came back is kept (AuditCosignature, append-only), and the compliance
console shows which witness has not co-signed the latest checkpoint.
"""

import base64
import logging
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from pathlib import Path

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db.models import Max
from django.utils import timezone

from . import tree
from .models import AuditCheckpoint, AuditCosignature
from .witness import SIZE_CONTENT_TYPE, cosignature_time, load_public_key

logger = logging.getLogger(__name__)
TIMEOUT_SECONDS = 5


@dataclass(frozen=True)
class WitnessConfig:
    name: str
    url: str  # its submission prefix: add-checkpoint is POSTed to <url>/add-checkpoint
    public_pem: str

    @property
    def public_key(self):
        return load_public_key(self.public_pem)


@cache
def configured_witnesses() -> tuple[WitnessConfig, ...]:
    """AUDIT_WITNESSES: each ``name``, ``url`` and ``public_key_file`` (a PEM of its ML-DSA-44 key)."""
    found = []
    for entry in settings.AUDIT_WITNESSES:
        try:
            found.append(WitnessConfig(name=entry["name"], url=entry["url"].rstrip("/"),
                                       public_pem=Path(entry["public_key_file"]).read_text()))
        except (KeyError, TypeError, OSError) as exc:
            raise ImproperlyConfigured(f"AUDIT_WITNESSES has an entry that is not a name, url and readable "
                                       f"public_key_file: {exc}") from None
    return tuple(found)


class WitnessUnavailable(Exception):
    pass


def witness_latest(*, using: str) -> dict[str, str]:
    """Ask each configured witness that has not yet co-signed the latest checkpoint to do so.
    Returns, per witness, "cosigned", "already" or why not; never raises for a witness."""
    outcome = {}
    if not configured_witnesses():
        return outcome
    latest = AuditCheckpoint.objects.using(using).order_by("-tree_size").first()
    if latest is None:
        return outcome
    done = set(AuditCosignature.objects.using(using).filter(checkpoint=latest).values_list("witness", flat=True))
    for witness in configured_witnesses():
        if witness.name in done:
            outcome[witness.name] = "already"
            continue
        try:
            _cosign(witness, latest, using=using)
            outcome[witness.name] = "cosigned"
        except WitnessUnavailable as exc:
            logger.warning("witness %s did not co-sign checkpoint %s: %s", witness.name, latest.tree_size, exc)
            outcome[witness.name] = str(exc)
    return outcome


def _cosign(witness: WitnessConfig, checkpoint: AuditCheckpoint, *, using: str) -> AuditCosignature:
    old = AuditCosignature.objects.using(using).filter(witness=witness.name).aggregate(
        size=Max("checkpoint__tree_size"))["size"] or 0
    status, body = _add_checkpoint(witness, old, checkpoint, using=using)
    if status == 409:  # the witness saw another size last (a restored platform, a shared witness)
        old = _size_in(body)
        status, body = _add_checkpoint(witness, old, checkpoint, using=using)
    if status != 200:
        raise WitnessUnavailable(f"it answered {status}: {body.strip()[:300]}")
    note = checkpoint.note + body
    timestamp = cosignature_time(note, name=witness.name, public=witness.public_key)
    if timestamp is None:
        raise WitnessUnavailable("its answer holds no valid cosignature from its configured key")
    line = next(line for line in body.splitlines() if line.startswith(f"\u2014 {witness.name} "))
    return AuditCosignature.objects.using(using).create(
        checkpoint=checkpoint, witness=witness.name, line=line + "\n", received_at=timezone.now(),
        cosigned_at=datetime.fromtimestamp(timestamp, tz=UTC))


def _size_in(body: str) -> int:
    try:
        return int(body.strip())
    except ValueError:
        raise WitnessUnavailable(f"its 409 answer is not a tree size: {body[:100]!r}") from None


def _add_checkpoint(witness: WitnessConfig, old: int, checkpoint: AuditCheckpoint, *, using: str) -> tuple[int, str]:
    if old > checkpoint.tree_size:
        raise WitnessUnavailable(f"it last co-signed size {old}, larger than this checkpoint's {checkpoint.tree_size}")
    proof = tree.consistency_proof(old, checkpoint.tree_size, using=using) if 0 < old < checkpoint.tree_size else []
    body = f"old {old}\n" + "".join(base64.b64encode(node).decode() + "\n" for node in proof) + "\n" + checkpoint.note
    request = urllib.request.Request(f"{witness.url}/add-checkpoint", data=body.encode(), method="POST",
                                     headers={"Content-Type": "text/plain; charset=utf-8"})
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        text = error.read().decode(errors="replace")
        if error.code == 409 and not (error.headers.get("Content-Type") or "").startswith(SIZE_CONTENT_TYPE):
            raise WitnessUnavailable(f"its 409 answer is not a {SIZE_CONTENT_TYPE}") from None
        return error.code, text
    except (urllib.error.URLError, OSError) as exc:
        raise WitnessUnavailable(f"it cannot be reached ({getattr(exc, 'reason', exc)})") from None


def cosigned_note(checkpoint: AuditCheckpoint, *, using: str) -> str:
    """The checkpoint's note with every witness cosignature kept for it appended (a verifier
    that knows only the platform key skips those lines)."""
    return checkpoint.note + "".join(AuditCosignature.objects.using(using).filter(checkpoint=checkpoint)
                                     .order_by("witness").values_list("line", flat=True))


def witness_status(checkpoint: AuditCheckpoint | None, *, using: str) -> list[tuple[str, datetime | None]]:
    """Each configured witness with when it co-signed ``checkpoint`` (None: it has not)."""
    if checkpoint is None:
        return []
    cosigned = dict(AuditCosignature.objects.using(using).filter(checkpoint=checkpoint)
                    .values_list("witness", "cosigned_at"))
    return [(witness.name, cosigned.get(witness.name)) for witness in configured_witnesses()]

