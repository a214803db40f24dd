"""The results store's repair of a records file before a resumed run appends to it.

A run killed mid-write leaves one of two tails: a whole record whose newline did not make
it (a result: keep it) or a torn piece of a record (garbage: cut it, or the next append
glues onto it and both records are lost). ``RunStore.open_for_append`` must tell them
apart; these tests pin each branch down byte for byte.
"""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

import pytest

from tosa_bench.errors import OutputPathError, RunStateError
from tosa_bench.results.store import RunStore, encode_record, read_records, write_atomic


def _store(tmp_path, body: bytes) -> RunStore:
    store = RunStore(tmp_path)
    store.records_path.write_bytes(body)
    return store


def test_whole_record_that_lost_its_newline_is_kept(tmp_path):
    first, last = encode_record({"config_hash": "a", "status": "ok"}), encode_record({"config_hash": "b", "status": "ok"})
    store = _store(tmp_path, first + last[:-1])
    store.open_for_append()
    assert store.records_path.read_bytes() == first + last  # only the newline was added
    store.append({"config_hash": "c", "status": "ok"})
    loaded = read_records(store.records_path)
    assert [r["config_hash"] for r in loaded.records] == ["a", "b", "c"]
    assert not loaded.torn_tail and not loaded.bad_lines


def test_lone_whole_record_without_newline_is_kept(tmp_path):
    only = encode_record({"config_hash": "a", "status": "ok"})
    store = _store(tmp_path, only[:-1])
    store.open_for_append()
    assert store.records_path.read_bytes() == only


def test_torn_partial_record_is_cut_at_the_last_newline(tmp_path):
    first = encode_record({"config_hash": "a", "status": "ok"})
    torn = encode_record({"config_hash": "b", "status": "ok", "x": "y" * 40})[:30]
    store = _store(tmp_path, first + torn)
    store.open_for_append()
    assert store.records_path.read_bytes() == first
    store.append({"config_hash": "c", "status": "ok"})
    loaded = read_records(store.records_path)
    assert [r["config_hash"] for r in loaded.records] == ["a", "c"]
    assert not loaded.torn_tail and not loaded.bad_lines


def test_torn_first_line_and_json_that_is_no_record_are_cut(tmp_path):
    # no newline at all: the cut is at 0
    store = _store(tmp_path, encode_record({"config_hash": "a"})[:12])
    store.open_for_append()
    assert store.records_path.read_bytes() == b""
    # valid JSON but not a record (no config hash): not a result either
    first = encode_record({"config_hash": "a"})
    store = _store(tmp_path, first + b'{"status": "ok"}')
    store.open_for_append()
    assert store.records_path.read_bytes() == first


def test_clean_and_missing_files_are_left_alone(tmp_path):
    body = encode_record({"config_hash": "a"}) + encode_record({"config_hash": "b"})
    store = _store(tmp_path, body)
    store.open_for_append()
    assert store.records_path.read_bytes() == body
    fresh = RunStore(tmp_path / "new")
    fresh.path.mkdir()
    fresh.open_for_append()
    assert fresh.records_path.read_bytes() == b""


# ----------------------------------------------------------------------------- reading
def test_read_records_skips_blank_and_bad_lines_and_keeps_the_rest(tmp_path):
    """A blank line is skipped (not the end of the file), a bad line is reported by its
    1-based number, and a whole last record without its newline counts as a record."""
    a, b, c = (encode_record({"config_hash": h}) for h in "abc")
    path = tmp_path / "records.jsonl"
    path.write_bytes(a + b"\n" + b"not json\n" + b + c[:-1])
    loaded = read_records(path)
    assert [r["config_hash"] for r in loaded.records] == ["a", "b", "c"]
    assert loaded.bad_lines == [3] and not loaded.torn_tail
    assert read_records(tmp_path / "missing.jsonl").records == []


def test_encode_record_is_one_compact_strict_json_line():
    """NaN/inf become null (strict JSON); objects JSON does not know (paths, dtypes) are
    written as text instead of failing the point's record."""
    line = encode_record({"config_hash": "a", "x": 1.5, "bad": float("nan"), "inf": (float("inf"), 2), "path": Path("d/f")})
    assert line == b'{"config_hash":"a","x":1.5,"bad":null,"inf":[null,2],"path":"d/f"}\n'


# ----------------------------------------------------------------------------- writing
def test_write_atomic_renames_a_shared_temp_file_from_the_same_folder(tmp_path, monkeypatch):
    """The temporary file must live in the target's folder (a rename across file systems
    is not atomic, or fails), be hidden, and end world-readable like any result file."""
    renames = []
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda src, dst: (renames.append((Path(src), Path(dst))), real_replace(src, dst))[1])
    target = tmp_path / "table.md"
    write_atomic(target, "hello\n")
    assert target.read_text() == "hello\n"
    (src, dst), = renames
    assert src.parent == tmp_path and src.name.startswith(".table.md.") and dst == target
    assert stat.S_IMODE(target.stat().st_mode) == 0o644


def test_write_atomic_failure_leaves_the_old_file_and_no_temp_file(tmp_path, monkeypatch):
    target = tmp_path / "table.md"
    target.write_text("old\n")

    def fail(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="No space left"):
        write_atomic(target, "new\n")
    assert target.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == ["table.md"]


def test_write_json_round_trips_cleaned_and_readable(tmp_path):
    store = RunStore(tmp_path)
    store.write_json("env.json", {"a": 1, "nan": float("nan"), "path": Path("x")})
    assert (tmp_path / "env.json").read_text() == '{\n "a": 1,\n "nan": null,\n "path": "x"\n}\n'
    assert store.read_json("env.json") == {"a": 1, "nan": None, "path": "x"}
    assert store.read_json("missing.json") is None


# ----------------------------------------------------------------------------- opening
def test_create_makes_nested_folders_and_refuses_a_store_with_records(tmp_path):
    store = RunStore.create(tmp_path / "a" / "b" / "run")
    assert store.path.is_dir() and list(store.path.iterdir()) == []  # the probe is gone
    store.append({"config_hash": "a"})
    with pytest.raises(OutputPathError, match=r"already holds records\.jsonl; continue it with --resume"):
        RunStore.create(store.path)


def test_create_names_the_os_reason(tmp_path, monkeypatch):
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    with pytest.raises(OutputPathError, match=r"cannot create .*out \(Not a directory\)$"):
        RunStore.create(blocker / "out")
    real = tempfile.mkstemp
    out = tmp_path / "ro"
    out.mkdir()

    def refuse_in_out(*args, **kwargs):
        """Refuse files in ``out`` only: the probe must be written there, not elsewhere."""
        if Path(kwargs.get("dir", "")) == out:
            raise PermissionError(13, "Permission denied")
        return real(*args, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", refuse_in_out)
    with pytest.raises(OutputPathError, match=r"is not writable \(Permission denied\)$"):
        RunStore.create(out)


def test_existing_needs_records_or_a_suite(tmp_path):
    with pytest.raises(RunStateError, match="run directory not found"):
        RunStore.existing(tmp_path / "nope")
    with pytest.raises(RunStateError, match=r"not a run directory \(no records\.jsonl or suite\.toml\)"):
        RunStore.existing(tmp_path)
    (tmp_path / "suite.toml").write_text("")
    assert RunStore.existing(tmp_path).path == tmp_path  # planned, nothing measured yet
    (tmp_path / "suite.toml").unlink()
    (tmp_path / "records.jsonl").write_text("")
    assert RunStore.existing(tmp_path).path == tmp_path
