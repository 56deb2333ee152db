"""An independent witness for the audit log: ``python -m audit.witness``.

A witness co-signs a checkpoint only when a consistency proof shows it extends the last
checkpoint the witness co-signed for that log, then keeps it. Anyone who later rewrites the log
(or shows one party a different history than another) cannot get a cosignature for it, so a
verifier that demands the witness's cosignature catches it. Run one at another site, or at a
regulator: it needs only the standard library and ``cryptography`` (it imports no Django),
its own key and its own state folder.

It speaks the C2SP tlog-witness protocol (``POST /add-checkpoint``: an ``old <size>`` line, the
consistency proof in base64 lines, a blank line, the signed checkpoint) and answers with C2SP
tlog-cosignature lines (ML-DSA-44, timestamped). docs/decisions.md records where it departs.

    python -m audit.witness init --state DIR --name witness.example/w1
    python -m audit.witness public-key --state DIR
    python -m audit.witness serve --state DIR --listen 127.0.0.1:7380 --log ORIGIN=PLATFORM_KEY.pem
"""

import argparse
import base64
import fcntl
import hashlib
import json
import os
import struct
import sys
import threading
import time
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.mldsa import MLDSA44PrivateKey, MLDSA44PublicKey

from audit.checkpoints import SIGNATURE_PREFIX, NoteInvalid, parse_checkpoint, verify_note
from audit.merkle import EMPTY_ROOT, ProofError, verify_consistency

MAX_PROOF_LINES = 63  # the protocol's bound
MAX_BODY = 64 * 1024
SIZE_CONTENT_TYPE = "text/x.tlog.size"


# Cosignatures (C2SP tlog-cosignature, ML-DSA-44, subtree/v1 over the whole tree) ----------

KEY_ID_ALGORITHM = b"\x06"  # ML-DSA-44
SIGNATURE_SIZE = 2420


def key_id(name: str, public: MLDSA44PublicKey) -> bytes:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(name.encode() + b"\n" + KEY_ID_ALGORITHM + raw).digest()[:4]


def cosigned_message(*, name: str, timestamp: int, origin: str, size: int, root: bytes) -> bytes:
    """The spec's cosigned_message for a checkpoint: the subtree [0, size) with its root."""
    def short(text: str) -> bytes:
        data = text.encode()
        if not 0 < len(data) < 256:
            raise ValueError("a cosigner name and a log origin are 1 to 255 bytes")
        return bytes([len(data)]) + data
    return (b"subtree/v1\n\x00" + short(name) + struct.pack(">Q", timestamp) + short(origin)
            + struct.pack(">QQ", 0, size) + root)


def cosign(body: str, *, name: str, key: MLDSA44PrivateKey, timestamp: int) -> str:
    """The signature line a witness adds to a checkpoint whose note body is ``body``."""
    checkpoint = parse_checkpoint(body)
    signature = key.sign(cosigned_message(name=name, timestamp=timestamp, origin=checkpoint.origin,
                                          size=checkpoint.size, root=checkpoint.root))
    blob = key_id(name, key.public_key()) + struct.pack(">Q", timestamp) + signature
    return f"{SIGNATURE_PREFIX}{name} {base64.b64encode(blob).decode()}\n"


def cosignature_time(note: str, *, name: str, public: MLDSA44PublicKey) -> int | None:
    """When the witness ``name`` co-signed ``note`` (a checkpoint with signature lines), or None
    when no line of it is that witness's valid cosignature."""
    body, _, signatures = note.partition("\n\n")
    try:
        checkpoint = parse_checkpoint(body + "\n")
    except NoteInvalid:
        return None
    wanted = key_id(name, public)
    for line in signatures.splitlines():
        if not line.startswith(f"{SIGNATURE_PREFIX}{name} "):
            continue
        try:
            blob = base64.b64decode(line.rsplit(" ", 1)[1], validate=True)
        except ValueError:
            continue
        if len(blob) != 4 + 8 + SIGNATURE_SIZE or blob[:4] != wanted:
            continue
        timestamp = struct.unpack(">Q", blob[4:12])[0]
        message = cosigned_message(name=name, timestamp=timestamp, origin=checkpoint.origin, size=checkpoint.size,
                                   root=checkpoint.root)
        try:
            public.verify(blob[12:], message)
        except InvalidSignature:
            continue
        if timestamp:
            return timestamp
    return None


def load_public_key(pem: str) -> MLDSA44PublicKey:
    key = serialization.load_pem_public_key(pem.encode())
    if not isinstance(key, MLDSA44PublicKey):
        raise ValueError("a witness key is an ML-DSA-44 public key")
    return key


# What a verifier says about witnesses -------------------------------------------------------


def named_files(values: list[str], *, option: str, form: str, what: str) -> dict[str, tuple[Path, str]]:
    """``NAME=FILE`` options (written as ``form``) as name -> (path, text); ValueError with one
    sentence otherwise."""
    found = {}
    for value in values:
        name, separator, path = value.partition("=")
        if not separator or not name:
            raise ValueError(f"{option} takes {form}, not {value!r}")
        try:
            found[name] = Path(path), Path(path).read_text()
        except (OSError, UnicodeError) as exc:
            raise ValueError(f"the {what} file {path} cannot be read: {getattr(exc, 'strerror', None) or exc}") \
                from None
    return found


def read_witness_keys(values: list[str]) -> dict[str, str]:
    """``--witness-key NAME=PUBLIC_KEY_FILE`` options as name -> PEM; ValueError with one sentence otherwise."""
    keys = {}
    given = named_files(values, option="--witness-key", form="NAME=PUBLIC_KEY_FILE", what="witness key")
    for name, (path, pem) in given.items():
        try:
            load_public_key(pem)
        except ValueError:
            raise ValueError(f"the witness key file {path} is not an ML-DSA-44 public key in PEM") from None
        keys[name] = pem
    return keys


def witness_statement(note: str, witness_keys: dict[str, str]) -> tuple[str, bool]:
    """What to say of a checkpoint note's cosignatures under ``witness_keys``, and whether every
    witness given co-signed it (False without any key: nothing then says it is witnessed)."""
    try:
        size = parse_checkpoint(note.partition("\n\n")[0] + "\n").size
    except NoteInvalid:
        return "the checkpoint is not witnessed (it is not a checkpoint)", False
    by = [name for name, pem in sorted(witness_keys.items())
          if cosignature_time(note, name=name, public=load_public_key(pem)) is not None]
    missing = sorted(set(witness_keys) - set(by))
    if not witness_keys:
        return f"checkpoint {size} is not witnessed (no witness key given)", False
    if not by:
        return f"checkpoint {size} is not witnessed: no cosignature from {', '.join(missing)}", False
    text = f"checkpoint {size} is witnessed by {', '.join(by)}"
    return text + (f"; not by {', '.join(missing)}" if missing else ""), not missing


# The witness's state: its key, and per log the last checkpoint it co-signed ----------------


class Refused(Exception):
    def __init__(self, status: int, reason: str, *, body: str | None = None, content_type: str = "text/plain"):
        super().__init__(reason)
        self.status, self.reason, self.content_type = status, reason, content_type
        self.body = body if body is not None else reason + "\n"


class Witness:
    """One witness: a name, a key, the logs it follows (origin -> the log's public key PEM)
    and a state folder that survives restarts."""

    def __init__(self, state: Path, logs: dict[str, str]):
        self.state = Path(state)
        self.name = witness_name(self.state)
        self.key = serialization.load_pem_private_key((self.state / "witness-key.pem").read_bytes(), password=None)
        self.logs = logs
        self.lock = threading.Lock()  # check and persist atomically, within this process ...

    @contextmanager
    def _locked(self):
        with self.lock, open(self.state / "witness.lock", "a") as handle:  # ... and across processes
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _log_file(self, origin: str) -> Path:
        return self.state / "logs" / (hashlib.sha256(origin.encode()).hexdigest() + ".json")

    def latest(self, origin: str) -> dict:
        """The last checkpoint co-signed for ``origin``: size, root (base64) and note; size 0 before any."""
        path = self._log_file(origin)
        if not path.exists():
            return {"origin": origin, "size": 0, "root": base64.b64encode(EMPTY_ROOT).decode(), "note": ""}
        return json.loads(path.read_text())

    def _keep(self, record: dict) -> None:
        path = self._log_file(record["origin"])
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(".tmp")
        with open(temporary, "w") as handle:
            handle.write(json.dumps(record, sort_keys=True))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)  # persisted before the cosignature leaves
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)

    def add_checkpoint(self, request: str) -> str:
        """The protocol's add-checkpoint: the cosignature lines, or Refused with a status and a reason."""
        old_size, proof, note = parse_request(request)
        body, _, _ = note.partition("\n\n")
        origin = body.split("\n", 1)[0]
        if origin not in self.logs:
            raise Refused(404, f"this witness does not follow the log {origin}")
        try:
            checkpoint = parse_checkpoint(verify_note(note, self.logs[origin]))
        except NoteInvalid as exc:
            raise Refused(403, f"the checkpoint is not signed by the log's key: {exc}") from None
        if old_size > checkpoint.size:
            raise Refused(400, f"the old size {old_size} is larger than the checkpoint's size {checkpoint.size}: "
                               "a log never shrinks")
        if checkpoint.size == 0 and checkpoint.root != EMPTY_ROOT:
            raise Refused(422, "a checkpoint of size 0 has the empty tree's root")
        with self._locked():
            latest = self.latest(origin)
            if old_size != latest["size"]:
                raise Refused(409, f"the last checkpoint co-signed for {origin} has size {latest['size']}, not "
                                   f"{old_size}", body=f"{latest['size']}\n", content_type=SIZE_CONTENT_TYPE)
            latest_root = base64.b64decode(latest["root"])
            if old_size == checkpoint.size:
                if proof:
                    raise Refused(422, "a checkpoint of the size already co-signed takes no consistency proof")
                if checkpoint.root != latest_root:
                    raise Refused(422, f"a split view: size {checkpoint.size} was co-signed with another root")
            elif old_size == 0:
                if proof:
                    raise Refused(422, "from size 0 the consistency proof is empty")
            else:
                try:
                    verify_consistency(old_size, checkpoint.size, latest_root, checkpoint.root, proof)
                except ProofError as exc:
                    raise Refused(422, f"the consistency proof from size {old_size} does not verify: {exc}") from None
            self._keep({"origin": origin, "size": checkpoint.size,
                        "root": base64.b64encode(checkpoint.root).decode(), "note": note})
        return cosign(body + "\n", name=self.name, key=self.key, timestamp=int(time.time()))


def parse_request(request: str) -> tuple[int, list[bytes], str]:
    head, separator, note = request.partition("\n\n")
    lines = head.split("\n")
    if not separator or not lines[0].startswith("old "):
        raise Refused(400, "the body is an old size line, proof lines, a blank line and the checkpoint")
    size = lines[0].removeprefix("old ")
    if not size.isdigit() or (size.startswith("0") and size != "0"):
        raise Refused(400, "the old size is a decimal with no leading zeroes")
    if len(lines) - 1 > MAX_PROOF_LINES:
        raise Refused(400, f"a consistency proof has at most {MAX_PROOF_LINES} lines")
    try:
        proof = [base64.b64decode(line, validate=True) for line in lines[1:]]
    except ValueError:
        raise Refused(400, "each proof line is one base64 hash") from None
    if any(len(node) != 32 for node in proof):
        raise Refused(400, "each proof line is one 32-byte hash")
    return int(size), proof, note


# HTTP ---------------------------------------------------------------------------------------


def handler_for(witness: Witness):
    class Handler(BaseHTTPRequestHandler):
        server_version = "neocloud-witness"

        def do_POST(self):
            if self.path.rstrip("/") != "/add-checkpoint":
                return self._answer(404, "text/plain", "no such endpoint\n")
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY:
                return self._answer(413, "text/plain", "the request is too large\n")
            try:
                lines = witness.add_checkpoint(self.rfile.read(length).decode())
            except UnicodeDecodeError:
                return self._answer(400, "text/plain", "the body is UTF-8 text\n")
            except Refused as refused:
                return self._answer(refused.status, refused.content_type, refused.body)
            self._answer(200, "text/plain; charset=utf-8", lines)

        def _answer(self, status: int, content_type: str, text: str):
            payload = text.encode()
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format, *args):  # one line per request on stderr
            sys.stderr.write(f"witness: {self.command} {self.path} {args[1] if len(args) > 1 else ''}\n")

    return Handler


# The command line ---------------------------------------------------------------------------


def _init(state: Path, name: str) -> str:
    state.mkdir(parents=True, exist_ok=True)
    key_file = state / "witness-key.pem"
    if key_file.exists():
        return f"The witness in {state} already has a key; its name is {witness_name(state)}."
    key = MLDSA44PrivateKey.generate()
    descriptor = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    (state / "witness.json").write_text(json.dumps({"name": name}))
    return f"Created witness {name} in {state}."


def witness_name(state: Path) -> str:
    return json.loads((state / "witness.json").read_text())["name"]


def public_pem(state: Path) -> str:
    key = serialization.load_pem_private_key((state / "witness-key.pem").read_bytes(), password=None)
    return key.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m audit.witness", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    init = sub.add_parser("init", help="Create the witness's key and name in its state folder.")
    init.add_argument("--state", type=Path, required=True)
    init.add_argument("--name", required=True, help="A schema-less URL naming the witness, e.g. witness.example/w1")
    key = sub.add_parser("public-key", help="Print the witness's public key (PEM) and name.")
    key.add_argument("--state", type=Path, required=True)
    serve = sub.add_parser("serve", help="Answer add-checkpoint requests.")
    serve.add_argument("--state", type=Path, required=True)
    serve.add_argument("--listen", default="127.0.0.1:7380", help="HOST:PORT (port 0 picks a free one)")
    serve.add_argument("--log", action="append", default=[], required=True, metavar="ORIGIN=PUBLIC_KEY_FILE",
                       help="A log this witness follows and the public key its checkpoints are signed with")
    options = parser.parse_args(argv)
    try:
        if options.command == "init":
            print(_init(options.state, options.name))
            return 0
        if options.command == "public-key":
            print(f"# witness {witness_name(options.state)}\n{public_pem(options.state)}", end="")
            return 0
        logs = named_files(options.log, option="--log", form="ORIGIN=PUBLIC_KEY_FILE", what="log key")
        witness = Witness(options.state, {origin: pem for origin, (_, pem) in logs.items()})
        host, _, port = options.listen.rpartition(":")
        server = ThreadingHTTPServer((host or "127.0.0.1", int(port)), handler_for(witness))
    except (OSError, ValueError, KeyError) as exc:
        print(f"The witness cannot start: {exc}.", file=sys.stderr)
        return 1
    print(f"Witness {witness.name} listening on http://{server.server_address[0]}:{server.server_address[1]}",
          flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
