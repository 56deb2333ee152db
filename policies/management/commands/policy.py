"""`manage.py policy test|eval|bundle|replay`: the policy engine from the command line.

- ``policy test [--dir DIR]`` runs the Rego unit tests with the real OPA engine; exit 1 on any failure.
- ``policy eval --input FILE [--entrypoint E]`` prints the Decision as JSON; exit 0 allow,
  1 deny, 2 error (an unreadable or malformed input, or an engine error).
- ``policy bundle -o FILE`` writes the OPA bundle (deterministic bytes) and prints its revision.
- ``policy replay --policy DIR --since DAYS [--json]`` re-evaluates the stored decisions of the
  last DAYS days with the candidate policy in DIR and lists those that would change; exit 0
  none, 1 some, 2 error.
"""

import json
import os
import sys
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from policies.bundle import PolicySource, build_bundle
from policies.engines import DEFAULT_ENTRYPOINT, EmbeddedEngine, OpaServerEngine
from policies.opa_tests import run_rego_tests
from policies.whatif import policy_replay
from tenants.errors import Invalid


@contextmanager
def engine_output_hidden():
    """rego-cpp prints compile errors to file descriptor 1 itself; the command says it in one sentence."""
    sys.stdout.flush()
    saved = os.dup(1)
    with open(os.devnull, "wb") as devnull:
        os.dup2(devnull.fileno(), 1)
    try:
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


class Command(BaseCommand):
    help = "Run the Rego unit tests, evaluate a policy on an input file, or build the OPA bundle."

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="subcommand", required=True)
        test = sub.add_parser("test", help="Run every test_ rule of every *_test.rego with the real OPA engine.")
        test.add_argument("--dir", help="Policy directory (default: policies/rego).")
        ev = sub.add_parser("eval", help="Evaluate an entrypoint on a JSON input file.")
        ev.add_argument("--input", required=True, help="JSON file with the policy input ('-' for stdin).")
        ev.add_argument("--entrypoint", default=DEFAULT_ENTRYPOINT)
        ev.add_argument("--engine", choices=["embedded", "opa"], help="Default: POLICY_ENGINE.")
        ev.add_argument("--dir", help="Policy directory for the embedded engine (default: policies/rego).")
        bundle = sub.add_parser("bundle", help="Write the OPA bundle (tar.gz) of the policies.")
        bundle.add_argument("-o", "--output", required=True, help="Where to write the bundle.")
        bundle.add_argument("--dir", help="Policy directory (default: policies/rego).")
        replay = sub.add_parser("replay", help="Which stored decisions would a candidate policy change?")
        replay.add_argument("--policy", required=True, help="Candidate policy directory.")
        replay.add_argument("--since", required=True, type=float, metavar="DAYS",
                            help="Replay the decisions stored in the last DAYS days.")
        replay.add_argument("--json", dest="as_json", action="store_true", help="Print the report as JSON.")

    def handle(self, *args, subcommand, **options):
        return getattr(self, f"_{subcommand}")(**options)

    def _test(self, *, dir=None, **options):
        from opa_bindings import OpaError

        try:
            results = run_rego_tests(dir)
        except OpaError as exc:
            raise CommandError(f"The policies do not compile: {exc.message}") from None
        failed = 0
        for r in results:
            if r.skipped:
                self.stdout.write(f"SKIP {r.name} ({r.file})")
            elif r.passed:
                self.stdout.write(f"PASS {r.name}")
            else:
                failed += 1
                self.stdout.write(f"FAIL {r.name} ({r.file}): {r.error}")
        ran = sum(1 for r in results if not r.skipped)
        self.stdout.write(f"{ran - failed} passed, {failed} failed, {len(results) - ran} skipped")
        if failed or not ran:
            sys.exit(1)

    def _eval(self, *, input, entrypoint, engine=None, dir=None, **options):
        from django.conf import settings

        try:
            text = sys.stdin.read() if input == "-" else Path(input).read_text(encoding="utf-8")
            value = json.loads(text)
        except OSError as exc:
            self.stderr.write(f"Cannot read the input file {input}: {exc.strerror}.")
            sys.exit(2)
        except (ValueError, UnicodeDecodeError) as exc:
            self.stderr.write(f"The input file {input} is not valid JSON: {exc}.")
            sys.exit(2)
        if not isinstance(value, dict):
            self.stderr.write(f"The input file {input} must hold a JSON object, not {type(value).__name__}.")
            sys.exit(2)
        kind = engine or settings.POLICY_ENGINE
        policy_engine = EmbeddedEngine(dir) if kind == "embedded" else OpaServerEngine()
        decision = policy_engine.decide(entrypoint, value)
        self.stdout.write(json.dumps(decision.as_dict(), indent=2, sort_keys=True))
        sys.exit(2 if decision.error else (0 if decision.allow else 1))

    def _bundle(self, *, output, dir=None, **options):
        source = PolicySource.load(dir)
        data = build_bundle(source)
        Path(output).write_bytes(data)
        self.stdout.write(f"Wrote {output} ({len(data)} bytes), revision {source.revision}")

    def _replay(self, *, policy, since, as_json=False, **options):
        try:
            window = timedelta(days=since)
        except OverflowError:
            window = None
        if not since > 0 or window is None:
            self.stderr.write(f"--since must be a positive number of days, not {since:g}.")
            sys.exit(2)
        try:
            with engine_output_hidden():
                report = policy_replay(policy_dir=policy, since=window)
        except Invalid as exc:
            self.stderr.write(exc.detail)
            sys.exit(2)
        changes = report.changes
        if as_json:
            self.stdout.write(json.dumps({"candidate_revision": report.revision, "since_days": since,
                                          "replayed": report.replayed, "changes": [vars(c) for c in changes]},
                                         indent=2))
        else:
            for c in changes:
                outcome = f"{'allow' if c.allow_before else 'deny'}->{'allow' if c.allow_after else 'deny'}"
                rules = " ".join([f"+{r}" for r in c.added] + [f"-{r}" for r in c.removed])
                self.stdout.write("  ".join([c.tenant, c.decision_id, c.entrypoint, outcome, rules]).rstrip())
            self.stdout.write(f"{report.replayed} decision(s) of the last {since:g} day(s) replayed under "
                              f"{report.revision}: {len(changes)} would change.")
        if changes:
            sys.exit(1)
