"""The append-only audit log.

Events name tenants, actors and targets by value, so the log outlives what it describes.
Both tables are append-only in the database itself (see audit.appendonly).
"""

import operator
import uuid

from django.db import models

from .hashing import canonical_json, leaf_hash, timestamp


# The columns an event's canonical JSON is built from, in canonical_body's order.
BODY_FIELDS = ("uuid", "occurred_at", "actor_type", "actor_id", "actor_name", "token_id", "tenant", "action", "outcome",
               "target_type", "target_id", "data")

_body_values = operator.attrgetter(*BODY_FIELDS)


def canonical_body(uuid, occurred_at, actor_type, actor_id, actor_name, token_id, tenant, action, outcome, target_type,
                   target_id, data) -> dict:
    """What an event's canonical JSON says, from its columns (BODY_FIELDS)."""
    return {
        "uuid": str(uuid),
        "time": timestamp(occurred_at),
        "actor": {"type": actor_type, "id": actor_id, "name": actor_name, "token": token_id},
        "tenant": tenant,
        "action": action,
        "outcome": outcome,
        "target": {"type": target_type, "id": target_id},
        "data": data,
    }


class AuditEvent(models.Model):
    """One recorded action. Its id comes from a database sequence and may have gaps;
    the gapless order is given by its AuditLeaf once the sequencer has reached it."""

    class Outcome(models.TextChoices):
        SUCCESS = "success"
        DENIED = "denied"
        FAILED = "failed"

    id = models.BigAutoField(primary_key=True)
    uuid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    occurred_at = models.DateTimeField(db_index=True)
    actor_type = models.CharField(max_length=16)  # user, token, system, anonymous
    actor_id = models.CharField(max_length=64, blank=True)
    actor_name = models.CharField(max_length=150, blank=True)
    token_id = models.CharField(max_length=32, blank=True)
    tenant = models.CharField(max_length=64, blank=True)  # slug; blank = platform scope
    action = models.CharField(max_length=64)
    outcome = models.CharField(max_length=16, choices=Outcome.choices, default=Outcome.SUCCESS)
    target_type = models.CharField(max_length=64, blank=True)
    target_id = models.CharField(max_length=150, blank=True)
    data = models.JSONField(default=dict)
    canonical = models.TextField()
    event_hash = models.CharField(max_length=64)

    class Meta:
        ordering = ["-id"]
        # The compliance console filters on these and pages by id (keyset), newest first: a
        # tenant's auditors always within their tenant, platform admins across all of them.
        indexes = [models.Index(fields=["tenant", "-id"]), models.Index(fields=["action", "-id"]),
                   models.Index(fields=["actor_name", "-id"]), models.Index(fields=["target_type", "target_id", "-id"]),
                   models.Index(fields=["tenant", "action", "-id"]), models.Index(fields=["tenant", "actor_name", "-id"]),
                   models.Index(fields=["tenant", "target_type", "target_id", "-id"])]

    def __str__(self):
        return f"{self.action} by {self.actor_name or self.actor_type} ({self.outcome})"

    def canonical_body(self) -> dict:
        return canonical_body(*_body_values(self))

    def compute_canonical(self) -> bytes:
        return canonical_json(self.canonical_body())

    def seal(self):
        """Fill canonical and event_hash from the other fields (once, before insert)."""
        body = self.compute_canonical()
        self.canonical = body.decode()
        self.event_hash = leaf_hash(body).hex()


class AuditLeaf(models.Model):
    """The sequencing entry: a gapless global position (the leaf index in the tree) and a
    gapless position within the event's tenant, so a tenant can prove its history complete."""

    position = models.BigIntegerField(primary_key=True)
    event = models.OneToOneField(AuditEvent, on_delete=models.PROTECT, related_name="leaf")
    tenant = models.CharField(max_length=64, blank=True)
    tenant_position = models.BigIntegerField()
    leaf = models.TextField()
    leaf_hash = models.CharField(max_length=64)
    sequenced_at = models.DateTimeField()

    class Meta:
        ordering = ["position"]
        constraints = [
            models.UniqueConstraint(fields=["tenant", "tenant_position"], name="audit_leaf_tenant_position_unique"),
        ]

    @staticmethod
    def leaf_body(*, event_hash: str, tenant: str, tenant_position: int) -> bytes:
        return canonical_json({"event_hash": event_hash, "tenant": tenant, "tenant_position": tenant_position})


class AuditPending(models.Model):
    """An event committed but not sequenced yet, as Trillian's Unsequenced table: a database
    trigger writes it with the event (whatever path inserted it), and the sequencer deletes it
    when it gives the event its leaf. So finding new work reads only this small table, never
    the whole log."""

    event = models.OneToOneField(AuditEvent, on_delete=models.DO_NOTHING, primary_key=True, related_name="+")


class SequencerState(models.Model):
    """One row: the sequencer's lock and the current tree size."""

    id = models.PositiveSmallIntegerField(primary_key=True, default=1)
    tree_size = models.BigIntegerField(default=0)
    updated_at = models.DateTimeField(null=True)


class AuditTreeNode(models.Model):
    """The hash of one complete, aligned subtree of the Merkle tree over AuditLeaf: leaves
    [index * 2**level, (index + 1) * 2**level). Written once, by the sequencer, as the tree
    grows (about two per leaf); roots and proofs at any size are built from O(log n) of them."""

    level = models.PositiveSmallIntegerField()
    index = models.BigIntegerField()
    hash = models.CharField(max_length=64)  # hex

    class Meta:
        constraints = [models.UniqueConstraint(fields=["level", "index"], name="audit_tree_node_unique")]


class AuditCheckpoint(models.Model):
    """A signed checkpoint of the tree: a C2SP signed note (origin, size, base64 root hash),
    signed by the platform's key as Rekor signs its checkpoints (ECDSA P-256, 4-byte key hint)."""

    tree_size = models.BigIntegerField(unique=True)
    root_hash = models.CharField(max_length=64)  # hex
    note = models.TextField()
    key_id = models.CharField(max_length=64)
    created_at = models.DateTimeField()

    class Meta:
        ordering = ["-tree_size"]


class AuditTenantHead(models.Model):
    """With each checkpoint, a signed head per tenant: how many of the tenant's events the
    checkpoint covers, so an export can prove it omits none."""

    checkpoint = models.ForeignKey(AuditCheckpoint, on_delete=models.PROTECT, related_name="tenant_heads")
    tenant = models.CharField(max_length=64, blank=True)
    tenant_size = models.BigIntegerField()
    note = models.TextField()

    class Meta:
        ordering = ["tenant"]
        constraints = [models.UniqueConstraint(fields=["checkpoint", "tenant"], name="one_head_per_tenant_checkpoint")]


class AuditCosignature(models.Model):
    """A witness's cosignature on a checkpoint (a C2SP tlog-cosignature note signature
    line): the witness checked that the checkpoint extends every earlier one it saw."""

    checkpoint = models.ForeignKey(AuditCheckpoint, on_delete=models.PROTECT, related_name="cosignatures")
    witness = models.CharField(max_length=200)  # the witness's key name
    line = models.TextField()  # "— <witness> <base64(key id || timestamp || signature)>"
    cosigned_at = models.DateTimeField()  # the timestamp the witness signed
    received_at = models.DateTimeField()

    class Meta:
        ordering = ["witness"]
        constraints = [models.UniqueConstraint(fields=["checkpoint", "witness"], name="one_cosignature_per_witness")]


class DenialCount(models.Model):
    """How often one caller met one refusal in one window (audit/denials.py): the first is
    recorded at once, the repeats are counted here and summed up in one event after the window."""

    window = models.BigIntegerField()  # seconds since the epoch // AUDIT_DENIAL_WINDOW_SECONDS
    caller = models.CharField(max_length=200)  # token:<id>, user:<id> or address:<ip>
    source = models.CharField(max_length=64, blank=True)  # the source address of the first
    refusal = models.CharField(max_length=64)  # sha256 of what makes refusals the same, or "throttled"
    count = models.PositiveIntegerField()
    sample = models.JSONField()  # the first refusal's actor, tenant, target and data
    flushed = models.BooleanField(default=False)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["window", "caller", "refusal"], name="one_count_per_refusal")]
        indexes = [models.Index(fields=["window", "source"]), models.Index(fields=["flushed", "window"])]

