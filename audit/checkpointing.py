"""Writing checkpoints: every AUDIT_CHECKPOINT_EVERY events or AUDIT_CHECKPOINT_SECONDS,
whichever comes first, after the sequencer has run. Each checkpoint, and a head per tenant
with it, is signed with the platform key, stored, and audited."""

from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Max
from django.utils import timezone

from . import tree
from .checkpoints import checkpoint_body, key_hint, sign_note, tenant_head_body
from .keys import platform_keyring
from .log import Actor, Target, record
from .models import AuditCheckpoint, AuditLeaf, AuditTenantHead, SequencerState
from .sequencer import sequence_pending


def checkpoint_due(*, using: str, moment=None) -> bool:
    moment = moment or timezone.now()
    size = SequencerState.objects.using(using).get(pk=1).tree_size
    last = AuditCheckpoint.objects.using(using).order_by("-tree_size").first()
    grown = size - (last.tree_size + 1 if last else 0)  # a checkpoint's own event follows it
    if grown <= 0:
        return False
    # The first checkpoint counts its T seconds from the first leaf, as later ones count from
    # the checkpoint before them (a log missing its first leaf is broken: verify reports it,
    # and it waits for N events).
    since = last.created_at if last else (
        AuditLeaf.objects.using(using).filter(position=0).values_list("sequenced_at", flat=True).first() or moment)
    return (grown >= settings.AUDIT_CHECKPOINT_EVERY
            or moment - since >= timedelta(seconds=settings.AUDIT_CHECKPOINT_SECONDS))


def checkpoint_write(*, using: str, moment=None) -> AuditCheckpoint | None:
    """Sign the tree as it stands under the sequencer's lock; None if nothing was added. The
    checkpoint is audited, and that event is sequenced in the same transaction, so a quiet
    log does not keep a pending event (and is not checkpointed again for it alone)."""
    moment = moment or timezone.now()
    keyring = platform_keyring()
    key = keyring.key(keyring.active().kid, with_private=True)
    origin = settings.AUDIT_LOG_ORIGIN
    with transaction.atomic(using=using):
        size = SequencerState.objects.using(using).select_for_update().get(pk=1).tree_size
        last = AuditCheckpoint.objects.using(using).order_by("-tree_size").first()
        if size == 0 or (last and last.tree_size >= size):
            return None
        root = tree.root(size, using=using)
        checkpoint = AuditCheckpoint.objects.using(using).create(
            tree_size=size, root_hash=root.hex(), key_id=key.kid, created_at=moment,
            note=sign_note(checkpoint_body(origin, size, root), name=origin, private_key=key.private_key))
        heads = {h.tenant: h.tenant_size for h in (last.tenant_heads.using(using).all() if last else [])}
        for tenant, top in (AuditLeaf.objects.using(using).filter(position__gte=last.tree_size if last else 0,
                                                                  position__lt=size)
                            .values_list("tenant").annotate(top=Max("tenant_position"))):
            heads[tenant] = top + 1
        AuditTenantHead.objects.using(using).bulk_create([
            AuditTenantHead(checkpoint=checkpoint, tenant=tenant, tenant_size=count,
                            note=sign_note(tenant_head_body(origin, tenant, count, size, root), name=origin,
                                           private_key=key.private_key))
            for tenant, count in sorted(heads.items())])
        record(action="audit.checkpoint", actor=Actor.system("sequencer"), target=Target("checkpoint", str(size)),
               using=using, data={"tree_size": size, "root_hash": root.hex(), "key_id": key.kid,
                                  "tenants": len(heads)})
        sequence_pending(using=using)  # the checkpoint's own event is the next leaf at once
    return checkpoint


def checkpoint_public_keys() -> dict:
    """The active checkpoint key (PEM, key id, 4-byte key hint, the log's origin), and in
    ``keys`` every platform key, retired ones included: older checkpoints stay signed by them."""
    keyring = platform_keyring()

    def described(key) -> dict:
        return {"key_id": key.kid, "key_hint": key_hint(key.public_pem).hex(), "created_at": key.created_at,
                "retired_at": key.retired_at, "public_key_pem": key.public_pem}

    active = described(keyring.active())
    return {"key_id": active["key_id"], "key_hint": active["key_hint"], "origin": settings.AUDIT_LOG_ORIGIN,
            "public_key_pem": active["public_key_pem"], "keys": [described(key) for key in keyring.keys()]}
