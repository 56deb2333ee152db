"""Verify a tenant audit export offline, trusting only a public key you obtained yourself.

    python -m audit.verify_export DIR --public-key FILE [--previous-checkpoint FILE]
                                      [--previous-tenant-head FILE]

Uses only the standard library and ``cryptography`` (no Django, no database). It checks:

- the checkpoint's and the tenant head's signatures, and that the head belongs to that
  checkpoint;
- every event: its canonical bytes hash to the event hash its sequencing entry names, the
  entry names this tenant and the stated position, and its inclusion proof leads to the signed
  root;
- the tenant's positions run without a gap from 0 (or from the earlier tenant head you kept)
  up to the count the signed head states, so an omitted event is detected;
- with an earlier checkpoint you kept: that this one is consistent with it.

Exit status 0 when everything verifies; 1 with one sentence naming the first problem.
"""

import argparse
import json
import sys
from pathlib import Path

from audit.checkpoints import NoteInvalid, parse_checkpoint, parse_tenant_head, verify_note
from audit.merkle import ProofError, leaf_hash, verify_consistency, verify_inclusion


class PackInvalid(Exception):
    pass


def sequencing_entry(event_hash: str, tenant: str, tenant_position: int) -> bytes:
    """RFC 8785 JSON of the sequencing entry: for its string and integer members, sorted keys
    and no whitespace are exactly what RFC 8785 prescribes."""
    return json.dumps({"event_hash": event_hash, "tenant": tenant, "tenant_position": tenant_position},
                      sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def verify_pack(folder: Path, public_pem: str, *, previous_checkpoint: str | None = None,
                previous_tenant_head: str | None = None) -> dict:
    """Return a summary if the pack verifies; raise PackInvalid naming the first problem."""
    try:
        checkpoint = parse_checkpoint(verify_note((folder / "checkpoint.txt").read_text(), public_pem))
        _, tenant, tenant_size, head_size, head_root = parse_tenant_head(
            verify_note((folder / "tenant-head.txt").read_text(), public_pem))
    except (OSError, NoteInvalid) as exc:
        raise PackInvalid(f"the checkpoint or tenant head does not verify: {exc}") from None
    if (head_size, head_root) != (checkpoint.size, checkpoint.root):
        raise PackInvalid("the tenant head belongs to another checkpoint")
    start = 0
    if previous_tenant_head is not None:
        try:
            _, kept_tenant, start, _, _ = parse_tenant_head(verify_note(previous_tenant_head, public_pem))
        except NoteInvalid as exc:
            raise PackInvalid(f"the earlier tenant head does not verify: {exc}") from None
        if kept_tenant != tenant:
            raise PackInvalid("the earlier tenant head is another tenant's")
    expected = start  # the next tenant position the pack must hold
    count = 0
    try:
        lines = (folder / "events.jsonl").read_text().splitlines()
    except OSError as exc:
        raise PackInvalid(f"events.jsonl cannot be read: {exc}") from None
    for number, line in enumerate(lines, start=1):
        _, tenant_position = proven_event(line, number, checkpoint, tenant)
        if tenant_position != expected:
            raise PackInvalid(f"tenant position {expected} is missing (line {number} has {tenant_position})")
        expected += 1
        count += 1
    if expected != tenant_size:
        raise PackInvalid(f"the signed tenant head counts {tenant_size} events; the pack ends at {expected}: "
                          "events are missing")
    if previous_checkpoint is not None:
        check_consistency((folder / "consistency.jsonl").read_text(), previous_checkpoint, public_pem, checkpoint)
    return {"tenant": tenant, "events": count, "tree_size": checkpoint.size, "tenant_size": tenant_size}


def proven_event(line: str, number: int, checkpoint, tenant: str) -> tuple[dict, int]:
    """Check one export line: its canonical bytes, sequencing entry and inclusion proof in
    ``checkpoint``; return the event's body and its tenant position."""
    try:
        event = json.loads(line)
        canonical, position = event["canonical"].encode(), int(event["position"])
        tenant_position, proof = int(event["tenant_position"]), [bytes.fromhex(h) for h in event["proof"]]
        body = json.loads(canonical)
        stated_tenant = body["tenant"]
    except (ValueError, KeyError, TypeError):
        raise PackInvalid(f"event line {number} is not a valid export record") from None
    if stated_tenant != tenant:
        raise PackInvalid(f"event line {number} belongs to tenant {stated_tenant!r}, not {tenant!r}")
    entry = sequencing_entry(leaf_hash(canonical).hex(), tenant, tenant_position)
    if event.get("leaf") is not None and event["leaf"].encode() != entry:
        raise PackInvalid(f"event line {number}: its sequencing entry does not match its canonical bytes")
    try:
        verify_inclusion(position, checkpoint.size, leaf_hash(entry), proof, checkpoint.root)
    except ProofError as exc:
        raise PackInvalid(f"event at sequence number {position} is not in the signed tree: {exc}") from None
    return body, tenant_position


def check_consistency(consistency_lines: str, previous_note: str, public_pem: str, checkpoint) -> None:
    """That ``checkpoint`` extends the earlier checkpoint a regulator kept, by the proof from its
    size among ``consistency_lines`` (JSON lines: from, proof)."""
    try:
        previous = parse_checkpoint(verify_note(previous_note, public_pem))
    except NoteInvalid as exc:
        raise PackInvalid(f"the earlier checkpoint does not verify: {exc}") from None
    if previous.size == checkpoint.size:
        if previous.root != checkpoint.root:
            raise PackInvalid("the earlier checkpoint has the same size but another root")
        return
    for line in consistency_lines.splitlines():
        record = json.loads(line)
        if int(record["from"]) == previous.size:
            try:
                verify_consistency(previous.size, checkpoint.size, previous.root, checkpoint.root,
                                   [bytes.fromhex(h) for h in record["proof"]])
            except ProofError as exc:
                raise PackInvalid(f"this checkpoint is not consistent with the earlier one: {exc}") from None
            return
    raise PackInvalid(f"the pack has no consistency proof from the earlier checkpoint's size {previous.size}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m audit.verify_export", description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--public-key", required=True, type=Path, help="the checkpoint key (PEM), kept out of band")
    parser.add_argument("--previous-checkpoint", type=Path, help="a checkpoint you kept from before")
    parser.add_argument("--previous-tenant-head", type=Path, help="the tenant head you kept from before")
    options = parser.parse_args(argv)
    try:
        pem = options.public_key.read_text()
        summary = verify_pack(
            options.folder, pem,
            previous_checkpoint=options.previous_checkpoint.read_text() if options.previous_checkpoint else None,
            previous_tenant_head=options.previous_tenant_head.read_text() if options.previous_tenant_head else None)
    except PackInvalid as exc:
        print(f"The export does not verify: {exc}.", file=sys.stderr)
        return 1
    except (OSError, ValueError) as exc:
        print(f"The export cannot be read: {exc}.", file=sys.stderr)
        return 1
    print(f"Verified: {summary['events']} event(s) of tenant {summary['tenant']}, complete up to its "
          f"{summary['tenant_size']} event(s) in the signed tree of size {summary['tree_size']}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
