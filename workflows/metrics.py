"""Metrics artifacts: a JSON object of named numbers (evaluation results a promotion reads)."""

import json
import math
from pathlib import Path

from audit.hashing import SAFE_INTEGER  # policy inputs are hashed as RFC 8785 JSON

from .store import UploadRefused

METRICS_MAX_BYTES = 1024 * 1024
METRIC_NAME_MAX = 200


def _refuse(reason: str):
    raise UploadRefused("invalid_metrics", f"A metrics artifact is a JSON object of named numbers: {reason}.")


def check_metrics_file(path: Path) -> None:
    """Raise UploadRefused unless ``path`` holds a JSON object mapping names to finite numbers."""
    if path.stat().st_size > METRICS_MAX_BYTES:
        _refuse(f"this one is over {METRICS_MAX_BYTES} bytes")
    try:
        document = json.loads(path.read_bytes(), parse_constant=lambda name: _refuse(f"{name} is not a number"))
    except ValueError as exc:  # not UTF-8, not JSON, or an integer too long to read
        _refuse(f"it is not valid JSON ({exc})")
    if not isinstance(document, dict) or not document:
        _refuse("it must be a non-empty object")
    for name, value in document.items():
        if not name or len(name) > METRIC_NAME_MAX:
            _refuse(f"metric names are 1 to {METRIC_NAME_MAX} characters")
        if not _text(name):
            _refuse(f"the metric name {json.dumps(name)[:40]} is not valid Unicode text")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not _finite(value):
            _refuse(f"'{name}' is {json.dumps(value)[:40]}, not a finite number")
        if isinstance(value, int) and not -SAFE_INTEGER <= value <= SAFE_INTEGER:
            _refuse(f"'{name}' is an integer past 2**53, which a JSON number cannot hold exactly; "
                    f"write it with an exponent (such as {value:.3e})")


def _text(name: str) -> bool:
    try:
        name.encode("utf-8")  # a lone surrogate (\ud800 in the JSON) is not text
    except UnicodeEncodeError:
        return False
    return True


def _finite(value) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an integer too large for a float
        return False

