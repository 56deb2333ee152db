"""Re-checks the log from its rows: every hash recomputed, every position accounted for."""

from dataclasses import dataclass, field
from datetime import timedelta

from django.utils import timezone

from .hashing import leaf_hash
from .models import AuditEvent, AuditLeaf


@dataclass
class Problem:
    position: int | None  # the first bad sequence number, where there is one
    event_id: int | None
    reason: str

    def sentence(self) -> str:
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


def _event_problem(event: AuditEvent) -> str | None:
    body = event.compute_canonical()
    if body.decode() != event.canonical:
        return f"event {event.id} no longer matches its stored canonical JSON"
    if leaf_hash(body).hex() != event.event_hash:
        return f"event {event.id} hash does not match its content"
    return None


def verify_log(*, using: str = "platform", max_unsequenced: timedelta, now=None,
               stop_at_first: bool = True) -> VerifyReport:
    now = now or timezone.now()
    report = VerifyReport()

    def fail(problem):
        report.problems.append(problem)
        return stop_at_first

    expected_tenant_position: dict[str, int] = {}
    leaves = AuditLeaf.objects.using(using).select_related("event").order_by("position")
    for expected, leaf in enumerate(leaves.iterator(chunk_size=2000)):
        report.leaves += 1
        if leaf.position != expected:
            missing = expected if leaf.position > expected else leaf.position
            if fail(Problem(missing, None, "gap in the sequence: this position is missing")):
                return report
            break
        reason = _event_problem(leaf.event)
        if reason is None:
            want = expected_tenant_position.get(leaf.tenant, 0)
            expected_tenant_position[leaf.tenant] = leaf.tenant_position + 1
            body = AuditLeaf.leaf_body(event_hash=leaf.event.event_hash, tenant=leaf.event.tenant,
                                       tenant_position=leaf.tenant_position)
            if leaf.tenant != leaf.event.tenant:
                reason = "the leaf names a different tenant than its event"
            elif leaf.tenant_position != want:
                reason = f"tenant position {leaf.tenant_position} where {want} was expected"
            elif body.decode() != leaf.leaf or leaf_hash(body).hex() != leaf.leaf_hash:
                reason = "the leaf does not match its event"
        if reason and fail(Problem(leaf.position, leaf.event_id, reason)):
            return report

    unsequenced = AuditEvent.objects.using(using).filter(leaf__isnull=True).order_by("id")
    for event in unsequenced.iterator(chunk_size=2000):
        report.unsequenced += 1
        reason = _event_problem(event)
        if reason is None and now - event.occurred_at > max_unsequenced:
            reason = f"left unsequenced for more than {int(max_unsequenced.total_seconds())} seconds"
        if reason and fail(Problem(None, event.id, reason)):
            return report
    return report
