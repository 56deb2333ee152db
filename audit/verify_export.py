"""Verify a tenant audit export offline, trusting only a public key you obtained yourself.

    python -m audit.verify_export DIR --public-key FILE [--public-key FILE ...]
                                      [--previous-checkpoint FILE] [--previous-tenant-head FILE]

Uses only the standard library and ``cryptography`` (no Django, no database). It checks:

- the checkpoint's and the tenant head's signatures, and that the head belongs to that
  checkpoint;
- every event: its canonical bytes hash to the event hash its sequencing entry names, the
  entry names this tenant and the stated position, and its inclusion proof leads to the signed
  root;
- the tenant's positions run without a gap from 0 (or from the earlier tenant head you kept)
  up to the count the signed head states, so an omitted event is detected;
- with an earlier checkpoint or tenant head you kept: that this checkpoint is consistent with
  the one it was signed with;
- every consistency proof in the pack leads from the root it names to the signed root;
- the manifest is signed by the given key, lists exactly the pack's other files with their
  SHA-256, and says (tenant, tree size, tenant size, event count) what was verified; so any
  edit to any file of the pack fails.

Give ``--public-key`` once per platform key you hold (``manage.py audit public-key --all``):
after a key rotation, an earlier checkpoint you kept is signed by an earlier key.

Exit status 0 when everything verifies; 1 with one sentence naming the first problem.
"""

import argparse
import hashlib
import json
import sys
from pathlib import Path

from audit.checkpoints import NoteInvalid, export_manifest_body, parse_checkpoint, parse_tenant_head, verify_note
from audit.merkle import ProofError, leaf_hash, verify_consistency, verify_inclusion
from audit.witness import read_witness_keys, witness_statement


class PackInvalid(Exception):
    pass


def sequencing_entry(event_hash: str, tenant: str, tenant_position: int) -> bytes:
    """RFC 8785 JSON of the sequencing entry: for its string and integer members, sorted keys
    and no whitespace are exactly what RFC 8785 prescribes."""
    return json.dumps({"event_hash": event_hash, "tenant": tenant, "tenant_position": tenant_position},
                      sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


EVENT_KEYS = {"position", "tenant_position", "canonical", "leaf", "proof"}
CONSISTENCY_KEYS = {"from", "from_root", "proof"}
MANIFEST_FILES = {"checkpoint.txt", "tenant-head.txt", "events.jsonl", "consistency.jsonl"}


def verified_note(note: str, public_pems: list[str]) -> str:
    """The note's body if one of the keys signed it; the last key's reason otherwise."""
    reason = "no public key was given"
    for pem in public_pems:
        try:
            return verify_note(note, pem)
        except NoteInvalid as exc:
            reason = str(exc)
    raise NoteInvalid(reason)


def verify_pack(folder: Path, public_pems: str | list[str], *, previous_checkpoint: str | None = None,
                previous_tenant_head: str | None = None) -> dict:
    """Return a summary if the pack verifies; raise PackInvalid naming the first problem."""
    pems = [public_pems] if isinstance(public_pems, str) else list(public_pems)
    checkpoint_note, head_note = _read(folder, "checkpoint.txt"), _read(folder, "tenant-head.txt")
    try:
        checkpoint = parse_checkpoint(verified_note(checkpoint_note, pems))
        _, tenant, tenant_size, head_size, head_root = parse_tenant_head(verified_note(head_note, pems))
    except NoteInvalid as exc:
        raise PackInvalid(f"the checkpoint or tenant head does not verify: {exc}") from None
    if (head_size, head_root) != (checkpoint.size, checkpoint.root):
        raise PackInvalid("the tenant head belongs to another checkpoint")
    consistency = consistency_records(_read(folder, "consistency.jsonl"), checkpoint)
    start = 0
    if previous_tenant_head is not None:
        try:
            _, kept_tenant, start, kept_size, kept_root = parse_tenant_head(verified_note(previous_tenant_head, pems))
        except NoteInvalid as exc:
            raise PackInvalid(f"the earlier tenant head does not verify: {exc}") from None
        if kept_tenant != tenant:
            raise PackInvalid("the earlier tenant head is another tenant's")
        check_consistency(consistency, kept_size, kept_root, checkpoint, what="the earlier tenant head's checkpoint")
    expected = start  # the next tenant position the pack must hold
    count = 0
    for number, line in enumerate(_read(folder, "events.jsonl").splitlines(), start=1):
        _, tenant_position = proven_event(line, number, checkpoint, tenant)
        if tenant_position != expected:
            raise PackInvalid(f"tenant position {expected} is missing (line {number} has {tenant_position})")
        expected += 1
        count += 1
    if expected != tenant_size:
        raise PackInvalid(f"the signed tenant head counts {tenant_size} events; the pack ends at {expected}: "
                          "events are missing")
    if previous_checkpoint is not None:
        previous = signed_checkpoint(previous_checkpoint, pems, what="the earlier checkpoint")
        check_consistency(consistency, previous.size, previous.root, checkpoint, what="the earlier checkpoint")
    summary = {"tenant": tenant, "events": count, "tree_size": checkpoint.size, "tenant_size": tenant_size}
    check_manifest(folder, summary, pems, checkpoint.origin)
    return summary


def signed_checkpoint(note: str, pems: list[str], *, what: str):
    """A checkpoint signed by one of the keys, parsed; PackInvalid naming ``what`` otherwise."""
    try:
        return parse_checkpoint(verified_note(note, pems))
    except NoteInvalid as exc:
        raise PackInvalid(f"{what} does not verify: {exc}") from None


def _read(folder: Path, name: str) -> str:
    try:
        return (folder / name).read_text()
    except OSError as exc:
        raise PackInvalid(f"{name} cannot be read: {exc.strerror or exc}") from None
    except UnicodeError:
        raise PackInvalid(f"{name} is not UTF-8 text") from None


def check_manifest(folder: Path, summary: dict, pems: list[str], origin: str) -> None:
    """The manifest is signed, lists exactly the other files with their digests, and states what
    was verified."""
    try:
        manifest_bytes = (folder / "manifest.json").read_bytes()
    except OSError as exc:
        raise PackInvalid(f"manifest.json cannot be read: {exc.strerror or exc}") from None
    try:
        signed = verified_note(_read(folder, "manifest-signature.txt"), pems)
    except NoteInvalid as exc:
        raise PackInvalid(f"the manifest's signature does not verify: {exc}") from None
    if signed != export_manifest_body(origin, manifest_bytes):
        raise PackInvalid("manifest-signature.txt signs another manifest than manifest.json")
    try:
        manifest = json.loads(manifest_bytes)
        listed = manifest["files"]
        stated = {key: manifest[key] for key in summary}
    except (ValueError, KeyError, TypeError):
        raise PackInvalid("manifest.json is not a valid export manifest") from None
    if not isinstance(listed, dict) or set(listed) != MANIFEST_FILES:
        raise PackInvalid("manifest.json does not list exactly the export's files")
    present = {path.name for path in folder.iterdir()} - {"manifest.json", "manifest-signature.txt"}
    if present != MANIFEST_FILES:
        extra = ", ".join(sorted(present - MANIFEST_FILES))
        raise PackInvalid(f"the pack holds files its manifest does not list: {extra}" if extra
                          else "a file of the pack is missing")
    for name in sorted(MANIFEST_FILES):
        if hashlib.sha256((folder / name).read_bytes()).hexdigest() != listed[name]:
            raise PackInvalid(f"{name} does not match its digest in manifest.json")
    if stated != summary:
        raise PackInvalid("manifest.json states another tenant, size or count than the signed files show")


def proven_event(line: str, number: int, checkpoint, tenant: str) -> tuple[dict, int]:
    """Check one export line: its canonical bytes, sequencing entry and inclusion proof in
    ``checkpoint``; return the event's body and its tenant position."""
    try:
        event = json.loads(line)
        if set(event) != EVENT_KEYS:
            raise KeyError
        canonical, position = event["canonical"].encode(), int(event["position"])
        tenant_position, proof = int(event["tenant_position"]), [bytes.fromhex(h) for h in event["proof"]]
        body = json.loads(canonical)
        stated_tenant = body["tenant"]
    except (ValueError, KeyError, TypeError):
        raise PackInvalid(f"event line {number} is not a valid export record") from None
    if stated_tenant != tenant:
        raise PackInvalid(f"event line {number} belongs to tenant {stated_tenant!r}, not {tenant!r}")
    entry = sequencing_entry(leaf_hash(canonical).hex(), tenant, tenant_position)
    if event["leaf"] != entry.decode():
        raise PackInvalid(f"event line {number}: its sequencing entry does not match its canonical bytes")
    try:
        verify_inclusion(position, checkpoint.size, leaf_hash(entry), proof, checkpoint.root)
    except ProofError as exc:
        raise PackInvalid(f"event at sequence number {position} is not in the signed tree: {exc}") from None
    return body, tenant_position


def consistency_records(text: str, checkpoint) -> dict[int, list[bytes]]:
    """The pack's consistency proofs by earlier size, each checked to lead from the root it names
    to the signed root: {size: proof}."""
    records = {}
    for number, line in enumerate(text.splitlines(), start=1):
        try:
            record = json.loads(line)
            if set(record) != CONSISTENCY_KEYS:
                raise KeyError
            size, root = int(record["from"]), bytes.fromhex(record["from_root"])
            proof = [bytes.fromhex(h) for h in record["proof"]]
            verify_consistency(size, checkpoint.size, root, checkpoint.root, proof)
        except (ValueError, KeyError, TypeError, AttributeError):
            raise PackInvalid(f"consistency line {number} is not a valid consistency record") from None
        except ProofError as exc:
            raise PackInvalid(f"consistency line {number} does not lead to the signed root: {exc}") from None
        records[size] = proof
    return records


def check_consistency(records: dict, previous_size: int, previous_root: bytes, checkpoint, *, what: str) -> None:
    """That ``checkpoint`` extends the tree of ``previous_size`` with ``previous_root``, which
    the regulator kept (from a checkpoint or a tenant head)."""
    if previous_size == checkpoint.size:
        if previous_root != checkpoint.root:
            raise PackInvalid(f"{what} has this checkpoint's size but another root")
        return
    if previous_size > checkpoint.size:
        raise PackInvalid(f"the log shrank: {what} covers {previous_size} events, and this pack's checkpoint only "
                          f"{checkpoint.size}; a log only grows, so events were removed (or the pack is older than "
                          f"{what})")
    if previous_size not in records:
        raise PackInvalid(f"the pack has no consistency proof from {what}'s size {previous_size}")
    try:
        verify_consistency(previous_size, checkpoint.size, previous_root, checkpoint.root, records[previous_size])
    except ProofError as exc:
        raise PackInvalid(f"this checkpoint is not consistent with {what}: {exc}") from None


class InputUnreadable(Exception):
    """A file given on the command line cannot be read; the message is one sentence."""


def read_input(path: Path | None, what: str) -> str | None:
    if path is None:
        return None
    try:
        return path.read_text()
    except OSError as exc:
        raise InputUnreadable(f"The {what} {path} cannot be read: {exc.strerror or exc}.") from None
    except UnicodeError:
        raise InputUnreadable(f"The {what} {path} is not text (a PEM key or a signed note is).") from None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m audit.verify_export", description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--public-key", required=True, type=Path, action="append",
                        help="a platform checkpoint key (PEM), kept out of band; repeat for earlier keys")
    parser.add_argument("--previous-checkpoint", type=Path, help="a checkpoint you kept from before")
    parser.add_argument("--previous-tenant-head", type=Path, help="the tenant head you kept from before")
    add_witness_options(parser)
    options = parser.parse_args(argv)
    try:
        if not options.folder.is_dir():
            raise InputUnreadable(f"The export folder {options.folder} does not exist or is not a folder.")
        pems = [read_input(path, "public key") for path in options.public_key]
        witness_keys = witness_keys_of(options.witness_key)
        summary = verify_pack(
            options.folder, pems,
            previous_checkpoint=read_input(options.previous_checkpoint, "earlier checkpoint"),
            previous_tenant_head=read_input(options.previous_tenant_head, "earlier tenant head"))
        witnessed = witnessed_or_refused(_read(options.folder, "checkpoint.txt"), witness_keys,
                                         required=options.require_witness)
    except PackInvalid as exc:
        print(f"The export does not verify: {exc}.", file=sys.stderr)
        return 1
    except InputUnreadable as exc:
        print(exc, file=sys.stderr)
        return 1
    print(f"Verified: {summary['events']} event(s) of tenant {summary['tenant']}, complete up to its "
          f"{summary['tenant_size']} event(s) in the signed tree of size {summary['tree_size']}; {witnessed}.")
    return 0


def add_witness_options(parser) -> None:
    parser.add_argument("--witness-key", action="append", default=[], metavar="NAME=PUBLIC_KEY_FILE",
                        help="a witness whose cosignature on the pack's checkpoint is checked; repeatable")
    parser.add_argument("--require-witness", action="store_true",
                        help="fail unless every witness given co-signed the pack's checkpoint")


def witness_keys_of(values: list[str]) -> dict[str, str]:
    """``--witness-key`` options as name -> PEM; InputUnreadable with one sentence otherwise."""
    try:
        return read_witness_keys(values)
    except ValueError as exc:
        raise InputUnreadable(as_sentence(str(exc))) from None


def as_sentence(fragment: str) -> str:
    """A reason written to follow a colon ("the witness key file … cannot be read") as a sentence of its own."""
    return f"{fragment[:1].upper()}{fragment[1:]}."


def witnessed_or_refused(note: str, witness_keys: dict[str, str], *, required: bool) -> str:
    """What to print of the pack's checkpoint's cosignatures; PackInvalid when one is required
    and missing."""
    sentence, ok = witness_statement(note, witness_keys)
    if required and not ok:
        raise PackInvalid(sentence)
    return sentence


if __name__ == "__main__":
    sys.exit(main())
