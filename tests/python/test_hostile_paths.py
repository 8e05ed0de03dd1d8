"""Paths and names a hostile or careless user can give: messages stay one
line, JSON output never aborts, and convert never overwrites its source."""

import json
import os

from hoist_testlib import ok, stderr_error_line, write_raw


def test_convert_onto_itself_is_refused(run_hoist, tiny, tmp_path):
    src = tmp_path / "m.safetensors"
    src.write_bytes((tiny / "model.safetensors").read_bytes())
    before = src.read_bytes()
    proc = run_hoist("convert", src, src)
    assert proc.returncode == 2
    assert "being converted" in stderr_error_line(proc)
    assert src.read_bytes() == before
    proc = run_hoist("convert", tiny, tiny)  # into the checkpoint's own directory
    assert proc.returncode == 2


def test_json_output_survives_non_utf8_paths(run_hoist, tiny, tmp_path):
    odd = tmp_path / os.fsdecode(b"bad\xff")
    odd.mkdir()
    (odd / "model.safetensors").write_bytes((tiny / "model.safetensors").read_bytes())
    proc = run_hoist("inspect", "--json", odd)
    assert proc.returncode == 0, proc.stderr
    assert len(json.loads(proc.stdout)["tensors"]) == 21
    report = tmp_path / "r.json"
    proc = run_hoist("load", odd, "--report", report, "-q")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(report.read_text())["devices"]["cpu"]["driver_allocs"] == 1


def test_newline_in_a_path_keeps_the_error_on_one_line(run_hoist, tmp_path):
    bad = tmp_path / "x\nerror: all good.safetensors"
    bad.write_bytes(b"\x05\x00\x00\x00\x00\x00\x00\x00{bad}")
    proc = run_hoist("inspect", bad)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert "\\x0a" in lines[0]


def test_a_fifo_is_refused_at_once_not_waited_on(run_hoist, tiny, tmp_path):
    """Opening a FIFO for reading would block until a writer came: as a
    checkpoint, as a shard in a directory, or as a config.json beside one."""
    fifo = tmp_path / "pipe.safetensors"
    os.mkfifo(fifo)
    proc = run_hoist("inspect", fifo, timeout=20)
    assert proc.returncode == 2
    assert "not a regular file" in stderr_error_line(proc)
    proc = run_hoist("load", tmp_path, "-q", timeout=20)  # a directory lists regular files only
    assert proc.returncode == 2
    assert "no .safetensors files" in stderr_error_line(proc)
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "model.safetensors").write_bytes((tiny / "model.safetensors").read_bytes())
    os.mkfifo(ckpt / "config.json")
    proc = run_hoist("load", ckpt, "-q", timeout=20)
    assert proc.returncode == 2
    line = stderr_error_line(proc)
    assert "config.json" in line and "not a regular file" in line, line


def test_a_symlink_loop_is_an_io_error_naming_it(run_hoist, tmp_path):
    loop = tmp_path / "loop.safetensors"
    loop.symlink_to(loop.name)
    proc = run_hoist("inspect", loop)
    assert proc.returncode == 1  # not bad content: the path cannot be resolved
    line = stderr_error_line(proc)
    assert "loop.safetensors" in line and "symbolic links" in line, line


def test_tables_escape_what_the_file_says(run_hoist, tmp_path):
    """Tensor names and metadata are the file's to choose: the inspect and
    plan tables show them escaped (no terminal escape sequence reaches the
    screen) and a long metadata value shortened; --json keeps them whole."""
    name = "evil\x1b]0;pwned\x07.\x1b[31mweight"
    value = "\x1b[2J" + "v" * 5000
    path = write_raw(tmp_path / "evil.safetensors",
                     {"__metadata__": {"note\x1b[1m": value}, name: {"dtype": "U8", "shape": [2], "data_offsets": [0, 2]}},
                     b"\x01\x02")
    for args in (("inspect", path), ("plan", path)):
        out = ok(run_hoist(*args)).stdout
        assert "\x1b" not in out and "\x07" not in out, args
        assert "evil\\x1b]0;pwned\\x07.\\x1b[31mweight" in out, out
    out = ok(run_hoist("inspect", path)).stdout
    line = next(l for l in out.splitlines() if l.startswith("metadata "))
    assert line.startswith("metadata note\\x1b[1m: \\x1b[2Jvvv") and "(5004 bytes; --json shows it whole)" in line
    assert len(line) < 400
    doc = json.loads(ok(run_hoist("inspect", "--json", path)).stdout)
    assert doc["metadata"] == {"note\x1b[1m": value} and doc["tensors"][0]["name"] == name
