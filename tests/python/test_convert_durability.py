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
CALL = re.compile(r"^(\d+) (\w+)\((.*)\)\s+=\s+(-?\d+)")
UNFINISHED = re.compile(r"^(\d+) (\w+)\((.*) <unfinished \.\.\.>$")
RESUMED = re.compile(r"^(\d+) <\.\.\. (\w+) resumed>.*\)\s+=\s+(-?\d+)")
FD_PATH = re.compile(r"^\d+<(.*)>")


def _strace(argv, tmp_path: Path, env=None) -> list[tuple[str, list[str]]]:
    """Runs argv under strace; returns the successful calls as (name, [paths])."""
    strace = shutil.which("strace")
    if strace is None:
        pytest.skip("strace is not installed (apt-get install strace); the sync calls cannot be observed")
    log = tmp_path / "strace.log"
    proc = subprocess.run([strace, "-f", "-qq", "-y", "-e", "trace=fdatasync,fsync,rename,renameat,renameat2",
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
        else:  # rename("a", "b") / renameat(AT_FDCWD, "a", AT_FDCWD, "b")
            calls.append(("rename", re.findall(r'"((?:[^"\\]|\\.)*)"', args)))
    return calls


def _check_durable(calls, out: Path, made: list[Path]) -> None:
    renames = [i for i, (name, _) in enumerate(calls) if name == "rename"]
    assert renames, calls
    first, last = renames[0], renames[-1]
    synced_before = {p[0] for name, p in calls[:first] if name == "fdatasync"}
    for i in renames:
        src, dst = calls[i][1]
        assert src.endswith(".partial"), calls[i]
        assert src in synced_before, f"{dst} was renamed into place before its data was synced: {calls}"
    synced_dirs = {p[0] for name, p in calls[last + 1:] if name == "fsync"}
    wanted = {str(out)} | {str(d.parent) for d in made}
    assert wanted <= synced_dirs, f"directories not synced after the renames: {wanted - synced_dirs}"
    if (out / "config.json").exists():
        assert any(name == "fdatasync" and p[0] == str(out / "config.json") for name, p in calls), calls


def test_cli_convert_syncs_files_before_renaming_and_directories_after(hoist_bin, tiny, tmp_path):
    out = tmp_path / "made" / "out"  # two directories the write makes
    calls = _strace([hoist_bin, "convert", tiny, out, "--max-shard-size", "100KB"], tmp_path)
    shards = sorted(p.name for p in out.glob("model-*.safetensors"))
    assert len(shards) > 1 and (out / "model.safetensors.index.json").is_file()
    _check_durable(calls, out, [tmp_path / "made", out])
    # Every output, the index included, came through a synced rename.
    renamed = {Path(p[1]).name for name, p in calls if name == "rename"}
    assert renamed == set(shards) | {"model.safetensors.index.json"}


def test_cli_convert_into_an_existing_file_syncs_its_directory(hoist_bin, tiny, tmp_path):
    out = tmp_path / "one.safetensors"
    out.write_bytes(b"an earlier output")
    calls = _strace([hoist_bin, "convert", tiny / "model.safetensors", out, "--dtype", "f32"], tmp_path)
    _check_durable(calls, tmp_path, [])
    assert out.read_bytes()[:8] != b"an earli"


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
        assert not any(name == "fsync" and p[0] == str(out) for name, p in calls), calls
