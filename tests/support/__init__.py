"""The suite's helpers, one module a concern, registered as pytest plugins by tests/conftest.py.

Test files import helpers from here, never from conftest."""

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
