"""Rego the platform did not ship may call only the builtins on an allow-list.

Candidate policies (the what-if API, ``manage.py policy replay``) are checked here before they
compile, in a child process (``python -m policies.sandbox``) with no secret in its environment,
bounded in time and memory: the engine's parser runs on tenant input, and a crash or a runaway
there must not take the web process with it. The check walks the module as the engine parsed
it: regopy (rego-cpp) writes each
pass's syntax tree when debugging is on, and its ``structure`` pass holds every call as an
``rego-exprcall`` node whose ``rego-ref`` names the function. Each called name, and each name
in a ``with`` replacement, must be on the allow-list or be a rule or function the candidate
defines itself (reached by ``data.``, an import alias, or a name of its own package).

The allow-list is ``policies/capabilities.json``, an OPA capabilities file, so operators who
run OPA can hold a candidate to the same list (``opa eval --capabilities``). Nothing on it
reads the process or its environment, reaches the network, reads files, reads the clock or a
random source, or prints or traces into a response.
"""

import json
import os
import resource
import selectors
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

CAPABILITIES = Path(__file__).resolve().parent / "capabilities.json"
PROJECT_ROOT = Path(__file__).resolve().parent.parent
CHECK_SECONDS = 20  # a whole batch; one candidate takes milliseconds
CHECK_MEMORY_BYTES = 1024 ** 3
STARTUP_SECONDS = 10  # a child's interpreter start and the candidate's compile, before its first answer


# The first segment of every builtin name OPA knows (v1.20.2): a candidate's own rule, function
# or import alias may not take one, or a call could reach a builtin under its name.
RESERVED_ROOTS = frozenset({"abs", "all", "and", "any", "array", "assign", "base64", "base64url", "bits",
    "cast_array", "cast_boolean", "cast_null", "cast_object", "cast_set", "cast_string", "ceil", "concat",
    "contains", "count", "crypto", "div", "endswith", "eq", "equal", "floor", "format_int", "glob", "graph",
    "graphql", "gt", "gte", "hex", "http", "indexof", "indexof_n", "internal", "intersection", "io",
    "is_array", "is_boolean", "is_null", "is_number", "is_object", "is_set", "is_string", "json", "lower",
    "lt", "lte", "max", "min", "minus", "mul", "neq", "net", "numbers", "object", "opa", "or", "plus", "print",
    "product", "providers", "rand", "re_match", "regex", "rego", "rem", "replace", "round", "semver",
    "set_diff", "sort", "split", "sprintf", "startswith", "strings", "substring", "sum", "time", "to_number",
    "trace", "trim", "trim_left", "trim_prefix", "trim_right", "trim_space", "trim_suffix", "type_name",
    "union", "units", "upper", "uri", "urlquery", "uuid", "walk", "yaml"})
IMPORTABLE = ("data", "input")  # and rego.v1, future.keywords: imports that name no function


class CheckFailed(Exception):
    """The check itself could not finish (the parser crashed, or ran past its bounds)."""


class BuiltinRefused(Exception):
    """A candidate module calls (or imports) a builtin not on the allow-list."""

    def __init__(self, builtin: str, path: str, line: int, verb: str = "calls"):
        self.builtin, self.path, self.line, self.verb = builtin, path, line, verb
        super().__init__(f"{path}:{line}: {verb} {builtin}, which candidate policies may not "
                         f"{verb.removesuffix('s')} (the allowed builtins are listed in the platform's "
                         f"capabilities file).")


@lru_cache(maxsize=1)
def allowed_builtins() -> frozenset:
    return frozenset(entry["name"] for entry in json.loads(CAPABILITIES.read_text())["builtins"])


# The engine's syntax tree ---------------------------------------------------------------


@dataclass
class Node:
    kind: str
    offset: int = -1
    text: bytes = b""
    children: list = field(default_factory=list)

    def first(self, kind: str):
        return next((child for child in self.children if child.kind == kind), None)

    def walk(self):
        yield self
        for child in self.children:
            yield from child.walk()


class _Reader:
    """Reads trieste's dump: ``(kind [<n>:<source>][|offset|length[:text of length bytes]] children)``.
    Token text is length-prefixed, so a string holding parentheses cannot confuse it."""

    def __init__(self, data: bytes):
        self.data, self.at = data, 0

    def _number(self) -> int:
        start = self.at
        while self.data[self.at:self.at + 1].isdigit():
            self.at += 1
        return int(self.data[start:self.at])

    def node(self) -> Node:
        assert self.data[self.at:self.at + 1] == b"("
        self.at += 1
        start = self.at
        while self.data[self.at:self.at + 1] not in (b" ", b")", b"\n"):
            self.at += 1
        node = Node(kind=self.data[start:self.at].decode())
        if self.data[self.at:self.at + 1] == b" ":
            self.at += 1
            if self.data[self.at:self.at + 1].isdigit():  # a source name: <n>:<name>
                name_length = self._number()
                self.at += 1 + name_length
            if self.data[self.at:self.at + 1] == b"|":
                self.at += 1
                node.offset = self._number()
                self.at += 1  # the second |
                length = self._number()
                if self.data[self.at:self.at + 1] == b":":
                    node.text = self.data[self.at + 1:self.at + 1 + length]
                    self.at += 1 + length
        while True:
            self._skip_space()
            char = self.data[self.at:self.at + 1]
            if char == b")":
                self.at += 1
                return node
            if char == b"(":
                node.children.append(self.node())
            elif char == b"{":
                self._symbol_table()
            else:
                raise ValueError(f"unexpected {char!r} at byte {self.at} of the engine's syntax tree")

    def _symbol_table(self):
        self.at += 1
        while self.data[self.at:self.at + 1] != b"}":
            if self.data[self.at:self.at + 1] == b"(":
                self.node()
            elif self.at >= len(self.data):
                raise ValueError("a symbol table of the engine's syntax tree does not end")
            else:
                self.at += 1
        self.at += 1

    def _skip_space(self):
        while self.data[self.at:self.at + 1] in (b" ", b"\n", b"\t", b"\r"):
            self.at += 1


def parse_dump(data: bytes) -> Node:
    """The tree in one pass's dump (two header lines: the pass group and its name)."""
    return _Reader(data).node() if data.startswith(b"(") else _Reader(data[data.index(b"\n(") + 1:]).node()


def structure_of(modules: dict[str, str]) -> dict[str, Node]:
    """Each module as the engine parsed it (its last module pass), before anything compiles.
    A module the engine cannot parse is left out: compiling it reports the syntax error."""
    import regopy

    trees = {}
    with tempfile.TemporaryDirectory(prefix="neocloud-rego-parse-") as scratch:
        for index, (path, text) in enumerate(sorted(modules.items())):
            interpreter = regopy.Interpreter()
            interpreter.debug_enabled = True
            interpreter.set_debug_path(str(Path(scratch, str(index))))
            try:
                interpreter.add_module(path, text)
            except Exception:
                continue
            passes = sorted(Path(scratch, str(index)).glob("module0/*_structure.trieste"))
            if not passes:
                raise RuntimeError("the policy engine wrote no syntax tree for a candidate module")
            trees[path] = parse_dump(passes[-1].read_bytes())
    return trees


# The walk ---------------------------------------------------------------------------------


def ref_name(ref: Node) -> str | None:
    """``a.b["c"].d`` as ``a.b.c.d``; None when a part is computed (not a literal)."""
    head = ref.first("rego-refhead")
    if head is None or not head.children or head.children[0].kind != "rego-var":
        return None
    parts = [head.children[0].text.decode()]
    for arg in (ref.first("rego-refargseq") or Node("")).children:
        if arg.kind == "rego-refargdot" and arg.children and arg.children[0].kind == "rego-var":
            parts.append(arg.children[0].text.decode())
            continue
        strings = [n for n in arg.walk() if n.kind == "rego-STRING"]
        if arg.kind == "rego-refargbrack" and len(strings) == 1 and \
                len([n for n in arg.walk() if n.kind.startswith("rego-") and n.text]) == 1:
            parts.append(json.loads(strings[0].text))
            continue
        return None
    return ".".join(parts)


def _defined_names(tree: Node) -> set[str]:
    """What a module itself defines or imports from data or input: rule and function names,
    import aliases. None of them may take a builtin's first segment."""
    names = set(IMPORTABLE)
    for node in tree.walk():
        if node.kind == "rego-ruleref":
            ref = node.first("rego-ref")
            name = ref_name(ref) if ref else None
            if name:
                names.add(name.split(".")[0])
        elif node.kind == "rego-import":
            alias = [child for child in node.children if child.kind == "rego-var"]
            ref = node.first("rego-ref")
            name = ref_name(ref) if ref else None
            if name and name.split(".")[0] in IMPORTABLE:
                names.add(alias[-1].text.decode() if alias else name.split(".")[-1])
    return names - RESERVED_ROOTS


def _imports(tree: Node):
    """(what is imported or None, node) for every import."""
    for node in tree.walk():
        if node.kind == "rego-import":
            ref = node.first("rego-ref")
            yield (ref_name(ref) if ref else None), node


def _importable(name: str | None) -> bool:
    return name is not None and (name.split(".")[0] in IMPORTABLE or name == "rego.v1"
                                 or name == "future.keywords" or name.startswith("future.keywords."))


def _direct_name(node: Node | None) -> tuple[str | None, Node] | None:
    """The name a ``with`` target or value names itself (a var or a ref), if it names one."""
    while node is not None and node.kind in ("rego-expr", "rego-term") and len(node.children) == 1:
        node = node.children[0]
    if node is None:
        return None
    if node.kind == "rego-var":
        return node.text.decode(), node
    if node.kind == "rego-ref":
        return ref_name(node), node
    return None


def _calls(tree: Node):
    """(name or None, node) for every function called, and for what a ``with`` replaces and
    what it replaces it with (``with upper as opa.runtime`` would call opa.runtime)."""
    for node in tree.walk():
        if node.kind == "rego-exprcall":
            ref = node.first("rego-ref")
            yield (ref_name(ref) if ref else None), node
        elif node.kind == "rego-with":
            for part in node.children[:2]:
                named = _direct_name(part)
                if named is not None:
                    yield named


def _line(source: str, offset: int) -> int:
    return source.encode("utf-8")[:max(offset, 0)].count(b"\n") + 1


def _first_refusal(modules: dict[str, str], engine) -> BuiltinRefused | None:
    allowed = allowed_builtins()
    for path, tree in structure_of(modules).items():
        for name, node in _imports(tree):  # "import opa.runtime" would reach the builtin by another name
            if not _importable(name):
                return BuiltinRefused(name or "a computed name", path, _line(modules[path], node.offset),
                                      verb="imports")
        own = _defined_names(tree)
        for name, node in sorted(_calls(tree), key=lambda pair: pair[1].offset):
            if name is None:
                return BuiltinRefused("a function whose name is computed", path, _line(modules[path], node.offset))
            if name in allowed or (name.split(".")[0] in own and not engine.is_builtin(name)):
                continue
            return BuiltinRefused(name, path, _line(modules[path], node.offset))
    return None


def _rss_bytes(pid: int) -> int:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:  # gone already
        return 0
    line = next((line for line in status.splitlines() if line.startswith("VmRSS:")), "VmRSS: 0 kB")
    return int(line.split()[1]) * 1024


def _child(module: str, seconds: float) -> subprocess.Popen:
    """``python -m module`` in an environment that holds no secret, with a CPU limit as a
    backstop to the parent's own watch."""
    def cpu_bounded():
        limit = int(seconds) + 1
        resource.setrlimit(resource.RLIMIT_CPU, (limit, limit))

    return subprocess.Popen([sys.executable, "-m", module], cwd=PROJECT_ROOT, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, preexec_fn=cpu_bounded,
                            env={"PATH": os.environ.get("PATH", ""), "LANG": "C.UTF-8"})


def stream_bounded(module: str, payload: dict, *, first_seconds: float, seconds_each: float,
                   memory_bytes: int) -> tuple[list[dict], str]:
    """Run ``python -m module`` on ``payload`` and read the JSON lines it answers. The first
    (the child is ready) must come within ``first_seconds``, each later one within
    ``seconds_each`` of the one before, with the child under ``memory_bytes`` resident; the
    child is killed the moment either bound passes. Returns (the lines read, why it was
    stopped or "")."""
    process = _child(module, first_seconds + seconds_each * 1000)
    data = json.dumps(payload).encode()
    writer = threading.Thread(target=_feed, args=(process.stdin, data), daemon=True)
    writer.start()
    lines, buffer, why = [], b"", ""
    deadline = time.monotonic() + first_seconds
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        while True:
            if selector.select(timeout=0.02):
                chunk = os.read(process.stdout.fileno(), 65536)
                if not chunk:  # the child is done: a last answer may lack its newline
                    lines += [json.loads(buffer)] if buffer.strip() else []
                    break
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    lines.append(json.loads(line))
                    deadline = time.monotonic() + seconds_each
            if time.monotonic() > deadline:
                why = f"passed its {seconds_each:g} s bound" if lines else f"passed its {first_seconds:g} s bound"
            elif _rss_bytes(process.pid) > memory_bytes:
                why = f"passed its {memory_bytes // 2 ** 20} MiB bound"
            if why:
                process.kill()
                break
    process.wait()
    writer.join()
    if not why and process.returncode != 0:
        why = "stopped without an answer"
    return lines, why


def _feed(pipe, data: bytes) -> None:
    try:
        pipe.write(data)
        pipe.close()
    except (BrokenPipeError, ValueError):  # the child was stopped before it read everything
        pass


def evaluate_bounded(modules: dict[str, str], queries: list[dict], *, seconds_each: float,
                     memory_bytes: int = CHECK_MEMORY_BYTES) -> list[dict]:
    """Evaluate each query ({entrypoint, input}) under ``modules`` in child processes, each
    query stopped at its bound: {"value": result}, {"undefined": True} or {"error": text}.
    A query that passes its bound is an error, and the rest go on in a fresh child."""
    results, remaining = [], list(queries)
    while remaining:
        lines, why = stream_bounded("policies.sandbox", {"evaluate": {"modules": modules, "queries": remaining}},
                                    first_seconds=STARTUP_SECONDS, seconds_each=seconds_each,
                                    memory_bytes=memory_bytes)
        if not lines:  # it did not even compile within its bound: every query is an error
            return results + [{"error": f"compiling it {why}, and was stopped."}] * len(remaining)
        lines = lines[1:]  # the "ready" line
        results += lines
        if not why:
            break
        results.append({"error": f"it {why}, and was stopped."})
        remaining = remaining[len(lines) + 1:]
    return results


def run_bounded(module: str, payload: dict, *, seconds: float, memory_bytes: int) -> dict:
    """Run ``python -m module`` with ``payload`` as JSON on stdin and return the one JSON
    answer it prints, stopped the moment it passes ``seconds`` or resident ``memory_bytes``;
    raises CheckFailed otherwise."""
    lines, why = stream_bounded(module, payload, first_seconds=seconds, seconds_each=seconds,
                                memory_bytes=memory_bytes)
    if why or not lines:
        raise CheckFailed(why or "stopped without an answer")
    return lines[0]


class CompileFailed(Exception):
    """The candidate's modules passed the walk but do not compile; the text names file, line
    and column."""


def check_module_sets(module_sets: list[dict[str, str]], entrypoints=()) -> list[BuiltinRefused | CompileFailed | None]:
    """For each set of modules, its first refusal, else why it does not compile for
    ``entrypoints`` (None: every call is allowed and it compiles), found by one bounded child
    process, so the web process never parses or compiles a candidate. Raises CheckFailed when
    the child does not answer."""
    answer = run_bounded("policies.sandbox", {"module_sets": module_sets, "entrypoints": list(entrypoints)},
                         seconds=CHECK_SECONDS, memory_bytes=CHECK_MEMORY_BYTES)
    return [BuiltinRefused(**found["refused"]) if "refused" in found
            else CompileFailed(found["compile_error"]) if "compile_error" in found else None
            for found in answer["results"]]


def check_modules(modules: dict[str, str], entrypoints=()) -> None:
    """Raise BuiltinRefused for the first call, in path and source order, of a builtin that is
    not on the allow-list; then CompileFailed if the modules do not compile for
    ``entrypoints`` (or CheckFailed)."""
    [problem] = check_module_sets([modules], entrypoints)
    if problem is not None:
        raise problem


def _compile_error(modules: dict[str, str], entrypoints) -> str | None:
    """Why the modules do not compile for ``entrypoints``, or None; only after the walk."""
    import regopy

    from .engines import describe_rego_error

    interpreter = regopy.Interpreter()
    try:
        for path, text in sorted(modules.items()):
            interpreter.add_module(path, text)
        for entrypoint in entrypoints:
            if not interpreter.build(None, [entrypoint]).ok():
                return f"the policy did not compile for {entrypoint}"
    except Exception as exc:
        return describe_rego_error(str(exc), modules)
    return None


def _evaluate(modules: dict[str, str], queries: list[dict], answer) -> None:
    """One line per query, as each finishes: the parent stops a query at its own bound."""
    import regopy

    interpreter, bundles = regopy.Interpreter(), {}
    for path, text in sorted(modules.items()):
        interpreter.add_module(path, text)
    for entrypoint in {query["entrypoint"] for query in queries}:
        try:
            bundles[entrypoint] = interpreter.build(None, [entrypoint])
        except Exception as exc:
            bundles[entrypoint] = exc
    answer.write(json.dumps({"ready": True}) + "\n")  # compiled: from here each query has its own bound
    answer.flush()
    for query in queries:
        try:
            entrypoint = query["entrypoint"]
            if isinstance(bundles[entrypoint], Exception):
                raise bundles[entrypoint]
            interpreter.set_input_term(json.dumps(query["input"], allow_nan=False, ensure_ascii=False))
            output = interpreter.query_bundle_entrypoint(bundles[entrypoint], entrypoint)
            if not output.ok():
                line = {"error": str(output).strip()[:500]}
            elif len(output) == 0 or not output[0].expressions:
                line = {"undefined": True}
            else:
                line = {"value": output[0].expressions[0]}
        except Exception as exc:  # reported, never raised: the next query still runs
            line = {"error": str(exc)[:500]}
        answer.write(json.dumps(line) + "\n")
        answer.flush()


def main() -> None:
    answer = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # the engine prints its parse errors on stdout; only the answer goes there
    import regopy

    payload = json.load(sys.stdin)
    if "evaluate" in payload:
        _evaluate(payload["evaluate"]["modules"], payload["evaluate"]["queries"], answer)
        return
    engine = regopy.Interpreter()  # knows every builtin it implements: none may hide behind a rule's name
    results = []
    for modules in payload["module_sets"]:
        found = _first_refusal(modules, engine)
        if found is not None:
            results.append({"refused": {"builtin": found.builtin, "path": found.path, "line": found.line,
                                        "verb": found.verb}})
            continue
        problem = _compile_error(modules, payload.get("entrypoints", []))
        results.append({"compile_error": problem} if problem else {})
    json.dump({"results": results}, answer)
    answer.close()


if __name__ == "__main__":
    main()
