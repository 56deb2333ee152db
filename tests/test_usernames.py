"""One identity per person: usernames are NFKC as typed, Highly Restrictive (UTS #39 5.2), and
no two look alike (equal UTS #39 skeletons), on every path that creates or renames a person;
the migration that brings the rule stops on existing lookalikes and names them."""

import hashlib
import io
import os
import subprocess
import sys
from importlib import import_module
from types import SimpleNamespace

import pytest
import unicodedataplus
from django.apps import apps as django_apps
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connections

from audit.models import AuditEvent
from tenants import usernames
from tenants.errors import Conflict, Invalid
from tenants.models import Membership, PersonName
from tenants.services import user_create, user_rename
from tenants.usernames import problems_among, skeleton, username_problem

from tests.support import ROOT
from tests.support.people import PASSWORD, make_user
from .test_api import assert_error

User = get_user_model()
PAYPAL_CYRILLIC = "p\u0430ypal"  # the second letter is CYRILLIC SMALL LETTER A
LEGITIMATE = ["josé", "müller", "дмитрий", "Ελένη", "山田", "やまだたろう", "山田タロウ", "김민수", "मोहन",
              "ศรีสมร", "tanaka山田", "lee김민수", "wang王ㄅ", "ops-ada", "a.b@c+d_e-1"]
name_every_person = import_module("tenants.migrations.0010_person_names_checked").name_every_person


def create(username, **extra):
    return user_create(actor=None, username=username, password=PASSWORD, **extra)


def owner_names():
    return set(User.objects.using("owner").values_list("username", flat=True))


# The pinned data --------------------------------------------------------------------------


def test_the_confusables_file_is_the_pinned_unicode_13_data_named_in_code_and_readme():
    raw = usernames.CONFUSABLES_FILE.read_bytes()
    assert hashlib.sha256(raw).hexdigest() == usernames.CONFUSABLES_SHA256
    header = raw.decode("utf-8-sig").splitlines()[:12]
    assert f"# Version: {usernames.CONFUSABLES_VERSION}" in header and usernames.CONFUSABLES_VERSION == "13.0.0"
    readme = (usernames.CONFUSABLES_FILE.parent / "README.md").read_text()
    assert usernames.CONFUSABLES_SHA256 in readme and "13.0.0" in readme
    # The rest of the rule reads the pinned unicodedataplus, whose data is Unicode 16.0.0.
    assert unicodedataplus.unidata_version == "16.0.0"


def test_a_changed_confusables_file_is_refused_rather_than_read(tmp_path, monkeypatch):
    from django.core.exceptions import ImproperlyConfigured

    edited = tmp_path / "confusables.txt"
    edited.write_bytes(usernames.CONFUSABLES_FILE.read_bytes().replace(b"0430 ;\t0061", b"0431 ;\t0061"))
    monkeypatch.setattr(usernames, "CONFUSABLES_FILE", edited)
    usernames.prototypes.cache_clear()
    try:
        with pytest.raises(ImproperlyConfigured, match="not the pinned"):
            usernames.prototypes()
    finally:
        monkeypatch.undo()
        usernames.prototypes.cache_clear()


# The rule, as a pure decision -------------------------------------------------------------


@pytest.mark.parametrize("lookalike, original", [
    (PAYPAL_CYRILLIC, "paypal"), ("paypa1", "paypal"), ("rnodern", "modern"), ("ℓ", "l"),
    ("e\u0301", "\u00e9"),  # NFD first: a decomposed and a composed é are one
])
def test_lookalikes_share_a_skeleton(lookalike, original):
    assert skeleton(lookalike) == skeleton(original)


def test_names_that_look_different_have_different_skeletons():
    assert len({skeleton(name) for name in ["paypal", "paypa", "Paypal", "payp", "дмитрий", "山田"]}) == 6


@pytest.mark.parametrize("name", LEGITIMATE)
def test_single_script_names_and_latin_with_cjk_are_usernames(name):
    assert username_problem(name) is None


@pytest.mark.parametrize("name, sentence", [
    (PAYPAL_CYRILLIC, "Username 'pаypal' mixes Cyrillic and Latin letters; write it in one script, or in Latin "
                      "with Han and Japanese kana, with Han and Bopomofo, or with Han and Hangul."),
    ("\u03b1lpha", "Username 'αlpha' mixes Greek and Latin letters;"),
    ("abc가ア", "Username 'abc가ア' mixes Hangul, Katakana and Latin letters;"),
    ("ｐａｙｐａｌ", "Username 'ｐａｙｐａｌ' is not in Unicode NFKC form, which usernames are kept in; "
                   "in that form it is 'paypal'."),
    ("pay pal", "Username 'pay pal' has U+0020 (SPACE); use letters, combining marks, decimal digits and . @ + - _ only."),
    ("pay\u200bpal", "has U+200B (ZERO WIDTH SPACE);"),
    ("paypal\u1160", "has U+1160 (HANGUL JUNGSEONG FILLER), which is invisible."),
    ("\u02bbokina", "has U+02BB (MODIFIER LETTER TURNED COMMA), which belongs to no script;"),
    ("ab\U0001E290", "has U+1E290 (TOTO LETTER PA), which is newer than the platform's Unicode 13.0.0 confusables data;"),
    ("\u0301abc", "starts with a combining mark."),
    ("\u00e9\u0301", "repeats the combining mark U+0301 (COMBINING ACUTE ACCENT)."),
    ("1\u0660", "mixes digits of different number systems; use one."),
    ("", "A username is 1 to 150 characters."),
    ("x" * 151, "A username is 1 to 150 characters."),
])
def test_a_refused_username_gets_one_sentence_saying_why(name, sentence):
    assert sentence in username_problem(name)


# Every path that creates or renames a person ----------------------------------------------


def test_a_lookalike_of_an_existing_account_is_a_409_naming_it(live_db):
    paypal = create("paypal")
    assert PersonName.objects.using("owner").get(user=paypal).skeleton_sha256 == usernames.skeleton_sha256("paypal")
    with pytest.raises(Conflict) as refused:
        create("paypa1")
    assert refused.value.status == 409
    assert refused.value.fields == {"username": [
        "Username paypa1 looks the same as the existing account paypal (Unicode TS #39 confusables); "
        "choose another username."]}
    assert owner_names() == {"paypal"}
    assert list(AuditEvent.objects.using("owner").values_list("action", "target_id")) == [("user.create", "paypal")]


def test_the_first_of_two_lookalikes_blocks_the_second_whichever_script_it_is_in(live_db):
    create("рау")  # Cyrillic only: a single script, so a username
    with pytest.raises(Conflict, match="the existing account рау"):
        create("pay")
    assert owner_names() == {"рау"}


@pytest.mark.parametrize("name", [PAYPAL_CYRILLIC, "ｐａｙｐａｌ"])
def test_a_username_against_the_rule_is_invalid_and_nothing_is_created(live_db, name):
    with pytest.raises(Invalid) as refused:
        create(name, platform_admin=True)
    assert list(refused.value.fields) == ["username"] and refused.value.status == 400
    assert not User.objects.using("owner").exists() and not PersonName.objects.using("owner").exists()


def test_create_platform_admin_goes_through_the_rule(live_db, monkeypatch, capsys):
    monkeypatch.setenv("NEOCLOUD_ADMIN_PASSWORD", "a-long-and-unusual-passphrase-2026")
    call_command("create_platform_admin", "山田")
    assert "Platform admin 山田 created" in capsys.readouterr().out
    assert PersonName.objects.using("owner").filter(user__username="山田", user__is_superuser=True).exists()
    with pytest.raises(CommandError, match=f"^Username {PAYPAL_CYRILLIC!r} mixes Cyrillic and Latin letters"):
        call_command("create_platform_admin", PAYPAL_CYRILLIC)


def test_seed_demo_names_every_person_it_creates(live_db, capsys):
    call_command("seed_demo")
    assert PersonName.objects.using("owner").count() == User.objects.using("owner").count() == 15


def test_a_rename_frees_the_old_name_and_claims_the_new_one(live_db):
    modern = create("modern")
    with pytest.raises(Conflict, match="the existing account modern"):
        create("rnodern")
    user_rename(actor=None, user=modern, username="modern-1")
    assert create("rnodern").username == "rnodern"  # "modern" no longer holds that skeleton
    with pytest.raises(Conflict, match="the existing account rnodern"):
        user_rename(actor=None, user=modern, username="modern")
    with pytest.raises(Invalid, match="mixes Cyrillic and Latin"):
        user_rename(actor=None, user=modern, username=PAYPAL_CYRILLIC)
    modern.refresh_from_db(using="owner")
    assert modern.username == "modern-1"
    assert PersonName.objects.using("owner").get(user=modern).skeleton_sha256 == usernames.skeleton_sha256("modern-1")
    [renamed] = AuditEvent.objects.using("owner").filter(action="user.rename")
    assert (renamed.actor_name, renamed.target_id) == ("manage.py", "modern-1")
    assert {key: renamed.data[key] for key in ("from", "to")} == {"from": "modern", "to": "modern-1"}


def test_rename_user_takes_the_person_by_id(live_db, capsys):
    person = make_user(PAYPAL_CYRILLIC, device=False)  # from before the rule
    call_command("rename_user", str(person.pk), "paypal-ru")
    assert capsys.readouterr().out == (
        f"User {person.pk} is now paypal-ru (was 'p\\u0430ypal'); they sign in with the new name.\n")
    assert owner_names() == {"paypal-ru"}
    with pytest.raises(CommandError, match=f"^There is no user with id {person.pk + 1}.$"):
        call_command("rename_user", str(person.pk + 1), "someone")


def test_adding_a_member_by_a_lookalike_name_finds_no_one(world, api):
    """Members are added by an existing username, exactly: a lookalike reaches no account."""
    admin = api(world.a.admin)
    lookalike = "outsid\u0435r"  # CYRILLIC SMALL LETTER IE for the e of "outsider"
    body = assert_error(admin.post("/api/v1/tenants/acme-bank/members/", {"username": lookalike, "role": "developer"}),
                        404, "not_found")
    assert body["fields"] == {"username": [f"No user named {lookalike}."]}
    assert not Membership.objects.using("owner").filter(user=world.outsider).exists()


def test_commands_that_would_bypass_the_rule_exit_with_one_sentence(live_db):
    create("paypal")
    for alias in connections:
        connections[alias].close()
    env = dict(os.environ, NEOCLOUD_ADMIN_PASSWORD="a-long-and-unusual-passphrase-2026")
    for command, sentence in [
        (["create_platform_admin", "paypa1"], "CommandError: Username paypa1 looks the same as the existing account "
                                              "paypal (Unicode TS #39 confusables); choose another username."),
        (["createsuperuser", "--noinput", "--username", "paypa1"],
         "CommandError: createsuperuser is not used on this platform: run `manage.py create_platform_admin "
         "<username>`, which checks the username and records the new admin in the audit log."),
    ]:
        result = subprocess.run([sys.executable, "manage.py", *command], capture_output=True, text=True, env=env,
                                cwd=ROOT, timeout=120, check=False)
        assert result.returncode == 1
        assert result.stderr.strip() == sentence
    assert owner_names() == {"paypal"}


# The migration that brings the rule -------------------------------------------------------


def migrate_names():
    name_every_person(django_apps, SimpleNamespace(connection=connections["owner"]))


def test_the_migration_stops_on_lookalikes_and_names_each_pair(live_db):
    # Accounts from before the rule, made straight in the database as the platform once could.
    paypal, cyrillic = make_user("paypal", device=False), make_user(PAYPAL_CYRILLIC, device=False)
    modern, rnodern = make_user("modern", device=False), make_user("rnodern", device=False)
    wide = User.objects.using("owner").create(username="ｂob")  # create_user would have folded it to NFKC
    make_user("josé", device=False)
    with pytest.raises(CommandError) as stopped:
        migrate_names()
    message = str(stopped.value)
    assert message.count("\n  - ") == 4
    assert f"'paypal' (id {paypal.pk}) and 'p\\u0430ypal' (id {cyrillic.pk}) look alike." in message
    assert f"'modern' (id {modern.pk}) and 'rnodern' (id {rnodern.pk}) look alike." in message
    assert f"User {cyrillic.pk}: Username 'pаypal' mixes Cyrillic and Latin letters" in message
    assert f"User {wide.pk}: Username 'ｂob' is not in Unicode NFKC form" in message
    assert "manage.py rename_user <id> <new username>" in message and "then run migrate again" in message
    assert not PersonName.objects.using("owner").exists()

    for person, name in [(cyrillic, "paypal-ru"), (rnodern, "rnodern-2"), (wide, "bob")]:
        call_command("rename_user", str(person.pk), name, stdout=io.StringIO())
    migrate_names()
    named = dict(PersonName.objects.using("owner").values_list("user__username", "skeleton_sha256"))
    assert named == {name: usernames.skeleton_sha256(name) for name in owner_names()}
    assert len(named) == 6


def test_lookalikes_are_named_once_per_group():
    assert problems_among([(1, "l"), (2, "I"), (3, "1"), (4, "josé")]) == [
        "'l' (id 1), 'I' (id 2) and '1' (id 3) look alike."]
