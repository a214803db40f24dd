"""How the fused selector kernel is built, with a fake ``torch.utils.cpp_extension``: what
is handed to the compiler, the one-time notice, the switch that turns it off, and the
reason kept when a build fails. Runs without a compiler (tests/test_selector_cpu.py
checks the real kernel's numbers where one is built). Written for the mutation check of
``selector_cpu.kernel`` (docs/mutation.md, seventh sitting)."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
from torch.utils import cpp_extension

from tosa_bench.kernels import selector_cpu
from tosa_bench.kernels.selector_cpu import CFLAGS, DISABLE_ENV, SOURCE


class FakeBuild:
    """Stands in for cpp_extension: records each load, fails with ``error`` if given, and
    sees the extension logger's level while it builds."""

    def __init__(self, root: Path, error: Exception | None = None) -> None:
        self.root, self.error = root, error
        self.loads: list[dict] = []
        self.level_during: list[int] = []
        self.module = SimpleNamespace(selector_received=None)

    def get_build_directory(self, name, verbose):
        """torch's folder for the extension ``name``: one per build name."""
        assert verbose is False
        folder = self.root / str(name)
        folder.mkdir(exist_ok=True)
        return str(folder)

    def load(self, **kw):
        self.loads.append(kw)
        self.level_during.append(logging.getLogger("torch.utils.cpp_extension").level)
        if self.error is not None:
            raise self.error
        return self.module


@pytest.fixture
def fresh(monkeypatch, tmp_path):
    """The kernel module as if never built in this process, the switch off, a fake build."""
    monkeypatch.setattr(selector_cpu, "_module", None)
    monkeypatch.setattr(selector_cpu, "_reason", None)
    monkeypatch.setattr(selector_cpu, "_tried", False)
    monkeypatch.delenv(DISABLE_ENV, raising=False)
    logger = logging.getLogger("torch.utils.cpp_extension")
    monkeypatch.setattr(logger, "level", logging.INFO)

    def install(error: Exception | None = None) -> FakeBuild:
        fake = FakeBuild(tmp_path, error)
        monkeypatch.setattr(cpp_extension, "_get_build_directory", fake.get_build_directory)
        monkeypatch.setattr(cpp_extension, "load", fake.load)
        return fake

    return install


def test_the_first_call_builds_once_for_this_machine_and_says_so(fresh, capsys) -> None:
    fake = fresh()
    assert selector_cpu.kernel() is fake.module
    assert selector_cpu.kernel() is fake.module  # built once per process
    assert fake.loads == [{"name": selector_cpu._build_name(), "sources": [str(SOURCE)], "extra_cflags": list(CFLAGS),
                           "extra_ldflags": ["-fopenmp"], "verbose": False}]
    assert capsys.readouterr().err == ("tosa-bench: compiling ToSA's CPU selector kernel for this machine (once, about a minute) "
                                       f"in {fake.root / selector_cpu._build_name()}\n")
    assert fake.level_during == [logging.ERROR]  # torch's "no CUDA runtime" notice is hidden ...
    assert logging.getLogger("torch.utils.cpp_extension").level == logging.INFO  # ... and the level put back
    assert selector_cpu.unavailable_reason() is None and selector_cpu.build_tag() == selector_cpu._build_name()


def test_a_build_already_on_disk_is_loaded_without_the_notice(fresh, capsys) -> None:
    fake = fresh()
    name = selector_cpu._build_name()
    folder = Path(fake.get_build_directory(name, verbose=False))
    (folder / f"{name}.so").write_bytes(b"")  # a build of this name, in its own folder
    (Path(fake.get_build_directory("another", verbose=False)) / "another.so").write_bytes(b"")
    assert selector_cpu.kernel() is fake.module and len(fake.loads) == 1
    assert capsys.readouterr().err == ""


def test_the_switch_turns_the_kernel_off_without_building(fresh, monkeypatch) -> None:
    fake = fresh()
    monkeypatch.setenv(DISABLE_ENV, "1")
    assert selector_cpu.kernel() is None and selector_cpu.build_tag() is None
    assert fake.loads == []
    assert selector_cpu.unavailable_reason() == f"turned off by {DISABLE_ENV}"
    monkeypatch.delenv(DISABLE_ENV)
    assert selector_cpu.kernel() is None  # decided once per process


@pytest.mark.parametrize("error,reason", [
    (RuntimeError("Error building extension\nninja: build stopped"), "could not build the selector kernel: Error building extension"),
    (OSError(""), "could not build the selector kernel: OSError"),  # no message: the exception's type
    (RuntimeError("x" * 400 + "\nmore"), "could not build the selector kernel: " + "x" * 300),  # first line, cut at 300
])
def test_a_failed_build_keeps_the_pytorch_path_and_says_why(fresh, error, reason) -> None:
    fake = fresh(error)
    assert selector_cpu.kernel() is None and selector_cpu.kernel() is None
    assert len(fake.loads) == 1  # not retried on every call
    assert selector_cpu.unavailable_reason() == reason and selector_cpu.build_tag() is None
    assert logging.getLogger("torch.utils.cpp_extension").level == logging.INFO
    with pytest.raises(RuntimeError, match=f"^{reason}$"):
        selector_cpu.received(None, None, None, False, 32)


def test_the_real_kernel_builds_where_a_toolchain_is_present():
    """The kernel's numeric tests skip where it cannot be built. That may only mean a
    machine without the toolchain: where a C++ compiler and ninja are present (as in CI),
    a source that does not compile must fail here, not turn those tests into skips."""
    if os.environ.get(DISABLE_ENV):
        pytest.skip(f"the kernel is turned off by {DISABLE_ENV}")
    compiler = os.environ.get("CXX", "c++")
    if shutil.which(compiler) is None or not cpp_extension.is_ninja_available():
        pytest.skip(f"no C++ compiler ({compiler}) or ninja here: the kernel cannot be built, its tests skip")
    assert selector_cpu.kernel() is not None, selector_cpu.unavailable_reason()
