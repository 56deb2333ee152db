"""Refusals that cannot flood the log.

A refusal is recorded at once the first time a caller meets it in a window
(AUDIT_DENIAL_WINDOW_SECONDS). Repeats of the same refusal in that window are only counted,
each in its own committed transaction (a crash loses no count), and once the window has closed
``flush_denial_counts`` writes one summary event with the count. A caller (a person, a token,
or for anonymous callers their source address) may meet at most AUDIT_DENIAL_CAP_PER_CALLER
distinct refusals per window, and one source address AUDIT_DENIAL_CAP_PER_SOURCE: past a cap
the caller is throttled with a 429 until the window ends, which is recorded once per window.
Anonymous refusals are aggregated per source address: the first one of a window is recorded,
the rest are counted.

So a flood grows the log by at most two events per window per distinct refusal (the first and
one summary), plus one per throttled caller per window.
"""

import contextvars
import hashlib
import math
import time
from datetime import UTC, datetime

from django.conf import settings
from django.core.cache import cache
from django.db import IntegrityError, transaction
from django.db.models import F

from .hashing import canonical_json
from .models import AuditEvent, DenialCount

THROTTLED = "throttled"  # the refusal key of a caller's "throttled" marker row
source_address: contextvars.ContextVar[str] = contextvars.ContextVar("denial_source", default="")


def window_of(moment: float) -> int:
    return int(moment // settings.AUDIT_DENIAL_WINDOW_SECONDS)


def window_start(window: int) -> datetime:
    return datetime.fromtimestamp(window * settings.AUDIT_DENIAL_WINDOW_SECONDS, tz=UTC)


def caller_of(event: AuditEvent, source: str) -> str:
    """Who met the refusal: a token, a person, or (anonymous, or a system) the source address."""
    if event.token_id:
        return f"token:{event.token_id}"
    if event.actor_type == "user" and event.actor_id:
        return f"user:{event.actor_id}"
    return f"address:{source or 'local'}"


def refusal_of(event: AuditEvent) -> str:
    """What makes two refusals the same one: everything they say, except for anonymous callers,
    whose refusals of one kind are aggregated per source address."""
    if event.actor_type not in ("user", "token") and not event.token_id:
        key = {"action": event.action, "outcome": event.outcome}
    else:
        key = {"action": event.action, "outcome": event.outcome, "tenant": event.tenant,
               "target": [event.target_type, event.target_id], "data": event.data}
    return hashlib.sha256(canonical_json(key)).hexdigest()


def record_refusal(event: AuditEvent, *, write, using: str) -> None:
    """Count the refusal, and ``write(event)`` it (on ``using``, in the same transaction as its
    count) only if it is the first of its kind for its caller in this window and no cap is met."""
    source = source_address.get()
    window, caller, refusal = window_of(time.time()), caller_of(event, source), refusal_of(event)
    for attempt in range(2):  # a concurrent first insert of the same key: count on it instead
        try:
            with transaction.atomic(using=using):
                if DenialCount.objects.using(using).filter(window=window, caller=caller, refusal=refusal).update(
                        count=F("count") + 1):
                    return
                DenialCount.objects.using(using).create(
                    window=window, caller=caller, source=source[:64], refusal=refusal, count=1, sample=_sample(event))
                cap = _cap_met(window, caller, source, using=using)
                if cap is None:
                    write(event)
                else:
                    _throttle(event, window, caller, source, cap, write=write, using=using)
                return
        except IntegrityError:
            if attempt:
                raise


def _sample(event: AuditEvent) -> dict:
    """What the window's summary event repeats of the first refusal."""
    return {"action": event.action, "actor_type": event.actor_type, "actor_id": event.actor_id,
            "actor_name": event.actor_name, "token_id": event.token_id, "tenant": event.tenant,
            "target_type": event.target_type, "target_id": event.target_id, "data": event.data}


def _cap_met(window: int, caller: str, source: str, *, using: str) -> str | None:
    rows = DenialCount.objects.using(using).filter(window=window).exclude(refusal=THROTTLED)
    if rows.filter(caller=caller).count() > settings.AUDIT_DENIAL_CAP_PER_CALLER:
        return "caller"
    if source and rows.filter(source=source[:64]).count() > settings.AUDIT_DENIAL_CAP_PER_SOURCE:
        return "source"
    return None


def _throttle(event: AuditEvent, window: int, caller: str, source: str, cap: str, *, write, using: str) -> None:
    """Throttle the caller (or, for the source cap, the address) for the rest of the window,
    recording that once per window."""
    throttled = f"address:{source}" if cap == "source" else caller
    cache.set(_flag(throttled, window), True, timeout=settings.AUDIT_DENIAL_WINDOW_SECONDS)
    _, created = DenialCount.objects.using(using).get_or_create(
        window=window, caller=throttled, refusal=THROTTLED, defaults={"source": source[:64], "count": 1, "sample": {}})
    if created:
        from .log import Actor, Target, _build  # log imports this module

        write(_build(action="request.throttled", actor=Actor(type=event.actor_type, id=event.actor_id,
                                                             name=event.actor_name, token=event.token_id),
                     tenant=event.tenant, target=Target("caller", throttled), outcome="denied",
                     data={"cap": cap, "limit": getattr(settings, f"AUDIT_DENIAL_CAP_PER_{cap.upper()}"),
                           "window_start": window_start(window).isoformat(), "source": source}))


def _flag(caller: str, window: int) -> str:
    return f"denials:throttled:{window}:{caller}"


def throttled_for(*, caller: str | None, source: str) -> int:
    """Seconds until the window ends when ``caller`` or ``source`` is throttled, else 0."""
    now = time.time()
    window = window_of(now)
    keys = [_flag(f"address:{source}", window)] + ([_flag(caller, window)] if caller else [])
    if not any(cache.get_many(keys).values()):
        return 0
    return max(1, math.ceil((window + 1) * settings.AUDIT_DENIAL_WINDOW_SECONDS - now))


def flush_denial_counts(*, using: str, moment: float | None = None) -> int:
    """One summary event per refusal repeated in a closed window; returns how many were written.
    Each summary and its counter's ``flushed`` commit together, so a crash repeats none and loses none."""
    from .log import Actor, Target, _build, _insert

    closed = window_of(moment or time.time())
    written = 0
    pending = (DenialCount.objects.using(using).filter(window__lt=closed, flushed=False, count__gt=1)
               .exclude(refusal=THROTTLED).order_by("id").values_list("pk", flat=True))
    for pk in list(pending[:1000]):
        with transaction.atomic(using=using):
            counter = DenialCount.objects.using(using).select_for_update().filter(pk=pk, flushed=False).first()
            if counter is None:
                continue
            sample = counter.sample
            event = _build(action="request.denied_repeated", outcome="denied",
                           actor=Actor(type=sample["actor_type"], id=sample["actor_id"], name=sample["actor_name"],
                                       token=sample["token_id"]),
                           tenant=sample["tenant"], target=Target(sample["target_type"], sample["target_id"]),
                           data={"refusal": sample["action"], "repeats": counter.count - 1,
                                 "window_start": window_start(counter.window).isoformat(),
                                 "window_seconds": settings.AUDIT_DENIAL_WINDOW_SECONDS,
                                 "caller": counter.caller, "first": sample["data"]})
            _insert(event, using)
            DenialCount.objects.using(using).filter(pk=pk).update(flushed=True)
            written += 1
    return written
