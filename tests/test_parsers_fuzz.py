"""Property tests (hypothesis) of everything that parses user text: the suite parser and
the keep, placement, size and block-list parsers.

The property: any input either parses to a valid value or raises a
:class:`~tosa_bench.errors.UserInputError` (the CLI's one-line error) - never another
exception, which the CLI would report as a bug with a traceback.
"""

from __future__ import annotations

import math

import pytest
import tomli_w

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from tosa_bench.cli.common import MAX_SIDE, parse_int_list, parse_keep, parse_size  # noqa: E402
from tosa_bench.errors import UserInputError  # noqa: E402
from tosa_bench.methods.tosa import parse_placement  # noqa: E402
from tosa_bench.sweep.suite import SCHEMA, Suite, from_dict, load_suite  # noqa: E402

FEW = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# text that looks like what people type: digits, signs, dots, letters of nan/inf/x, commas
typed = st.one_of(st.text(alphabet="0123456789.-+eExXnaifNAIF,: lastlternvhcd", max_size=12), st.text(max_size=12))

# TOML values of every kind, nested a little
scalars = st.one_of(st.integers(0, 16), st.floats(0.01, 1), st.integers(-10**6, 10**6), st.floats(allow_nan=True, allow_infinity=True), st.booleans(),
                    st.text(max_size=10), st.sampled_from(["test_tiny", "dense", "tosa", "cpu", "fp32", "alternate", "0.5"]))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)),
                      max_leaves=6)
known_keys = [(s, k) for s, keys in SCHEMA.items() for k in keys]
section = st.one_of(st.sampled_from(list(SCHEMA)), st.text(max_size=6))
documents = st.one_of(
    st.tuples(st.sampled_from(known_keys), values).map(lambda kv: {kv[0][0]: {kv[0][1]: kv[1]}}),  # one key: each is reached
    st.dictionaries(section, st.dictionaries(st.one_of(st.sampled_from([k for _, k in known_keys]), st.text(max_size=6)), values, max_size=4), max_size=4),
    st.lists(st.tuples(st.sampled_from(known_keys), values), max_size=5).map(
        lambda pairs: {s: {k: v for (s2, k), v in pairs if s2 == s} for (s, _), _ in pairs}),
)


def _valid_or_user_error(fn, *args):
    try:
        return fn(*args)
    except UserInputError:
        return None


@FEW
@given(typed)
def test_keep_parser(text):
    keep = _valid_or_user_error(parse_keep, text)
    assert keep is None or (isinstance(keep, float) and 0 < keep <= 1 and not math.isnan(keep))


@FEW
@given(typed, st.booleans())
def test_size_parser(text, square):
    hw = _valid_or_user_error(lambda t: parse_size(t, square=square), text)
    if hw is not None:
        h, w = hw
        assert 0 < h <= MAX_SIDE and 0 < w <= MAX_SIDE and (h == w or not square)


@FEW
@given(typed, st.integers(1, 24))
@example("--0", 12)  # found by this test: two minus signs reached int() and a ValueError escaped
def test_placement_parser(text, depth):
    blocks = _valid_or_user_error(parse_placement, text, depth)
    if blocks is not None:
        assert blocks and list(blocks) == sorted(set(blocks)) and all(1 <= b < depth for b in blocks)


@FEW
@given(typed)
def test_block_list_parser(text):
    blocks = _valid_or_user_error(parse_int_list, text, "--evit-loc")
    assert blocks is None or all(isinstance(b, int) for b in blocks)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(documents)
def test_suite_documents(doc):
    suite = _valid_or_user_error(from_dict, doc)
    assert suite is None or isinstance(suite, Suite)


@FEW
@given(st.one_of(st.text(max_size=80), documents.map(lambda d: tomli_w.dumps(_toml_safe(d)))))
def test_suite_files(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("suite") / "s.toml"
    path.write_bytes(text.encode("utf-8", "surrogatepass"))  # lone surrogates too: not UTF-8
    suite = _valid_or_user_error(load_suite, path)
    assert suite is None or isinstance(suite, Suite)


def _toml_safe(doc):
    """``doc`` without what TOML cannot hold (None; tomli-w writes the rest, NaN included)."""
    if isinstance(doc, dict):
        return {str(k): _toml_safe(v) for k, v in doc.items() if v is not None}
    if isinstance(doc, list):
        return [_toml_safe(v) for v in doc if v is not None]
    return doc
