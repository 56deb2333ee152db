"""Canonical JSON: the standard-library fast path writes exactly what rfc8785 writes, for any
JSON value, and everything outside it still goes through rfc8785 (its bytes and its errors)."""

import math

import pytest
import rfc8785
from hypothesis import given, settings
from hypothesis import strategies as st

from audit.hashing import canonical_json


# Every code point Python strings can hold except lone surrogates (which are not UTF-8), with
# the characters the escapes and the UTF-16 key order turn on drawn often.
TRICKY = st.sampled_from(["\x00", "\x08", "\t", "\n", "\x0b", "\x0c", "\r", "\x1f", '"', "\\", "/", "\x7f",
                          "\u2028", "\u2029", "\ud7ff", "\ue000", "\uffff", "\U00010000", "\U0001f600",
                          "\U0010ffff", "é", "\u20ac"])
TEXT = st.lists(st.one_of(TRICKY, st.characters(blacklist_categories=("Cs",))), max_size=8).map("".join)
INTEGERS = st.one_of(st.integers(min_value=-(2**53) + 1, max_value=2**53 - 1),
                     st.sampled_from([0, -1, 2**53 - 1, -(2**53) + 1]))
FLOATS = st.floats(allow_nan=False, allow_infinity=False)
SCALARS = st.one_of(st.none(), st.booleans(), INTEGERS, TEXT)
VALUES = st.recursive(st.one_of(SCALARS, FLOATS),
                      lambda children: st.one_of(st.lists(children, max_size=5),
                                                 st.dictionaries(TEXT, children, max_size=5)),
                      max_leaves=30)


@settings(max_examples=1500, deadline=None)
@given(VALUES)
def test_same_bytes_as_rfc8785_for_any_json_value(value):
    assert canonical_json(value) == rfc8785.dumps(value)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(["\ue000", "\uffff", "\U00010000", "\U0001f600", "a", "\ud7ff", "é"]),
                       INTEGERS, min_size=2))
def test_keys_sort_by_utf16_code_units_not_code_points(value):
    assert canonical_json(value) == rfc8785.dumps(value)


def test_keys_above_the_basic_plane_sort_before_private_use_ones():
    # U+1F600 is the surrogate pair D83D DE00, so it sorts before U+E000 in UTF-16 order (the
    # reverse of code-point order): the fast path must not take this object.
    assert canonical_json({"\ue000": 1, "\U0001f600": 2}) == '{"😀":2,"\ue000":1}'.encode()


def test_escapes_follow_ecmascript():
    assert canonical_json("\x00\x1f\b\t\n\f\r\"\\/\x7f\u2028") == b'"\\u0000\\u001f\\b\\t\\n\\f\\r\\"\\\\/\x7f\xe2\x80\xa8"'


@pytest.mark.parametrize("value", [2**53, -(2**53), 10**30])
def test_unsafe_integers_are_refused(value):
    with pytest.raises(rfc8785.IntegerDomainError):
        canonical_json({"n": value})


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_floats_are_refused(value):
    with pytest.raises(rfc8785.FloatDomainError):
        canonical_json([value])


def test_lone_surrogates_are_refused():
    with pytest.raises(rfc8785.CanonicalizationError):
        canonical_json({"name": "\ud800"})


def test_non_string_keys_are_refused():
    with pytest.raises(rfc8785.CanonicalizationError):
        canonical_json({1: "one"})


def test_floats_tuples_and_subclasses_take_rfc8785s_path():
    assert canonical_json({"f": 1e21, "g": 0.1, "t": (1, "a"), "z": -0.0}) == b'{"f":1e+21,"g":0.1,"t":[1,"a"],"z":0}'
    assert canonical_json({"b": True, "i": 1}) == b'{"b":true,"i":1}'


def test_a_value_that_contains_itself_is_refused_not_looped_over():
    loop = []
    loop.append(loop)
    with pytest.raises(RecursionError):
        canonical_json({"loop": loop})
