"""The compliance console: filters on indexed columns, keyset pages whose cost does not grow
with depth or with the size of the log, an event page with its checked inclusion proof, the
latest checkpoint's status, and the auditor's journey to a promotion's evidence pack."""

import html
import io
import json
import os
import re
import zipfile
from datetime import timedelta
from pathlib import Path

import pytest
from django.db import connections, transaction
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from audit import merkle
from audit.appendonly import triggers_suspended
from audit.checkpointing import checkpoint_write
from audit.checkpoints import parse_checkpoint
from audit.hashing import leaf_hash
from audit.keys import platform_keyring
from audit.log import Actor, Target, record
from audit.models import AuditCheckpoint, AuditEvent
from audit.sequencer import sequence_pending
from audit.verify_export import verified_note
from compliance.verify_evidence import verify_evidence

from tests.support import ROOT

from tests.support.clients import sign_in
from .test_promotion_console import _sign_in
from .test_promotions import Gate


ALICE = Actor(type="user", id="1", name="alice")
SCREENSHOT = Path(os.environ.get("NEOCLOUD_AUDIT_SCREENSHOT", ROOT / "var" / "screenshots" / "audit.png"))


def record_many(count, *, tenant="acme-bank", action="membership.grant", target=None, actor=ALICE):
    with transaction.atomic():
        for index in range(count):
            record(action=action, actor=actor, tenant=tenant, target=target or Target("membership", f"u{index}"),
                   data={"index": index})


def sealed_events(count, *, tenant="acme-bank"):
    """Events built as record() builds them, for bulk insertion (the log at scale)."""
    start = timezone.now() - timedelta(days=30)
    events = []
    for index in range(count):
        event = AuditEvent(occurred_at=start + timedelta(seconds=index), actor_type="user", actor_id="7",
                           actor_name=f"user{index % 40}", tenant=tenant, action="membership.grant",
                           target_type="membership", target_id=f"m{index}", data={"index": index})
        event.seal()
        events.append(event)
    return events


def ids_on(html: str) -> list[int]:
    return [int(found) for found in re.findall(r'<a href="/audit/events/(\d+)/">', html)]


@pytest.mark.embedded
def test_filters_and_keyset_pages_walk_the_whole_trail(world, client):
    record_many(70)
    record_many(50, action="service_account.create", target=Target("service_account", "ci"))
    sign_in(client, world.a.auditor)
    newest = list(AuditEvent.objects.using("owner").filter(tenant="acme-bank", action="membership.grant")
                  .order_by("-id").values_list("id", flat=True))
    first = client.get("/t/acme-bank/audit/?action=membership.grant")
    assert ids_on(first.content.decode()) == newest[:50]
    older = re.search(r'id="older" href="\?([^"]+)"', first.content.decode()).group(1).replace("&amp;", "&")
    second = client.get(f"/t/acme-bank/audit/?{older}")
    assert ids_on(second.content.decode()) == newest[50:]
    assert 'id="older"' not in second.content.decode()
    newer = re.search(r'id="newer" href="\?([^"]+)"', second.content.decode()).group(1).replace("&amp;", "&")
    assert ids_on(client.get(f"/t/acme-bank/audit/?{newer}").content.decode()) == newest[:50]
    by_target = client.get("/t/acme-bank/audit/?target_type=service_account&target=ci&actor=alice")
    assert len(ids_on(by_target.content.decode())) == 50
    for odd in ("target_type=promotion&target=not-a-uuid", "before=%C2%B2", "after=%C2%B2", "before=-3"):
        assert client.get(f"/t/acme-bank/audit/?{odd}").status_code == 200, odd
    bad = client.get("/t/acme-bank/audit/?since=yesterday")
    assert "Enter a valid date/time." in bad.content.decode() and ids_on(bad.content.decode()) == []


def test_a_page_costs_the_same_queries_at_any_depth_and_size(world, client):
    """20,000 events, uncommitted (the session's worker must not sequence them): the first page,
    a page deep in the trail and a filtered page cost the same queries. On PostgreSQL the
    filtered keyset read uses an index, never a scan of the table."""
    for _ in range(2):  # the checkpoint status reads the latest two: have two, so a third changes nothing
        record_many(1)
        sequence_pending(using="owner")
        checkpoint_write(using="owner")
    sign_in(client, world.a.auditor)
    client.get("/t/acme-bank/audit/")  # warm per-process caches

    def queries(path):
        with CaptureQueriesContext(connections["default"]) as captured:
            response = client.get(path)
        assert response.status_code == 200
        return len(captured), ids_on(response.content.decode())

    with transaction.atomic():
        small, _ = queries("/t/acme-bank/audit/")
        AuditEvent.objects.bulk_create(sealed_events(20_000), batch_size=2000)
        ids = list(AuditEvent.objects.filter(tenant="acme-bank").order_by("-id").values_list("id", flat=True))
        top, shown = queries("/t/acme-bank/audit/")
        deep, deep_shown = queries(f"/t/acme-bank/audit/?before={ids[15_000]}")
        filtered, _ = queries("/t/acme-bank/audit/?actor=user7&action=membership.grant")
        assert shown == ids[:50] and deep_shown == ids[15_001:15_051]
        assert small == top == deep == filtered, (small, top, deep, filtered)
        if connections["default"].vendor == "postgresql":
            plan = (AuditEvent.objects.filter(tenant__in=["acme-bank"], actor_name="user7", id__lt=ids[15_000])
                    .order_by("-id")[:51].explain())
            assert "Seq Scan on audit_auditevent" not in plan, plan
        transaction.set_rollback(True)


def test_the_event_page_shows_its_checked_proof_and_hides_other_tenants_events(world, client):
    record_many(3)
    record_many(2, tenant="st-mary-hospital")
    sequence_pending(using="owner")
    checkpoint_write(using="owner")
    sign_in(client, world.a.auditor)
    own = AuditEvent.objects.using("owner").filter(tenant="acme-bank").order_by("id").first()
    page = client.get(f"/audit/events/{own.id}/").content.decode()
    assert "proven" in page and own.canonical.replace('"', "&quot;") in page
    shown_proof_leads_to_the_signed_root(page, own)
    other = AuditEvent.objects.using("owner").filter(tenant="st-mary-hospital").first()
    assert client.get(f"/audit/events/{other.id}/").status_code == 404
    assert client.get("/audit/events/99999999/").status_code == 404

    # Someone with the database edits the event: the page says so instead of "proven".
    owner = connections["owner"]
    with transaction.atomic(using="owner"), triggers_suspended(owner), owner.cursor() as cursor:
        cursor.execute("UPDATE audit_auditevent SET data = %s WHERE id = %s", ['{"index": 99}', own.id])
    page = client.get(f"/audit/events/{own.id}/").content.decode()
    assert 'id="inclusion" class="bad"' in page and "proven" not in page
    assert f"event {own.id} no longer matches its stored canonical JSON" in page


def shown_proof_leads_to_the_signed_root(page: str, event: AuditEvent) -> None:
    """Re-check what the page shows, from the page alone: its hashes, in order, must lead from
    the shown sequencing entry to the root of the shown checkpoint, signed by the platform key."""
    position = int(re.search(r"Sequence number <strong>(\d+)</strong>", page).group(1))
    entry = html.unescape(re.search(r"Sequencing entry:</p>\s*<pre>(.*?)</pre>", page, re.S).group(1))
    assert json.loads(entry)["event_hash"] == event.event_hash
    note = html.unescape(re.search(r"<p>Checkpoint:</p><pre>(.*?)</pre>", page, re.S).group(1))
    checkpoint = parse_checkpoint(verified_note(note, [key.public_pem for key in platform_keyring().keys()]))
    proof = [bytes.fromhex(node) for node in re.findall(r"<li><code>([0-9a-f]{64})</code></li>", page)]
    assert proof, "the page shows no proof"
    merkle.verify_inclusion(position, checkpoint.size, leaf_hash(entry.encode()), proof, checkpoint.root)
    with pytest.raises(merkle.ProofError):  # and the check is not vacuous: one changed hash fails
        merkle.verify_inclusion(position, checkpoint.size, leaf_hash(entry.encode()), [bytes(32), *proof[1:]],
                                checkpoint.root)


def test_the_checkpoint_status_says_verified_and_flags_a_forged_checkpoint(world, client):
    record_many(4)
    sequence_pending(using="owner")
    checkpoint_write(using="owner")
    sign_in(client, world.a.auditor)
    page = client.get("/t/acme-bank/audit/").content.decode()
    assert 'id="checkpoint-status" class="ok"' in page and "verified" in page
    # Someone with the database but not the key appends a checkpoint of their own making.
    latest = AuditCheckpoint.objects.using("owner").order_by("-tree_size").first()
    record_many(1)
    sequence_pending(using="owner")
    size = latest.tree_size + 1
    AuditCheckpoint.objects.using("owner").create(
        tree_size=size, root_hash="ab" * 32, key_id=latest.key_id, created_at=timezone.now(),
        note=latest.note.replace(f"\n{latest.tree_size}\n", f"\n{size}\n"))
    page = client.get("/t/acme-bank/audit/").content.decode()
    assert 'id="checkpoint-status" class="bad"' in page and "does not verify" in page
    assert f"checkpoint {size} is not signed by a platform key" in page


@pytest.mark.embedded
def test_the_export_link_downloads_a_pack_that_verifies(world, client, tmp_path):
    import io
    import zipfile

    from audit.keys import platform_keyring
    from audit.verify_export import verify_pack

    record_many(3)
    sign_in(client, world.a.auditor)
    page = client.get("/t/acme-bank/audit/").content.decode()
    link = re.search(r'id="audit-export" href="([^"]+)"', page).group(1)
    response = client.get(link)  # the console's session is enough: no API token
    assert response.status_code == 200 and response["Content-Type"] == "application/zip"
    zipfile.ZipFile(io.BytesIO(response.content)).extractall(tmp_path / "export")
    summary = verify_pack(tmp_path / "export", platform_keyring().active().public_pem)
    assert summary["tenant"] == "acme-bank" and summary["events"] >= 3
    sign_in(client, world.a.developer)
    assert client.get(link).status_code == 403


@pytest.mark.browser
def test_an_auditor_filters_a_promotions_events_and_downloads_a_pack_that_verifies(
        world, api, tmp_path, live_server, open_page):
    gate = Gate(world, api, tmp_path)
    number = gate.version()
    gate.promote(number, "development")
    promotion = gate.promote(number, "staging")
    while sequence_pending(using="owner"):
        pass
    checkpoint_write(using="owner")
    base = live_server.url
    page = open_page()
    _sign_in(page, base, world.a.auditor)
    page.goto(f"{base}/t/acme-bank/audit/")
    assert "verified" in page.locator("#checkpoint-status").inner_text()
    page.fill("#id_target_type", "promotion")
    page.fill("#id_target", promotion["id"])
    with page.expect_navigation():
        page.click("#audit-filters button[type=submit]")
    actions = page.locator("#audit-events tbody tr td:nth-child(5)").all_inner_texts()
    assert {"promotion.request", "promotion.check", "promotion.approve", "promotion.promote"} <= set(actions)
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOT), full_page=True)  # the trail of one promotion, with its evidence link
    assert SCREENSHOT.stat().st_size > 10_000
    with page.expect_download() as download:
        page.click("#evidence-pack")
    pack = tmp_path / "evidence.zip"
    download.value.save_as(pack)
    key = platform_keyring().active().public_pem
    summary = verify_evidence(pack, [key])
    assert (summary["promotion"], summary["state"], summary["attested"]) == (promotion["id"], "promoted", True)
    assert zipfile.ZipFile(io.BytesIO(pack.read_bytes())).read("summary.html").startswith(b"<!doctype html>")
