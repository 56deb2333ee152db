"""Run the Rego unit tests with the real OPA engine (opa-golib-python-bindings).

regopy cannot run tests that use ``with input as``; OPA can. Every rule named ``test_*`` in
every ``*_test.rego`` runs; ``todo_*`` rules are skipped, as ``opa test`` does. A test
passes when its value is ``true``.
"""

import re
from dataclasses import dataclass

from .bundle import PolicySource

PACKAGE = re.compile(r"^package\s+([\w.]+)", re.MULTILINE)
TEST_RULE = re.compile(r"^(test_\w+)\b", re.MULTILINE)
TODO_RULE = re.compile(r"^(todo_\w+)\b", re.MULTILINE)


@dataclass
class RegoTestResult:
    file: str
    name: str  # package.rule
    passed: bool
    skipped: bool = False
    error: str = ""


def opa_engine(source: PolicySource, *, with_tests: bool = False):
    """A real OPA engine with the source's modules loaded (and its tests, if asked)."""
    from opa_bindings import OpaEngine

    engine = OpaEngine()
    modules = {**source.modules, **(source.tests if with_tests else {})}
    for path, text in sorted(modules.items()):
        engine.add_policy(path, text)
    return engine


def run_rego_tests(policy_dir=None) -> list[RegoTestResult]:
    from opa_bindings import OpaError

    source = PolicySource.load(policy_dir)
    engine = opa_engine(source, with_tests=True)  # a parse or compile error raises OpaError with file:line
    results = []
    try:
        for path, text in sorted(source.tests.items()):
            package = PACKAGE.search(text)
            if package is None:
                results.append(RegoTestResult(path, path, passed=False, error="no package declaration"))
                continue
            package = package.group(1)
            for rule in sorted(set(TODO_RULE.findall(text))):
                results.append(RegoTestResult(path, f"{package}.{rule}", passed=True, skipped=True))
            for rule in sorted(set(TEST_RULE.findall(text))):
                name = f"{package}.{rule}"
                try:
                    rows = engine.eval_query(f"__result__ := data.{package}.{rule}")
                except OpaError as exc:
                    results.append(RegoTestResult(path, name, passed=False, error=str(exc)))
                    continue
                passed = bool(rows) and all(row.get("__result__") is True for row in rows)
                results.append(RegoTestResult(path, name, passed=passed,
                                              error="" if passed else "the test rule is undefined or false"))
    finally:
        engine.close()
    return results
