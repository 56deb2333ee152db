"""One identity per person: what a username may be, and when two usernames are one.

A username is refused, with a sentence, unless it is

- in Unicode NFKC form, as typed: nothing is normalised on the way in (``ｐａｙｐａｌ`` is
  refused, naming ``paypal``);
- in the identifier profile: letters, combining marks and decimal digits, and the ASCII
  ``. @ + - _`` that Django's usernames allow; no character assigned after the pinned
  confusables data (it could not say what the character looks like), none that is invisible
  (Default_Ignorable_Code_Point), none that belongs to no script (modifier letters that read
  as punctuation), no name that starts with a combining mark or repeats one, and one decimal
  system for its digits;
- at the "Highly Restrictive" level of UTS #39 section 5.2: one script (by Script_Extensions,
  Common and Inherited counting as every script), or Latin with Han and Japanese kana, with
  Han and Bopomofo, or with Han and Hangul.

Two usernames are one identity when their UTS #39 skeletons (section 4) are equal:
``skeleton("pаypal") == skeleton("paypal")``. ``PersonName`` stores each person's skeleton
under a unique constraint, so the second of two lookalikes can never be created.

Unicode data: the confusable prototypes come from ``tenants/data/confusables.txt`` (13.0.0,
pinned by digest); normalisation, general categories, scripts and ages come from
``unicodedataplus`` 16.0.0, whose characters newer than 13.0 the profile refuses, so every
accepted name lies in what both know. Python's own ``unicodedata`` (14.0.0) is not used here.
"""

import functools
import hashlib
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

import unicodedataplus as ucd
from django.core.exceptions import ImproperlyConfigured

CONFUSABLES_FILE = Path(__file__).resolve().parent / "data" / "confusables.txt"
CONFUSABLES_VERSION = "13.0.0"
CONFUSABLES_SHA256 = "96f2500ec78fd96f11561d4b40237435dfece70303b1db3c0974138a333aa206"

MAX_LENGTH = 150  # auth.User.username's column
PUNCTUATION = frozenset(".@+-_")  # besides letters and digits, what Django's usernames allow
LETTERS_MARKS_DIGITS = frozenset({"Lu", "Ll", "Lt", "Lm", "Lo", "Mn", "Mc", "Nd"})
MARKS = frozenset({"Mn", "Mc"})
# The letters and marks that are Default_Ignorable_Code_Point (DerivedCoreProperties.txt):
# they render as nothing, so "paypal" with a Hangul filler after it would look like "paypal".
INVISIBLE = frozenset(map(chr, [0x034F, 0x115F, 0x1160, 0x17B4, 0x17B5, 0x180B, 0x180C, 0x180D, 0x3164, 0xFFA0,
                                *range(0xFE00, 0xFE10), *range(0xE0100, 0xE01F0)]))
EVERY_SCRIPT = frozenset({"Zyyy", "Zinh"})  # Common and Inherited: used with any script
# UTS #39 section 5.1: Han, kana, Hangul and Bopomofo also count as the writing systems that
# mix them, so that Japanese, Korean and Chinese with Bopomofo each resolve to one set.
AUGMENTED = {"Hani": {"Hanb", "Jpan", "Kore"}, "Hira": {"Jpan"}, "Kana": {"Jpan"}, "Hang": {"Kore"},
             "Bopo": {"Hanb"}}
WITH_LATIN = frozenset({"Jpan", "Hanb", "Kore"})  # what Highly Restrictive lets Latin join


@functools.cache
def prototypes() -> dict[str, str]:
    """confusables.txt as {character: its prototype}, from the pinned file only."""
    raw = CONFUSABLES_FILE.read_bytes()
    digest = hashlib.sha256(raw).hexdigest()
    if digest != CONFUSABLES_SHA256:
        raise ImproperlyConfigured(f"{CONFUSABLES_FILE} has sha256 {digest}, not the pinned {CONFUSABLES_SHA256}; "
                                   "restore it, or pin new data as tenants/data/README.md says.")
    table = {}
    for line in raw.decode("utf-8-sig").splitlines():
        fields = line.split("#", 1)[0].split(";")
        if len(fields) == 3:
            source, target, _ = fields
            table[chr(int(source, 16))] = "".join(chr(int(code, 16)) for code in target.split())
    return table


def skeleton(name: str) -> str:
    """UTS #39 section 4: NFD, each character replaced by its prototype, NFD again."""
    table = prototypes()
    return ucd.normalize("NFD", "".join(table.get(c, c) for c in ucd.normalize("NFD", name)))


def skeleton_sha256(name: str) -> str:
    """What PersonName stores: a digest, so that the unique index holds a skeleton of any length."""
    return hashlib.sha256(skeleton(name).encode()).hexdigest()


def describe(c: str) -> str:
    return f"U+{ord(c):04X} ({ucd.name(c, 'unnamed')})"


def _age(c: str) -> tuple[int, ...]:
    return tuple(int(part) for part in ucd.age(c).split("."))


def _scripts(c: str) -> frozenset[str] | None:
    """The scripts ``c`` is used with, augmented (UTS #39 section 5.1); None for all of them."""
    codes = set(ucd.script_extensions(c))
    if codes & EVERY_SCRIPT:
        return None
    for code in list(codes):
        codes |= AUGMENTED.get(code, set())
    return frozenset(codes)


def _resolved(name: str, *, ignoring: str = "") -> frozenset[str] | None:
    """The resolved script set (None: every script), leaving out characters used with ``ignoring``."""
    resolved = None
    for c in name:
        scripts = _scripts(c)
        if scripts is not None and ignoring not in scripts:
            resolved = scripts if resolved is None else resolved & scripts
    return resolved


def is_highly_restrictive(name: str) -> bool:
    """UTS #39 section 5.2, as ICU decides it: one script, or Latin plus one of Japanese
    (Han, Hiragana, Katakana), Chinese with Bopomofo, or Korean (Han, Hangul)."""
    if _resolved(name) != frozenset():
        return True
    without_latin = _resolved(name, ignoring="Latn")
    return without_latin is None or bool(without_latin & WITH_LATIN)


def _character_problem(name: str, c: str) -> str | None:
    if c in PUNCTUATION or "0" <= c <= "9":
        return None
    if ucd.category(c) not in LETTERS_MARKS_DIGITS:
        return (f"Username {name!r} has {describe(c)}; use letters, combining marks, decimal digits "
                "and . @ + - _ only.")
    if _age(c) > tuple(map(int, CONFUSABLES_VERSION.split("."))):
        return (f"Username {name!r} has {describe(c)}, which is newer than the platform's Unicode "
                f"{CONFUSABLES_VERSION} confusables data; use characters that data knows.")
    if c in INVISIBLE:
        return f"Username {name!r} has {describe(c)}, which is invisible."
    if ucd.script_extensions(c) == ["Zyyy"]:  # Common: Inherited marks take their letter's script
        return (f"Username {name!r} has {describe(c)}, which belongs to no script; "
                "use letters of a script, digits and . @ + - _.")
    return None


def _sequence_problem(name: str) -> str | None:
    decomposed = ucd.normalize("NFD", name)
    if ucd.category(decomposed[0]) in MARKS:
        return f"Username {name!r} starts with a combining mark."
    for before, after in zip(decomposed, decomposed[1:]):
        if before == after and ucd.category(after) == "Mn":
            return f"Username {name!r} repeats the combining mark {describe(after)}."
    systems = {ord(c) - ucd.digit(c) for c in name if ucd.category(c) == "Nd"}
    if len(systems) > 1:
        return f"Username {name!r} mixes digits of different number systems; use one."
    return None


def _scripts_named(name: str) -> str:
    *others, last = sorted({ucd.script(c).replace("_", " ") for c in name if _scripts(c) is not None})
    return f"{', '.join(others)} and {last}" if others else last


def username_problem(name) -> str | None:
    """Why ``name`` may not be a username, in one sentence, or None when it may."""
    if not isinstance(name, str) or not 1 <= len(name) <= MAX_LENGTH:
        return f"A username is 1 to {MAX_LENGTH} characters."
    normal = ucd.normalize("NFKC", name)
    if normal != name:
        return (f"Username {name!r} is not in Unicode NFKC form, which usernames are kept in; "
                f"in that form it is {normal!r}.")
    problem = next(filter(None, (_character_problem(name, c) for c in name)), None) or _sequence_problem(name)
    if problem:
        return problem
    if not is_highly_restrictive(name):
        return (f"Username {name!r} mixes {_scripts_named(name)} letters; write it in one script, or in Latin "
                "with Han and Japanese kana, with Han and Bopomofo, or with Han and Hangul.")
    return None


def problems_among(people: Iterable[tuple[int, str]]) -> list[str]:
    """For the (id, username) of every person: a sentence for each username that breaks the
    rule and for each group that look alike. Names are escaped (``p\\u0430ypal``) so that an
    operator can see the difference."""
    people = list(people)
    found = [f"User {pk}: {problem}" for pk, name in people if (problem := username_problem(name))]
    alike = defaultdict(list)
    for pk, name in people:
        alike[skeleton(name)].append(f"{ascii(name)} (id {pk})")
    found += [f"{', '.join(group[:-1])} and {group[-1]} look alike." for group in alike.values() if len(group) > 1]
    return found
