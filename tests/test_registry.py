"""The method registry: each method declared once, and a sixth method registered from this
file alone reaches the CLI, the grid, the MAC formula, the tables and `tosa-bench models`."""

from __future__ import annotations

import inspect
import json
import math
from typing import Any

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from tosa_bench import build_model
from tosa_bench.cli import app
from tosa_bench.errors import OptionError
from tosa_bench.measure.analytic import analytic_macs
from tosa_bench.measure.flops import count_macs
from tosa_bench.methods import registry
from tosa_bench.methods.base import BlockSelection, BlockTokens, ReducerOutput, TokenReducer, validate_keep
from tosa_bench.methods.registry import GridEntry, Knobs, Method, OptionSpec
from tosa_bench.results.store import read_records

runner = CliRunner()


def test_builtins_in_table_order():
    assert registry.builtin_names() == ("dense", "tosa", "tome", "evit", "random")
    assert [registry.get(n).display for n in registry.builtin_names()] == ["Dense", "ToSA", "ToMe", "EViT", "Random (control)"]
    assert registry.match_target().name == "tosa"
    assert [n for n in registry.names() if registry.get(n).accepts_selector] == ["tosa"]


@pytest.mark.parametrize("name", ["dense", "tosa", "tome", "evit", "random"])
def test_declared_options_are_the_reducers_own(name):
    """The registry's option list (names and defaults) is what the reducer takes."""
    method = registry.get(name)
    reducer = method.reducer()
    params = {p: v.default for p, v in inspect.signature(type(reducer).__init__).parameters.items() if p != "self"}
    assert {o.name: o.default for o in method.options} == params


def test_unknown_variant_and_option_are_option_errors():
    with pytest.raises(OptionError, match=r"unknown variant 'nope'; known variants: dense, tosa, tome, evit, random"):
        registry.get("nope")
    with pytest.raises(OptionError, match=r"^r: not an option of the tosa variant \(options: keep, placement"):
        build_model("test_tiny", "tosa", r=3)
    with pytest.raises(OptionError, match="selector weights apply to the tosa variant, not 'evit'"):
        build_model("test_tiny", "evit", selector="x.safetensors")


def test_last_selection_is_uniform():
    x = torch.randn(2, 3, 32, 32)
    tosa = build_model("test_deep", "tosa", keep=0.5)
    tosa(x)
    assert {b: s.kind for b, s in tosa.reducer.last_selection.items()} == {b: "ran" for b in tosa.reducer.placement}
    assert all(s.index.shape == (2, 33) for s in tosa.reducer.last_selection.values())  # k = ceil(0.5 * 64) + CLS
    evit = build_model("test_deep", "evit", keep=0.5, locations=[1, 2], fuse=True)
    evit(x)
    kept = evit.reducer.last_selection
    assert sorted(kept) == [1, 2] and kept[1].kind == "kept" and kept[1].index.shape == (2, 33)
    assert kept[2].index.shape == (2, 18)  # ceil(0.5 * 34) of the 33 patches + fused left after block 1, + CLS
    for b in range(2):  # block 2 keeps tokens block 1 kept, or block 1's fused token (index N = 65)
        assert set(kept[2].index[b].tolist()) <= set(kept[1].index[b].tolist()) | {65}
    tome = build_model("test_deep", "tome", r=4)
    tome(x)
    merged = tome.reducer.last_selection
    assert sorted(merged) == list(range(12)) and merged[0].kind == "merged" and merged[0].index.shape == (2, 65)
    # every original token belongs to one of the tokens left after the block
    assert [int(s.index.max()) + 1 for s in merged.values()] == [c.mlp for c in tome.token_counts]
    dense = build_model("test_deep")
    dense(x)
    assert dense.reducer.last_selection == {}


# --------------------------------------------------------------------------- a sixth method
class SkipReducer(TokenReducer):
    """Test-only method: the first ``skip`` blocks are bypassed by every token."""

    variant = "skipfirst"

    def __init__(self, skip: int = 1) -> None:
        super().__init__()
        if isinstance(skip, bool) or not isinstance(skip, int) or skip < 0:
            raise OptionError(f"skip must be an integer >= 0, got {skip!r}")
        self.skip = skip

    def bind(self, cfg) -> None:
        super().bind(cfg)
        if self.skip >= cfg.depth:
            raise OptionError(f"skip must be below the depth {cfg.depth}, got {self.skip}")

    def options(self) -> dict:
        return {"skip": self.skip}

    def forward(self, blocks: nn.ModuleList, x, collect=(), need_full=False) -> ReducerOutput:
        counts, inter = [], {}
        self.last_selection = {}
        for i, blk in enumerate(blocks):
            if i < self.skip:
                counts.append(BlockTokens(0, 0))
                self.last_selection[i] = BlockSelection("ran", x.new_zeros(x.shape[0], 0, dtype=torch.long))
            else:
                counts.append(BlockTokens(x.shape[1], x.shape[1]))
                x = blk(x)
            if i in collect:
                inter[i] = x
        self.token_counts = counts
        return ReducerOutput(tokens=x, full=x if need_full else None, intermediates=inter)


class SkipMethod(Method):
    name = "skipfirst"
    display = "Skip-first (test)"
    order = 9
    summary = "bypass the first blocks entirely"
    keep_meaning = "skip = round((1 - keep) L) leading blocks"
    options = (OptionSpec("skip", "int", 1, ">= 0, below the depth", "leading blocks bypassed"),)

    def reducer(self, **options: Any) -> SkipReducer:
        return SkipReducer(**options)

    def natural_options(self, keep, cfg, knobs: Knobs = Knobs()) -> dict[str, Any]:
        return {"skip": round((1.0 - (0.5 if keep is None else validate_keep(keep))) * cfg.depth)}

    def token_counts(self, reducer, num_tokens):
        return [BlockTokens(0, 0) if i < reducer.skip else BlockTokens(num_tokens, num_tokens) for i in range(reducer.depth)]

    def setting_label(self, options, record) -> str:
        return f"skip {options.get('skip')}"


@pytest.fixture
def skip_method():
    method = registry.register(SkipMethod())
    yield method
    registry.unregister(method.name)


def test_sixth_method_counts_like_the_formula(skip_method):
    m = build_model("test_tiny", "skipfirst", skip=2)
    x = torch.randn(1, 3, 32, 32)
    counted = count_macs(m, x)
    formula = analytic_macs(m.cfg, m.reducer, m.token_counts)
    assert m.token_counts == registry.expected_token_counts(m.reducer, m.cfg.num_tokens)
    assert counted.total == formula.total
    assert counted.by_module.get("blocks.0", 0) == 0 and formula.blocks[0] == 0


def test_sixth_method_runs_through_a_sweep(skip_method, tmp_path):
    out = tmp_path / "run"
    res = runner.invoke(app, ["sweep", "--model", "test_tiny", "--variant", "dense", "--variant", "skipfirst", "--keep", "0.5",
                              "-b", "1", "--warmup", "1", "--repeats", "2", "--time-budget", "0.05", "--no-latency",
                              "--no-memory", "--device", "cpu", "--out", str(out)])
    assert res.exit_code == 0, res.output
    recs = {r["variant"]: r for r in read_records(out / "records.jsonl").records}
    assert set(recs) == {"dense", "skipfirst"} and all(r["status"] == "ok" for r in recs.values())
    skip = recs["skipfirst"]
    assert skip["options"] == {"skip": 3}  # round(0.5 * 6)
    assert skip["tokens_per_block"] == [[0, 0]] * 3 + [[17, 17]] * 3
    assert math.isclose(skip["gmacs"], skip["gmacs_analytic"], rel_tol=1e-12)
    assert skip["gmacs"] < recs["dense"]["gmacs"]
    table = (out / "table.md").read_text()
    assert "Skip-first (test)" in table and "skip 3" in table
    listed = runner.invoke(app, ["models"], env={"COLUMNS": "200"})
    assert "skipfirst" in listed.output and "leading blocks" in listed.output
    # the suite file names it too
    suite = tmp_path / "s.toml"
    suite.write_text('[grid]\nmodels = ["test_tiny"]\nvariants = ["skipfirst"]\nkeeps = [0.3]\n')
    dry = runner.invoke(app, ["sweep", "--suite", str(suite), "--dry-run", "--device", "cpu"])
    assert dry.exit_code == 0 and "skip=4" in dry.output, dry.output


def test_unregistered_variant_is_refused_in_suites_and_cli(tmp_path):
    suite = tmp_path / "s.toml"
    suite.write_text('[grid]\nvariants = ["skipfirst"]\n')
    res = runner.invoke(app, ["sweep", "--suite", str(suite), "--dry-run"])
    assert res.exit_code == 2 and "skipfirst" in res.output and "dense, tosa, tome, evit, random" in res.output
    res = runner.invoke(app, ["profile", "--variant", "skipfirst", "--model", "test_tiny", "--no-timing"])
    assert res.exit_code == 2 and "unknown variant 'skipfirst'" in res.output


def test_method_grid_entries_are_plain_data():
    from tosa_bench.models.configs import get_config

    deit = get_config("deit_small_patch16_224")
    knobs = Knobs(placements=("alternate", (3, 5, 7)), tome_r=(), evit_locations=((3, 6, 9), (2, 5)))
    assert registry.get("tosa").grid_options(0.5, deit, knobs) == [
        GridEntry({"keep": 0.5, "placement": "alternate"}, "alternate"), GridEntry({"keep": 0.5, "placement": [3, 5, 7]}, "3,5,7")]
    assert registry.get("tome").grid_options(0.5, deit, knobs) == [GridEntry({"r": 8})]
    assert registry.get("tome").grid_options(None, deit, Knobs(tome_r=(4, 13))) == [GridEntry({"r": 4}), GridEntry({"r": 13})]
    assert registry.get("tome").grid_options(0.5, deit, Knobs(tome_r=(4,))) == []
    assert [e.options for e in registry.get("evit").grid_options(0.7, deit, knobs)] == [
        {"keep": 0.7, "fuse": True, "locations": [3, 6, 9]}, {"keep": 0.7, "fuse": True, "locations": [2, 5]}]
    assert registry.get("dense").grid_options(None, deit, knobs) == [GridEntry({})]
    assert registry.get("dense").grid_options(0.5, deit, knobs) == []
    assert json.dumps(registry.get("random").natural_options(None, deit, Knobs(seed=3))) == '{"keep": 0.5, "seed": 3}'


def test_keep_is_checked_whatever_the_variant_makes_of_it():
    """ToMe maps keep to r with max(0, ...): a keep of 1.5 must not quietly become r = 0."""
    from tosa_bench.models.configs import get_config

    with pytest.raises(OptionError, match=r"keep must be in \(0, 1\], got 1.5"):
        registry.get("tome").natural_options(1.5, get_config("test_tiny"))
    res = runner.invoke(app, ["profile", "--variant", "dense", "--keep", "0", "--model", "test_tiny", "--no-timing"])
    assert res.exit_code == 2 and "keep must be in (0, 1], got 0.0" in res.output


# Every label that reaches a table or a figure legend, written out by hand: the setting
# (tables), the curve (what separates two curves of one method) and the point (a point's
# annotation). Options left out take the method's defaults (placement "default", seed 0,
# schedule constant, proportional attention and fusing on); a record's placement_label
# (a named scheme as the user wrote it) wins over the resolved list.
LABEL_CASES = [
    ("dense", {}, {}, "-", ""),
    ("tosa", {"keep": 0.5, "placement": [1, 3]}, {}, "keep 0.5 @ 1,3", "1,3"),
    ("tosa", {"keep": 0.5, "placement": [1, 3]}, {"placement_label": "alternate"}, "keep 0.5 @ alternate", "alternate"),
    ("tosa", {"keep": 0.5}, {}, "keep 0.5 @ default", "default"),
    ("tosa", {"keep": 0.25, "placement": "all", "importance": "mean"}, {"selector": None}, "keep 0.25 @ all", "all"),
    ("tosa", {"keep": 0.25, "placement": "all"}, {"selector": None, "weights": "checkpoint"}, "keep 0.25 @ all",
     "all, untrained selectors"),  # a trained backbone: the curve says its selectors were not trained
    ("random", {"keep": 0.5, "placement": [2, 4], "seed": 1}, {"weights": "checkpoint"}, "keep 0.5 @ 2,4, seed 1", "2,4, seed 1"),
    (
        "tosa",
        {"keep": 0.7, "placement": "all", "importance": "cls"},
        {"selector": "sel.safetensors"},
        "keep 0.7 @ all, importance cls, trained selectors",
        "all, importance cls, trained selectors",
    ),
    ("random", {"keep": 0.5, "placement": [2, 4], "seed": 3}, {}, "keep 0.5 @ 2,4, seed 3", "2,4, seed 3"),
    ("random", {"keep": 0.5}, {}, "keep 0.5 @ default, seed 0", "default, seed 0"),
    ("tome", {"r": 8}, {}, "r=8", ""),
    ("tome", {"r": 8, "schedule": "constant", "prop_attn": True}, {}, "r=8", ""),
    ("tome", {"r": 8, "schedule": "decreasing", "prop_attn": False}, {}, "r=8, decreasing, no prop-attn", "decreasing, no prop-attn"),
    ("tome", {"r": 4, "prop_attn": False}, {}, "r=4, no prop-attn", "no prop-attn"),
    ("evit", {"keep": 0.7}, {}, "keep 0.7", ""),
    ("evit", {"keep": 0.7, "locations": [3, 6, 9]}, {}, "keep 0.7 @ 3,6,9", "@ 3,6,9"),
    ("evit", {"keep": 0.7, "locations": [3, 6, 9], "fuse": False}, {}, "keep 0.7 @ 3,6,9, no fuse", "@ 3,6,9, no fuse"),
    ("evit", {"keep": 0.7, "fuse": True}, {}, "keep 0.7", ""),
]


@pytest.mark.parametrize("name, options, record, setting, curve", LABEL_CASES)
def test_setting_and_curve_labels_written_out(name, options, record, setting, curve):
    method = registry.get(name)
    assert method.setting_label(options, record) == setting
    assert method.curve_label(options, record) == curve


@pytest.mark.parametrize(
    "name, options, keep, label",
    [
        ("dense", {}, 0.5, "0.5"),
        ("tosa", {"keep": 0.25}, 0.25, "0.25"),
        ("evit", {"keep": 0.7}, None, ""),
        ("tome", {"r": 8}, 0.5, "r=8"),
        ("tome", {"r": [4, 2, 0]}, None, "r=4,2,0"),
        ("tome", {}, 0.5, "0.5"),
        ("tome", {}, None, ""),
    ],
)
def test_point_labels_written_out(name, options, keep, label):
    assert registry.get(name).point_label(options, keep) == label


def test_natural_and_grid_options_written_out():
    """What each method asks the grid to build, for a keep or without one, with and
    without its knobs: defaults left out so config hashes stay put (ToSA's default
    placement and "mean" importance), the first knob value for a single point, one grid
    point per knob value, and the method's default keep (ToSA/random 0.5, EViT 0.7, ToMe
    the r of keep 0.5) when none is given."""
    from tosa_bench.methods.tome import tome_r_for_keep
    from tosa_bench.models.configs import get_config

    cfg = get_config("deit_small_patch16_224")
    tosa, rnd, tome, evit, dense = (registry.get(n) for n in ("tosa", "random", "tome", "evit", "dense"))
    r_half, r_03 = tome_r_for_keep(0.5, 197, 12), tome_r_for_keep(0.3, 197, 12)
    assert r_half != r_03  # the cases below tell the two keeps apart

    assert dense.grid_options(None, cfg, Knobs()) == [GridEntry({})]
    assert dense.grid_options(0.5, cfg, Knobs()) == []

    assert tosa.natural_options(None, cfg) == {"keep": 0.5}
    assert tosa.natural_options(0.3, cfg, Knobs(placements=((3, 5), "all"), importance="cls")) == {"keep": 0.3, "placement": [3, 5], "importance": "cls"}
    assert tosa.natural_options(0.3, cfg, Knobs(importance="mean")) == {"keep": 0.3}
    assert tosa.grid_options(None, cfg, Knobs(placements=("all",))) == []
    assert tosa.grid_options(0.3, cfg, Knobs()) == [GridEntry({"keep": 0.3}, None)]
    assert tosa.grid_options(0.3, cfg, Knobs(placements=("alternate", (2, 4)), importance="cls", seed=5)) == [
        GridEntry({"keep": 0.3, "placement": "alternate", "importance": "cls"}, "alternate"),
        GridEntry({"keep": 0.3, "placement": [2, 4], "importance": "cls"}, "2,4"),
    ]

    assert rnd.natural_options(None, cfg, Knobs(seed=7)) == {"keep": 0.5, "seed": 7}
    assert rnd.natural_options(0.3, cfg, Knobs(importance="cls")) == {"keep": 0.3, "seed": 0}
    assert rnd.grid_options(0.3, cfg, Knobs(placements=((2, 4),), seed=7)) == [GridEntry({"keep": 0.3, "placement": [2, 4], "seed": 7}, "2,4")]

    assert tome.natural_options(None, cfg) == {"r": r_half}
    assert tome.natural_options(0.3, cfg) == {"r": r_03}
    assert tome.natural_options(0.3, cfg, Knobs(tome_r=(4, 6))) == {"r": 4}
    assert tome.grid_options(None, cfg, Knobs(tome_r=(4, 6))) == [GridEntry({"r": 4}), GridEntry({"r": 6})]
    assert tome.grid_options(None, cfg, Knobs()) == []
    assert tome.grid_options(0.3, cfg, Knobs(tome_r=(4,))) == []
    assert tome.grid_options(0.3, cfg, Knobs()) == [GridEntry({"r": r_03})]

    assert evit.natural_options(None, cfg) == {"keep": 0.7, "fuse": True}
    assert evit.natural_options(0.5, cfg, Knobs(evit_locations=((3, 6), (4,)), fuse=False)) == {"keep": 0.5, "fuse": False, "locations": [3, 6]}
    assert evit.grid_options(None, cfg, Knobs(evit_locations=((3, 6),))) == []
    assert evit.grid_options(0.5, cfg, Knobs()) == [GridEntry({"keep": 0.5, "fuse": True})]
    assert evit.grid_options(0.5, cfg, Knobs(evit_locations=((3, 6), (4, 8)), fuse=False)) == [
        GridEntry({"keep": 0.5, "fuse": False, "locations": [3, 6]}),
        GridEntry({"keep": 0.5, "fuse": False, "locations": [4, 8]}),
    ]


def test_a_new_methods_default_grid_is_one_point_per_keep_from_its_knobs():
    """Method.grid_options, the default a sixth method inherits: no point without a keep,
    else one point built by its natural_options with the grid's knobs."""
    from tosa_bench.models.configs import get_config

    class Seeded(Method):
        name = "seeded"

        def natural_options(self, keep, cfg, knobs: Knobs = Knobs()):
            return {"keep": keep, "seed": knobs.seed}

    cfg = get_config("deit_small_patch16_224")
    assert Seeded().grid_options(None, cfg, Knobs(seed=3)) == []
    assert Seeded().grid_options(0.4, cfg, Knobs(seed=3)) == [GridEntry({"keep": 0.4, "seed": 3})]
    assert Method().point_label({}, 0.25) == "0.25" and Method().point_label({}, None) == ""
    assert Method().setting_label({}, {}) == "-" and Method().curve_label({}, {}) == ""


def test_register_refuses_bad_and_taken_names_and_unregister_forgets(monkeypatch):
    """register: a name must be an identifier; a taken name needs replace=True (the same
    object again is fine); unregister removes a method and ignores unknown names."""
    registry.names()  # built-ins loaded into the real registry before it is copied
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))

    def method(name):
        return type("M", (Method,), {"name": name})()

    for bad in ("", "not-an-identifier"):
        with pytest.raises(ValueError, match="a method needs a name that is an identifier"):
            registry.register(method(bad))
    first = registry.register(method("sixth"))
    assert registry.register(first) is first and registry.get("sixth") is first
    with pytest.raises(ValueError, match="method 'sixth' is registered already"):
        registry.register(method("sixth"))
    assert registry.get("sixth") is first
    second = registry.register(method("sixth"), replace=True)
    assert registry.get("sixth") is second
    registry.unregister("sixth")
    assert "sixth" not in registry.names()
    registry.unregister("sixth")  # unknown: no error


def test_unknown_option_message_lists_the_options_or_says_none():
    with pytest.raises(OptionError, match=r"^keep: not an option of the dense variant \(options: none\)$"):
        registry.check_option_names(registry.get("dense"), {"keep": 0.5})
    with pytest.raises(OptionError, match=r"^rr: not an option of the tome variant \(options: r, prop_attn, schedule\)$"):
        registry.check_option_names(registry.get("tome"), {"r": 8, "rr": 1})


def test_match_target_is_none_when_no_method_can_be_matched_to(monkeypatch):
    assert registry.match_target() is registry.get("tosa")
    monkeypatch.setattr(registry, "_REGISTRY", {"dense": registry.get("dense"), "tome": registry.get("tome")})
    assert registry.match_target() is None


def test_bypassers_are_the_methods_whose_unchosen_tokens_come_back():
    """ToSA and its random control let unchosen tokens bypass a block and return (the
    demo's coverage count asks this); EViT drops them, ToMe merges them, dense has none."""
    assert registry.bypassers() == ("tosa", "random")
    assert not any(registry.get(n).bypasses for n in ("dense", "tome", "evit"))
