"""What a command prints: lines for people, or exactly one JSON object with --json."""

import json
import sys

from .errors import CliError


class Output:
    def __init__(self, json_mode: bool):
        self.json_mode = json_mode

    def result(self, data: dict, lines: list[str]) -> None:
        """The outcome of a command (also a failed verification, which is an answer)."""
        if self.json_mode:
            print(json.dumps(data, indent=2, default=str))
        else:
            for line in lines:
                print(line)

    def note(self, line: str) -> None:
        """Progress for people; nothing in --json mode, whose stdout is one object."""
        if not self.json_mode:
            print(line, file=sys.stderr)

    def error(self, error: CliError) -> None:
        if self.json_mode:
            body = {"code": error.code, "detail": error.detail}
            if error.fields:
                body["fields"] = error.fields
            print(json.dumps({"error": body}, indent=2))
            return
        print(f"neocloud: {error.detail}", file=sys.stderr)
        for line in error.details:
            print(f"  {line}", file=sys.stderr)
