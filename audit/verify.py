"""Re-checks the log from its rows: every hash recomputed, every position accounted for, the
Merkle tree recomputed from the leaves and every signed checkpoint (and tenant head) checked
against it, with consistency between consecutive checkpoints."""

import json
import math
from dataclasses import dataclass, field
from datetime import timedelta

import rfc8785
from django.db.models import Count
from django.utils import timezone

from . import merkle, tree
from .checkpoints import Checkpoint, NoteInvalid, checkpoint_body, parse_checkpoint, tenant_head_body, verify_note
from .hashing import canonical_json, leaf_hash
from .models import BODY_FIELDS, AuditCheckpoint, AuditEvent, AuditLeaf, AuditTreeNode, SequencerState, canonical_body
from .sequencer import PLATFORM_ALIAS
from .verify_export import sequencing_entry


@dataclass
class Problem:
    position: int | None  # the first bad sequence number, where there is one
    event_id: int | None
    reason: str

    def sentence(self) -> str:
        if self.position is None and self.event_id is None:
            return self.reason
        where = f"sequence number {self.position}" if self.position is not None else f"unsequenced event {self.event_id}"
        return f"{where}: {self.reason}"


@dataclass
class VerifyReport:
    leaves: int = 0
    unsequenced: int = 0
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def content_problem(event_id: int, canonical: str, event_hash: str, body: dict) -> str | None:
    """The columns (``body``, as canonical_body builds it) must say what the hashed canonical
    JSON says, and the canonical JSON must hash to the event hash.

    Serialising the columns again gives the same bytes for almost every event (and cheaply).
    When it does not, the values are compared one by one: PostgreSQL's jsonb may write a
    number back in another form than it was given (a float of 1e+21 comes back as the integer
    1000000000000000000000), which is the same JSON number, not tampering."""
    try:
        same = canonical_json(body) == canonical.encode()
    except (rfc8785.CanonicalizationError, UnicodeError):  # not JCS-able as read back: compare the values
        same = False
    if not same:
        try:
            stated = json.loads(canonical)
        except ValueError:
            stated = None
        if not same_json(stated, body):
            return f"event {event_id} no longer matches its stored canonical JSON"
    if leaf_hash(canonical.encode()).hex() != event_hash:
        return f"event {event_id} hash does not match its content"
    return None


def same_json(first, second) -> bool:
    """Equality of JSON values as RFC 8785 sees them: numbers are IEEE doubles (1, 1.0 and
    1e0 are one number), but true is not 1 and "1" is not 1."""
    if isinstance(first, bool) or isinstance(second, bool):
        return type(first) is type(second) and first == second
    if isinstance(first, (int, float)) and isinstance(second, (int, float)):
        try:
            return math.isfinite(float(first)) and float(first) == float(second)
        except OverflowError:  # an integer past any double
            return False
    if isinstance(first, dict) and isinstance(second, dict):
        return first.keys() == second.keys() and all(same_json(first[key], second[key]) for key in first)
    if isinstance(first, list) and isinstance(second, list):
        return len(first) == len(second) and all(map(same_json, first, second))
    return type(first) is type(second) and first == second


def event_problem(event: AuditEvent) -> str | None:
    return content_problem(event.id, event.canonical, event.event_hash, event.canonical_body())


# One row per leaf, in position order: the leaf, its event's columns and the tree's stored leaf.
_LEAF_ROW = ("position", "tenant", "tenant_position", "leaf", "leaf_hash", "event_id", "event__tenant",
             "event__canonical", "event__event_hash", *(f"event__{name}" for name in BODY_FIELDS))


def verify_log(*, using: str = PLATFORM_ALIAS, max_unsequenced: timedelta, now=None,
               stop_at_first: bool = True, kept: list[str] = ()) -> VerifyReport:
    """``kept``: signed checkpoint notes kept outside the platform (a regulator's, a witness's,
    WORM storage's). The log must still hold every event each one covers, hashing to its root;
    a rewrite the platform itself would have signed again still shows against them."""
    now = now or timezone.now()
    report = VerifyReport()

    def fail(problem):
        report.problems.append(problem)
        return stop_at_first

    public_pems: list[str] = keys() if kept else []
    kept_checkpoints, problem = _kept_checkpoints(kept, public_pems)
    if problem and fail(Problem(None, None, problem)):
        return report
    matched_kept = [0]  # sizes of kept checkpoints the log still matches: where damage can start after
    expected_tenant_position: dict[str, int] = {}
    frontier = merkle.Frontier()
    checkpoints = list(AuditCheckpoint.objects.using(using).order_by("tree_size").prefetch_related("tenant_heads"))
    pending_checkpoints = list(checkpoints)
    pending_kept = list(kept_checkpoints)
    stored = _StoredTree(using)
    tenant_counts: dict[str, int] = {}
    # Plain rows, not model instances: building two models a row was most of verify's time.
    leaves = AuditLeaf.objects.using(using).order_by("position").values_list(*_LEAF_ROW)
    for expected, row in enumerate(leaves.iterator(chunk_size=2000)):
        position, tenant, tenant_position, entry, entry_hash, event_id, event_tenant, canonical, event_hash = row[:9]
        report.leaves += 1
        if position != expected:
            missing = expected if position > expected else position
            if fail(Problem(missing, None, "gap in the sequence: this position is missing")):
                return report
            break
        # Every leaf advances the tenant's count and the stored tree, bad or not, so that with
        # stop_at_first=False one bad leaf does not make every later one look bad too.
        want = expected_tenant_position.get(tenant, 0)
        expected_tenant_position[tenant] = tenant_position + 1
        reason = content_problem(event_id, canonical, event_hash, canonical_body(*row[9:]))
        if reason is None:
            body = sequencing_entry(event_hash, event_tenant, tenant_position)
            if tenant != event_tenant:
                reason = "the leaf names a different tenant than its event"
            elif tenant_position != want:
                reason = f"tenant position {tenant_position} where {want} was expected"
            elif body.decode() != entry or leaf_hash(body).hex() != entry_hash:
                reason = "the leaf does not match its event"
        node_problem = stored.append(position, bytes.fromhex(entry_hash))
        if reason is None and node_problem:
            reason, position = node_problem
        if reason and fail(Problem(position, event_id, reason)):
            return report
        frontier.append(bytes.fromhex(entry_hash))
        tenant_counts[tenant] = tenant_counts.get(tenant, 0) + 1
        while pending_kept and pending_kept[0].size == frontier.size:
            checkpoint = pending_kept.pop(0)
            if frontier.root() != checkpoint.root:
                if fail(Problem(max(matched_kept), None, f"the events up to {checkpoint.size} no longer hash to the "
                                                         "root of the checkpoint kept outside")):
                    return report
                continue
            matched_kept.append(checkpoint.size)
            reason = _stored_checkpoint_problem(checkpoint, checkpoints)
            if reason and fail(Problem(checkpoint.size, None, reason)):
                return report
        while pending_checkpoints and pending_checkpoints[0].tree_size == frontier.size:
            public_pems = public_pems or keys()
            reason = _checkpoint_problem(pending_checkpoints.pop(0), frontier.root(), tenant_counts, public_pems)
            if reason and fail(Problem(_first_after_previous(checkpoints, frontier.size), None, reason)):
                return report
    for checkpoint in pending_kept:
        if fail(Problem(report.leaves, None, f"the log is shorter than the checkpoint kept outside: it holds "
                                             f"{report.leaves} sequenced event(s), the kept checkpoint covers "
                                             f"{checkpoint.size}")):
            return report
    state = SequencerState.objects.using(using).filter(pk=1).values_list("tree_size", flat=True).first() or 0
    reason = _sequencer_problem(report.leaves, state, using)
    if reason and fail(Problem(min(state, report.leaves), None, reason)):
        return report
    reason = stored.extra_problem(report.leaves, state)
    if reason and fail(Problem(report.leaves, None, reason)):
        return report
    for checkpoint in pending_checkpoints:
        if fail(Problem(report.leaves, None, f"checkpoint {checkpoint.tree_size} covers events that are missing")):
            return report
    reason = _consistency_problem(checkpoints, using)
    if reason and fail(Problem(reason[0], None, reason[1])):
        return report

    unsequenced = AuditEvent.objects.using(using).filter(leaf__isnull=True).order_by("id")
    for event in unsequenced.iterator(chunk_size=2000):
        report.unsequenced += 1
        reason = event_problem(event)
        if reason is None and now - event.occurred_at > max_unsequenced:
            reason = f"left unsequenced for more than {int(max_unsequenced.total_seconds())} seconds"
        if reason and fail(Problem(None, event.id, reason)):
            return report
    return report


class _StoredTree:
    """The stored tree checked node by node against the nodes the leaves complete: each level
    is read in index order, so a changed, missing or added node anywhere is found, with the
    first position under it."""

    def __init__(self, using: str):
        self.using = using
        self.levels: dict[int, object] = {}
        self.edge: dict[int, bytes] = {}  # the last node completed at each level

    def append(self, position: int, leaf: bytes) -> tuple[str, int] | None:
        """What differs among the stored nodes appending ``leaf`` completes, with the first
        position under it, or None."""
        problem = None
        completed = list(merkle.completed_nodes(position, leaf, lambda lv, ix: self.edge[lv]))
        for level, index, value in completed:
            self.edge[level] = value
            found = next(self._level(level), None)
            if problem is None and found != (index, value.hex()):
                reason = ("the tree's stored leaf differs from the sequenced leaf" if level == 0 else
                          f"the tree's stored node at level {level}, index {index}, differs from the one its "
                          "leaves make")
                problem = (reason, index << level)
        return problem

    def _level(self, level: int):
        if level not in self.levels:
            self.levels[level] = (AuditTreeNode.objects.using(self.using).filter(level=level).order_by("index")
                                  .values_list("index", "hash").iterator(chunk_size=2000))
        return self.levels[level]

    def extra_problem(self, size: int, state: int) -> str | None:
        """Nodes stored beyond what the leaves complete: at most ``state >> level`` at a level
        (the sequencer may have gone on from ``size`` since the leaves were read)."""
        counts = dict(AuditTreeNode.objects.using(self.using).values_list("level").annotate(Count("id")))
        for level, count in sorted(counts.items()):
            if count > max(size, state) >> level:
                return f"the tree holds {count} node(s) at level {level}; {max(size, state)} leaves make " \
                       f"{max(size, state) >> level}"
        return None


def _sequencer_problem(size: int, state: int, using: str) -> str | None:
    """The sequencer's tree size against the ``size`` leaves read (it may have gone on since,
    with the leaves to show for it, but never back)."""
    if state < size or (state > size and AuditLeaf.objects.using(using).filter(position__lt=state).count() != state):
        return f"the sequencer's state says the tree holds {state} event(s); the log holds {size}"
    return None


def kept_checkpoints_problem(notes, public_pems: list[str]) -> str | None:
    """Why ``notes`` are not all checkpoints of this log signed by a platform key, or None."""
    return _kept_checkpoints(notes, public_pems)[1]


def _kept_checkpoints(notes, public_pems: list[str]) -> tuple[list[Checkpoint], str | None]:
    """The kept notes as checkpoints, smallest first, or the sentence that says why one is not one."""
    from django.conf import settings

    found = []
    for number, note in enumerate(notes, 1):
        body = _verified(note, public_pems)
        if body is None:
            return [], f"kept checkpoint {number} is not a note signed by a platform key"
        try:
            checkpoint = parse_checkpoint(body)
        except NoteInvalid as exc:
            return [], f"kept checkpoint {number} is not a checkpoint: {exc}"
        if checkpoint.origin != settings.AUDIT_LOG_ORIGIN:
            return [], f"kept checkpoint {number} is of the log {checkpoint.origin}, not {settings.AUDIT_LOG_ORIGIN}"
        found.append(checkpoint)
    return sorted(found, key=lambda c: c.size), None


def _stored_checkpoint_problem(kept: Checkpoint, checkpoints) -> str | None:
    """The platform still holds the checkpoint that was kept outside, as it was signed."""
    stored = next((c for c in checkpoints if c.tree_size == kept.size), None)
    if stored is None:
        return f"the platform's checkpoint {kept.size}, kept outside, is missing from the log"
    if stored.root_hash != kept.root.hex():
        return f"the platform's checkpoint {kept.size} differs from the one kept outside"
    return None


def keys() -> list[str]:
    """Every platform public key, retired ones included: old checkpoints stay verifiable."""
    from .keys import platform_keyring

    return [key.public_pem for key in platform_keyring().keys()]


def _verified(note: str, public_pems: list[str]) -> str | None:
    for pem in public_pems:
        try:
            return verify_note(note, pem)
        except NoteInvalid:
            continue
    return None


def _checkpoint_problem(checkpoint, root: bytes, tenant_counts: dict | None, public_pems: list[str],
                        heads=None) -> str | None:
    from django.conf import settings

    size = checkpoint.tree_size
    body = _verified(checkpoint.note, public_pems)
    if body is None:
        return f"checkpoint {size} is not signed by a platform key"
    if body != checkpoint_body(settings.AUDIT_LOG_ORIGIN, size, bytes.fromhex(checkpoint.root_hash)):
        return f"checkpoint {size}'s signed note does not match its stored size and root"
    if checkpoint.root_hash != root.hex():
        return f"the events up to {size} no longer hash to checkpoint {size}'s signed root"
    for head in checkpoint.tenant_heads.all() if heads is None else heads:
        head_body = _verified(head.note, public_pems)
        if head_body is None or head_body != tenant_head_body(settings.AUDIT_LOG_ORIGIN, head.tenant, head.tenant_size,
                                                              size, root):
            return f"checkpoint {size}'s head for tenant {head.tenant or '(platform)'} is not validly signed"
        if tenant_counts is not None and tenant_counts.get(head.tenant, 0) != head.tenant_size:
            return (f"checkpoint {size} says tenant {head.tenant or '(platform)'} had {head.tenant_size} events; "
                    f"the log has {tenant_counts.get(head.tenant, 0)}")
    return None


def _first_after_previous(checkpoints, size: int) -> int:
    """Where the damage a checkpoint reveals can start: just after the previous checkpoint."""
    earlier = [c.tree_size for c in checkpoints if c.tree_size < size]
    return max(earlier, default=0)


def _consistency_problem(checkpoints, using: str) -> tuple[int, str] | None:
    for older, newer in zip(checkpoints, checkpoints[1:]):
        try:
            proof = tree.consistency_proof(older.tree_size, newer.tree_size, using=using)
            merkle.verify_consistency(older.tree_size, newer.tree_size, bytes.fromhex(older.root_hash),
                                      bytes.fromhex(newer.root_hash), proof)
        except (merkle.ProofError, LookupError) as exc:
            return older.tree_size, f"checkpoint {newer.tree_size} is not consistent with checkpoint " \
                                    f"{older.tree_size}: {exc}"
    return None


@dataclass(frozen=True)
class CheckpointStatus:
    checkpoint: AuditCheckpoint | None
    previous_size: int | None
    problem: str | None

    @property
    def ok(self) -> bool:
        return self.checkpoint is not None and self.problem is None


def latest_checkpoint_status(*, using: str, tenant: str | None = None) -> CheckpointStatus:
    """A quick check of the latest checkpoint, cheap enough for a page: its note (and the head
    of ``tenant``, when one is named: only the viewer's own, whatever the number of tenants)
    is signed by a platform key, its root is the stored tree's root at its size, and it is
    consistent with the checkpoint before it. ``verify_log`` is the full re-check from the
    events themselves."""
    latest, *earlier = AuditCheckpoint.objects.using(using).order_by("-tree_size")[:2] or [None]
    if latest is None:
        return CheckpointStatus(None, None, "No checkpoint has been signed yet.")
    previous = earlier[0] if earlier else None
    try:
        root = tree.root(latest.tree_size, using=using)
    except LookupError as exc:
        return CheckpointStatus(latest, None, f"the stored tree cannot give the root at {latest.tree_size}: {exc}")
    heads = [] if tenant is None else latest.tenant_heads.using(using).filter(tenant=tenant)
    problem = _checkpoint_problem(latest, root, None, keys(), heads=heads)
    if problem is None and previous is not None:
        found = _consistency_problem([previous, latest], using)
        problem = found[1] if found else None
    return CheckpointStatus(latest, previous.tree_size if previous else None, problem)


@dataclass(frozen=True)
class InclusionStatus:
    proof: list[bytes]
    problem: str | None


def inclusion_status(leaf: AuditLeaf, checkpoint: AuditCheckpoint, *, using: str) -> InclusionStatus:
    """The inclusion proof of a sequenced event in a checkpoint's tree, checked against the
    checkpoint's signed root, after checking the event still hashes to its leaf."""
    problem = event_problem(leaf.event)
    if problem is None and sequencing_entry(leaf.event.event_hash, leaf.tenant, leaf.tenant_position).decode() != leaf.leaf:
        problem = "the sequencing entry does not match the event"
    try:
        proof = tree.inclusion_proof(leaf.position, checkpoint.tree_size, using=using)
        merkle.verify_inclusion(leaf.position, checkpoint.tree_size, leaf_hash(leaf.leaf.encode()), proof,
                                bytes.fromhex(checkpoint.root_hash))
    except (merkle.ProofError, LookupError) as exc:
        return InclusionStatus([], problem or f"the proof does not lead to the signed root: {exc}")
    return InclusionStatus(proof, problem)
