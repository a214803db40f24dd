"""Training: the schedule, the distillation loss and recall against hand computations,
selector files that say what they were trained for, resume after SIGKILL giving the
weights of an uninterrupted run, two processes (torchrun, gloo) stepping like one, and
bad input refused before any step."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from typer.testing import CliRunner

from tosa_bench import build_model
from tosa_bench.cli import app
from tosa_bench.errors import CheckpointError
from tosa_bench.train.loop import lr_at
from tosa_bench.train.selector import distillation_loss, importance, topk_recall

runner = CliRunner()
TOSA_BENCH = [shutil.which("tosa-bench") or str(Path(sys.executable).with_name("tosa-bench"))]


# ------------------------------------------------------------------------- pure pieces
def test_lr_schedule_closed_form():
    total, warm, lr, lo = 111, 10, 1e-3, 1e-5  # cosine over steps 10..110: half-way at step 60
    assert lr_at(0, total, warm, lr, lo) == pytest.approx(lr / 10)
    assert lr_at(9, total, warm, lr, lo) == pytest.approx(lr)
    assert lr_at(10, total, warm, lr, lo) == pytest.approx(lr)  # cosine starts at the peak
    assert lr_at(60, total, warm, lr, lo) == pytest.approx((lr + lo) / 2, rel=1e-12)
    assert lr_at(35, total, warm, lr, lo) == pytest.approx(lo + (lr - lo) * 0.5 * (1 + math.cos(math.pi / 4)), rel=1e-12)
    assert lr_at(total - 1, total, warm, lr, lo) == pytest.approx(lo)
    assert lr_at(0, 5, 0, lr, 0.0) == pytest.approx(lr)


def test_kl_loss_by_hand():
    teacher = torch.tensor([[[[2.0, 0.0, -1.0]]]])  # (B, H, R, N) = (1, 1, 1, 3)
    student = torch.log_softmax(torch.tensor([[[[0.5, 0.5, 0.0]]]]), dim=-1)
    p = torch.softmax(teacher, dim=-1)[0, 0, 0].tolist()
    q = student.exp()[0, 0, 0].tolist()
    by_hand = sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))
    assert float(distillation_loss(student, teacher, "kl")) == pytest.approx(by_hand, rel=1e-6)
    assert float(distillation_loss(torch.log_softmax(teacher, -1), teacher, "kl")) == pytest.approx(0.0, abs=1e-7)
    mse = sum((pi - qi) ** 2 for pi, qi in zip(p, q)) / 3
    assert float(distillation_loss(student, teacher, "mse")) == pytest.approx(mse, rel=1e-6)
    # KL averages over rows and heads: two rows, one identical, halves it
    two = distillation_loss(torch.cat([student, torch.log_softmax(teacher, -1)], dim=2), torch.cat([teacher, teacher], dim=2))
    assert float(two) == pytest.approx(by_hand / 2, rel=1e-6)


def test_topk_recall_by_hand():
    # token 0 is CLS and never counts; patches 1..5
    teacher = torch.tensor([[9.0, 5.0, 4.0, 3.0, 2.0, 1.0]])
    student = torch.tensor([[0.0, 5.0, 1.0, 4.0, 2.0, 3.0]])  # top-2: patches 1, 3; teacher's: 1, 2
    assert topk_recall(teacher, student, 2).tolist() == [0.5]
    assert topk_recall(teacher, student, 1).tolist() == [1.0]
    assert topk_recall(teacher, teacher, 3).tolist() == [1.0]
    # importance sums the attention received over heads and rows
    log_att = torch.log(torch.tensor([[[[0.5, 0.5, 0.0], [0.0, 1.0, 0.0]]]]) + 1e-30)
    assert importance(log_att).tolist()[0] == pytest.approx([0.5, 1.5, 0.0])


# ------------------------------------------------------------------------- data and runs
@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    out = tmp_path_factory.mktemp("data") / "shapes"
    res = runner.invoke(app, ["data", "make", "shapes", "--out", str(out)])
    assert res.exit_code == 0, res.output
    return out


@pytest.fixture(scope="module")
def classifier(shapes, tmp_path_factory):
    out = tmp_path_factory.mktemp("train") / "cls"
    res = runner.invoke(app, ["train", "classifier", "--data", str(shapes), "--epochs", "2", "-b", "32", "--device", "cpu",
                              "--workers", "0", "--out", str(out)])
    assert res.exit_code == 0, res.output
    return out


SELECTOR = ["train", "selector", "--model", "test_tiny", "--epochs", "3", "-b", "16", "--limit", "64", "--device", "cpu",
            "--workers", "0", "--keep", "0.5", "--lr", "3e-3", "--warmup-epochs", "0.5"]


def test_classifier_run_and_its_checkpoint(classifier, shapes):
    rows = [json.loads(x) for x in (classifier / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2] and all(math.isfinite(r["loss"]) for r in rows)
    ckpt = classifier / "checkpoint.safetensors"
    model = build_model("test_tiny", checkpoint=ckpt)  # loads through --checkpoint's path
    state = load_file(ckpt)
    assert torch.equal(model.state_dict()["head.weight"], state["head.weight"])
    res = runner.invoke(app, ["eval", "--imagenet", str(shapes), "--model", "test_tiny", "--checkpoint", str(ckpt), "--device", "cpu"])
    assert res.exit_code == 0, res.output


def test_selector_distillation_learns_and_says_what_it_is(classifier, shapes, tmp_path):
    out = tmp_path / "sel"
    res = runner.invoke(app, [*SELECTOR, "--data", str(shapes), "--checkpoint", str(classifier / "checkpoint.safetensors"),
                              "--out", str(out)])
    assert res.exit_code == 0, res.output
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and rows[-1]["loss"] < rows[0]["loss"]
    assert rows[0]["chance@0.5"] == 0.5 and 0.0 <= rows[-1]["recall@0.5"] <= 1.0
    path = out / "selectors.safetensors"
    from tosa_bench.models.selector_file import read_selector_metadata

    meta = read_selector_metadata(path)
    assert meta["model"] == "test_tiny" and meta["placement"] == "1,3,5" and meta["epochs"] == "3"
    assert meta["final_loss"] == f"{rows[-1]['loss']:.6g}" and "recall@0.5=" in meta["recall"]
    model = build_model("test_tiny", "tosa", keep=0.5, selector=path)
    trained = load_file(path)
    assert torch.equal(model.reducer.selectors["1"].conv1.weight, trained["reducer.selectors.1.conv1.weight"])
    with pytest.raises(CheckpointError, match="has selectors at blocks 1,3,5, the model at 3,4,5"):
        build_model("test_tiny", "tosa", keep=0.5, placement="second-half", selector=path)
    with pytest.raises(CheckpointError, match="was trained for test_tiny, not test_deep"):
        build_model("test_deep", "tosa", keep=0.5, selector=path)
    res = runner.invoke(app, ["plot", str(out), "--format", "png"])
    assert res.exit_code == 0 and (out / "figures" / "training-curves.png").is_file(), res.output


def test_selector_kl_matches_the_model_path(classifier):
    """The student's loss is the KL between what the ToSA model's selector predicts at
    inference (record_predictions) and the dense teacher's next-block attention."""
    from tosa_bench.train.selector import SelectorStudent

    model = build_model("test_tiny", "tosa", keep=0.5, checkpoint=classifier / "checkpoint.safetensors")
    images = torch.randn(2, 3, 32, 32)
    loss, _ = SelectorStudent(model, (0.5,)).forward(images)
    maps = model.attention_logits(images, [0, 1, 2, 3, 4, 5])
    by_hand = []
    for i in (1, 3, 5):
        p = F.softmax(maps[i], dim=-1)
        q = F.log_softmax(model.reducer.selectors[str(i)](maps[i - 1]), dim=-1)
        by_hand.append((p * (p.log() - q)).sum(-1).mean())
    assert float(loss.detach()) == pytest.approx(float(torch.stack(by_hand).mean().detach()), rel=1e-5)


def _cli(*args, **kw):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    return subprocess.run([*TOSA_BENCH, *args], capture_output=True, text=True, env=env, timeout=240, **kw)


def test_resume_after_sigkill_gives_the_same_weights(shapes, tmp_path):
    args = [*SELECTOR, "--data", str(shapes), "--seed", "3"]
    ref = _cli(*args, "--out", str(tmp_path / "ref"))
    assert ref.returncode == 0, ref.stderr
    out = tmp_path / "killed"
    proc = subprocess.Popen([*TOSA_BENCH, *args, "--out", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 200
    while time.time() < deadline and not (out / "last.pt").is_file():
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)  # mid-epoch 2 (or 3): the epoch in flight is lost
    proc.wait()
    assert (out / "last.pt").is_file(), "the run never finished an epoch"
    assert not (out / "selectors.safetensors").exists(), "killed too late to test anything"
    res = _cli(*args, "--out", str(out), "--resume")
    assert res.returncode == 0, res.stderr
    a, b = load_file(tmp_path / "ref" / "selectors.safetensors"), load_file(out / "selectors.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3]  # each epoch once
    # a resume with other settings is refused, all differences named
    res = _cli(*args[:-2], "--seed", "4", "--out", str(out), "--resume", "--lr", "1e-2")
    assert res.returncode == 2 and "seed: stored 3, given 4" in res.stderr and "lr: stored 0.003, given 0.01" in res.stderr


@pytest.mark.skipif(shutil.which("torchrun") is None and not Path(sys.executable).with_name("torchrun").exists(),
                    reason="torchrun (part of torch) is not on the path")
def test_two_processes_step_like_one(shapes, tmp_path, same_selector_step):
    """One step of 2 processes x 8 images (gloo, CPU) gives the weights of one process on 16."""
    args = ["train", "selector", "--model", "test_tiny", "--epochs", "1", "-b", "16", "--limit", "16", "--device", "cpu",
            "--workers", "0", "--warmup-epochs", "0", "--lr", "1e-2", "--data", str(shapes)]
    one = _cli(*args, "--out", str(tmp_path / "one"))
    assert one.returncode == 0, one.stderr
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).with_name("torchrun"))
    two = subprocess.run([torchrun, "--nproc-per-node", "2", "--master-port", "29517", "--no-python", *TOSA_BENCH, *args,
                          "--out", str(tmp_path / "two")], capture_output=True, text=True, timeout=240,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = load_file(tmp_path / "one" / "selectors.safetensors"), load_file(tmp_path / "two" / "selectors.safetensors")
    same_selector_step(a, b)
    changed = load_file(tmp_path / "one" / "selectors.safetensors")
    fresh = build_model("test_tiny", "tosa", keep=0.5).reducer.state_dict()
    assert any(not torch.equal(changed["reducer." + k], v) for k, v in fresh.items()), "the step changed nothing"
    rows = (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()
    assert len(rows) == 1 and json.loads(rows[0])["images"] == 16  # rank 0 alone writes, counting both ranks


# ------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("extra,needle", [
    (["--data", "/nonexistent/data"], "/nonexistent/data"),
    (["-b", "0"], "--batch-size: expected an integer >= 1"),
    (["--epochs", "0"], "--epochs: expected an integer >= 1"),
    (["--lr", "nan"], "--lr"),
    (["--keep", "1.5"], "keep must be in (0, 1]"),
    (["--placement", "0,1"], "placement"),
    (["--loss", "l1"], "--loss: expected one of kl, mse"),
])
def test_bad_input_is_refused_before_training(shapes, tmp_path, extra, needle):
    out = tmp_path / "run"
    args = ["train", "selector", "--model", "test_tiny", "--device", "cpu", "--workers", "0", "--out", str(out)]
    if "--data" not in extra:
        args += ["--data", str(shapes)]
    res = runner.invoke(app, [*args, *extra])
    assert res.exit_code == 2, res.output
    assert needle in res.output and "Traceback" not in res.output
    assert len(res.output.strip().splitlines()) == 1, res.output  # one line: no warning before the error
    assert not (out / "metrics.jsonl").exists()


def test_checkpoint_of_another_model_and_busy_out_are_refused(classifier, shapes, tmp_path):
    res = runner.invoke(app, ["train", "selector", "--model", "test_deep", "--data", str(shapes), "--device", "cpu",
                              "--checkpoint", str(classifier / "checkpoint.safetensors"), "--out", str(tmp_path / "x")])
    assert res.exit_code == 2 and "does not fit" in res.output
    assert not (tmp_path / "x").exists()
    res = runner.invoke(app, ["train", "classifier", "--data", str(shapes), "--device", "cpu", "--out", str(classifier)])
    assert res.exit_code == 2 and "already holds a run" in res.output
    blocker = tmp_path / "file"
    blocker.write_text("x")
    res = runner.invoke(app, ["train", "classifier", "--data", str(shapes), "--device", "cpu", "--out", str(blocker / "run")])
    assert res.exit_code == 2 and "is a file" in res.output
    empty = tmp_path / "empty" / "cls0"
    empty.mkdir(parents=True)
    res = runner.invoke(app, ["train", "classifier", "--data", str(empty.parent), "--device", "cpu", "--out", str(tmp_path / "y")])
    assert res.exit_code == 2 and "Traceback" not in res.output


# ------------------------------------------------------------------------- fine-tuning and depth
def test_finetune_distills_and_loads_for_the_variant(classifier, shapes, tmp_path):
    out = tmp_path / "ft"
    res = runner.invoke(app, ["train", "finetune", "--data", str(shapes), "--variant", "tosa", "--model", "test_tiny", "--keep", "0.5",
                              "--checkpoint", str(classifier / "checkpoint.safetensors"), "--epochs", "1", "-b", "32", "--limit", "64",
                              "--device", "cpu", "--workers", "0", "--out", str(out)])
    assert res.exit_code == 0, res.output
    row = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert row["kl"] >= 0.0 and math.isfinite(row["loss"])
    state = load_file(out / "checkpoint.safetensors")
    assert any(k.startswith("reducer.selectors.") for k in state)  # the selectors were trained too
    model = build_model("test_tiny", "tosa", keep=0.5, checkpoint=out / "checkpoint.safetensors")
    assert torch.equal(model.reducer.selectors["3"].conv2.weight, state["reducer.selectors.3.conv2.weight"])


def test_distillation_loss_by_hand():
    from tosa_bench.train.classifier import ClassifierStudent

    student_net, teacher_net = torch.nn.Linear(4, 3), torch.nn.Linear(4, 3)

    class Images(torch.nn.Module):  # a "model" mapping images to logits
        def __init__(self, lin):
            super().__init__()
            self.lin = lin

        def forward(self, x):
            return self.lin(x)

    x, y = torch.randn(5, 4), torch.tensor([0, 1, 2, 0, 1])
    loss, metrics = ClassifierStudent(Images(student_net), Images(teacher_net), 0.3)(x, y)
    s, t = student_net(x), teacher_net(x)
    ce = F.cross_entropy(s, y, label_smoothing=0.1)
    p = F.softmax(t, -1)
    kl = (p * (p.log() - F.log_softmax(s, -1))).sum(-1).mean()
    assert float(loss.detach()) == pytest.approx(float((0.7 * ce + 0.3 * kl).detach()), rel=1e-5)
    assert metrics["kl"] == pytest.approx(float(kl.detach()), rel=1e-5)


def test_silog_by_hand():
    from tosa_bench.train.depth import silog_loss

    gt = torch.tensor([[[1.0, 2.0], [4.0, 0.0]]])  # the 0 is not a valid pixel
    pred = torch.tensor([[[2.0, 2.0], [2.0, 9.0]]])
    d = torch.tensor([math.log(2.0), 0.0, math.log(0.5)])
    expected = math.sqrt(float((d ** 2).mean() - 0.85 * d.mean() ** 2))
    assert float(silog_loss(pred, gt)) == pytest.approx(expected, rel=1e-6)
    assert float(silog_loss(gt * 3.0, gt)) == pytest.approx(math.sqrt(0.15) * math.log(3.0), rel=1e-5)  # scale: only 1 - 0.85 left


def test_depth_head_training_writes_the_one_depth_format(tmp_path):
    rooms = tmp_path / "rooms"
    assert runner.invoke(app, ["data", "make", "rooms", "--out", str(rooms), "--n", "12", "--size", "48"]).exit_code == 0
    out = tmp_path / "depth"
    res = runner.invoke(app, ["train", "depth", "--nyu", str(rooms), "--model", "test_tiny", "--variant", "tosa", "--keep", "0.5",
                              "--epochs", "2", "-b", "4", "--device", "cpu", "--workers", "0", "--features", "16", "--out", str(out)])
    assert res.exit_code == 0, res.output
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(math.isfinite(r["loss"]) for r in rows)
    state = load_file(out / "depth.safetensors")
    assert any(k.startswith("head.") for k in state)
    res = runner.invoke(app, ["eval", "--nyu", str(rooms), "--model", "test_tiny", "--variant", "tosa", "--keep", "0.5",
                              "--depth-checkpoint", str(out / "depth.safetensors"), "--device", "cpu"])
    assert res.exit_code == 0, res.output


def test_depth_distillation_from_a_dense_depth_model(tmp_path):
    rooms = tmp_path / "rooms"
    assert runner.invoke(app, ["data", "make", "rooms", "--out", str(rooms), "--n", "12", "--size", "48"]).exit_code == 0
    common = ["--nyu", str(rooms), "--model", "test_tiny", "--epochs", "1", "-b", "4", "--device", "cpu", "--workers", "0", "--features", "16"]
    res = runner.invoke(app, ["train", "depth", *common, "--out", str(tmp_path / "dense")])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["train", "depth", *common, "--variant", "tosa", "--keep", "0.5", "--train-backbone", "--distill", "0.5",
                              "--depth-checkpoint", str(tmp_path / "dense" / "depth.safetensors"), "--out", str(tmp_path / "tosa")])
    assert res.exit_code == 0, res.output
    a, b = load_file(tmp_path / "dense" / "depth.safetensors"), load_file(tmp_path / "tosa" / "depth.safetensors")
    assert not torch.equal(a["backbone.blocks.0.attn.qkv.weight"], b["backbone.blocks.0.attn.qkv.weight"])  # the backbone trained
    res = runner.invoke(app, ["train", "depth", *common, "--distill", "0.5", "--out", str(tmp_path / "x")])
    assert res.exit_code == 2 and "--depth-checkpoint" in res.output


def test_depth_distillation_loss_by_hand():
    from tosa_bench.train.depth import DepthStudent, silog_loss

    class Const(torch.nn.Module):
        def __init__(self, value):
            super().__init__()
            self.backbone, self.head = torch.nn.Linear(1, 1), torch.nn.Linear(1, 1)
            self.value = value

        def forward(self, images):
            return torch.full((images.shape[0], 2, 2), self.value) + 0.0 * self.head.weight.sum()

    gt = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])
    images = torch.zeros(1, 3, 2, 2)
    loss, _ = DepthStudent(Const(2.0), False, Const(3.0), 0.25)(images, gt)
    expected = 0.75 * silog_loss(torch.full((1, 2, 2), 2.0), gt) + 0.25 * silog_loss(torch.full((1, 2, 2), 2.0), torch.full((1, 2, 2), 3.0))
    assert float(loss.detach()) == pytest.approx(float(expected), rel=1e-6)
