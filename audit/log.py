"""Writing to the audit log.

``record`` writes an event in the caller's transaction, so the change and its event commit
or roll back together. ``record_denial`` is for refusals: the refused work rolls back, and
the denial is written afterwards on a separate connection so it is never lost with it.
"""

import contextvars
import functools
import logging
from contextlib import contextmanager
from dataclasses import dataclass

import psycopg
from django.db import connections, transaction
from django.utils import timezone

from .catalog import OUTCOMES, is_catalogued
from .models import AuditEvent

logger = logging.getLogger(__name__)

SIDE_ALIAS = "audit_side"


@dataclass(frozen=True)
class Actor:
    """Who acted, by value. For a service-account token, the person is the owner and
    ``token`` names the token (its public prefix)."""

    type: str  # user, token, system, anonymous
    id: str = ""
    name: str = ""
    token: str = ""

    @classmethod
    def system(cls, name: str) -> "Actor":
        return cls(type="system", name=name)

    @classmethod
    def anonymous(cls, name: str = "") -> "Actor":
        return cls(type="anonymous", name=name)


@dataclass(frozen=True)
class Target:
    type: str = ""
    id: str = ""


def _build(*, action, actor, tenant, target, data, outcome) -> AuditEvent:
    if not is_catalogued(action):
        raise ValueError(f"audit action {action!r} is not in audit.catalog.ACTIONS")
    if outcome not in OUTCOMES:
        raise ValueError(f"audit outcome {outcome!r} is not one of {OUTCOMES}")
    target = target or Target()
    event = AuditEvent(
        occurred_at=timezone.now(),
        actor_type=actor.type,
        actor_id=str(actor.id),
        actor_name=actor.name[:150],
        token_id=actor.token,
        tenant=tenant or "",
        action=action,
        outcome=outcome,
        target_type=target.type,
        target_id=str(target.id)[:150],
        data=data or {},
    )
    event.seal()
    return event


def record(*, action: str, actor: Actor, tenant: str = "", target: Target | None = None,
           data: dict | None = None, outcome: str = "success", using: str = "default") -> AuditEvent:
    """Record an event inside the caller's transaction (which must exist)."""
    if not transaction.get_connection(using).in_atomic_block:
        raise RuntimeError("audit.record must run inside the transaction of the change it records")
    event = _build(action=action, actor=actor, tenant=tenant, target=target, data=data, outcome=outcome)
    _insert(event, using)
    return event


@functools.cache
def _insert_statement() -> tuple[str, tuple]:
    """The INSERT for an event (standard SQL: PostgreSQL and SQLite alike) and its fields."""
    fields = tuple(field for field in AuditEvent._meta.concrete_fields if field.attname != "id")
    columns = ", ".join(f'"{field.column}"' for field in fields)
    placeholders = ", ".join(["%s"] * len(fields))
    return f'INSERT INTO "{AuditEvent._meta.db_table}" ({columns}) VALUES ({placeholders}) RETURNING "id"', fields


class _PreparedCursor(psycopg.Cursor):
    """Server-side binding, prepared on the connection's first event: PostgreSQL parses and
    plans the log's one hot statement once per connection, and the client sends only the
    values. Django's own cursors bind on the client and never prepare."""

    def execute(self, query, params=None, *, prepare=True, binary=None):
        return super().execute(query, params, prepare=prepare, binary=binary)


def _insert(event: AuditEvent, using: str) -> None:
    """One INSERT with the model's own column conversions: the log's hot path, without
    Model.save()'s machinery (about a third of an event's cost). Events are never saved twice."""
    connection = connections[using]
    sql, fields = _insert_statement()
    values = [field.get_db_prep_save(getattr(event, field.attname), connection) for field in fields]
    # As save() does: a failed insert caught inside atomic() still rolls the transaction back,
    # so the change cannot commit without its event.
    with transaction.mark_for_rollback_on_error(using), _cursor(connection) as cursor:
        cursor.execute(sql, values)
        event.pk = cursor.fetchone()[0]
    event._state.adding, event._state.db = False, using


def _cursor(connection):
    """Django's cursor wrapper (error translation, query logging, execute wrappers) around a
    prepared server-binding cursor on PostgreSQL; Django's own cursor elsewhere."""
    if connection.vendor != "postgresql":
        return connection.cursor()
    connection.ensure_connection()
    prepared = _PreparedCursor(connection.connection)
    return connection.make_debug_cursor(prepared) if connection.queries_logged else connection.make_cursor(prepared)


_pending_denials: contextvars.ContextVar[list | None] = contextvars.ContextVar("pending_denials", default=None)


def record_denial(*, action: str = "request.denied", actor: Actor, tenant: str = "",
                  target: Target | None = None, data: dict | None = None, outcome: str = "denied") -> None:
    """Record a refusal once the refused transaction is over.

    Inside a ``denials_recorded`` scope (every request, command and task has one) the event
    waits until the scope ends, after the rollback; outside one it is written at once.
    Either way it goes over a separate connection.
    """
    event = _build(action=action, actor=actor, tenant=tenant, target=target, data=data, outcome=outcome)
    pending = _pending_denials.get()
    if pending is None:
        _write_side(event)
    else:
        pending.append(event)


def _write_side(event: AuditEvent) -> None:
    """Count the refusal, and write it if it is the first of its kind (audit/denials.py)."""
    from .denials import record_refusal

    record_refusal(event, write=lambda first: _insert(first, SIDE_ALIAS), using=SIDE_ALIAS)


@contextmanager
def denials_recorded(*, source: str = ""):
    """Collect denials raised inside, and write them when the scope ends; ``source`` is the
    request's source address, which refusals are counted and capped by."""
    from .denials import source_address

    pending: list[AuditEvent] = []
    token, address = _pending_denials.set(pending), source_address.set(source)
    try:
        yield
    finally:
        _pending_denials.reset(token)
        try:
            for event in pending:
                try:
                    _write_side(event)
                except Exception:  # the refusal stands; losing its record must be loud
                    logger.exception("could not record audit denial %s", event.action)
                    raise
        finally:
            source_address.reset(address)
