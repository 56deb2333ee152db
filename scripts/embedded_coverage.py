"""Check that the embedded test pass ran what only SQLite runs.

The PostgreSQL pass runs the whole suite; the embedded pass (file-backed SQLite, the
filesystem broker) runs only a slice. This script reads the slice's coverage data and
fails unless it executed, in the platform's own code:

- every branch on the database vendor, and each line on its non-PostgreSQL side;
- every ``select_for_update`` (SQLite ignores the lock, but runs the query);
- every raw SQL statement (``cursor()``, ``execute``, ``executemany``) outside PostgreSQL-only code.

Usage: python scripts/embedded_coverage.py COVERAGE_DATA_FILE [--list]

Lines no test on either stack runs (reverse migrations) are listed in EXCEPTIONS with why;
docs/decisions.md repeats them.
"""

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("neocloud", "tenants", "audit", "policies", "workflows", "compliance", "runners")
RAW_SQL_CALLS = {"cursor", "execute", "executemany", "raw"}  # called on a connection, cursor or manager

# (file, function) -> why the embedded pass does not run it.
EXCEPTIONS = {
    ("audit/appendonly.py", "database_backwards"): "reverse migrations are not run by any test, on either stack",
    ("audit/migrations/0006_pending_queue.py", "queue_backward"): "reverse migrations are not run by any test",
    ("policies/migrations/0002_row_level_security.py", "drop_platform_scope_policy"):
        "reverse migrations are not run by any test",
    ("tenants/db.py", "database_backwards"): "reverse migrations are not run by any test",
    ("tenants/db.py", "_role_exists"): "called only from apply_role_grants, after its SQLite early return",
    ("audit/log.py", "execute"): "the prepared cursor that record() uses only on PostgreSQL",
}


def _mentions_vendor(node) -> bool:
    return any(isinstance(n, ast.Attribute) and n.attr == "vendor" for n in ast.walk(node))


def _postgresql_is_true(test, aliases=None) -> bool | None:
    """Whether ``test`` holds on PostgreSQL (True) or on SQLite (False); None if it is not a
    plain comparison of a vendor with a string, or a name bound to one."""
    if isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not):
        inner = _postgresql_is_true(test.operand, aliases)
        return None if inner is None else not inner
    if isinstance(test, ast.Name):
        return (aliases or {}).get(test.id)
    if not (isinstance(test, ast.Compare) and len(test.ops) == 1 and _mentions_vendor(test)):
        return None
    [op], [right] = test.ops, test.comparators
    if not isinstance(right, ast.Constant) or not isinstance(op, (ast.Eq, ast.NotEq)):
        return None
    equal_on_postgresql = right.value == "postgresql"
    return equal_on_postgresql if isinstance(op, ast.Eq) else not equal_on_postgresql


def _statement_lines(statements) -> set[int]:
    return {node.lineno for stmt in statements for node in ast.walk(stmt) if isinstance(node, ast.stmt)}


def _ends_block(statements) -> bool:
    return bool(statements) and isinstance(statements[-1], (ast.Return, ast.Raise))


class Requirements(ast.NodeVisitor):
    """Walks one module: what the embedded pass must execute, and what is PostgreSQL-only."""

    def __init__(self):
        self.required: dict[int, str] = {}
        self.postgresql_only: set[int] = set()
        self.function_of: dict[int, str] = {}
        self.aliases: dict[str, bool] = {}  # postgresql = connection.vendor == "postgresql"
        self._function = None

    def visit_FunctionDef(self, node):
        outer, self._function = self._function, node.name
        for child in ast.walk(node):
            if isinstance(child, ast.stmt):
                self.function_of.setdefault(child.lineno, node.name)
        self._mark_early_returns(node.body)
        self.generic_visit(node)
        self._function = outer

    def _mark_early_returns(self, body):
        """``if vendor != "postgresql": return`` makes the rest of the block PostgreSQL-only."""
        for index, stmt in enumerate(body):
            if isinstance(stmt, ast.If) and not stmt.orelse and _ends_block(stmt.body) \
                    and _postgresql_is_true(stmt.test, self.aliases) is False:
                self.postgresql_only |= _statement_lines(body[index + 1:])

    def visit_Assign(self, node):
        value = _postgresql_is_true(node.value)
        if value is not None and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            self.aliases[node.targets[0].id] = value
        self.generic_visit(node)

    def visit_Compare(self, node):
        if _mentions_vendor(node):
            self.required.setdefault(node.lineno, "a branch on the database vendor")
        self.generic_visit(node)

    def visit_If(self, node):
        holds_on_postgresql = _postgresql_is_true(node.test, self.aliases)
        if holds_on_postgresql is not None:
            self.required[node.lineno] = "a branch on the database vendor"
            sqlite_side, postgresql_side = (node.orelse, node.body) if holds_on_postgresql else (node.body, node.orelse)
            for line in _statement_lines(sqlite_side):
                self.required.setdefault(line, "the non-PostgreSQL side of a vendor branch")
            self.postgresql_only |= _statement_lines(postgresql_side)
        self.generic_visit(node)

    def visit_Call(self, node):
        name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", None)
        if name == "select_for_update":
            self.required.setdefault(node.lineno, "a select_for_update")
        elif name in RAW_SQL_CALLS and isinstance(node.func, ast.Attribute) and (name != "cursor" or not node.args):
            self.required.setdefault(node.lineno, "a raw SQL statement")
        self.generic_visit(node)

    visit_AsyncFunctionDef = visit_FunctionDef


def statement_starts(tree) -> dict[int, int]:
    """Line -> the first line of the innermost simple statement holding it, as coverage counts."""
    starts = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.stmt):
            body = getattr(node, "body", None)
            end = max(node.lineno, body[0].lineno - 1) if isinstance(body, list) and body else node.end_lineno
            for line in range(node.lineno, end + 1):
                if line not in starts or starts[line] < node.lineno:
                    starts[line] = node.lineno
    return starts


def requirements(path: Path):
    tree = ast.parse(path.read_text(), str(path))
    walker = Requirements()
    walker.visit(tree)
    starts = statement_starts(tree)
    for line, why in sorted(walker.required.items()):
        start = starts.get(line, line)
        if start in walker.postgresql_only and why != "a branch on the database vendor":
            continue
        yield start, why, walker.function_of.get(start)


def main(argv):
    if len(argv) < 2:
        print("Usage: python scripts/embedded_coverage.py COVERAGE_DATA_FILE [--list]", file=sys.stderr)
        return 2
    import coverage

    data_file = Path(argv[1])
    if not data_file.exists():
        print(f"No coverage data at {data_file}: run the embedded pass under coverage first.", file=sys.stderr)
        return 2
    data = coverage.CoverageData(basename=str(data_file))
    data.read()
    executed = {Path(name).resolve(): set(data.lines(name) or ()) for name in data.measured_files()}
    missing, checked = [], 0
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            relative = path.relative_to(ROOT).as_posix()
            for line, why, function in requirements(path):
                if (relative, function) in EXCEPTIONS:
                    continue
                checked += 1
                ran = line in executed.get(path.resolve(), set())
                if "--list" in argv:
                    print(f"{'ran ' if ran else 'MISS'} {relative}:{line} {why}")
                if not ran:
                    missing.append(f"{relative}:{line} ({why})")
    if missing:
        print(f"The embedded pass did not run {len(missing)} of the {checked} lines only it can check: "
              + "; ".join(missing), file=sys.stderr)
        return 1
    print(f"The embedded pass ran all {checked} vendor-branch, select_for_update and raw SQL lines "
          f"({len(EXCEPTIONS)} functions excepted, as docs/decisions.md says).")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
