"""A convert's files are on the disk before they replace anything, and their names before it returns.

strace records the system calls of a real `hoist convert` (and of `hoist.convert`): every
temporary file is fdatasync'd before the first rename puts one in place; after the last rename
the output directory, and the parent of each directory the write made, is fsync'd; config.json is
fdatasync'd too. `--no-sync` (sync=False) makes none of those calls. `hoist synth` never waits.

Run: HOIST_BIN=build/hoist PYTHONPATH=build/python python3 -m pytest -q tests/python/test_convert_durability.py
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hoist_testlib import ok

# 12 fdatasync(4</tmp/x/.hoist-1-ab-0.partial>) = 0 ; 12 rename("a", "b") = 0 ; 12 fsync(5</tmp/x>) = 0,
# or split in two where threads overlap: "12 fsync(5</tmp/x> <unfinished ...>", "12 <... fsync resumed>) = 0".
# strace pads the pid to five columns: "5706  fsync(...)".
CALL = re.compile(r"^(\d+)\s+(\w+)\((.*)\)\s+=\s+(-?\d+)")
UNFINISHED = re.compile(r"^(\d+)\s+(\w+)\((.*) <unfinished \.\.\.>$")
RESUMED = re.compile(r"^(\d+)\s+<\.\.\. (\w+) resumed>.*\)\s+=\s+(-?\d+)")
FD_PATH = re.compile(r"^\d+<(.*)>")


def _strace(argv, tmp_path: Path, env=None) -> list[tuple[str, list[str]]]:
    """Runs argv under strace; returns the successful calls as (name, [paths]), paths as strace
    shows them: resolved, so compare them with os.path.realpath of yours."""
    strace = shutil.which("strace")
    if strace is None:
        pytest.skip("strace is not installed (apt-get install strace); the sync calls cannot be observed")
    log = tmp_path / "strace.log"
    proc = subprocess.run([strace, "-f", "-qq", "-y", "-e",
                           "trace=fdatasync,fsync,rename,renameat,renameat2,unlink,unlinkat,openat",
                           "-e", "signal=none", "-o", str(log), *map(str, argv)],
                          capture_output=True, text=True, timeout=120, env=env)
    if proc.returncode != 0 and "ptrace" in proc.stderr.lower():
        pytest.skip(f"strace cannot trace here: {proc.stderr.strip()}")
    ok(proc)
    calls, pending = [], {}
    for line in log.read_text().splitlines():
        if m := UNFINISHED.match(line):
            pending[m.group(1)] = (m.group(2), m.group(3))
            continue
        if m := RESUMED.match(line):
            name, args = pending.pop(m.group(1))
            result = m.group(3)
        elif m := CALL.match(line):
            name, args, result = m.group(2), m.group(3), m.group(4)
        else:
            continue
        if result != "0":
            continue
        if name in ("fdatasync", "fsync"):
            calls.append((name, [FD_PATH.match(args).group(1)]))
        elif name == "openat":  # openat(AT_FDCWD, "path", FLAGS[, MODE]) = 3</path>: kept where it truncates
            if "O_TRUNC" in args:
                calls.append(("truncate", re.findall(r'"((?:[^"\\]|\\.)*)"', args)))
        else:  # rename("a", "b") / renameat(AT_FDCWD, "a", AT_FDCWD, "b") / unlink("a") / unlinkat(AT_FDCWD, "a", 0)
            kind = "rename" if name.startswith("rename") else "unlink"
            calls.append((kind, re.findall(r'"((?:[^"\\]|\\.)*)"', args)))
    return calls


def _real(path) -> str:
    return os.path.realpath(path)


def _check_durable(calls, out: Path, made: list[Path]) -> None:
    renames = [i for i, (name, _) in enumerate(calls) if name == "rename"]
    assert renames, calls
    for i in renames:
        src, dst = calls[i][1]
        assert Path(src).name.startswith(".hoist-") and src.endswith(".partial"), calls[i]
        synced_before = {p[0] for name, p in calls[:i] if name == "fdatasync"}
        assert _real(src) in synced_before, f"{dst} was renamed into place before its data was synced: {calls}"
    # No output is rewritten in place, config.json included.
    assert not [c for c in calls if c[0] == "truncate" and _real(Path(c[1][0]).parent) == _real(out)], calls
    # The output directory after every rename and every removal of an earlier output in it; the
    # parent of each directory the write made (its new entry) once the files are in place.
    changes = [i for i, (name, p) in enumerate(calls)
               if (name == "rename" and _real(Path(p[1]).parent) == _real(out))
               or (name == "unlink" and ".hoist-" not in p[0] and _real(Path(p[0]).parent) == _real(out))]
    assert ("fsync", [_real(out)]) in calls[changes[-1] + 1:], f"{out} not synced after its last change: {calls}"
    synced_after_renames = {p[0] for name, p in calls[renames[0] + 1:] if name == "fsync"}
    parents = {_real(d.parent) for d in made}
    assert parents <= synced_after_renames, f"not synced: {parents - synced_after_renames}"


def test_cli_convert_syncs_files_before_renaming_and_directories_after(hoist_bin, tiny, tmp_path):
    out = tmp_path / "made" / "out"  # two directories the write makes
    calls = _strace([hoist_bin, "convert", tiny, out, "--max-shard-size", "100KB"], tmp_path)
    shards = sorted(p.name for p in out.glob("model-*.safetensors"))
    assert len(shards) > 1 and (out / "model.safetensors.index.json").is_file()
    _check_durable(calls, out, [tmp_path / "made", out])
    # Every output, the index included, came through a synced rename.
    renamed = {Path(p[1]).name for name, p in calls if name == "rename"}
    assert renamed == set(shards) | {"model.safetensors.index.json", "config.json"}


def test_cli_convert_into_an_existing_file_syncs_its_directory(hoist_bin, tiny, tmp_path):
    out = tmp_path / "one.safetensors"
    out.write_bytes(b"an earlier output")
    calls = _strace([hoist_bin, "convert", tiny / "model.safetensors", out, "--dtype", "f32"], tmp_path)
    _check_durable(calls, tmp_path, [])
    assert out.read_bytes()[:8] != b"an earli"


def test_cli_convert_over_shards_removes_the_index_first_and_syncs_after_removing(hoist_bin, run_hoist, tiny,
                                                                                   tmp_path):
    # One file replaces an earlier sharded output: its index goes before its shards (a crash part
    # way must not leave an index naming shards that are gone, read in place of the new file), and
    # the directory is synced after the last removal.
    out = tmp_path / "out"
    ok(run_hoist("convert", tiny, out, "--max-shard-size", "100KB"))
    calls = _strace([hoist_bin, "convert", tiny, out], tmp_path)
    removed = [Path(p[0]).name for name, p in calls if name == "unlink" and ".hoist-" not in p[0]]
    assert removed[0] == "model.safetensors.index.json" and len(removed) > 2, removed
    assert all(r.startswith("model-") for r in removed[1:]), removed
    _check_durable(calls, out, [])
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]


def test_cli_convert_names_other_writes_leftovers(run_hoist, tiny, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / ".hoist-1-0badf00d-0.partial").write_bytes(b"x" * 100)
    proc = ok(run_hoist("convert", tiny, out))
    assert ".hoist-1-0badf00d-0.partial: 100 bytes left by a write that was killed" in proc.stderr, proc.stderr
    assert (out / ".hoist-1-0badf00d-0.partial").exists()


def test_cli_convert_no_sync_waits_for_nothing(hoist_bin, tiny, tmp_path):
    out = tmp_path / "out"
    calls = _strace([hoist_bin, "convert", tiny, out, "--max-shard-size", "100KB", "--no-sync"], tmp_path)
    assert [c for c in calls if c[0] != "rename"] == []
    assert len([c for c in calls if c[0] == "rename"]) > 1  # it still wrote through temporary names


def test_cli_convert_says_what_the_disk_cost(run_hoist, tiny, tmp_path):
    synced = ok(run_hoist("convert", tiny, tmp_path / "a")).stdout
    assert re.search(r"\(\d+\.\d{3} s, \d+\.\d{3} s of it waiting for the disk\)", synced), synced
    unsynced = ok(run_hoist("convert", tiny, tmp_path / "b", "--no-sync")).stdout
    assert "not waiting for the disk" in unsynced, unsynced
    quiet = ok(run_hoist("convert", tiny, tmp_path / "c", "-q"))
    assert quiet.stdout == "" and (tmp_path / "c" / "model.safetensors").is_file()


def test_synth_does_not_wait_for_the_disk(hoist_bin, tmp_path):
    calls = _strace([hoist_bin, "synth", "--arch", "tiny-llama", "--quiet", tmp_path / "m"], tmp_path)
    assert [c for c in calls if c[0] != "rename"] == []


@pytest.mark.parametrize("sync", [True, False])
def test_python_convert_syncs_unless_told_not_to(tiny, tmp_path, sync):
    pytest.importorskip("hoist", reason="the hoist Python module is not built")
    out = tmp_path / "made" / "out"
    program = ("import hoist, sys; r = hoist.convert(sys.argv[1], sys.argv[2], max_shard_size='100KB', "
               "sync=sys.argv[3] == '1'); assert (r['sync_seconds'] > 0) == (sys.argv[3] == '1'), r")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    calls = _strace([sys.executable, "-c", program, tiny, out, "1" if sync else "0"], tmp_path, env=env)
    if sync:
        _check_durable(calls, out, [tmp_path / "made", out])
    else:
        assert not any(name in ("fdatasync", "fsync") and ".hoist-" in p[0] for name, p in calls), calls
        assert not any(name == "fsync" and p[0] == _real(out) for name, p in calls), calls
