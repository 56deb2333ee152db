"""The promotion pages show each person as "Display Name (username · #ab12cd)": who asked,
who approved, who asked for an override and who confirmed it, with a short id that stays the
same for the account whatever it is called."""

import re

import pytest
from django.contrib.auth import get_user_model

from tenants.services import user_rename

from tests.support.clients import sign_in
from tests.support.otp import fresh_totp
from tests.test_promotions import Gate

PERSON = re.compile(r'<span class="person"><bdi>([^<]*)</bdi> \(<bdi>([^<]*)</bdi> · #([0-9a-f]{6})\)</span>')


@pytest.fixture
def gate(world, api, tmp_path):
    return Gate(world, api, tmp_path)


def people_in(html, start, end="</table>"):
    """(display name, username, short id) for each person shown from ``start`` on."""
    section = html[html.index(start):]
    return PERSON.findall(section[:section.index(end)])


def test_the_promotion_pages_show_who_acted_with_name_username_and_short_id(gate, world, api, client):
    get_user_model().objects.using("owner").filter(pk=world.a.developer.pk).update(first_name="Dana", last_name="Ng")
    number = gate.version(accuracy=0.5)
    gate.promote(number, "development")
    body = gate.request(number, "staging").json()  # held by the metrics threshold until an override
    overrides = f"/api/v1/tenants/acme-bank/promotions/{body['id']}/overrides/"
    override = gate.admin.post(overrides, {"rule": "baseline.metrics_thresholds", "justification": "RISK-12"}).json()
    confirmed = api(world.a.admin2).post(f"{overrides}{override['id']}/confirm/", {"otp_token": fresh_totp(world.a.admin2)})
    assert confirmed.json()["state"] == "awaiting_approval", confirmed.content
    assert gate.approve(body["id"], world.a.approver).json()["state"] == "promoted"

    url = f"/t/acme-bank/promotions/{body['id']}/"
    html = sign_in(client, world.a.auditor).get(url).content.decode()
    [requester] = people_in(html, "Requested by", end="</p>")
    [approver] = people_in(html, 'id="approvals"')
    asked, confirmer = people_in(html, 'id="overrides"')
    assert requester[:2] == ("Dana Ng", "acme-bank-developer")  # the full name, when there is one
    assert approver[:2] == ("acme-bank-approver", "acme-bank-approver")  # else the username
    assert (asked[:2], confirmer[:2]) == (("acme-bank-admin", "acme-bank-admin"), ("acme-bank-admin2", "acme-bank-admin2"))
    assert len({requester[2], approver[2], asked[2], confirmer[2]}) == 4
    queue = client.get("/t/acme-bank/promotions/").content.decode()
    assert requester in people_in(queue, 'id="recent"')

    # The short id belongs to the account: a new username keeps it.
    user_rename(actor=None, user=world.a.developer, username="dana-ng")
    [renamed] = people_in(client.get(url).content.decode(), "Requested by", end="</p>")
    assert renamed == ("Dana Ng", "dana-ng", requester[2])
