"""A child for the bounds of policies.sandbox.run_bounded: holds memory, or runs on, as asked."""

import json
import sys
import time

if __name__ == "__main__":
    asked = json.load(sys.stdin)
    hoard = bytearray(asked.get("hold_bytes", 0))  # written, so it is resident
    for at in range(0, len(hoard), 4096):
        hoard[at] = 1
    deadline = time.monotonic() + asked.get("run_seconds", 0)
    while time.monotonic() < deadline:
        pass
    json.dump({"held": len(hoard)}, sys.stdout)
