"""The append-only audit core: recording, sequencing, database-enforced immutability, verify."""

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import DatabaseError, connections, transaction
from django.utils import timezone

from audit.appendonly import triggers_suspended
from audit.hashing import canonical_json, leaf_hash
from audit.log import Actor, Target, denials_recorded, record, record_denial
from audit.models import AuditEvent, AuditLeaf
from audit.sequencer import sequence_pending

pytestmark = pytest.mark.embedded

ALICE = Actor(type="user", id="1", name="alice")


def record_events(count, tenant="acme-bank"):
    with transaction.atomic():
        for index in range(count):
            record(action="membership.grant", actor=ALICE, tenant=tenant, target=Target("membership", f"u{index}"),
                   data={"role": "developer", "index": index})


def owner_events():
    # The session's worker may sign a checkpoint (and record it) once these events are sequenced.
    return AuditEvent.objects.using("owner").exclude(action="audit.checkpoint").order_by("id")


def test_event_stores_its_rfc8785_json_and_rfc6962_leaf_hash(live_db):
    record_events(1)
    event = owner_events().get()
    body = canonical_json(event.canonical_body())
    assert event.canonical == body.decode()
    assert event.event_hash == leaf_hash(body).hex()
    # RFC 8785: keys sorted, no whitespace.
    assert event.canonical.startswith('{"action":"membership.grant","actor":{"id":"1"')


def test_leaf_hash_follows_rfc6962():
    import hashlib

    assert leaf_hash(b"") == hashlib.sha256(b"\x00").digest()
    assert leaf_hash(b"abc") == hashlib.sha256(b"\x00abc").digest()


def test_record_refuses_an_uncatalogued_action(live_db):
    with pytest.raises(ValueError, match="not in audit.catalog"), transaction.atomic():
        record(action="something.made_up", actor=ALICE)


def test_record_refuses_to_run_outside_the_changes_transaction(live_db):
    with pytest.raises(RuntimeError, match="inside the transaction"):
        record(action="tenant.create", actor=ALICE)


def test_event_rolls_back_with_the_change_it_records(live_db):
    with pytest.raises(ZeroDivisionError), transaction.atomic():
        record(action="tenant.create", actor=ALICE, tenant="acme-bank")
        1 / 0
    assert not owner_events().exists()


def test_denial_survives_the_rollback_of_the_work_it_refused(live_db):
    with denials_recorded():
        with pytest.raises(PermissionError), transaction.atomic():
            record(action="tenant.create", actor=ALICE, tenant="acme-bank")
            record_denial(actor=ALICE, tenant="acme-bank", target=Target("route", "/x"), data={"status": 403})
            raise PermissionError("refused")
    events = list(owner_events())
    assert [(e.action, e.outcome) for e in events] == [("request.denied", "denied")]


def test_sequencer_gives_gapless_global_and_per_tenant_positions(live_db):
    record_events(3, tenant="acme-bank")
    record_events(2, tenant="st-mary-hospital")
    record_events(1, tenant="acme-bank")
    assert sequence_pending(batch=4) == 4
    assert sequence_pending(batch=4) == 2
    assert sequence_pending(batch=4) == 0
    leaves = list(AuditLeaf.objects.using("owner").order_by("position"))
    assert [leaf.position for leaf in leaves] == list(range(6))
    assert [leaf.tenant_position for leaf in leaves if leaf.tenant == "acme-bank"] == [0, 1, 2, 3]
    assert [leaf.tenant_position for leaf in leaves if leaf.tenant == "st-mary-hospital"] == [0, 1]
    first = leaves[0]
    assert first.leaf == canonical_json(
        {"event_hash": first.event.event_hash, "tenant": "acme-bank", "tenant_position": 0}).decode()
    assert first.leaf_hash == leaf_hash(first.leaf.encode()).hex()


def test_sequencer_takes_ids_with_gaps(live_db):
    # A rolled-back insert consumes an id from the sequence; positions stay gapless anyway.
    record_events(1)
    with pytest.raises(ZeroDivisionError), transaction.atomic():
        record(action="tenant.create", actor=ALICE)
        1 / 0
    record_events(1)
    sequence_pending()
    assert list(AuditLeaf.objects.using("owner").values_list("position", flat=True)) == [0, 1]


@pytest.mark.parametrize("statement", [
    "UPDATE audit_auditevent SET action = 'tenant.create'",
    "DELETE FROM audit_auditevent",
    "UPDATE audit_auditleaf SET tenant_position = 7",
    "DELETE FROM audit_auditleaf",
])
def test_raw_sql_cannot_change_an_audit_row_even_as_the_owner(live_db, statement):
    record_events(2)
    sequence_pending()
    before = list(owner_events().values_list("canonical", flat=True))
    owner = connections["owner"]
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic(using="owner"):
        with owner.cursor() as cursor:
            cursor.execute(statement)
    assert list(owner_events().values_list("canonical", flat=True)) == before
    assert AuditLeaf.objects.using("owner").count() == 2


def test_verify_passes_on_an_intact_log(live_db, capsys):
    record_events(5)
    sequence_pending()
    call_command("audit", "verify")
    assert capsys.readouterr().out == ("Audit log intact: 5 sequenced event(s), 0 awaiting the sequencer; "
                                       "no checkpoint yet, so not witnessed.\n")


def _tamper(sql, params):
    owner = connections["owner"]
    with transaction.atomic(using="owner"), triggers_suspended(owner):
        with owner.cursor() as cursor:
            cursor.execute(sql, params)


def test_verify_names_the_first_tampered_sequence_number(live_db):
    record_events(6)
    sequence_pending()
    victim = AuditLeaf.objects.using("owner").get(position=3).event_id
    _tamper("UPDATE audit_auditevent SET data = %s WHERE id = %s", ['{"role": "tenant_admin"}', victim])
    with pytest.raises(CommandError, match="sequence number 3: event .* no longer matches"):
        call_command("audit", "verify")


def test_verify_accepts_numbers_the_database_writes_back_in_another_form(live_db, capsys):
    # jsonb hands back the float 1e+21 as the integer 1000000000000000000000, -0.0 as 0.0 and
    # 1e-07 as 0.0000001: the same JSON numbers, so an intact log must still verify.
    numbers = {"big": 1e21, "float_past_2_53": 1.2345678901234568e20, "tiny": 1e-7, "third": 0.1, "negative_zero": -0.0,
               "largest_safe": 2**53 - 1, "whole_float": 3.0, "nested": [{"x": 1e300}, -1.5e-300]}
    with transaction.atomic():
        record(action="membership.grant", actor=ALICE, tenant="acme-bank", target=Target("membership", "u1"),
               data=numbers)
    sequence_pending()
    call_command("audit", "verify")
    assert "Audit log intact: 1 sequenced event(s)" in capsys.readouterr().out


@pytest.mark.parametrize("data", ['{"role": "developer", "index": "2"}', '{"role": "developer", "index": 2.5}',
                                  '{"role": "developer", "index": true, "x": 1}', '{"role": "developer", "index": 1e400}',
                                  '{"role": "developer", "index": 12345678901234567890}'])
def test_verify_refuses_a_column_that_only_looks_like_the_hashed_value(live_db, data):
    # The event's data was {"role": "developer", "index": 2}: a string, a float, a boolean, a
    # number no JSON double holds, an integer past 2**53 are all tampering, never "the same".
    record_events(4)
    sequence_pending()
    victim = AuditLeaf.objects.using("owner").get(position=2).event_id
    _tamper("UPDATE audit_auditevent SET data = %s WHERE id = %s", [data, victim])
    with pytest.raises(CommandError, match="sequence number 2: event .* no longer matches"):
        call_command("audit", "verify")


def test_a_column_no_event_could_hold_is_reported_not_raised():
    # SQLite keeps whatever text it is given: a data column rewritten with a lone surrogate as
    # a key cannot be serialised at all, and verify must name the event rather than crash.
    from audit.models import canonical_body
    from audit.verify import content_problem

    body = canonical_body("7f3c8f0e-3b1a-4c55-9d4e-2f5d1c2b3a4d", timezone.now(), "user", "1", "alice", "", "acme-bank",
                          "membership.grant", "success", "membership", "u1", {"role": "developer"})
    canonical = canonical_json(body).decode()
    assert content_problem(9, canonical, leaf_hash(canonical.encode()).hex(), body) is None
    tampered = {**body, "data": {"\ud800": 1}}
    assert content_problem(9, canonical, leaf_hash(canonical.encode()).hex(), tampered) == \
        "event 9 no longer matches its stored canonical JSON"


def test_verify_catches_an_edit_that_also_rewrote_the_stored_hash(live_db):
    record_events(3)
    sequence_pending()
    event = AuditLeaf.objects.using("owner").get(position=1).event
    event.actor_name = "mallory"
    event.seal()
    _tamper("UPDATE audit_auditevent SET actor_name = %s, canonical = %s, event_hash = %s WHERE id = %s",
            [event.actor_name, event.canonical, event.event_hash, event.id])
    with pytest.raises(CommandError, match="sequence number 1: the leaf does not match its event"):
        call_command("audit", "verify")


def test_verify_finds_a_gap_in_the_sequence(live_db):
    record_events(4)
    sequence_pending()
    _tamper("DELETE FROM audit_auditleaf WHERE position = %s", [2])
    with pytest.raises(CommandError, match="sequence number 2: gap in the sequence"):
        call_command("audit", "verify")


def test_verify_fails_on_an_event_left_unsequenced_past_the_bound(live_db):
    record_events(2)
    sequence_pending()
    record_events(1)
    call_command("audit", "verify", "--max-unsequenced", "60")  # fresh: within the bound
    late = owner_events().last()
    with pytest.raises(CommandError, match=f"unsequenced event {late.id}: left unsequenced for more than 0 seconds"):
        call_command("audit", "verify", "--max-unsequenced", "0")


def test_verify_exits_non_zero_with_one_sentence(live_db):
    import os
    import subprocess
    import sys

    record_events(2)
    sequence_pending()
    _tamper("UPDATE audit_auditevent SET tenant = %s WHERE id = %s", ["other", owner_events().first().id])
    for alias in connections:
        connections[alias].close()
    result = subprocess.run([sys.executable, "manage.py", "audit", "verify"], capture_output=True, text=True,
                            env=dict(os.environ), cwd=os.path.dirname(os.path.dirname(__file__)))
    assert result.returncode != 0
    assert result.stderr.strip().startswith("CommandError: Audit log is not intact at sequence number 0")
    assert "Traceback" not in result.stderr


def test_verify_catches_an_edit_made_with_the_trigger_dropped_and_restored(live_db):
    from audit.appendonly import create_statements, drop_statements

    record_events(4)
    sequence_pending()
    owner = connections["owner"]
    victim = AuditLeaf.objects.using("owner").get(position=2).event_id
    with transaction.atomic(using="owner"), owner.cursor() as cursor:
        for statement in drop_statements(owner.vendor, "audit_auditevent"):
            cursor.execute(statement)
        cursor.execute("UPDATE audit_auditevent SET actor_name = %s WHERE id = %s", ["mallory", victim])
        for statement in create_statements(owner.vendor, "audit_auditevent"):
            cursor.execute(statement)
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic(using="owner"):
        with owner.cursor() as cursor:  # the trigger is back
            cursor.execute("UPDATE audit_auditevent SET actor_name = 'x'")
    with pytest.raises(CommandError, match="at sequence number 2: "):
        call_command("audit", "verify")


@pytest.mark.parametrize("tenant, position", [("", 0), ("acme-bank", 7), ("st-mary-hospital", 123456789)])
def test_the_standalone_sequencing_entry_is_the_models_rfc8785_entry(tenant, position):
    from audit.models import AuditLeaf
    from audit.verify_export import sequencing_entry

    event_hash = "0f" * 32
    assert sequencing_entry(event_hash, tenant, position) == AuditLeaf.leaf_body(
        event_hash=event_hash, tenant=tenant, tenant_position=position)


def test_the_sequencer_works_from_the_queue_the_database_fills(live_db):
    from audit.models import AuditPending

    record_events(3)
    assert AuditPending.objects.using("owner").count() == 3  # the insert trigger queued each
    assert sequence_pending(using="owner") == 3
    assert not AuditPending.objects.using("owner").exists()
    assert sequence_pending(using="owner") == 0
    assert list(owner_events().values_list("leaf__position", flat=True)) == [0, 1, 2]


def test_verify_can_list_every_bad_event_not_only_the_first(live_db):
    from datetime import timedelta

    from audit.verify import verify_log

    record_events(8)
    sequence_pending()
    for position in (2, 5):
        victim = AuditLeaf.objects.using("owner").get(position=position).event_id
        _tamper("UPDATE audit_auditevent SET data = %s WHERE id = %s", ['{"role": "tenant_admin"}', victim])
    report = verify_log(using="owner", max_unsequenced=timedelta(minutes=5), stop_at_first=False)
    assert [problem.position for problem in report.problems] == [2, 5], report.problems


def test_a_stale_queue_entry_is_dropped_not_sequenced_twice(live_db):
    from audit.models import AuditPending

    record_events(2)
    assert sequence_pending(using="owner") == 2
    first = owner_events().first()
    AuditPending.objects.using("owner").create(event_id=first.id)  # as a restore might leave behind
    record_events(1)
    assert sequence_pending(using="owner") == 1
    assert not AuditPending.objects.using("owner").exists()
    assert list(owner_events().values_list("leaf__position", flat=True)) == [0, 1, 2]
