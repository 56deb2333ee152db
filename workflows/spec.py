"""Workflow specs: parsing (YAML or JSON), validation with JSON paths, canonical form.

Validation runs in two passes: the JSON Schema (structure, types, unknown keys, formats),
then the rules a schema cannot say (duplicate names, unknown dependencies, cycles, known
GPU flavors). Every problem carries a JSON path such as ``$.steps[1].gpu.count`` and a
plain reason.
"""

import json
import re
from dataclasses import dataclass

import jsonschema
import yaml

SPEC_MAX_BYTES = 256 * 1024
DIGEST_PATTERN = r"^sha256:[0-9a-f]{64}$"
DIGEST = re.compile(DIGEST_PATTERN[1:-1])  # the same, without its anchors: use fullmatch
NAME_PATTERN = r"^[a-z0-9](?:[a-z0-9_.-]{0,62}[a-z0-9])?$"

_name = {"type": "string", "pattern": NAME_PATTERN}
_digest = {"type": "string", "pattern": DIGEST_PATTERN}

SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": "https://neocloud.dev/schemas/workflow-spec.json",
    "title": "Neocloud workflow spec",
    "type": "object",
    "additionalProperties": False,
    "required": ["name", "steps"],
    "properties": {
        "name": _name,
        "description": {"type": "string", "maxLength": 2000},
        "base_model": {
            "type": "object",
            "additionalProperties": False,
            "required": ["name"],
            "properties": {
                "name": {"type": "string", "minLength": 1, "maxLength": 200},
                "digest": _digest,
                "uri": {"type": "string", "maxLength": 2000},
            },
        },
        "parameters": {
            "type": "object",
            "propertyNames": {"pattern": r"^[A-Za-z_][A-Za-z0-9_]{0,63}$"},
            "additionalProperties": {"type": ["string", "number", "boolean"]},
        },
        "inputs": {
            "type": "array",
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["name", "digest", "region", "uri"],
                "properties": {
                    "name": _name,
                    "digest": _digest,
                    "region": {"type": "string", "pattern": r"^[a-z]{2}(?:-[a-z0-9]{1,8})?$"},
                    "uri": {"type": "string", "minLength": 1, "maxLength": 2000},
                },
            },
        },
        "steps": {
            "type": "array",
            "minItems": 1,
            "maxItems": 200,
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["name"],
                "anyOf": [{"required": ["command"]}, {"required": ["image"]}],
                "properties": {
                    "name": _name,
                    "command": {"type": "array", "minItems": 1, "items": {"type": "string"}},
                    "image": {"type": "string", "minLength": 1, "maxLength": 500},
                    "env": {
                        "type": "object",
                        "propertyNames": {"pattern": r"^[A-Za-z_][A-Za-z0-9_]*$"},
                        "additionalProperties": {"type": "string"},
                    },
                    "gpu": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["flavor", "count"],
                        "properties": {
                            "flavor": {"type": "string", "minLength": 1},
                            "count": {"type": "integer", "minimum": 0, "maximum": 64},
                        },
                    },
                    "timeout_seconds": {"type": "integer", "minimum": 1, "maximum": 7 * 24 * 3600},
                    "retries": {"type": "integer", "minimum": 0, "maximum": 10},
                    "network": {"type": "boolean"},  # off unless asked for
                    "depends_on": {"type": "array", "items": _name, "uniqueItems": True},
                },
            },
        },
        "outputs": {
            "type": "array",
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["name", "kind"],
                "properties": {
                    "name": _name,
                    "kind": {"enum": ["model", "dataset", "metrics", "container", "spec", "other"]},
                    "path": {"type": "string", "maxLength": 1000},
                },
            },
        },
    },
}


@dataclass(frozen=True)
class SpecProblem:
    path: str
    reason: str

    def as_dict(self):
        return {"path": self.path, "reason": self.reason}


class SpecInvalid(Exception):
    def __init__(self, problems: list[SpecProblem]):
        self.problems = problems
        super().__init__("; ".join(f"{p.path}: {p.reason}" for p in problems))


class _NoAliasLoader(yaml.SafeLoader):
    """YAML without anchors and aliases: they add nothing to a spec and allow expansion bombs."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(None, None, "aliases are not allowed in a spec", event.start_mark)
        return super().compose_node(parent, index)


def _reject_constant(name):
    raise ValueError(f"{name} is not a number JSON allows")


def _parse_json(text: str):
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise SpecInvalid([SpecProblem("$", f"not valid JSON (line {exc.lineno}, column {exc.colno}): {exc.msg}")]) from None
    except ValueError as exc:
        raise SpecInvalid([SpecProblem("$", f"not valid JSON: {exc}")]) from None


def _parse_yaml(text: str):
    try:
        return yaml.load(text, Loader=_NoAliasLoader)  # noqa: S506 (a safe loader, without aliases)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise SpecInvalid([SpecProblem("$", f"not valid YAML or JSON{where}: {problem}")]) from None


def parse(raw: bytes | str | dict) -> dict:
    """Parse a spec from JSON or YAML text (or take a parsed object) within the size limit."""
    if isinstance(raw, dict):
        raw = json.dumps(raw)
    if not isinstance(raw, (str, bytes)):  # a JSON body's list, number, boolean or null
        raise SpecInvalid([SpecProblem("$", "the spec must be a mapping with a 'name' and a 'steps' list, "
                                            "or YAML/JSON text of one")])
    data = raw.encode() if isinstance(raw, str) else raw
    if len(data) > SPEC_MAX_BYTES:
        raise SpecInvalid([SpecProblem("$", f"the spec is {len(data)} bytes; the limit is {SPEC_MAX_BYTES}")])
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise SpecInvalid([SpecProblem("$", "the spec is not UTF-8 text")]) from None
    # JSON first: YAML 1.1 would read some JSON numbers (1e+20) as strings.
    document = _parse_json(text) if text.lstrip().startswith(("{", "[")) else _parse_yaml(text)
    if not isinstance(document, dict):
        raise SpecInvalid([SpecProblem("$", "the spec must be a mapping with a 'name' and a 'steps' list")])
    return document


def _json_path(parts) -> str:
    path = "$"
    for part in parts:
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    return path


def _whole_value_pattern(validator, pattern, instance, schema):
    """JSON Schema's ``pattern`` with ECMA-262's ``$``, which matches only at the end of the
    value. Python's also matches before a final newline, so "sha256:…\n" passed as a digest."""
    if validator.is_type(instance, "string") and not re.search(_ECMA_END.sub(r"\\Z", pattern), instance):
        yield jsonschema.ValidationError(f"{instance!r} does not match {pattern!r}")


_ECMA_END = re.compile(r"(?<!\\)\$$")  # an unescaped "$" closing the pattern
WholeValueValidator = jsonschema.validators.extend(jsonschema.Draft202012Validator,
                                                   {"pattern": _whole_value_pattern})


def _schema_reason(error: jsonschema.ValidationError) -> tuple[str, str]:
    path = _json_path(error.absolute_path)
    validator, value = error.validator, error.validator_value
    if validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        unknown = sorted(set(error.instance) - set(allowed)) if isinstance(error.instance, dict) else []
        if unknown:
            return _json_path([*error.absolute_path, unknown[0]]), (
                f"unknown key '{unknown[0]}'" + (f"; allowed: {', '.join(allowed)}" if allowed else ""))
    if validator == "required":
        missing = error.message.split("'")[1] if "'" in error.message else "a field"
        return path, f"'{missing}' is required"
    if validator == "anyOf" and path.startswith("$.steps["):
        return path, "a step needs a 'command' or an 'image'"
    if validator == "type" and value == "integer" and isinstance(error.instance, float):
        return path, "must be a whole number"
    if validator == "minimum":
        return path, f"must be at least {value}"
    if validator == "maximum":
        return path, f"must be at most {value}"
    if validator == "pattern" and value == DIGEST_PATTERN:
        return path, "a digest is 'sha256:' followed by 64 lowercase hex digits"
    if validator == "pattern" and value == NAME_PATTERN:
        return path, "a name is 1 to 64 lowercase letters, digits, '.', '_' or '-'"
    if validator == "uniqueItems":
        return path, "lists the same name twice"
    return path, error.message


def _find_cycle(graph: dict[str, list[str]]) -> list[str] | None:
    """Return one cycle as a list of step names (first repeated at the end), or None."""
    white, grey, black = 0, 1, 2
    colour = {node: white for node in graph}
    stack: list[str] = []

    def visit(node):
        colour[node] = grey
        stack.append(node)
        for dependency in graph[node]:
            if colour.get(dependency) == grey:
                return stack[stack.index(dependency):] + [dependency]
            if colour.get(dependency) == white:
                found = visit(dependency)
                if found:
                    return found
        stack.pop()
        colour[node] = black
        return None

    for node in graph:
        if colour[node] == white:
            found = visit(node)
            if found:
                return found
    return None


def validate(document: dict, *, known_flavors: set[str]) -> dict:
    """Return the spec if valid; raise SpecInvalid listing every problem found."""
    validator = WholeValueValidator(SCHEMA)
    problems = [SpecProblem(*_schema_reason(error))
                for error in sorted(validator.iter_errors(document), key=lambda e: list(map(str, e.absolute_path)))]
    if problems:
        raise SpecInvalid(problems)

    steps = document["steps"]
    names: dict[str, int] = {}
    for index, step in enumerate(steps):
        if step["name"] in names:
            problems.append(SpecProblem(f"$.steps[{index}].name",
                                        f"duplicate step name '{step['name']}' (also $.steps[{names[step['name']]}])"))
        else:
            names[step["name"]] = index
        gpu = step.get("gpu")
        if gpu and gpu["flavor"] not in known_flavors:
            choices = ", ".join(sorted(known_flavors)) or "none are defined yet"
            problems.append(SpecProblem(f"$.steps[{index}].gpu.flavor",
                                        f"unknown GPU flavor '{gpu['flavor']}' (known: {choices})"))
    for index, step in enumerate(steps):
        for position, dependency in enumerate(step.get("depends_on", [])):
            if dependency not in names:
                problems.append(SpecProblem(f"$.steps[{index}].depends_on[{position}]",
                                            f"depends on unknown step '{dependency}'"))
            elif dependency == step["name"]:
                problems.append(SpecProblem(f"$.steps[{index}].depends_on[{position}]", "a step cannot depend on itself"))
    for kind in ("inputs", "outputs"):
        seen = set()
        for index, item in enumerate(document.get(kind, [])):
            if item["name"] in seen:
                problems.append(SpecProblem(f"$.{kind}[{index}].name", f"duplicate name '{item['name']}'"))
            seen.add(item["name"])
    if not problems:
        graph = {step["name"]: [d for d in step.get("depends_on", []) if d in names] for step in steps}
        cycle = _find_cycle(graph)
        if cycle:
            problems.append(SpecProblem(f"$.steps[{names[cycle[0]]}].depends_on",
                                        "dependency cycle: " + " -> ".join(cycle)))
    if problems:
        raise SpecInvalid(problems)
    return document


DEFAULT_STEP_TIMEOUT_SECONDS = 3600  # a step without timeout_seconds


def step_timeout(step: dict) -> int:
    """How long a step may run, in seconds: its ``timeout_seconds``, or the default."""
    return int(step.get("timeout_seconds", DEFAULT_STEP_TIMEOUT_SECONDS))


def gpus_by_flavor(document: dict) -> dict[str, int]:
    """The most GPUs of each flavor any one step asks for: what a run of the version holds."""
    wanted = {}
    for step in document.get("steps", []):
        gpu = step.get("gpu") or {}
        if gpu.get("flavor"):
            wanted[gpu["flavor"]] = max(wanted.get(gpu["flavor"], 0), int(gpu.get("count", 0)))
    return wanted


def step_order(document: dict) -> list[dict]:
    """The steps in dependency order; among steps that are ready, the spec's own order."""
    steps = document.get("steps", [])
    done: set[str] = set()
    ordered: list[dict] = []
    while len(ordered) < len(steps):
        ready = [s for s in steps if s["name"] not in done and set(s.get("depends_on", [])) <= done]
        if not ready:
            raise ValueError("the steps' dependencies form a cycle")  # validate() refuses such specs
        ordered.append(ready[0])
        done.add(ready[0]["name"])
    return ordered


def uses_images(document: dict) -> bool:
    return any("image" in step for step in document.get("steps", []))
