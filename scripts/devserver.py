"""Start the console, a Celery worker, beat and one demo runner node together; Ctrl-C stops
them all. The runner declares two h100-80gb devices in the EU (RUNNER_GPU_DEVICES), so the
demo's acme-bank runs execute here, in the bubblewrap sandbox."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
ADDRESS = os.environ.get("NEOCLOUD_ADDRESS", "127.0.0.1:8000")


def main() -> int:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    commands = {
        "web": [sys.executable, "manage.py", "runserver", ADDRESS, "--noreload"],
        "worker": [str(BIN / "celery"), "-A", "neocloud", "worker", "--loglevel", "INFO", "--concurrency", "2"],
        "beat": [str(BIN / "celery"), "-A", "neocloud", "beat", "--loglevel", "INFO"],
        "runner": [sys.executable, "manage.py", "runner", "start"],
    }
    runner_env = {"RUNNER_HOSTNAME": "demo-gpu-eu-1", "RUNNER_FLAVOR": "h100-80gb", "RUNNER_REGION": "eu-west1",
                  "RUNNER_JURISDICTION": "eu", "RUNNER_GPU_DEVICES": "0,1"}
    processes = {name: subprocess.Popen(cmd, cwd=ROOT, env={**env, **runner_env} if name == "runner" else env)
                 for name, cmd in commands.items()}
    print(f"\nNeocloud console: http://{ADDRESS}/   (API docs: http://{ADDRESS}/api/v1/docs/)")
    print("Sign in with a demo user above; the password and TOTP secrets are printed there. Ctrl-C stops everything.\n")
    stopping = False

    def stop(*_):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    exit_code = 0
    while not stopping:
        for name, process in processes.items():
            if process.poll() is not None:
                print(f"{name} stopped (exit {process.returncode}); stopping the rest.", file=sys.stderr)
                exit_code, stopping = 1, True
                break
        time.sleep(0.5)
    for process in processes.values():
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in processes.values():
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
