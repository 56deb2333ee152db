"""What-if: evaluate a policy, or replay stored decisions, under a candidate policy.

Nothing here stores a decision. ``policy_evaluate`` records only that a candidate ran
(``policy.candidate_evaluate``, with its module digests); ``policy_replay`` reads every
tenant's decisions and records only that it did (``policy.replay``). A candidate may call only
the builtins on the allow-list (policies.sandbox); a refused one is recorded too.
"""

import hashlib
import re
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from audit.log import Actor, Target, record, record_denial
from tenants.access import actor_for, allowed_tenant_ids, is_platform_admin
from tenants.db import PLATFORM_ALIAS
from tenants.errors import Forbidden, Invalid

from .engines import (
    DEFAULT_ENTRYPOINT,
    Decision,
    EmbeddedEngine,
    PolicyInputError,
    blocking,
    check_entrypoint,
    decide,
    deny,
    encode_input,
    interpret,
)
from .models import PolicyDecision
from .sandbox import BuiltinRefused, CheckFailed, CompileFailed, check_modules, evaluate_bounded

MAX_CANDIDATE_FILES = 50
MAX_CANDIDATE_BYTES = 256 * 1024
# Relative, and no segment starts with a dot: no "..", no hidden files.
_MODULE_PATH = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*(/[A-Za-z0-9_][A-Za-z0-9_.-]*)*\.rego")


def module_digests(engine: EmbeddedEngine) -> dict:
    return {path: "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()
            for path, text in sorted(engine.source.modules.items())}


def candidate_engine(policy_dir, entrypoints=(DEFAULT_ENTRYPOINT,), *, actor: Actor) -> EmbeddedEngine:
    """An embedded engine over ``policy_dir``, compiled now. A call of a builtin that is not on
    the allow-list is an Invalid (code ``policy_builtin_refused``) naming the builtin, file and
    line, checked before anything compiles and audited for ``actor``; a syntax error is an
    Invalid (code ``policy_syntax_error``) naming file, line and column."""
    engine = EmbeddedEngine(policy_dir)
    if not engine.source.modules:
        raise Invalid("The candidate policy holds no .rego modules (*_test.rego files do not count).", field="policy")
    entrypoints = [check_entrypoint(entrypoint) for entrypoint in entrypoints]
    try:
        check_modules(engine.source.modules, entrypoints)
    except BuiltinRefused as exc:
        record_denial(action="policy.candidate_refused", actor=actor, target=Target("policy_revision", engine.revision),
                      data={"modules": module_digests(engine), "builtin": exc.builtin, "how": exc.verb,
                            "file": exc.path, "line": exc.line})
        raise Invalid(str(exc), field=f"policy.{exc.path}", code="policy_builtin_refused") from None
    except CompileFailed as exc:
        raise Invalid(f"The candidate policy does not compile: {exc}", field="policy",
                      code="policy_syntax_error") from None
    except CheckFailed as exc:
        raise Invalid(f"The candidate policy could not be checked: its parse {exc}.", field="policy",
                      code="policy_check_failed") from None
    return engine


def candidate_decisions(engine: EmbeddedEngine, queries: list[tuple[str, dict]]) -> list[Decision]:
    """Each (entrypoint, input) decided by the candidate in a bounded child process: a query
    is stopped the moment it passes POLICY_TIMEOUT_SECONDS (or the memory bound) and is a deny.
    The platform's own policy keeps its in-process path."""
    started = time.perf_counter()
    answers = evaluate_bounded(engine.source.modules, [{"entrypoint": e, "input": i} for e, i in queries],
                              seconds_each=settings.POLICY_TIMEOUT_SECONDS)
    decisions = []
    for (entrypoint, _), answer in zip(queries, answers, strict=True):
        common = {"engine": engine.name, "revision": engine.revision, "decision_id": str(uuid.uuid4()),
                  "started": started}
        if "value" in answer:
            decisions.append(interpret(answer["value"], **common))
        elif answer.get("undefined"):
            decisions.append(deny(error=f"The policy result at {entrypoint} is undefined.", **common))
        else:
            decisions.append(deny(error=f"Policy evaluation failed: {answer['error']}"[:1000], **common))
    return decisions


def _check_candidate(policy) -> dict:
    if not isinstance(policy, dict) or not policy:
        raise Invalid("policy maps module paths (ending in .rego) to their source.", field="policy")
    if len(policy) > MAX_CANDIDATE_FILES:
        raise Invalid(f"A candidate policy has at most {MAX_CANDIDATE_FILES} files.", field="policy")
    size = 0
    for path, text in policy.items():
        if not (isinstance(path, str) and _MODULE_PATH.fullmatch(path)):
            raise Invalid(f"{path!r} is not a relative module path ending in .rego.", field="policy")
        if not isinstance(text, str):
            raise Invalid(f"The source of {path} must be a string.", field=f"policy.{path}")
        size += len(text.encode("utf-8"))
    if size > MAX_CANDIDATE_BYTES:
        raise Invalid(f"A candidate policy is at most {MAX_CANDIDATE_BYTES // 1024} KiB in all.", field="policy")
    return policy


def policy_evaluate(*, actor, input, entrypoint: str = DEFAULT_ENTRYPOINT, policy: dict | None = None) -> Decision:
    """Evaluate ``input`` with the configured engine, or with the candidate modules ``policy``
    (path -> Rego source) on the embedded engine. Stores no decision; a candidate's run is audited."""
    if not is_platform_admin(actor) and not allowed_tenant_ids(actor, "view"):
        raise Forbidden("Only platform admins and members of a tenant may evaluate policies.")
    try:
        encode_input(input)
    except PolicyInputError as exc:
        raise Invalid(str(exc), field="input") from None
    try:
        entrypoint = check_entrypoint(entrypoint)
    except PolicyInputError as exc:
        raise Invalid(str(exc), field="entrypoint") from None
    if policy is None:
        return decide(entrypoint, input)
    modules = _check_candidate(policy)
    with tempfile.TemporaryDirectory(prefix="neocloud-whatif-") as root:
        try:
            for path, text in modules.items():
                target = Path(root, path)
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(text, encoding="utf-8")
        except OSError:  # e.g. "a.rego" and "a.rego/b.rego"
            raise Invalid("The module paths of the candidate policy clash.", field="policy") from None
        engine = candidate_engine(root, [entrypoint], actor=actor_for(actor))
    # The engine holds the sources in memory; the directory is no longer needed.
    [decision] = candidate_decisions(engine, [(entrypoint, input)])
    with transaction.atomic():
        record(action="policy.candidate_evaluate", actor=actor_for(actor),
               target=Target("policy_revision", engine.revision),
               data={"entrypoint": entrypoint, "modules": module_digests(engine), "allow": decision.allow,
                     "error": bool(decision.error)})
    return decision


def blocking_rules(violations) -> frozenset:
    return frozenset(v["rule"] for v in blocking(violations))


@dataclass
class ReplayChange:
    tenant: str  # slug, or "(platform)"
    decision_id: str
    entrypoint: str
    allow_before: bool
    allow_after: bool
    added: list  # blocking rule ids only the candidate reports
    removed: list  # blocking rule ids only the stored decision had
    error: str = ""  # the candidate's engine error, if any


@dataclass
class ReplayReport:
    revision: str
    replayed: int = 0
    changes: list = field(default_factory=list)


def policy_replay(*, policy_dir, since: timedelta, now=None) -> ReplayReport:
    """Re-evaluate every error-free decision stored since ``now - since`` with the candidate
    policy in ``policy_dir``; report those whose outcome (allow, or the blocking rules) would
    change. Reads every tenant through the platform role; audited as ``policy.replay``."""
    engine = candidate_engine(policy_dir, actor=Actor.system("policy"))
    cutoff = (now or timezone.now()) - since
    rows = (PolicyDecision.objects.using(PLATFORM_ALIAS).filter(created_at__gte=cutoff, error="")
            .select_related("tenant").order_by("created_at", "id"))
    report = ReplayReport(revision=engine.revision)
    rows = list(rows)
    for row, after in zip(rows, candidate_decisions(engine, [(row.entrypoint, row.input) for row in rows]),
                          strict=True):
        report.replayed += 1
        before_rules, after_rules = blocking_rules(row.violations), blocking_rules(after.violations)
        if (row.allow, before_rules) != (after.allow, after_rules):
            report.changes.append(ReplayChange(
                tenant=row.tenant.slug if row.tenant else "(platform)", decision_id=str(row.decision_id),
                entrypoint=row.entrypoint, allow_before=row.allow, allow_after=after.allow,
                added=sorted(after_rules - before_rules), removed=sorted(before_rules - after_rules),
                error=after.error))
    report.changes.sort(key=lambda c: c.tenant)  # stable: within a tenant, oldest first
    per_tenant = {}
    for change in report.changes:
        per_tenant[change.tenant] = per_tenant.get(change.tenant, 0) + 1
    with transaction.atomic():
        record(action="policy.replay", actor=Actor.system("policy"), target=Target("policy_revision", engine.revision),
               data={"candidate_revision": engine.revision, "modules": module_digests(engine),
                     "since_days": since.total_seconds() / 86400,
                     "replayed": report.replayed, "changed": len(report.changes), "changed_per_tenant": per_tenant})
    return report
