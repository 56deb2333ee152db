"""Policy engines behind one interface: ``decide(entrypoint, input) -> Decision``.

Both engines FAIL CLOSED: an exception, a timeout, an undefined or malformed result is a
deny with ``error`` set. The caller never sees an exception from ``decide``.

- ``EmbeddedEngine`` runs regopy (rego-cpp) in process. It compiles once per policy
  revision and entrypoint, with one interpreter per thread (a shared one segfaulted under
  threads). Input goes in through ``set_input_term(json)`` (``set_input(dict)`` mis-escapes
  quotes). rego-cpp cannot be interrupted, so a decision slower than the timeout is
  discarded after the fact and becomes a deny.
- ``OpaServerEngine`` asks a real OPA server through opa-python-client
  (``POST /v1/data/<entrypoint>?provenance=true``), with a timeout and no retries, and denies
  unless OPA decided under the platform's own bundle revision.
"""

import json
import logging
import re
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from urllib.parse import urlsplit

from django.conf import settings

from .bundle import PolicySource

logger = logging.getLogger(__name__)

LEVELS = ("advisory", "soft-mandatory", "hard-mandatory")
DEFAULT_ENTRYPOINT = "neocloud/platform/promotion/decision"


@dataclass
class Decision:
    allow: bool
    violations: list = field(default_factory=list)
    enforcement: dict = field(default_factory=dict)
    engine: str = ""
    policy_revision: str = ""
    decision_id: str = ""
    duration_ms: float = 0.0
    error: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


class PolicyInputError(ValueError):
    """The input is not a JSON object made of JSON values."""


def check_entrypoint(entrypoint: str) -> str:
    parts = entrypoint.strip("/").split("/")
    if not entrypoint or not all(p and (p.replace("_", "").isalnum()) for p in parts):
        raise PolicyInputError(f"Entrypoint {entrypoint!r} is not of the form package/path/rule.")
    return "/".join(parts)


def encode_input(value) -> str:
    """The input as strict JSON text; refuses what JSON cannot carry (NaN, sets, objects)."""
    if not isinstance(value, dict):
        raise PolicyInputError(f"Policy input must be a JSON object, not {type(value).__name__}.")
    try:
        return json.dumps(value, allow_nan=False, ensure_ascii=False)
    except (TypeError, ValueError) as exc:
        raise PolicyInputError(f"Policy input is not JSON: {exc}.") from None


def _summarise(violations) -> dict:
    summary = {level: 0 for level in LEVELS}
    summary["pending"] = 0
    summary["exempt"] = 0
    for v in violations:
        if v["pending"]:
            summary["pending"] += 1
        elif v.get("exempt"):
            summary["exempt"] += 1
        else:
            summary[v["level"]] += 1
    return summary


def blocking(violations) -> list:
    """The violations that deny: neither advisory, nor pending approvals, nor exempt."""
    return [v for v in violations
            if v.get("level") != "advisory" and not v.get("pending") and not v.get("exempt")]


def interpret(result, *, engine: str, revision: str, decision_id: str, started: float) -> Decision:
    """Turn an engine's result document into a Decision, or a deny if it is malformed."""
    duration = (time.perf_counter() - started) * 1000
    if not isinstance(result, dict) or not isinstance(result.get("allow"), bool) \
            or not isinstance(result.get("violations"), list):
        return deny(engine=engine, revision=revision, decision_id=decision_id, started=started,
                    error="The policy returned a malformed result (expected allow and violations).")
    violations = []
    for v in result["violations"]:
        if not (isinstance(v, dict) and isinstance(v.get("rule"), str) and v.get("level") in LEVELS
                and isinstance(v.get("message"), str) and isinstance(v.get("pending"), bool)
                and isinstance(v.get("exempt", False), bool)):
            return deny(engine=engine, revision=revision, decision_id=decision_id, started=started,
                        error=f"The policy returned a malformed violation: {v!r:.200}.")
        # Only a soft-mandatory violation can be exempt (waiver or override), whatever the policy says.
        exempt = v.get("exempt", False) and v["level"] == "soft-mandatory"
        violations.append({"rule": v["rule"], "level": v["level"], "message": v["message"], "pending": v["pending"],
                           "exempt": exempt})
    violations.sort(key=lambda v: (v["rule"], v["message"]))
    # Defence in depth: a policy that says allow next to a blocking violation is a deny.
    allow = result["allow"] and not blocking(violations)
    return Decision(allow=allow, violations=violations, enforcement=_summarise(violations), engine=engine,
                    policy_revision=revision, decision_id=decision_id, duration_ms=round(duration, 3))


def deny(*, engine: str, revision: str, error: str, started: float, decision_id: str = "") -> Decision:
    return Decision(allow=False, violations=[], enforcement=_summarise([]), engine=engine,
                    policy_revision=revision, decision_id=decision_id or str(uuid.uuid4()),
                    duration_ms=round((time.perf_counter() - started) * 1000, 3), error=error)


class Engine:
    name = ""

    def decide(self, entrypoint: str, input: dict) -> Decision:
        raise NotImplementedError


_REGO_ERROR = re.compile(r"\(error \d+:(?P<file>[^|\s]+)\|(?P<offset>\d+)\|\d+\s*\(errormsg \d+:(?P<msg>[^)]*)\)")


def describe_rego_error(text: str, modules: dict) -> str:
    """rego-cpp reports byte offsets; name the file, line and column instead."""
    found = []
    for m in _REGO_ERROR.finditer(text):
        source = modules.get(m["file"])
        if source is None:
            found.append(f"{m['file']}: {m['msg'].strip()}")
            continue
        before = source.encode("utf-8")[: int(m["offset"])].decode("utf-8", "replace")
        line = before.count("\n") + 1
        column = len(before) - (before.rfind("\n") + 1) + 1
        found.append(f"{m['file']}:{line}:{column}: {m['msg'].strip()}")
    return "; ".join(found) or " ".join(text.split())[:500]


class EmbeddedEngine(Engine):
    """regopy in process: compiled once per (thread, revision, entrypoint)."""

    name = "embedded"

    def __init__(self, policy_dir=None, *, timeout_seconds: float | None = None):
        self.source = PolicySource.load(policy_dir)
        self.revision = self.source.revision
        self.timeout_seconds = settings.POLICY_TIMEOUT_SECONDS if timeout_seconds is None else timeout_seconds
        self._local = threading.local()

    def _compiled(self, entrypoint: str):
        import regopy

        local = self._local
        if getattr(local, "revision", None) != self.revision:
            interpreter = regopy.Interpreter()
            try:
                for path, text in self.source.modules.items():
                    interpreter.add_module(path, text)
            except Exception as exc:
                raise RuntimeError(describe_rego_error(str(exc), self.source.modules)) from None
            local.interpreter, local.bundles, local.revision = interpreter, {}, self.revision
        bundle = local.bundles.get(entrypoint)
        if bundle is None:
            try:
                bundle = local.interpreter.build(None, [entrypoint])
            except Exception as exc:
                raise RuntimeError(describe_rego_error(str(exc), self.source.modules)) from None
            if not bundle.ok():
                raise RuntimeError(f"the policy did not compile for {entrypoint}")
            local.bundles[entrypoint] = bundle
        return local.interpreter, bundle

    def compile_check(self, entrypoint: str = DEFAULT_ENTRYPOINT) -> None:
        """Compile now (raises on a syntax error), e.g. at startup or for a candidate policy."""
        self._compiled(check_entrypoint(entrypoint))

    def decide(self, entrypoint: str, input: dict) -> Decision:
        started = time.perf_counter()
        decision_id = str(uuid.uuid4())
        try:
            entrypoint = check_entrypoint(entrypoint)
            term = encode_input(input)
            interpreter, bundle = self._compiled(entrypoint)
            interpreter.set_input_term(term)
            output = interpreter.query_bundle_entrypoint(bundle, entrypoint)
            if not output.ok():
                raise RuntimeError(str(output).strip()[:500])
            if len(output) == 0 or not output[0].expressions:
                return deny(engine=self.name, revision=self.revision, decision_id=decision_id, started=started,
                            error=f"The policy result at {entrypoint} is undefined.")
            result = output[0].expressions[0]
        except Exception as exc:  # fail closed, whatever went wrong
            return deny(engine=self.name, revision=self.revision, decision_id=decision_id, started=started,
                        error=f"Policy evaluation failed: {exc}"[:1000])
        elapsed = time.perf_counter() - started
        if elapsed > self.timeout_seconds:
            return deny(engine=self.name, revision=self.revision, decision_id=decision_id, started=started,
                        error=f"Policy evaluation took {elapsed:.3f}s, over the {self.timeout_seconds}s limit.")
        return interpret(result, engine=self.name, revision=self.revision, decision_id=decision_id, started=started)


class OpaServerEngine(Engine):
    """A real OPA server (``OPA_URL``) through opa-python-client."""

    name = "opa"

    def __init__(self, url: str | None = None, *, timeout_seconds: float | None = None, revision: str | None = None):
        from opa_client.opa import OpaClient

        url = url or settings.OPA_URL
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"OPA_URL must be an http(s) URL, not {url!r}.")
        timeout = settings.OPA_TIMEOUT_SECONDS if timeout_seconds is None else timeout_seconds
        self.client = OpaClient(host=parts.hostname, port=parts.port or (443 if parts.scheme == "https" else 80),
                                ssl=parts.scheme == "https", timeout=timeout, retries=0)
        # The revision we expect OPA to serve: the bundle the platform builds from these sources.
        self.revision = revision or PolicySource.load().revision

    def decide(self, entrypoint: str, input: dict) -> Decision:
        started = time.perf_counter()
        try:
            entrypoint = check_entrypoint(entrypoint)
            encode_input(input)
            package, _, rule = entrypoint.rpartition("/")
            answer = self.client.query_rule(input_data=input, package_path=package, rule_name=rule,
                                            query_params={"provenance": "true"})
        except Exception as exc:  # requests' raw exceptions included: fail closed
            # The address and the exception's text are configuration: the log has them, the
            # decision (which tenants read) only the kind of failure.
            logger.warning("OPA at %s failed for %s: %s: %s", self.client.root_url, entrypoint,
                           type(exc).__name__, exc)
            return deny(engine=self.name, revision=self.revision, started=started,
                        error=f"The OPA server failed to answer ({type(exc).__name__}); the operators' log has why.")
        decision_id = answer.get("decision_id") if isinstance(answer, dict) else None
        decision_id = str(decision_id) if decision_id else str(uuid.uuid4())
        if not isinstance(answer, dict) or "result" not in answer:
            return deny(engine=self.name, revision=self.revision, decision_id=decision_id, started=started,
                        error=f"OPA returned no result for {entrypoint} (undefined).")
        served = served_revision(answer)
        if served != self.revision:
            # OPA decided under another bundle (stale, or not ours): the decision would name a
            # policy that never ran.
            return deny(engine=self.name, revision=served or "", decision_id=decision_id, started=started,
                        error=f"OPA decided under bundle revision {served or '(none reported)'}, "
                              f"not the platform's {self.revision}.")
        return interpret(answer["result"], engine=self.name, revision=self.revision, decision_id=decision_id,
                         started=started)


def served_revision(answer: dict) -> str | None:
    """The revision of the platform bundle OPA decided under (its ``provenance``)."""
    try:
        return answer["provenance"]["bundles"]["neocloud"]["revision"]
    except (KeyError, TypeError):
        return None


_engines: dict = {}
_lock = threading.Lock()


def get_engine() -> Engine:
    """The configured engine (``POLICY_ENGINE``), one per process and policy revision."""
    kind = settings.POLICY_ENGINE
    key = (kind, settings.OPA_URL if kind == "opa" else "")
    with _lock:
        engine = _engines.get(key)
        if engine is None or engine.revision != PolicySource.load().revision:
            if kind == "embedded":
                engine = EmbeddedEngine()
            elif kind == "opa":
                engine = OpaServerEngine()
            else:
                raise ValueError(f"POLICY_ENGINE must be embedded or opa, not {kind!r}.")
            _engines[key] = engine
    return engine


def decide(entrypoint: str, input: dict) -> Decision:
    try:
        engine = get_engine()
    except Exception as exc:
        logger.error("The policy engine %s could not start: %s", settings.POLICY_ENGINE, exc)
        return deny(engine=settings.POLICY_ENGINE, revision="", started=time.perf_counter(),
                    error="The policy engine could not start; the operators' log has why.")
    return engine.decide(entrypoint, input)
