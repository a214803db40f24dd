"""Our dense ViT against timm's VisionTransformer, and checkpoint loading.

timm is a test-only dependency; its models are built with random weights (no download).
"""

from __future__ import annotations

import pickle

import pytest
import torch

timm = pytest.importorskip("timm", reason="timm is a test dependency: pip install -e '.[test]'")

from safetensors.torch import save_file  # noqa: E402

from tosa_bench import build_model  # noqa: E402
from tosa_bench.errors import CheckpointError  # noqa: E402
from tosa_bench.models.checkpoint import load_backbone, read_state_dict  # noqa: E402
from tosa_bench.models.vit import resize_pos_embed  # noqa: E402


@pytest.fixture(scope="module", params=["deit_tiny_patch16_224", "deit_small_patch16_224", "vit_base_patch16_224"])
def timm_pair(request):
    torch.manual_seed(0)
    ref = timm.create_model(request.param, pretrained=False).eval()
    # timm zero-inits the head; give it random weights so the comparison covers it.
    torch.nn.init.normal_(ref.head.weight, std=0.02)
    ours = build_model(request.param)
    load_backbone(ours, ref.state_dict())
    return request.param, ref, ours


def test_dense_forward_equals_timm(timm_pair):
    _, ref, ours = timm_pair
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (ours(x) - ref(x)).abs().max().item() <= 1e-4
        assert (ours.forward_features(x) - ref.forward_features(x)).abs().max().item() <= 1e-4


def test_timm_state_dict_loads_into_every_variant_non_strict(timm_pair):
    name, ref, _ = timm_pair
    for variant, opts in [("tosa", {"keep": 0.5}), ("tome", {"r": 8}), ("evit", {"keep": 0.7}), ("random", {"keep": 0.5})]:
        result = build_model(name, variant, **opts).load_state_dict(ref.state_dict(), strict=False)
        assert result.unexpected_keys == []
        assert all(k.startswith("reducer.selectors.") for k in result.missing_keys)


@pytest.mark.parametrize("fmt", ["bare.pth", "deit.pth", "model.safetensors"])
def test_checkpoint_files_load(tmp_path, fmt):
    torch.manual_seed(1)
    ref = timm.create_model("deit_tiny_patch16_224", pretrained=False).eval()
    state = ref.state_dict()
    path = tmp_path / fmt
    if fmt == "bare.pth":
        torch.save(state, path)
    elif fmt == "deit.pth":  # DeiT's own files: {"model": state_dict, ...}
        torch.save({"model": state, "epoch": 299}, path)
    else:
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    ours = build_model("deit_tiny_patch16_224", checkpoint=path)
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert (ours(x) - ref(x)).abs().max() <= 1e-4


def test_checkpoint_for_wrong_model_names_keys_and_shapes(tmp_path):
    path = tmp_path / "small.pth"
    torch.save(timm.create_model("deit_small_patch16_224", pretrained=False).state_dict(), path)
    with pytest.raises(CheckpointError, match=r"does not fit deit_tiny_patch16_224: shape mismatch: cls_token \(1, 1, 384\) vs model \(1, 1, 192\)"):
        build_model("deit_tiny_patch16_224", checkpoint=path)
    path = tmp_path / "distilled.pth"
    torch.save(timm.create_model("deit_tiny_distilled_patch16_224", pretrained=False).state_dict(), path)
    with pytest.raises(CheckpointError, match="unexpected: dist_token"):
        build_model("deit_tiny_patch16_224", checkpoint=path)


def test_head_follows_checkpoint_classes(tmp_path):
    path = tmp_path / "ten.pth"
    torch.save(timm.create_model("deit_tiny_patch16_224", pretrained=False, num_classes=10).state_dict(), path)
    assert build_model("deit_tiny_patch16_224", checkpoint=path).head.out_features == 10
    with pytest.raises(CheckpointError, match="head.weight"):
        build_model("deit_tiny_patch16_224", checkpoint=path, num_classes=1000)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_pickled_code_is_never_executed(tmp_path):
    class Boom:
        def __reduce__(self):
            return (exec, ("raise SystemExit('unpickled code ran')",))

    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"model": Boom()}, f)
    with pytest.raises(CheckpointError, match="not only tensors; refused"):
        read_state_dict(path)
    with pytest.raises(CheckpointError, match="no such file"):
        read_state_dict(tmp_path / "missing.pth")


def test_pos_embed_resampling_matches_timm_and_other_sizes_run(tmp_path):
    from timm.layers import resample_abs_pos_embed

    pos = torch.randn(1, 197, 192)
    ours = resize_pos_embed(pos, (16, 16))
    theirs = resample_abs_pos_embed(pos, new_size=(16, 16), num_prefix_tokens=1, antialias=False)
    assert torch.allclose(ours, theirs, atol=1e-5)
    path = tmp_path / "t.pth"
    torch.save(timm.create_model("deit_tiny_patch16_224", pretrained=False).state_dict(), path)
    m = build_model("deit_tiny_patch16_224", "tosa", keep=0.5, checkpoint=path, img_size=256)
    assert m.pos_embed.shape == (1, 257, 192)
    with torch.no_grad():
        assert m(torch.randn(1, 3, 256, 256)).shape == (1, 1000)
        assert m(torch.randn(1, 3, 224, 320)).shape == (1, 1000)  # non-square: interpolated at run time
    with pytest.raises(ValueError, match="multiple of the patch size"):
        m(torch.randn(1, 3, 200, 200))


def test_selector_weights_round_trip(tmp_path):
    a = build_model("deit_tiny_patch16_224", "tosa", keep=0.5)
    for p in a.reducer.parameters():
        torch.nn.init.normal_(p)
    path = tmp_path / "selectors.safetensors"
    save_file({f"reducer.{k}": v.contiguous() for k, v in a.reducer.state_dict().items()}, str(path))
    b = build_model("deit_tiny_patch16_224", "tosa", keep=0.5, selector=path)
    assert all(torch.equal(a.reducer.state_dict()[k], v) for k, v in b.reducer.state_dict().items())
    with pytest.raises(CheckpointError, match="missing: selectors.6.conv1.weight.*unexpected: selectors.1"):
        build_model("deit_tiny_patch16_224", "tosa", keep=0.5, placement="second-half", selector=path)
    with pytest.raises(ValueError, match="selector"):
        build_model("deit_tiny_patch16_224", "evit", selector=path)


def test_repeated_reads_reuse_the_last_file_and_notice_changes(tmp_path):
    path = tmp_path / "w.pth"
    torch.save({"a": torch.zeros(2)}, path)
    first = read_state_dict(path)
    first["a"] = torch.ones(2)  # the caller's dict is its own
    assert torch.equal(read_state_dict(path)["a"], torch.zeros(2))
    import os

    torch.save({"a": torch.full((2,), 7.0)}, path)
    os.utime(path, ns=(1, 10**18))  # a rewrite with a new mtime is read again
    assert torch.equal(read_state_dict(path)["a"], torch.full((2,), 7.0))
