"""The sequencer: gives committed events gapless positions, as Trillian does.

Event ids come from a database sequence, so concurrent commits group but ids may have gaps
and may commit out of order. The sequencer takes whatever has committed and is not yet
sequenced (the queue a trigger fills, AuditPending), in id order, and appends it to AuditLeaf
under a lock, so positions are gapless both globally and per tenant. Each call reads only the
queue and the tenants' last positions (an index lookup each), whatever the log's size.
"""

from django.conf import settings
from django.db import transaction
from django.db.models import Max
from django.utils import timezone

from . import tree
from .hashing import leaf_hash
from .models import AuditEvent, AuditLeaf, AuditPending, SequencerState
from .rows import insert_rows

PLATFORM_ALIAS = "platform"  # the one name of the platform role's connection (settings.DATABASES)
LEAF_COLUMNS = ("position", "event_id", "tenant", "tenant_position", "leaf", "leaf_hash", "sequenced_at")


def sequence_pending(*, batch: int = 1000, using: str = PLATFORM_ALIAS) -> int:
    """Sequence up to ``batch`` committed events; return how many were sequenced."""
    with transaction.atomic(using=using):
        state = SequencerState.objects.using(using).select_for_update().get(pk=1)
        queued = list(AuditPending.objects.using(using).order_by("event_id")
                      .values_list("event_id", flat=True)[:batch])
        if not queued:
            return 0
        # An entry whose event already has its leaf (a queue left behind by a restore, say) is
        # dropped with the rest, never sequenced twice.
        pending = list(AuditEvent.objects.using(using).filter(id__in=queued, leaf__isnull=True).order_by("id")
                       .values_list("id", "tenant", "event_hash"))
        heads = {tenant: _tenant_head(tenant, using) for tenant in {tenant for _, tenant, _ in pending}}
        now = timezone.now()
        rows, hashes = [], []
        position = state.tree_size
        for event_id, tenant, event_hash in pending:
            tenant_position = heads.get(tenant, -1) + 1
            heads[tenant] = tenant_position
            body = AuditLeaf.leaf_body(event_hash=event_hash, tenant=tenant, tenant_position=tenant_position)
            hashes.append(leaf_hash(body))
            rows.append((position, event_id, tenant, tenant_position, body.decode(), hashes[-1].hex(), now))
            position += 1
        insert_rows(AuditLeaf, LEAF_COLUMNS, rows, using=using)
        tree.append(start=state.tree_size, leaf_hashes=hashes, using=using)
        AuditPending.objects.using(using).filter(event_id__in=queued).delete()
        state.tree_size = position
        state.updated_at = now
        state.save(using=using, update_fields=["tree_size", "updated_at"])
        return len(rows)


def sequence_all(*, using: str = PLATFORM_ALIAS) -> int:
    """Sequence everything committed before the call (for commands, exports and packs that need
    the tree to cover it; events committed meanwhile may wait for the next call). Returns how
    many events were sequenced."""
    queue = AuditPending.objects.using(using)
    last = queue.aggregate(last=Max("event_id"))["last"]
    total = 0
    while last is not None and queue.filter(event_id__lte=last).exists():
        total += sequence_pending(batch=settings.AUDIT_SEQUENCER_BATCH, using=using)
    return total


def _tenant_head(tenant: str, using: str) -> int:
    """The tenant's last position, -1 before its first event: the top of its unique index."""
    last = (AuditLeaf.objects.using(using).filter(tenant=tenant).order_by("-tenant_position")
            .values_list("tenant_position", flat=True).first())
    return -1 if last is None else last
