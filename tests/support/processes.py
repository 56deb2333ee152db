"""Real processes: the session's Celery worker (with beat) and runner nodes.

They stay where a test is about them; everything else calls the domain in-process."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.conf import settings

from tests.support import ROOT

# Short leases and cycles, so the tests of reaping and requeueing finish in seconds; the
# platform worker and every runner must agree on them.
RUNNER_TEST_SETTINGS = {"ADMISSION_INTERVAL_SECONDS": "1", "RUNNER_LEASE_SECONDS": "3",
                        "RUNNER_HEARTBEAT_TIMEOUT_SECONDS": "6"}


def wait_for(predicate, *, timeout=30.0, interval=0.2, message="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {message}")


def _broker_reachable():
    url = settings.CELERY_BROKER_URL
    if url.startswith("redis://"):
        import redis

        try:
            connection = redis.Redis.from_url(url, socket_connect_timeout=3)
            connection.ping()
            connection.flushdb()
        except redis.RedisError as exc:
            pytest.fail(f"Redis is unreachable at {url}: {exc}. The worker tests need it; they do not skip.")


@pytest.fixture(scope="session")
def celery_worker(django_db_setup, tmp_path_factory):
    """A real `celery worker` subprocess with embedded beat, on the test database and broker.

    Beat sequences the audit log every half second from then on (and admits runs every
    second), so the ordering plugin runs every test that asks for it last."""
    _broker_reachable()
    workdir = tmp_path_factory.mktemp("worker")
    log_path = workdir / "worker.log"
    env = dict(os.environ, AUDIT_SEQUENCER_INTERVAL_SECONDS="0.5", PYTHONUNBUFFERED="1", **RUNNER_TEST_SETTINGS)
    command = [str(Path(sys.executable).parent / "celery"), "-A", "neocloud", "worker", "--beat",
               "--pool", "solo", "--loglevel", "INFO", "--without-gossip", "--without-mingle",
               "--schedule", str(workdir / "beat-schedule"), "--hostname", f"test-{os.getpid()}@localhost"]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        text = log_path.read_text(errors="replace")
        if " ready." in text:
            break
        if process.poll() is not None:
            pytest.fail(f"The Celery worker exited early:\n{text[-3000:]}")
        time.sleep(0.2)
    else:
        process.kill()
        pytest.fail(f"The Celery worker did not become ready:\n{log_path.read_text(errors='replace')[-3000:]}")
    yield process, log_path
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()


class Runner:
    """A real `manage.py runner start` process for one node, with declared devices."""

    def __init__(self, hostname, devices, workdir, jurisdiction="eu", flavor="h100-80gb", env=None):
        self.hostname, self.log_path = hostname, workdir / f"runner-{hostname}.log"
        env = dict(os.environ, PYTHONUNBUFFERED="1", RUNNER_HOSTNAME=hostname, RUNNER_FLAVOR=flavor,
                   RUNNER_REGION=jurisdiction, RUNNER_JURISDICTION=jurisdiction, RUNNER_GPU_DEVICES=devices,
                   **RUNNER_TEST_SETTINGS, **(env or {}))
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen([sys.executable, "manage.py", "runner", "start"], cwd=ROOT, env=env,
                                            stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while " ready." not in self.log():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"The runner did not start:\n{self.log()[-3000:]}")
            time.sleep(0.2)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self):
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture
def start_runner(tmp_path):
    """Start runner processes for the test; each is stopped afterwards."""
    started = []

    def start(hostname, devices="0,1,2,3", **options):
        runner = Runner(hostname, devices, tmp_path, **options)
        started.append(runner)
        return runner

    yield start
    for runner in started:
        runner.stop()
