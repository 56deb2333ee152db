"""The witness, as its own process (``python -m audit.witness``), spoken to over HTTP with the
C2SP tlog-witness protocol: it co-signs a checkpoint only when it extends the last one it
co-signed, keeps that across restarts, and refuses a split view and a rollback with a reason.

The log here is an in-memory tree with its own P-256 key, signed as the platform signs its
checkpoints; the witness needs no database and imports no Django."""

import base64
import subprocess
import sys
import urllib.error
import urllib.request

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from audit import merkle
from audit.checkpoints import checkpoint_body, sign_note
from audit.witness import cosignature_time, load_public_key, main as witness_main

ORIGIN = "neocloud/audit-log"
ROOT_DIR = __import__("pathlib").Path(__file__).resolve().parent.parent


class Log:
    """A log that grows in memory and signs checkpoints with its key."""

    def __init__(self):
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.tree = merkle.MemoryTree()
        self.leaves: list[bytes] = []

    @property
    def public_pem(self) -> str:
        return self.key.public_key().public_bytes(serialization.Encoding.PEM,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo).decode()

    def grow(self, count: int, salt: bytes = b"") -> None:
        for _ in range(count):
            leaf = merkle.leaf_hash(salt + len(self.leaves).to_bytes(8, "big"))
            self.leaves.append(leaf)
            self.tree.append(leaf)

    def checkpoint(self, size: int | None = None, *, root: bytes | None = None, origin: str = ORIGIN) -> str:
        size = self.tree.size if size is None else size
        root = root if root is not None else self.tree.subtree.root(size)
        return sign_note(checkpoint_body(origin, size, root), name=origin, private_key=self.key)

    def proof(self, old: int, new: int) -> list[bytes]:
        return merkle.consistency_proof(old, new, self.tree.subtree) if 0 < old < new else []


def request_body(old: int, proof: list[bytes], note: str) -> str:
    return f"old {old}\n" + "".join(base64.b64encode(p).decode() + "\n" for p in proof) + "\n" + note


class WitnessProcess:
    def __init__(self, state, log_key_file):
        self.process = subprocess.Popen(
            [sys.executable, "-m", "audit.witness", "serve", "--state", str(state), "--listen", "127.0.0.1:0",
             "--log", f"{ORIGIN}={log_key_file}"], cwd=ROOT_DIR, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            text=True)
        line = self.process.stdout.readline()  # blocks until it listens (or exits)
        assert "listening on" in line, line
        self.url = line.rsplit(" ", 1)[1].strip()

    def add(self, old: int, proof: list[bytes], note: str) -> tuple[int, str, str]:
        request = urllib.request.Request(f"{self.url}/add-checkpoint", data=request_body(old, proof, note).encode(),
                                         method="POST")
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, response.headers["Content-Type"], response.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.headers["Content-Type"], error.read().decode()

    def stop(self):
        self.process.terminate()
        self.process.wait(timeout=30)


@pytest.fixture
def setup(tmp_path):
    log = Log()
    key_file = tmp_path / "log-key.pem"
    key_file.write_text(log.public_pem)
    state = tmp_path / "witness-state"
    assert witness_main(["init", "--state", str(state), "--name", "witness.example/w1"]) == 0
    from audit.witness import public_pem

    witness_key = load_public_key(public_pem(state))
    started = []

    def start():
        started.append(WitnessProcess(state, key_file))
        return started[-1]

    yield log, start, witness_key
    for process in started:
        if process.process.poll() is None:
            process.stop()


def cosigned(note: str, lines: str, witness_key) -> int | None:
    return cosignature_time(note + lines, name="witness.example/w1", public=witness_key)


def test_the_witness_cosigns_what_extends_what_it_cosigned_and_refuses_the_rest(setup):
    log, start, witness_key = setup
    witness = start()
    log.grow(5)
    first = log.checkpoint()
    status, _, lines = witness.add(0, [], first)
    assert status == 200 and cosigned(first, lines, witness_key)  # a valid, timestamped ML-DSA-44 cosignature
    log.grow(7)
    second = log.checkpoint()
    status, _, lines = witness.add(5, log.proof(5, 12), second)
    assert status == 200 and cosigned(second, lines, witness_key)
    assert cosigned(first, lines, witness_key) is None  # it covers the note it was given, nothing else

    status, content_type, body = witness.add(5, log.proof(5, 12), second)  # not what it last cosigned
    assert (status, content_type, body) == (409, "text/x.tlog.size", "12\n")
    assert witness.add(12, [], log.checkpoint(5))[0] == 400  # a smaller tree: a log never shrinks
    log.grow(4)
    bad_proof = [bytes(32)] + log.proof(12, 16)[1:]
    status, _, reason = witness.add(12, bad_proof, log.checkpoint())
    assert status == 422 and "does not verify" in reason
    other = Log()
    status, _, reason = witness.add(12, log.proof(12, 16), other.checkpoint(16, root=log.tree.subtree.root(16)))
    assert status == 403 and "not signed by the log's key" in reason
    assert witness.add(0, [], log.checkpoint(origin="elsewhere/log"))[0] == 404
    status, _, lines = witness.add(12, log.proof(12, 16), log.checkpoint())
    assert status == 200


def test_a_second_witness_process_refuses_a_split_view(setup):
    """Two processes on one state folder (a restart, a second replica): a checkpoint of a size
    already co-signed, with another root, is refused by whichever is asked."""
    log, start, witness_key = setup
    first = start()
    log.grow(8)
    assert first.add(0, [], log.checkpoint())[0] == 200
    second = start()
    forked = log.checkpoint(8, root=merkle.root_of([merkle.leaf_hash(b"forged")] + log.leaves[1:]))
    status, _, reason = second.add(8, [], forked)
    assert status == 422 and reason == "a split view: size 8 was co-signed with another root\n"
    status, _, lines = second.add(8, [], log.checkpoint())  # the same tree head again is co-signed again
    assert status == 200 and cosigned(log.checkpoint(), lines, witness_key)


def test_a_restarted_witness_keeps_its_state_and_refuses_a_rollback(setup):
    log, start, witness_key = setup
    witness = start()
    log.grow(10)
    assert witness.add(0, [], log.checkpoint())[0] == 200
    witness.stop()
    restarted = start()
    status, _, body = restarted.add(0, [], log.checkpoint(6))  # a log that lost four events
    assert (status, body) == (409, "10\n")
    status, _, reason = restarted.add(10, [], log.checkpoint(6))
    assert status == 400 and "a log never shrinks" in reason
    log.grow(2)
    assert restarted.add(10, log.proof(10, 12), log.checkpoint())[0] == 200


def test_the_witness_imports_no_django():
    probe = ("import sys, audit.witness; "
             "sys.exit(1 if any(name == 'django' or name.startswith('django.') for name in sys.modules) else 0)")
    assert subprocess.run([sys.executable, "-c", probe], cwd=ROOT_DIR, timeout=60).returncode == 0
