"""DPT depth model: shapes, positivity, hooks, parameter layout, checkpoints."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from tosa_bench.models.configs import get_config
from tosa_bench.models.vit import VisionTransformer
from tosa_bench.tasks.depth_model import DepthModel, default_hooks, load_depth_checkpoint, save_depth_checkpoint

SMALL = dict(features=8, stage_channels=(4, 8, 8, 8), head_channels=4)


def _model(seed: int = 0, **kw) -> DepthModel:
    torch.manual_seed(seed)
    return DepthModel(VisionTransformer(get_config("test_tiny")), **{**SMALL, **kw}).eval()


def test_default_hooks_rule() -> None:
    assert default_hooks(12) == [2, 5, 8, 11]
    assert default_hooks(24) == [5, 11, 17, 23]
    assert default_hooks(6) == [1, 2, 4, 5]
    assert default_hooks(2) == [0, 0, 1, 1]  # shallow: repeats allowed
    assert _model().hooks == [1, 2, 4, 5]


@pytest.mark.parametrize("size", [(32, 32), (32, 48), (48, 24), (16, 8)])
def test_full_resolution_positive_output(size: tuple[int, int]) -> None:
    model = _model()
    with torch.inference_mode():
        out = model(torch.randn(2, 3, *size))
    assert out.shape == (2, *size)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()
    assert (out > 0).all() and (out < 10.0).all()


def test_max_depth_scales_output() -> None:
    x = torch.randn(1, 3, 32, 32)
    with torch.inference_mode():
        a = _model(max_depth=10.0)(x)
        b = _model(max_depth=5.0)(x)
    torch.testing.assert_close(b, a / 2)


def test_size_not_multiple_of_patch_raises() -> None:
    with pytest.raises(ValueError, match="patch size"):
        _model()(torch.randn(1, 3, 30, 32))


def test_bad_hooks_raise() -> None:
    with pytest.raises(ValueError, match="hooks"):
        _model(hooks=[0, 1, 2])
    with pytest.raises(ValueError, match="hooks"):
        _model(hooks=[0, 1, 2, 6])


def test_parameter_layout_and_gradients() -> None:
    model = _model().train()
    names = [k for k, _ in model.named_parameters()]
    assert all(k.startswith(("backbone.", "head.")) for k in names)
    assert "backbone.blocks.0.attn.qkv.weight" in names
    assert any(k.startswith("head.reassemble.0.") for k in names)
    model(torch.randn(1, 3, 32, 32)).mean().backward()
    assert model.head.reassemble[3].project.weight.grad is not None
    assert model.backbone.blocks[5].attn.qkv.weight.grad is not None


@pytest.mark.parametrize("fmt", ["bare.pth", "model.pth", "state_dict.pth", "weights.safetensors"])
def test_checkpoint_round_trip(tmp_path, fmt: str) -> None:
    src, dst = _model(seed=1), _model(seed=2)
    path = tmp_path / fmt
    if fmt.endswith(".safetensors") or fmt == "bare.pth":
        save_depth_checkpoint(src, path)
    else:
        torch.save({fmt.split(".")[0]: src.state_dict(), "epoch": 3}, path)
    x = torch.randn(1, 3, 32, 48)
    with torch.inference_mode():
        assert not torch.equal(src(x), dst(x))
        load_depth_checkpoint(dst, path)
        torch.testing.assert_close(dst(x), src(x), rtol=0, atol=0)


def test_checkpoint_mismatch_lists_keys(tmp_path) -> None:
    path = tmp_path / "other.pth"
    save_depth_checkpoint(_model(features=16, stage_channels=(4, 8, 8, 8), head_channels=4), path)
    with pytest.raises(ValueError, match="shape mismatch: head\\.") as info:
        load_depth_checkpoint(_model(), path)
    assert "(16, 4, 3, 3) vs model (8, 4, 3, 3)" in str(info.value)

    state = _model().state_dict()
    state.pop("head.squeeze.weight")
    state["head.extra"] = torch.zeros(1)
    torch.save(state, path)
    with pytest.raises(ValueError, match="missing: head.squeeze.weight \\| unexpected: head.extra"):
        load_depth_checkpoint(_model(), path)


@pytest.mark.skipif(importlib.util.find_spec("tosa_bench.build") is None, reason="tosa_bench.build not available")
@pytest.mark.parametrize(
    "variant,opts",
    [
        ("dense", {}),
        ("tosa", {"keep": 0.5}),
        ("tome", {"r": 2}),
        ("evit", {"keep": 0.5, "locations": [1, 3]}),
        ("random", {"keep": 0.5}),
    ],
)
def test_every_variant_gives_full_resolution(variant: str, opts: dict) -> None:
    from tosa_bench import build_model

    torch.manual_seed(0)
    model = DepthModel(build_model("test_tiny", variant, **opts), **SMALL).eval()
    for size in [(32, 32), (32, 48)]:
        with torch.inference_mode():
            out = model(torch.randn(2, 3, *size))
        assert out.shape == (2, *size)
        assert torch.isfinite(out).all() and (out > 0).all()
