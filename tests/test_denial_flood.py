"""Refusals cannot flood the log: the first of each refusal in a window is recorded at once,
repeats are counted durably and summed up in one event after the window, anonymous refusals
are aggregated per source address, and past a cap of distinct refusals the caller gets a 429
until the window ends, recorded once. No test waits for a window to pass: the flush is given
the moment after it."""

import time

import pytest
from django.core.cache import cache

from audit.denials import flush_denial_counts
from audit.log import SIDE_ALIAS
from audit.models import AuditEvent, DenialCount
from tests.support.clients import issue_token

from .test_api import assert_error

pytestmark = pytest.mark.embedded

FOREIGN = "/api/v1/tenants/acme-bank/members/"  # st-mary-hospital's people may not see acme-bank


def events(*actions):
    return AuditEvent.objects.using("owner").filter(action__in=actions).order_by("id")


def after_the_window(settings) -> float:
    return time.time() + settings.AUDIT_DENIAL_WINDOW_SECONDS


@pytest.fixture(autouse=True)
def fresh_flags():
    cache.clear()  # throttle flags live in the cache for the rest of their window
    yield
    cache.clear()


def test_a_repeated_refusal_is_recorded_once_then_counted_and_summed_up_after_the_window(world, api, settings):
    outsider = api(world.b.developer)
    for _ in range(30):
        assert_error(outsider.get(FOREIGN), 404, "not_found")
    [first] = events("request.denied")
    assert (first.actor_name, first.target_id) == (world.b.developer.username, FOREIGN)
    [counted] = DenialCount.objects.using("owner").all()
    assert counted.count == 30 and not counted.flushed  # each repeat committed as it happened

    assert flush_denial_counts(using=SIDE_ALIAS) == 0  # the window is still open
    assert flush_denial_counts(using=SIDE_ALIAS, moment=after_the_window(settings)) == 1
    assert flush_denial_counts(using=SIDE_ALIAS, moment=after_the_window(settings)) == 0  # never twice
    [summary] = events("request.denied_repeated")
    assert summary.data["repeats"] == 29 and summary.data["refusal"] == "request.denied"
    assert (summary.actor_name, summary.target_id, summary.outcome) == (world.b.developer.username, FOREIGN, "denied")
    assert summary.data["first"] == first.data


def test_anonymous_refusals_are_aggregated_per_source_address(world, api, settings):
    anonymous = api()
    for index in range(12):
        assert anonymous.get(f"/api/v1/tenants/tenant-{index}/").status_code == 401
    assert events("request.denied").count() == 1  # the first; the rest are one refusal of the address
    [counted] = DenialCount.objects.using("owner").all()
    assert (counted.caller, counted.count) == ("address:127.0.0.1", 12)
    flush_denial_counts(using=SIDE_ALIAS, moment=after_the_window(settings))
    assert events("request.denied_repeated").get().data["repeats"] == 11


def test_past_the_cap_of_distinct_refusals_a_caller_gets_a_429_recorded_once(world, api, settings, client):
    settings.AUDIT_DENIAL_CAP_PER_CALLER = 3
    token = api(issue_token(world.b.developer, world.b.tenant))
    for index in range(3):  # three distinct refusals: each recorded
        assert token.get(f"/api/v1/tenants/acme-bank/workflows/w{index}/").status_code == 404
    assert token.get("/api/v1/tenants/acme-bank/workflows/w3/").status_code == 404  # the fourth meets the cap
    throttled = token.get("/api/v1/tenants/st-mary-hospital/members/")  # even what it may do
    body = assert_error(throttled, 429, "throttled")
    assert 0 < int(throttled["Retry-After"]) <= settings.AUDIT_DENIAL_WINDOW_SECONDS
    assert "seconds" in body["detail"]
    for index in range(20):
        assert token.get(f"/api/v1/tenants/acme-bank/workflows/x{index}/").status_code == 429
    assert events("request.denied").count() == 3
    [marked] = events("request.throttled")
    assert marked.data["cap"] == "caller" and marked.data["limit"] == 3

    # The same person in the console, with a session of their own, is a caller of their own.
    session = api(world.b.developer)
    assert session.get("/api/v1/tenants/st-mary-hospital/members/").status_code == 200


def test_a_flood_grows_the_log_by_at_most_two_events_per_distinct_refusal_plus_one_per_throttled_caller(
        world, api, settings):
    settings.AUDIT_DENIAL_CAP_PER_CALLER = 5
    before = AuditEvent.objects.using("owner").count()
    outsider = api(world.b.developer)
    distinct = [f"/api/v1/tenants/acme-bank/workflows/w{index}/" for index in range(4)]
    for _ in range(10):  # 4 distinct refusals, 10 times each
        for path in distinct:
            outsider.get(path)
    for index in range(10):  # then 10 more distinct ones: past the cap of 5
        outsider.get(f"/api/v1/tenants/acme-bank/workflows/x{index}/")
    flush_denial_counts(using=SIDE_ALIAS, moment=after_the_window(settings))
    grown = AuditEvent.objects.using("owner").count() - before
    assert events("request.throttled").count() == 1
    assert grown <= 2 * len(distinct) + 1 + 1, grown  # + the one distinct refusal recorded before the cap
    assert events("request.denied_repeated").count() == len(distinct)


def test_a_lowered_cap_per_source_address_throttles_the_address(world, api, settings):
    settings.AUDIT_DENIAL_CAP_PER_SOURCE = 2
    for who in (world.b.developer, world.b.approver, world.b.auditor):
        api(who).get(FOREIGN)
    assert_error(api(world.a.developer).get("/api/v1/tenants/acme-bank/members/"), 429, "throttled")
    assert events("request.throttled").get().data["cap"] == "source"
