"""The `hoist` command line: arguments, exit codes, output shapes and values.

Expected values come from testdata/conformance/README.md (files written by the
reference safetensors implementation), from the published Hugging Face
configs of each architecture, or from parsing files with the standard library;
never from hoist itself.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import struct
from pathlib import Path

import pytest

from hoist_testlib import inspect_json, ok, read_header, stderr_error_line, tensor_bytes, write_raw

SUBCOMMANDS = ["inspect", "load", "convert", "synth"]

# ------------------------------------------------------------ conformance data
# testdata/conformance/README.md: nine tensors of shape [6] holding -3..2.
CONF_DTYPES = {"B": "U8", "H": "U16", "I": "U32", "b": "I8", "h": "I16", "i": "I32", "e": "F16", "f": "F32", "d": "F64"}
DTYPE_BYTES = {"U8": 1, "I8": 1, "U16": 2, "I16": 2, "F16": 2, "BF16": 2, "U32": 4, "I32": 4, "F32": 4, "F64": 8}
STRUCT_CODE = {"U8": "B", "I8": "b", "U16": "H", "I16": "h", "U32": "I", "I32": "i", "F16": "e", "F32": "f", "F64": "d"}


def conf_values(dtype: str) -> bytes:
    """-3..2 stored little-endian in `dtype`, unsigned types wrapping."""
    code = STRUCT_CODE[dtype]
    vals = list(range(-3, 3))
    if dtype.startswith("U"):
        vals = [v % (1 << (8 * DTYPE_BYTES[dtype])) for v in vals]
    if dtype.startswith("F"):
        vals = [float(v) for v in vals]
    return struct.pack("<" + code * 6, *vals)


# --------------------------------------------------------------- help/version


def test_app_help(run_hoist):
    proc = ok(run_hoist("--help"))
    for sub in SUBCOMMANDS:
        assert sub in proc.stdout, f"--help does not list {sub}:\n{proc.stdout}"
    assert "--version" in proc.stdout


@pytest.mark.parametrize(
    "sub,flags",
    [
        ("inspect", ["--json"]),
        ("load", ["--device", "--dtype", "--threads", "--only", "--report", "--quiet"]),
        ("convert", ["--dtype", "--max-shard-size", "--only", "--rename", "--drop", "--compat"]),
        ("synth", ["--arch", "--dtype", "--layers", "--sparse"]),
    ],
)
def test_subcommand_help(run_hoist, sub, flags):
    proc = ok(run_hoist(sub, "--help"))
    for flag in flags:
        assert flag in proc.stdout, f"`hoist {sub} --help` does not mention {flag}:\n{proc.stdout}"


def test_synth_help_lists_architectures(run_hoist):
    proc = ok(run_hoist("synth", "--help"))
    for arch in ["tiny-llama", "llama-3.2-1b", "llama-3.1-8b", "llama-3.1-70b", "qwen2.5-7b", "mixtral-8x7b", "mixtral-8x22b"]:
        assert arch in proc.stdout


def test_unknown_command_is_named(run_hoist):
    proc = run_hoist("lod", "x")
    assert proc.returncode == 2 and proc.stdout == ""
    assert stderr_error_line(proc).startswith("error: 'lod' is not a command: inspect, load, plan")


def test_version(run_hoist):
    proc = ok(run_hoist("--version"))
    assert proc.stdout.startswith("hoist "), proc.stdout
    assert re.fullmatch(r"hoist \d+\.\d+\.\d+\S*\n?", proc.stdout), proc.stdout


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["--bogus"],
        ["frobnicate"],
        ["inspect"],  # missing PATH
        ["inspect", "--bogus", "{conf}"],
        ["inspect", "{conf}", "extra-positional"],
        ["load", "--threads", "0", "{conf}"],
        ["load", "--threads", "many", "{conf}"],
        ["convert", "{conf}"],  # missing DST
        ["synth", "{tmp}/out"],  # missing --arch
        ["synth", "--arch", "tiny-llama", "--layers", "0", "{tmp}/out"],
    ],
    ids=lambda a: " ".join(a) or "no-args",
)
def test_bad_arguments_exit_2(run_hoist, args, tmp_path, conformance):
    """Argument errors only: every path given is valid, so the flag is the reason."""
    conf = str(conformance / "overall.safetensors")
    proc = run_hoist(*[a.replace("{conf}", conf).replace("{tmp}", str(tmp_path)) for a in args])
    assert proc.returncode == 2, f"exit {proc.returncode}: {proc.stderr}"
    assert proc.stderr.startswith("error:"), proc.stderr
    assert proc.stdout == ""
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------- inspect


def expected_overall(path: Path) -> list[dict]:
    """The conformance file's tensors, from the README plus a stdlib header parse."""
    n, header = read_header(path)
    assert n == 526  # README: data section starts at 8 + 526
    out = []
    for name, dtype in CONF_DTYPES.items():
        begin, end = header[name]["data_offsets"]
        out.append({"name": name, "dtype": dtype, "shape": [6], "offset": 8 + n + begin, "nbytes": 6 * DTYPE_BYTES[dtype]})
        assert end - begin == 6 * DTYPE_BYTES[dtype]
    out.sort(key=lambda t: t["offset"])
    return out


def test_inspect_json_overall_exact(run_hoist, conformance):
    path = conformance / "overall.safetensors"
    doc = inspect_json(run_hoist, path)
    assert list(doc.keys()) == ["files", "tensors", "total_bytes", "metadata"]
    assert len(doc["files"]) == 1 and os.path.samefile(doc["files"][0], path)
    assert doc["total_bytes"] == 168
    assert doc["metadata"] == {"test": "a"}
    want = expected_overall(path)
    # README: back to back at 534 + 0, 6, 18, 42, ...
    assert [t["offset"] - 534 for t in want][:4] == [0, 6, 18, 42]
    assert len(doc["tensors"]) == 9
    for got, exp in zip(doc["tensors"], want):
        assert set(got.keys()) == {"name", "dtype", "shape", "file", "offset", "nbytes"}, got
        assert os.path.samefile(got["file"], path)
        assert {k: got[k] for k in exp} == exp
    # The offsets point at the README's values.
    raw = path.read_bytes()
    for t in doc["tensors"]:
        assert raw[t["offset"] : t["offset"] + t["nbytes"]] == conf_values(t["dtype"]), t["name"]


@pytest.mark.parametrize("name", sorted(CONF_DTYPES))
def test_inspect_json_each_conformance_file(run_hoist, conformance, name):
    path = conformance / f"{name}.safetensors"
    doc = inspect_json(run_hoist, path)
    dtype = CONF_DTYPES[name]
    assert doc["metadata"] == {"test": "a"}
    assert doc["total_bytes"] == 6 * DTYPE_BYTES[dtype]
    [t] = doc["tensors"]
    assert (t["name"], t["dtype"], t["shape"], t["nbytes"]) == (name, dtype, [6], 6 * DTYPE_BYTES[dtype])
    n, _ = read_header(path)
    assert t["offset"] == 8 + n
    raw = path.read_bytes()
    assert raw[t["offset"] : t["offset"] + t["nbytes"]] == conf_values(dtype)


def test_inspect_table(run_hoist, conformance):
    path = conformance / "overall.safetensors"
    proc = ok(run_hoist("inspect", path))
    lines = proc.stdout.splitlines()
    for exp in expected_overall(path):
        row = [ln for ln in lines if ln.split()[:1] == [exp["name"]]]
        assert len(row) == 1, f"no single row for {exp['name']}:\n{proc.stdout}"
        cols = row[0].split()
        assert cols[1] == exp["dtype"]
        assert "[6]" in row[0]
        assert str(exp["nbytes"]) in cols and str(exp["offset"]) in cols, row[0]
    assert "9 tensors" in proc.stdout
    assert "168" in proc.stdout
    assert re.search(r"\btest\b.*\ba\b", proc.stdout), "metadata not shown"


def test_inspect_missing_path(run_hoist, tmp_path):
    missing = tmp_path / "nope.safetensors"
    proc = run_hoist("inspect", missing)
    assert proc.returncode == 2
    assert str(missing) in stderr_error_line(proc)
    assert proc.stdout == ""


# ---------------------------------------------------------- malformed files

GOOD_HEADER = {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, "b": {"dtype": "U8", "shape": [4], "data_offsets": [8, 12]}}


def _malformed_cases():
    """(id, builder(path) -> None, tensor name the message must contain or None)."""
    cases = []

    def add(case_id, tensor=None):
        def deco(fn):
            cases.append(pytest.param(fn, tensor, id=case_id))
            return fn

        return deco

    @add("empty")
    def _(p):
        p.write_bytes(b"")

    @add("shorter-than-8")
    def _(p):
        p.write_bytes(b"\x10\x00\x00")

    @add("truncated-header")
    def _(p):
        write_raw(p, GOOD_HEADER, bytes(12), length=500)

    @add("truncated-data")
    def _(p):
        write_raw(p, GOOD_HEADER, bytes(7))

    @add("header-too-large")
    def _(p):
        write_raw(p, "{}", b"", length=100_000_001)

    @add("header-length-huge")
    def _(p):
        write_raw(p, "{}", b"", length=2**64 - 1)

    @add("lfs-pointer")
    def _(p):
        p.write_text(
            "version https://git-lfs.github.com/spec/v1\n"
            "oid sha256:4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393\n"
            "size 90868376\n"
        )

    @add("bad-json")
    def _(p):
        write_raw(p, '{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]', bytes(8))

    @add("not-utf8")
    def _(p):
        write_raw(p, b'{"\xff\xfe": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}}', bytes(1))

    @add("json-array")
    def _(p):
        write_raw(p, "[1, 2]", b"")

    @add("gap", tensor="b")
    def _(p):
        h = {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, "b": {"dtype": "U8", "shape": [4], "data_offsets": [10, 14]}}
        write_raw(p, h, bytes(14))

    @add("overlap", tensor="b")
    def _(p):
        h = {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, "b": {"dtype": "U8", "shape": [4], "data_offsets": [6, 10]}}
        write_raw(p, h, bytes(10))

    @add("trailing-bytes")
    def _(p):
        write_raw(p, GOOD_HEADER, bytes(20))

    @add("size-mismatch", tensor="a")
    def _(p):
        h = {"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}
        write_raw(p, h, bytes(8))

    @add("unknown-dtype", tensor="a")
    def _(p):
        h = {"a": {"dtype": "F128", "shape": [1], "data_offsets": [0, 16]}}
        write_raw(p, h, bytes(16))

    @add("negative-dim", tensor="a")
    def _(p):
        h = {"a": {"dtype": "U8", "shape": [-1], "data_offsets": [0, 0]}}
        write_raw(p, h, b"")

    @add("begin-after-end", tensor="a")
    def _(p):
        h = {"a": {"dtype": "U8", "shape": [0], "data_offsets": [4, 0]}}
        write_raw(p, h, bytes(4))

    @add("shape-overflow", tensor="a")
    def _(p):
        h = {"a": {"dtype": "F64", "shape": [2**32, 2**32, 2], "data_offsets": [0, 8]}}
        write_raw(p, h, bytes(8))

    @add("duplicate-name", tensor="a")
    def _(p):
        write_raw(
            p,
            '{"a": {"dtype": "U8", "shape": [2], "data_offsets": [0, 2]},'
            ' "a": {"dtype": "U8", "shape": [2], "data_offsets": [2, 4]}}',
            bytes(4),
        )

    @add("metadata-not-string")
    def _(p):
        h = {"__metadata__": {"k": 1}, "a": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}}
        write_raw(p, h, bytes(1))

    @add("sub-byte-partial", tensor="a")
    def _(p):
        h = {"a": {"dtype": "F4", "shape": [3], "data_offsets": [0, 1]}}
        write_raw(p, h, bytes(1))

    return cases


@pytest.mark.parametrize("build,tensor", _malformed_cases())
@pytest.mark.parametrize("command", ["inspect", "load"])
def test_malformed_file_exit_2_one_line(run_hoist, tmp_path, build, tensor, command):
    path = tmp_path / "bad.safetensors"
    build(path)
    proc = run_hoist(command, path)
    assert proc.returncode == 2, f"exit {proc.returncode}\nstdout: {proc.stdout}\nstderr: {proc.stderr}"
    line = stderr_error_line(proc)
    assert str(path) in line, f"message does not name the file: {line}"
    if tensor is not None:
        assert re.search(rf"(?<![\w.]){re.escape(tensor)}(?![\w.])", line.replace(str(path), "")), (
            f"message does not name tensor {tensor!r}: {line}"
        )
    assert proc.stdout == ""


def test_lfs_pointer_message_says_lfs(run_hoist, tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:00\nsize 12\n")
    line = stderr_error_line(run_hoist("inspect", path))
    assert "LFS" in line or "lfs" in line, line


def test_valid_edge_files_are_accepted(run_hoist, tmp_path):
    """Rules that must not over-reject: whitespace around the JSON, empty
    header, zero-size tensors, unaligned data section, no metadata."""
    p1 = write_raw(tmp_path / "ws.safetensors", "  \n" + json.dumps(GOOD_HEADER) + " \t\n  ", bytes(12))
    doc = inspect_json(run_hoist, p1)
    assert [t["name"] for t in doc["tensors"]] == ["a", "b"] and doc["metadata"] == {}
    p2 = write_raw(tmp_path / "empty.safetensors", "{}", b"")
    doc = inspect_json(run_hoist, p2)
    assert doc["tensors"] == [] and doc["total_bytes"] == 0
    h = {"z": {"dtype": "F32", "shape": [0, 3], "data_offsets": [0, 0]}, "s": {"dtype": "F64", "shape": [], "data_offsets": [0, 8]}}
    p3 = write_raw(tmp_path / "zero.safetensors", h, bytes(8))
    doc = inspect_json(run_hoist, p3)
    got = {t["name"]: (t["shape"], t["nbytes"]) for t in doc["tensors"]}
    assert got == {"z": ([0, 3], 0), "s": ([], 8)}
    ok(run_hoist("load", "--quiet", p3))


# ---------------------------------------------------------- sharded inputs


def _sharded(tmp_path, index_map=None, total=None):
    """Two hand-written shards and an index (stdlib only)."""
    d = tmp_path / "ckpt"
    d.mkdir()
    write_raw(d / "model-00001-of-00002.safetensors", {"x": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]}}, b"\1\2\3\4")
    write_raw(d / "model-00002-of-00002.safetensors", {"y": {"dtype": "I16", "shape": [2], "data_offsets": [0, 4]}}, b"\x05\x06\x07\x08")
    wm = index_map or {"x": "model-00001-of-00002.safetensors", "y": "model-00002-of-00002.safetensors"}
    (d / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": 8 if total is None else total}, "weight_map": wm}))
    return d


def test_sharded_directory_inspects(run_hoist, tmp_path):
    d = _sharded(tmp_path)
    doc = inspect_json(run_hoist, d)
    assert {t["name"]: (t["dtype"], t["shape"], t["nbytes"], Path(t["file"]).name) for t in doc["tensors"]} == {
        "x": ("U8", [4], 4, "model-00001-of-00002.safetensors"),
        "y": ("I16", [2], 4, "model-00002-of-00002.safetensors"),
    }
    assert doc["total_bytes"] == 8 and len(doc["files"]) == 2


@pytest.mark.parametrize(
    "case,index_map,total,needle",
    [
        ("listed-but-absent", {"x": "model-00001-of-00002.safetensors", "y": "model-00002-of-00002.safetensors", "z": "model-00001-of-00002.safetensors"}, None, "z"),
        ("not-in-index", {"x": "model-00001-of-00002.safetensors"}, None, "y"),
        ("wrong-shard", {"x": "model-00002-of-00002.safetensors", "y": "model-00002-of-00002.safetensors"}, None, "x"),
        ("total-size", None, 9, "total_size"),
    ],
)
def test_sharded_index_inconsistent(run_hoist, tmp_path, case, index_map, total, needle):
    d = _sharded(tmp_path, index_map, total)
    proc = run_hoist("inspect", d)
    assert proc.returncode == 2, f"{case}: exit {proc.returncode} {proc.stderr}"
    line = stderr_error_line(proc)
    assert str(d) in line, line
    assert needle in line.replace(str(d), ""), line


def test_index_file_given_as_the_path_opens_its_shards(run_hoist, tmp_path):
    d = _sharded(tmp_path)
    by_index = inspect_json(run_hoist, d / "model.safetensors.index.json")
    assert by_index["tensors"] == inspect_json(run_hoist, d)["tensors"]


def test_index_and_model_safetensors_read_like_transformers(run_hoist, tmp_path):
    """transformers reads model.safetensors before it looks for an index: so does hoist, and says so."""
    d = _sharded(tmp_path)
    write_raw(d / "model.safetensors", {"z": {"dtype": "U8", "shape": [2], "data_offsets": [0, 2]}}, b"\1\2")
    proc = ok(run_hoist("inspect", "--json", d))
    assert [t["name"] for t in json.loads(proc.stdout)["tensors"]] == ["z"]
    assert "model.safetensors is read" in proc.stderr, proc.stderr


def test_model_safetensors_alone_is_read_beside_other_files(run_hoist, tmp_path):
    """No index: model.safetensors still wins, as in transformers (a Mistral
    folder's consolidated.safetensors holds the same weights again)."""
    d = tmp_path / "mistral"
    d.mkdir()
    write_raw(d / "model.safetensors", {"z": {"dtype": "U8", "shape": [2], "data_offsets": [0, 2]}}, b"\1\2")
    write_raw(d / "consolidated.safetensors", {"w": {"dtype": "U8", "shape": [2], "data_offsets": [0, 2]}}, b"\1\2")
    proc = ok(run_hoist("inspect", "--json", d))
    assert [t["name"] for t in json.loads(proc.stdout)["tensors"]] == ["z"]
    assert "'consolidated.safetensors' beside it is not" in proc.stderr, proc.stderr


def test_index_warns_of_files_it_does_not_list(run_hoist, tmp_path):
    d = _sharded(tmp_path)
    write_raw(d / "consolidated.safetensors", {"w": {"dtype": "U8", "shape": [2], "data_offsets": [0, 2]}}, b"\1\2")
    proc = ok(run_hoist("inspect", "--json", d))
    assert sorted(t["name"] for t in json.loads(proc.stdout)["tensors"]) == ["x", "y"]
    assert "'consolidated.safetensors'" in proc.stderr and "not read" in proc.stderr, proc.stderr


def test_directory_without_index(run_hoist, tmp_path, conformance):
    d = tmp_path / "noindex"
    d.mkdir()
    for n in ["b", "f"]:
        (d / f"{n}.safetensors").write_bytes((conformance / f"{n}.safetensors").read_bytes())
    doc = inspect_json(run_hoist, d)
    assert sorted(t["name"] for t in doc["tensors"]) == ["b", "f"]
    assert doc["total_bytes"] == 6 + 24


# ---------------------------------------------------------------------- load


def _report(run_hoist, tmp_path, path, *flags) -> dict:
    rep = tmp_path / "report.json"
    ok(run_hoist("load", path, "--report", rep, "--quiet", *flags))
    return json.loads(rep.read_text())


def test_load_report(run_hoist, tmp_path, conformance):
    r = _report(run_hoist, tmp_path, conformance / "overall.safetensors")
    assert r["total_bytes"] == 168
    assert isinstance(r["seconds"], (int, float)) and 0 <= r["seconds"] < 60
    got = {t["name"]: t for t in r["tensors"]}
    assert set(got) == set(CONF_DTYPES)
    for name, dtype in CONF_DTYPES.items():
        t = got[name]
        assert {k: t[k] for k in ["name", "device", "dtype", "shape", "nbytes"]} == {
            "name": name, "device": "cpu", "dtype": dtype, "shape": [6], "nbytes": 6 * DTYPE_BYTES[dtype]}
    cpu = r["devices"]["cpu"]
    assert cpu["driver_allocs"] == 1
    # One arena, each tensor 64-byte aligned in it: at least 8 * 64 + the last.
    assert cpu["bytes"] >= 8 * 64 + 6


@pytest.mark.parametrize(
    "dtype,sizes",
    [
        ("f32", {"e": 24, "f": 24, "d": 24}),
        ("bf16", {"e": 12, "f": 12, "d": 12}),
        ("f16", {"e": 12, "f": 12, "d": 12}),
    ],
)
def test_load_dtype_casts_floats_only(run_hoist, tmp_path, conformance, dtype, sizes):
    r = _report(run_hoist, tmp_path, conformance / "overall.safetensors", "--dtype", dtype)
    got = {t["name"]: t for t in r["tensors"]}
    want_name = {"f32": "F32", "bf16": "BF16", "f16": "F16"}[dtype]
    expected_total = 0
    for name, src in CONF_DTYPES.items():
        if name in sizes:
            assert got[name]["dtype"] == want_name and got[name]["nbytes"] == sizes[name], got[name]
            expected_total += sizes[name]
        else:  # integers are never cast
            assert got[name]["dtype"] == src and got[name]["nbytes"] == 6 * DTYPE_BYTES[src], got[name]
            expected_total += 6 * DTYPE_BYTES[src]
    assert r["total_bytes"] == expected_total


@pytest.mark.parametrize("io", ["pread", "uring", "auto"])
def test_load_io_engine_is_reported(run_hoist, tmp_path, tiny, io):
    r = _report(run_hoist, tmp_path, tiny, "--io", io)
    assert r["io"] == io
    # auto: the fixture was just written, so its files are in the page cache.
    assert r["uring_files"] == (1 if io == "uring" else 0)
    assert r["total_bytes"] == r["bytes_read"] > 0


def test_load_report_stages(run_hoist, tmp_path, tiny):
    keys = {"plan", "device_start", "reserve", "read", "copy", "cast"}
    plain = _report(run_hoist, tmp_path, tiny)
    assert set(plain["stages"]) == keys
    assert plain["stages"]["read"] > 0 and plain["stages"]["cast"] == 0 and plain["stages"]["copy"] == 0
    assert plain["stages"]["device_start"] == 0  # a cpu load starts no GPU
    assert plain["device_cast_pieces"] == 0
    assert 0 < plain["time_to_first_tensor"] <= plain["seconds"]
    cast = _report(run_hoist, tmp_path, tiny, "--dtype", "f32")
    assert cast["stages"]["cast"] > 0  # on the cpu, casts run on the host
    assert cast["device_cast_pieces"] == 0
    assert cast["host_cast_cpu_seconds"] == cast["stages"]["cast"]
    assert plain["host_cast_cpu_seconds"] == 0


@pytest.mark.parametrize(
    "regex,names",
    [
        ("^[A-Z]$", {"B", "H", "I"}),
        ("[ef]", {"e", "f"}),  # searched, not anchored
        ("^(d|i)$", {"d", "i"}),
        ("", set(CONF_DTYPES)),
    ],
)
def test_load_only(run_hoist, tmp_path, conformance, regex, names):
    flags = ["--only", regex]
    r = _report(run_hoist, tmp_path, conformance / "overall.safetensors", *flags)
    assert {t["name"] for t in r["tensors"]} == names
    assert r["total_bytes"] == sum(6 * DTYPE_BYTES[CONF_DTYPES[n]] for n in names)
    assert r["devices"]["cpu"]["driver_allocs"] == 1


def test_load_only_search_semantics_on_real_names(run_hoist, tmp_path):
    ok(run_hoist("synth", "--arch", "tiny-llama", "--quiet", tmp_path / "m"))
    r = _report(run_hoist, tmp_path, tmp_path / "m", "--only", r"layers\.1\..*proj")
    want = {f"model.layers.1.self_attn.{p}_proj.weight" for p in "qkvo"} | {f"model.layers.1.mlp.{p}_proj.weight" for p in ["gate", "up", "down"]}
    assert {t["name"] for t in r["tensors"]} == want


@pytest.mark.parametrize("flags", [["--only", "("], ["--only", "[a-"], ["--dtype", "bad"], ["--dtype", "i8"], ["--device", "nonsense"], ["--io", "mmap"]])
def test_load_bad_flags_exit_2(run_hoist, conformance, flags):
    proc = run_hoist("load", conformance / "overall.safetensors", *flags)
    assert proc.returncode == 2, proc.stderr
    stderr_error_line(proc)
    assert proc.stdout == ""


@pytest.mark.parametrize(
    "flags,message",
    [
        (["--device", "cuda:x"], "--device: 'cuda:x' is not a device"),
        (["--device-map", "auto", "--max-memory", "0=20XB"], "--max-memory '0=20XB': '20XB' is not a size"),
        (["--device-map", "auto", "--max-memory", "gpu=1GB"], "--max-memory 'gpu=1GB': 'gpu' is not a device"),
        (["--device-map", "auto", "--max-memory", "cpu=1GB,cpu=2GB"], "--max-memory: cpu is given twice"),
        (["--device-map", '["cpu"]'], "a device map is a JSON object of prefix -> device"),
    ],
)
def test_bad_flag_messages_name_the_flag(run_hoist, conformance, flags, message):
    for command in ("load", "plan"):
        proc = run_hoist(command, conformance / "overall.safetensors", *flags)
        assert proc.returncode == 2, proc.stderr
        assert message in stderr_error_line(proc)


@pytest.mark.parametrize(
    "flags,message",
    [
        (["--chunk-size", "abc"], "--chunk-size: 'abc' is not a size"),
        (["--chunk-size", "100"], "--chunk-size must be at least 4096 bytes"),
        (["--margin", "lots"], "--margin: 'lots' is not a size"),
        (["--only", "a", "--only", "b"], "--only: given more than once; it takes one value"),
    ],
)
def test_bad_load_option_messages_name_the_option(run_hoist, conformance, flags, message):
    proc = run_hoist("load", conformance / "overall.safetensors", *flags)
    assert proc.returncode == 2, proc.stderr
    assert message in stderr_error_line(proc)


def test_device_map_file_may_be_named_anything(run_hoist, conformance, tmp_path):
    path = tmp_path / "[map].json"
    path.write_text(json.dumps({"": "cpu"}))
    ok(run_hoist("plan", "--device-map", path, conformance / "overall.safetensors"))


def test_load_quiet_and_summary(run_hoist, conformance):
    path = conformance / "overall.safetensors"
    quiet = ok(run_hoist("load", "--quiet", path))
    assert quiet.stdout == "" and quiet.stderr == ""
    q2 = ok(run_hoist("load", "-q", path))
    assert q2.stdout == "" and q2.stderr == ""
    loud = ok(run_hoist("load", path))
    assert "9 tensors" in loud.stdout, loud.stdout
    assert re.search(r"\b1 allocation\b", loud.stdout), loud.stdout
    assert "GB/s" in loud.stdout


def test_load_expect_findings_on_stderr(run_hoist, tmp_path, tiny):
    expect = tmp_path / "expect.json"
    expect.write_text(json.dumps(["model.norm.weight", "lm_head.weight", "missing.one"]))
    for command in ("load", "plan"):
        proc = ok(run_hoist(command, "--device", "cpu", "--expect", expect, tiny))
        lines = [line for line in proc.stderr.splitlines() if line.startswith("expect: ")]
        assert lines[0] == "expect: 1 missing: 'missing.one'", proc.stderr
        assert lines[1].startswith("expect: 19 unexpected (not read): "), proc.stderr
    ok_expect = tmp_path / "ok.json"
    ok_expect.write_text(json.dumps(["model.norm.weight"]))
    proc = ok(run_hoist("load", "--device", "cpu", "--expect", ok_expect, tiny))
    assert "missing" not in proc.stderr and "unexpected (not read): " in proc.stderr
    assert ok(run_hoist("load", "--quiet", "--device", "cpu", "--expect", expect, tiny)).stderr == ""
    every = tmp_path / "every.json"
    every.write_text(json.dumps(sorted(tensor_bytes(tiny / "model.safetensors"))))
    proc = ok(run_hoist("load", "--device", "cpu", "--expect", every, tiny))
    assert proc.stderr == "expect: the checkpoint holds every expected tensor and nothing else\n", proc.stderr


def test_strict_refuses_a_checkpoint_that_is_not_as_expected(run_hoist, tmp_path, tiny):
    names = sorted(tensor_bytes(tiny / "model.safetensors"))
    exact = tmp_path / "exact.json"
    exact.write_text(json.dumps(names))
    short = tmp_path / "short.json"
    short.write_text(json.dumps(names[1:] + ["missing.one"]))
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps({n: {"dtype": "F32"} if n == "model.norm.weight" else {} for n in names}))
    for command in ("plan", "load"):
        ok(run_hoist(command, "--device", "cpu", "--strict", "--expect", exact, tiny))
        proc = run_hoist(command, "--device", "cpu", "--strict", "--expect", short, tiny)
        assert proc.returncode == 2 and proc.stdout == "", proc.stderr
        assert stderr_error_line(proc) == (f"error: {tiny}: not as expected (strict): "
                                           f"1 missing ('missing.one'); 1 unexpected ({names[0]!r})")
        proc = run_hoist(command, "--device", "cpu", "--strict", "--expect", wrong, tiny)
        assert proc.returncode == 2 and "1 mismatched ('model.norm.weight': expected F32, found BF16)" in stderr_error_line(proc)
        proc = run_hoist(command, "--device", "cpu", "--strict", tiny)
        assert proc.returncode == 2 and "strict checks a load against expected names" in stderr_error_line(proc)
        # --only narrows what is asked for: expected names it leaves out are not missing.
        proc = ok(run_hoist(command, "--device", "cpu", "--strict", "--expect", exact, "--only", r"layers\.0\.", tiny))
        assert "expect: the checkpoint holds every expected tensor and nothing else that --only and --drop let through" \
            in proc.stderr, proc.stderr


def test_load_unwritable_report_fails_before_loading(run_hoist, tmp_path, tiny):
    (tmp_path / "a-file").write_text("x")
    os.symlink(tmp_path / "nowhere" / "r.json", tmp_path / "dangling.json")
    for report, reason in ((tmp_path / "no" / "such" / "dir" / "report.json", "No such file or directory"),
                           (tmp_path, "Is a directory"),
                           (tmp_path / "a-file" / "r.json", "Not a directory"),
                           (tmp_path / "dangling.json", "No such file or directory")):
        proc = run_hoist("load", "--device", "cpu", "--report", report, tiny)
        assert proc.returncode == 2, proc.stderr
        line = stderr_error_line(proc)
        assert line.startswith(f"error: --report {report}: cannot write: {reason}"), line
        assert proc.stdout == ""  # nothing was loaded
    assert not (tmp_path / "no").exists() and (tmp_path / "a-file").read_text() == "x"
    fresh = tmp_path / "fresh.json"
    ok(run_hoist("load", "--device", "cpu", "--report", fresh, "--quiet", tiny))
    assert json.loads(fresh.read_text())["total_bytes"] == TINY_BYTES


def test_load_report_never_writes_over_the_checkpoint(run_hoist, tmp_path, tiny):
    import shutil
    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny, ckpt)
    before = {p.name: p.read_bytes() for p in ckpt.iterdir()}
    # Files there, and names a load would read as part of it (a new shard
    # or index beside the weights) though nothing has them yet.
    for target in (ckpt / "model.safetensors", ckpt / "config.json", ckpt / "." / "model.safetensors",
                   ckpt / "model-00001-of-00002.safetensors", ckpt / "model.safetensors.index.json"):
        proc = run_hoist("load", "--device", "cpu", "--report", target, ckpt)
        assert proc.returncode == 2, proc.stderr
        assert stderr_error_line(proc) == (f"error: --report {target}: names a file of the checkpoint being loaded "
                                           "(weights, index or config); write the report elsewhere")
    proc = run_hoist("load", "--device", "cpu", "--report", ckpt / "model.safetensors", ckpt / "model.safetensors")
    assert proc.returncode == 2 and "names a file of the checkpoint" in proc.stderr, proc.stderr
    assert {p.name: p.read_bytes() for p in ckpt.iterdir()} == before
    # A report of another name beside the weights is fine.
    ok(run_hoist("load", "--device", "cpu", "--report", ckpt / "report.json", "--quiet", ckpt))
    assert json.loads((ckpt / "report.json").read_text())["total_bytes"] == TINY_BYTES


def test_load_report_to_stdout(run_hoist, tiny):
    proc = ok(run_hoist("load", "--device", "cpu", "--report", "-", tiny))
    assert json.loads(proc.stdout)["total_bytes"] == TINY_BYTES  # stdout holds the report alone
    assert proc.stderr.startswith("loaded ") and "tensors" in proc.stderr, proc.stderr


@pytest.mark.parametrize("args", [["inspect"], ["inspect", "--json"], ["plan", "--json", "--device", "cpu"],
                                  ["load", "--device", "cpu"]], ids=["inspect", "inspect-json", "plan-json", "load"])
def test_output_that_cannot_be_written_is_an_error(tmp_path, hoist_bin, tiny, args):
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full here")
    import subprocess
    with open("/dev/full", "w") as full:
        proc = subprocess.run([str(hoist_bin), *args, str(tiny)], stdout=full, stderr=subprocess.PIPE, text=True,
                              timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.splitlines() == ["error: stdout: cannot write: No space left on device"], proc.stderr


def test_a_file_path_with_a_trailing_slash_is_bad_input(run_hoist, tiny, tmp_path):
    for cmd in (["inspect"], ["load", "--device", "cpu"], ["convert"]):
        extra = [tmp_path / "out"] if cmd == ["convert"] else []
        proc = run_hoist(*cmd, f"{tiny}/model.safetensors/", *extra)
        assert proc.returncode == 2, proc.stderr
        assert "not a directory" in stderr_error_line(proc), proc.stderr


def test_convert_onto_a_file_that_is_not_safetensors_is_bad_input(run_hoist, tiny, tmp_path):
    target = tmp_path / "notes.txt"
    target.write_text("keep me")
    proc = run_hoist("convert", tiny, target)
    assert proc.returncode == 2, proc.stderr
    assert stderr_error_line(proc) == (f"error: {target}: is a file, not a directory; the output is a .safetensors "
                                       "file or a directory")
    assert target.read_text() == "keep me"


def test_load_report_says_where_disk_tensors_stay(run_hoist, tmp_path, tiny):
    proc = ok(run_hoist("load", "--device-map", json.dumps({"model.layers.0": "disk", "": "cpu"}), tiny))
    assert proc.stdout.startswith("loaded 12 tensors") and "; 9 left on disk" in proc.stdout, proc.stdout
    rep = _report(run_hoist, tmp_path, tiny, "--device-map", json.dumps({"model.layers.0": "disk", "": "cpu"}))
    with open(tiny / "model.safetensors", "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
    disk = [t for t in rep["tensors"] if t["device"] == "disk"]
    assert len(disk) == 9
    for t in disk:
        assert t["offset"] is None and Path(t["file"]) == tiny / "model.safetensors", t
        assert t["file_offset"] == 8 + n + header[t["name"]]["data_offsets"][0], t
    # The plan says the same, with an absolute path however the checkpoint was named.
    proc = run_hoist("plan", "--json", "--device-map", json.dumps({"model.layers.0": "disk", "": "cpu"}), tiny.name,
                     cwd=tiny.parent)
    plan = json.loads(ok(proc).stdout)
    assert ({t["name"]: (t["file"], t["file_offset"]) for t in plan["tensors"] if t["device"] == "disk"} ==
            {t["name"]: (t["file"], t["file_offset"]) for t in disk})


def test_filters_that_leave_nothing_warn(run_hoist, tiny):
    for flags in (["--only", "nomatch"], ["--drop", "."]):
        proc = ok(run_hoist("load", "--device", "cpu", *flags, tiny))
        assert "none of the checkpoint's 21 tensors is kept" in proc.stderr, proc.stderr


def test_load_missing_path(run_hoist, tmp_path):
    missing = tmp_path / "gone"
    proc = run_hoist("load", missing)
    assert proc.returncode == 2
    assert str(missing) in stderr_error_line(proc)


@pytest.mark.parametrize("threads", ["1", "2", "7"])
def test_load_threads(run_hoist, tmp_path, threads):
    ok(run_hoist("synth", "--arch", "tiny-llama", "--quiet", tmp_path / "m"))
    r = _report(run_hoist, tmp_path, tmp_path / "m", "--threads", threads)
    assert len(r["tensors"]) == 21 and r["total_bytes"] == TINY_BYTES
    assert r["threads"] == int(threads)


def _load_on_a_terminal(hoist_bin, *args) -> tuple[int, bytes]:
    """Runs `hoist load` with stderr on a pseudo-terminal; its exit status and
    everything written there."""
    import pty
    import subprocess

    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen([str(hoist_bin), "load", *map(str, args)], stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=slave)
        os.close(slave)
        import select
        import time

        out, deadline = b"", time.monotonic() + 120
        while time.monotonic() < deadline:
            if not select.select([master], [], [], 1)[0]:
                continue
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            out += data
        else:
            proc.kill()
        return proc.wait(timeout=10), out
    finally:
        os.close(master)


def test_progress_line_on_a_terminal_only(run_hoist, hoist_bin, tmp_path):
    # Holes read fast but not instantly: 4 KiB reads on one thread keep the
    # load going well past the first line, drawn as soon as the plan is made
    # (within 5 ms).
    model = tmp_path / "sparse"
    ok(run_hoist("synth", "--arch", "llama-3.2-1b", "--sparse", "--quiet", model))
    slow = ["--threads", "1", "--chunk-size", "4096", "--only", "embed"]
    report = tmp_path / "r.json"
    rc, out = _load_on_a_terminal(hoist_bin, model, *slow, "--report", report)
    assert rc == 0, out
    seconds = json.loads(report.read_text())["seconds"]
    assert seconds > 0.05, f"the load took only {seconds} s: too short to see its progress line"
    text = out.decode()
    lines = re.findall(r"\r\x1b\[K([^\r]*?) / ([^\r]*?)  ([\d.]+) GB/s  ETA ([\d.]+) s", text)
    # Before the first bytes land: no rate, no time left yet.
    starting = re.findall(r"\r\x1b\[K0 B / ([^\r]*?)  starting", text)
    assert lines or starting, repr(text[:500])
    assert all(total == "525.34 MB" for _, total, _, _ in lines) and all(t == "525.34 MB" for t in starting), text
    assert all(done != "0 B" for done, _, _, _ in lines), lines
    # Updated in place (never a new line), then cleared before the summary
    # goes to stdout.
    assert text.endswith("\r\x1b[K") and "\n" not in text, repr(text[-300:])
    # --quiet: nothing on the terminal; not a terminal: no progress line.
    rc, quiet = _load_on_a_terminal(hoist_bin, model, *slow, "--quiet")
    assert rc == 0 and quiet == b"", quiet
    piped = ok(run_hoist("load", model, *slow))
    assert "\r" not in piped.stderr and "ETA" not in piped.stderr + piped.stdout


# --------------------------------------------------------------------- synth
# Published Hugging Face configs (the numbers in each config.json).
PUBLISHED = {
    "llama-3.2-1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=True),
    "llama-3.1-8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=False),
    "llama-3.1-70b": dict(hidden_size=8192, intermediate_size=28672, num_hidden_layers=80, num_attention_heads=64, num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=False),
    "qwen2.5-7b": dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4, vocab_size=152064, tie_word_embeddings=False),
    "mixtral-8x7b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8, vocab_size=32000, tie_word_embeddings=False, num_local_experts=8),
    "mixtral-8x22b": dict(hidden_size=6144, intermediate_size=16384, num_hidden_layers=56, num_attention_heads=48, num_key_value_heads=8, vocab_size=32000, tie_word_embeddings=False, num_local_experts=8),
}
TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, vocab_size=512, tie_word_embeddings=False)
# Published checkpoints: tensor count, index total_size (bf16), shard count.
PUBLISHED_FACTS = {
    "llama-3.2-1b": (146, 2_471_628_800, 1),
    "llama-3.1-8b": (291, 16_060_522_496, 4),
    "llama-3.1-70b": (723, 141_107_412_992, 30),
    "qwen2.5-7b": (339, 15_231_233_024, 4),
    "mixtral-8x7b": (995, 93_405_585_408, 19),
    "mixtral-8x22b": (1739, 281_241_268_224, 59),
}


def expected_tensors(arch: str, cfg: dict, layers: int | None = None) -> dict[str, list[int]]:
    """Hugging Face tensor names and shapes for a config (transformers' layout)."""
    h, inter, heads, kv, vocab = (cfg[k] for k in ["hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads", "vocab_size"])
    hd = cfg.get("head_dim", h // heads)
    n_layers = cfg["num_hidden_layers"] if layers is None else layers
    experts = cfg.get("num_local_experts", 0)
    t = {"model.embed_tokens.weight": [vocab, h], "model.norm.weight": [h]}
    if not cfg["tie_word_embeddings"]:
        t["lm_head.weight"] = [vocab, h]
    for i in range(n_layers):
        p = f"model.layers.{i}."
        t[p + "input_layernorm.weight"] = [h]
        t[p + "post_attention_layernorm.weight"] = [h]
        t[p + "self_attn.q_proj.weight"] = [heads * hd, h]
        t[p + "self_attn.k_proj.weight"] = [kv * hd, h]
        t[p + "self_attn.v_proj.weight"] = [kv * hd, h]
        t[p + "self_attn.o_proj.weight"] = [h, heads * hd]
        if arch.startswith("qwen"):
            t[p + "self_attn.q_proj.bias"] = [heads * hd]
            t[p + "self_attn.k_proj.bias"] = [kv * hd]
            t[p + "self_attn.v_proj.bias"] = [kv * hd]
        if experts:
            t[p + "block_sparse_moe.gate.weight"] = [experts, h]
            for e in range(experts):
                q = p + f"block_sparse_moe.experts.{e}."
                t[q + "w1.weight"] = [inter, h]
                t[q + "w2.weight"] = [h, inter]
                t[q + "w3.weight"] = [inter, h]
        else:
            t[p + "mlp.gate_proj.weight"] = [inter, h]
            t[p + "mlp.up_proj.weight"] = [inter, h]
            t[p + "mlp.down_proj.weight"] = [h, inter]
    return t


def total_bytes(tensors: dict[str, list[int]], elem: int = 2) -> int:
    return sum(elem * math.prod(s) for s in tensors.values())


TINY_BYTES = total_bytes(expected_tensors("tiny-llama", TINY))


def test_expected_tables_match_published_numbers():
    """Guards the test's own formula: it reproduces the published totals."""
    for arch, (count, size, _) in PUBLISHED_FACTS.items():
        t = expected_tensors(arch, PUBLISHED[arch])
        assert (len(t), total_bytes(t)) == (count, size), arch
    assert "lm_head.weight" not in expected_tensors("llama-3.2-1b", PUBLISHED["llama-3.2-1b"])


def _shards(d: Path) -> list[Path]:
    return sorted(d.glob("*.safetensors"))


def check_synth_dir(run_hoist, d: Path, arch: str, cfg: dict, layers=None, elem=2, dtype="BF16"):
    want = expected_tensors(arch, cfg, layers)
    doc = inspect_json(run_hoist, d)
    got = {t["name"]: t["shape"] for t in doc["tensors"]}
    missing, extra = set(want) - set(got), set(got) - set(want)
    assert not missing and not extra, f"missing {sorted(missing)[:5]} extra {sorted(extra)[:5]}"
    assert len(doc["tensors"]) == len(want), "duplicate names"
    assert got == want
    assert {t["dtype"] for t in doc["tensors"]} == {dtype}
    assert doc["total_bytes"] == total_bytes(want, elem)
    config = json.loads((d / "config.json").read_text())
    for k, v in cfg.items():
        if k == "num_hidden_layers" and layers is not None:
            v = layers
        assert config.get(k) == v, f"config.json {k}: {config.get(k)} != {v}"
    return doc


@pytest.mark.parametrize("arch", list(PUBLISHED))
def test_synth_sparse_matches_published(run_hoist, tmp_path, arch):
    count, size, n_shards = PUBLISHED_FACTS[arch]
    d = tmp_path / arch
    ok(run_hoist("synth", "--arch", arch, "--sparse", "--quiet", d))
    doc = check_synth_dir(run_hoist, d, arch, PUBLISHED[arch])
    assert len(doc["tensors"]) == count
    assert doc["total_bytes"] == size
    shards = _shards(d)
    assert len(shards) == n_shards, [s.name for s in shards]
    index_path = d / "model.safetensors.index.json"
    if n_shards == 1:
        assert [s.name for s in shards] == ["model.safetensors"]
        assert not index_path.exists()
    else:
        assert [s.name for s in shards] == [f"model-{k:05d}-of-{n_shards:05d}.safetensors" for k in range(1, n_shards + 1)]
        index = json.loads(index_path.read_text())
        assert index["metadata"]["total_size"] == size
        assert set(index["weight_map"]) == set(expected_tensors(arch, PUBLISHED[arch]))
        for name, shard in index["weight_map"].items():
            _, header = read_header(d / shard)
            assert name in header, f"{name} not in {shard}"
    apparent = allocated = 0
    for s in shards:
        n, header = read_header(s)
        assert (8 + n) % 8 == 0
        data = sum(e["data_offsets"][1] - e["data_offsets"][0] for k, e in header.items() if k != "__metadata__")
        assert data <= 5_000_000_000 or len(header) <= 2
        st = s.stat()
        assert st.st_size == 8 + n + data
        apparent += st.st_size
        allocated += st.st_blocks * 512
    # --sparse: the data is holes; far less is allocated than the apparent size.
    assert allocated < 64 * 2**20 + apparent // 1000, (allocated, apparent)


def test_synth_llama_3_2_1b_ties_embeddings(run_hoist, tmp_path):
    d = tmp_path / "m"
    ok(run_hoist("synth", "--arch", "llama-3.2-1b", "--sparse", "--quiet", d))
    doc = inspect_json(run_hoist, d)
    names = [t["name"] for t in doc["tensors"]]
    assert "lm_head.weight" not in names and len(names) == 146
    assert json.loads((d / "config.json").read_text())["tie_word_embeddings"] is True


@pytest.mark.parametrize("arch", ["llama-3.1-8b", "qwen2.5-7b", "mixtral-8x7b"])
def test_synth_layers_scales(run_hoist, tmp_path, arch):
    d = tmp_path / "m"
    ok(run_hoist("synth", "--arch", arch, "--sparse", "--layers", "2", "--quiet", d))
    doc = check_synth_dir(run_hoist, d, arch, PUBLISHED[arch], layers=2)
    per_layer = {"llama-3.1-8b": 9, "qwen2.5-7b": 12, "mixtral-8x7b": 31}[arch]
    assert len(doc["tensors"]) == 3 + 2 * per_layer


def test_synth_tiny_llama(run_hoist, tmp_path):
    d = tmp_path / "tiny"
    proc = ok(run_hoist("synth", "--arch", "tiny-llama", d))
    assert f"to {d}: 1 .safetensors file and config.json," in proc.stdout
    check_synth_dir(run_hoist, d, "tiny-llama", TINY)
    assert [p.name for p in _shards(d)] == ["model.safetensors"]
    n, header = read_header(d / "model.safetensors")
    assert (8 + n) % 8 == 0
    # Real data (not holes, not zeros), finite and small bf16 values.
    import array

    for name, raw in tensor_bytes(d / "model.safetensors").items():
        halves = array.array("H", raw)
        assert any(halves), f"{name} is all zeros"
        for hbits in halves:
            f = struct.unpack("<f", struct.pack("<I", hbits << 16))[0]
            assert math.isfinite(f) and abs(f) <= 1.0, (name, hex(hbits))


@pytest.mark.parametrize("dtype,name,elem", [("f32", "F32", 4), ("f16", "F16", 2), ("bf16", "BF16", 2)])
def test_synth_dtype(run_hoist, tmp_path, dtype, name, elem):
    d = tmp_path / "m"
    ok(run_hoist("synth", "--arch", "tiny-llama", "--dtype", dtype, "--quiet", d))
    check_synth_dir(run_hoist, d, "tiny-llama", TINY, elem=elem, dtype=name)
    torch_name = {"f32": "float32", "f16": "float16", "bf16": "bfloat16"}[dtype]
    config = json.loads((d / "config.json").read_text())
    assert config.get("torch_dtype", config.get("dtype")) == torch_name


def _digest_dir(d: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.iterdir())}


def test_synth_deterministic(run_hoist, tmp_path):
    runs = {}
    for tag, extra in [("a", []), ("b", []), ("t1", ["--threads", "1"]), ("t3", ["--threads", "3"])]:
        d = tmp_path / tag
        proc = ok(run_hoist("synth", "--arch", "tiny-llama", "--quiet", *extra, d))
        assert proc.stdout == "" and proc.stderr == "", "--quiet must print nothing"
        runs[tag] = _digest_dir(d)
    assert runs["a"] == runs["b"] == runs["t1"] == runs["t3"]
    assert "model.safetensors" in runs["a"] and "config.json" in runs["a"]


def test_synth_deterministic_across_shardings(run_hoist, tmp_path):
    """Same tensors whatever the sharding and thread count."""
    ok(run_hoist("synth", "--arch", "tiny-llama", "--quiet", tmp_path / "one"))
    proc = ok(run_hoist("synth", "--arch", "tiny-llama", "--max-shard-size", "50KB", "--threads", "2", tmp_path / "many"))
    assert len(_shards(tmp_path / "many")) > 2
    assert f": {len(_shards(tmp_path / 'many'))} .safetensors files, an index and config.json," in proc.stdout
    one = tensor_bytes(tmp_path / "one" / "model.safetensors")
    many = {}
    for s in _shards(tmp_path / "many"):
        many.update(tensor_bytes(s))
    assert one == many


@pytest.mark.parametrize("args", [["--arch", "gpt-17"], ["--arch", "tiny-llama", "--dtype", "i8"], ["--arch", "tiny-llama", "--max-shard-size", "lots"]])
def test_synth_bad_input_exit_2(run_hoist, tmp_path, args):
    proc = run_hoist("synth", *args, tmp_path / "m")
    assert proc.returncode == 2, proc.stderr
    stderr_error_line(proc)


@pytest.mark.parametrize("name", ["weights.safetensors", "missing.safetensors", "notes.txt", "checkpoint"])
def test_synth_never_writes_over_a_file(run_hoist, tmp_path, tiny, name):
    """synth writes a new or empty directory; a file in its place or a
    directory with something in it (a user's weights) is left alone."""
    path = tmp_path / name
    if name == "checkpoint":
        path.mkdir()
        (path / "model.safetensors").write_bytes((tiny / "model.safetensors").read_bytes())
        (path / "config.json").write_bytes(b'{"mine": 1}')
    elif name != "missing.safetensors":
        path.write_bytes(b"precious bytes")
    proc = run_hoist("synth", "--arch", "tiny-llama", path)
    assert proc.returncode == 2, proc.stderr
    assert ("not empty" if name == "checkpoint" else "not a directory") in stderr_error_line(proc)
    if name == "missing.safetensors":
        assert not path.exists()
    elif name == "checkpoint":
        assert sorted(p.name for p in path.iterdir()) == ["config.json", "model.safetensors"]
        assert (path / "config.json").read_bytes() == b'{"mine": 1}'
        assert (path / "model.safetensors").read_bytes() == (tiny / "model.safetensors").read_bytes()
    else:
        assert path.read_bytes() == b"precious bytes"
    empty = tmp_path / "empty"
    empty.mkdir()
    ok(run_hoist("synth", "--arch", "tiny-llama", "--quiet", empty))


# ------------------------------------------------------------------- convert


def test_convert_reshard(run_hoist, tmp_path):
    src = tmp_path / "src"
    ok(run_hoist("synth", "--arch", "tiny-llama", "--quiet", src))
    src_tensors = tensor_bytes(src / "model.safetensors")
    _, src_header = read_header(src / "model.safetensors")
    dst = tmp_path / "dst"
    ok(run_hoist("convert", src, dst, "--max-shard-size", "100KB"))
    shards = _shards(dst)
    n_shards = len(shards)
    assert n_shards >= 3, [s.name for s in shards]
    assert [s.name for s in shards] == [f"model-{k:05d}-of-{n_shards:05d}.safetensors" for k in range(1, n_shards + 1)]
    index = json.loads((dst / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(src_tensors)
    assert index["metadata"]["total_size"] == sum(len(b) for b in src_tensors.values()) == TINY_BYTES
    got = {}
    for s in shards:
        n, header = read_header(s)
        assert (8 + n) % 8 == 0, f"{s.name}: header not padded"
        assert header.get("__metadata__") == src_header["__metadata__"], s.name
        part = tensor_bytes(s)
        assert sum(len(b) for b in part.values()) <= 100_000 or len(part) == 1, s.name
        assert s.stat().st_size == 8 + n + sum(len(b) for b in part.values())
        for name in part:
            assert index["weight_map"][name] == s.name
        got.update(part)
    assert got == src_tensors
    # hoist reads back its own shards, and converts them into one file again.
    doc = inspect_json(run_hoist, dst)
    assert doc["total_bytes"] == TINY_BYTES
    ok(run_hoist("convert", dst, tmp_path / "one.safetensors"))
    assert tensor_bytes(tmp_path / "one.safetensors") == src_tensors


def test_convert_keeps_metadata_and_pads(run_hoist, tmp_path, conformance):
    src = conformance / "overall.safetensors"
    dst = tmp_path / "out.safetensors"
    ok(run_hoist("convert", src, dst))
    n, header = read_header(dst)
    assert (8 + n) % 8 == 0
    raw_header = dst.read_bytes()[8 : 8 + n]
    assert raw_header.rstrip(b" ") == raw_header.rstrip(), "padding must be spaces"
    assert header["__metadata__"] == {"test": "a"}
    got = tensor_bytes(dst)
    assert got == {name: conf_values(dt) for name, dt in CONF_DTYPES.items()}


def test_convert_single_dir_output(run_hoist, tmp_path, conformance):
    dst = tmp_path / "outdir"
    ok(run_hoist("convert", conformance / "overall.safetensors", dst))
    assert [p.name for p in _shards(dst)] == ["model.safetensors"]
    assert tensor_bytes(dst / "model.safetensors") == {name: conf_values(dt) for name, dt in CONF_DTYPES.items()}


def test_convert_copies_config_json(run_hoist, tmp_path):
    """config.json goes with the weights; after a cast its dtype names what they are now."""
    ok(run_hoist("synth", "--arch", "tiny-llama", "--quiet", tmp_path / "src"))
    ok(run_hoist("convert", tmp_path / "src", tmp_path / "same"))
    assert (tmp_path / "same" / "config.json").read_bytes() == (tmp_path / "src" / "config.json").read_bytes()
    ok(run_hoist("convert", tmp_path / "src", tmp_path / "dst", "--dtype", "f32"))
    src = json.loads((tmp_path / "src" / "config.json").read_text())
    dst = json.loads((tmp_path / "dst" / "config.json").read_text())
    keys = [k for k in ("dtype", "torch_dtype") if k in src]
    assert keys and all(src[k] == "bfloat16" for k in keys), src
    assert {k: v for k, v in dst.items() if k not in keys} == {k: v for k, v in src.items() if k not in keys}
    assert all(dst[k] == "float32" for k in keys), dst


@pytest.mark.parametrize("config", [b"[" * 100000 + b"]" * 100000, b'{"dtype": "bfloat16", "dtype": "f"}', b"\xff\xfe", b"[1, 2]"])
def test_convert_copies_a_config_it_cannot_rewrite_as_it_is(run_hoist, tmp_path, tiny, config):
    """A hostile or odd config.json (deep nesting, a repeated key, not UTF-8,
    not an object) is copied byte for byte, never parsed into a crash."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "model.safetensors").write_bytes((tiny / "model.safetensors").read_bytes())
    (src / "config.json").write_bytes(config)
    ok(run_hoist("convert", src, tmp_path / "dst", "--dtype", "f32"))
    assert (tmp_path / "dst" / "config.json").read_bytes() == config


def test_convert_from_an_index_copies_its_config(run_hoist, tmp_path):
    src = tmp_path / "src"
    ok(run_hoist("synth", "--arch", "tiny-llama", "--max-shard-size", "100KB", "--quiet", src))
    ok(run_hoist("convert", src / "model.safetensors.index.json", tmp_path / "dst"))
    assert (tmp_path / "dst" / "config.json").read_bytes() == (src / "config.json").read_bytes()
    assert tensor_bytes(tmp_path / "dst" / "model.safetensors") == {
        k: v for s in _shards(src) for k, v in tensor_bytes(s).items()}


def test_convert_rename_that_cuts_a_character_is_bad_input(run_hoist, tmp_path):
    src = write_raw(tmp_path / "u.safetensors", {"\u00e9.weight": {"dtype": "U8", "shape": [2], "data_offsets": [0, 2]}},
                    b"\x01\x02")
    proc = run_hoist("convert", "--rename", "^.=Z", src, tmp_path / "out.safetensors")
    assert proc.returncode == 2, proc.stderr
    assert stderr_error_line(proc).startswith("error: --rename: '\u00e9.weight' becomes "), proc.stderr
    assert "not UTF-8" in proc.stderr and not (tmp_path / "out.safetensors").exists()


def test_convert_cast_keeps_every_tensor_aligned_to_its_element(run_hoist, tmp_path):
    """F64[3] then I64[4], cast to bf16: the F64 shrinks to 6 bytes, and the
    I64 after it would sit at an odd offset; the output orders them so that
    each is aligned, as the reference writer's order does."""
    data = struct.pack("<3d", 1.0, 2.0, 3.0) + struct.pack("<4q", 1, 2, 3, 4)
    src = write_raw(tmp_path / "a.safetensors", {"a": {"dtype": "F64", "shape": [3], "data_offsets": [0, 24]},
                                                 "b": {"dtype": "I64", "shape": [4], "data_offsets": [24, 56]}}, data)
    ok(run_hoist("convert", "--dtype", "bf16", src, tmp_path / "out.safetensors"))
    doc = inspect_json(run_hoist, tmp_path / "out.safetensors")
    offsets = {t["name"]: (t["offset"], t["dtype"]) for t in doc["tensors"]}
    assert offsets["b"][1] == "I64" and offsets["b"][0] % 8 == 0, offsets
    assert offsets["a"][1] == "BF16" and offsets["a"][0] % 2 == 0, offsets
    assert tensor_bytes(tmp_path / "out.safetensors")["b"] == struct.pack("<4q", 1, 2, 3, 4)


def test_convert_that_keeps_no_tensor_writes_nothing(run_hoist, tmp_path, tiny):
    proc = run_hoist("convert", "--only", "no-such-name", tiny, tmp_path / "out.safetensors")
    assert proc.returncode == 2, proc.stderr
    assert stderr_error_line(proc) == (f"error: {tiny}/model.safetensors: none of the checkpoint's 21 tensors is kept "
                                       "(--only or --drop left out every one); nothing was written")
    assert not (tmp_path / "out.safetensors").exists()


def test_messages_name_the_flag_and_the_value(run_hoist, tmp_path, tiny):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"model.norm.weight": {"dtype": "F99"}}))
    cases = [
        (["plan", "--expect", bad, tiny], f"error: {bad}: 'model.norm.weight': unknown dtype 'F99'"),
        (["plan", "--expect", tmp_path / "none.json", tiny], f"error: --expect {tmp_path}/none.json"),
        (["synth", "--arch", "tiny-llama", "--max-shard-size", "0", tmp_path / "s"],
         "error: --max-shard-size: '0' is not a size here: it must be more than 0"),
        (["load", "--chunk-size", "0", tiny], "error: --chunk-size: '0' is not a size here: it must be more than 0"),
    ]
    for args, start in cases:
        proc = run_hoist(*args)
        assert proc.returncode == 2, (args, proc.stderr)
        assert stderr_error_line(proc).startswith(start), (args, proc.stderr)


def test_convert_copies_a_large_config_as_it_is(run_hoist, tmp_path, tiny):
    src = tmp_path / "src"
    src.mkdir()
    (src / "model.safetensors").write_bytes((tiny / "model.safetensors").read_bytes())
    config = b'{"dtype": "bfloat16", "pad": "' + b"x" * (17 << 20) + b'"}'
    (src / "config.json").write_bytes(config)
    for flags in ([], ["--dtype", "f32"]):
        ok(run_hoist("convert", src, tmp_path / "dst", *flags))
        assert (tmp_path / "dst" / "config.json").read_bytes() == config


def test_convert_says_which_earlier_outputs_it_removed(run_hoist, tmp_path):
    src = tmp_path / "src"
    ok(run_hoist("synth", "--arch", "tiny-llama", "--quiet", src))
    dst = tmp_path / "dst"
    ok(run_hoist("convert", src, dst, "--max-shard-size", "100KB"))
    old = sorted(p.name for p in dst.iterdir() if p.name.startswith("model"))
    proc = ok(run_hoist("convert", src, dst))
    assert sorted(p.name for p in dst.iterdir() if p.name.startswith("model")) == ["model.safetensors"]
    removed = sorted(Path(line.split(" ")[1].rstrip(":")).name for line in proc.stderr.splitlines() if line.startswith("removed "))
    assert removed == old, proc.stderr


def test_convert_maps_keys_as_a_load_does(run_hoist, tmp_path, tiny):
    """--rename, --drop and --compat rewrite names as `hoist load` maps them,
    so a checkpoint's keys can be fixed once, on disk."""
    src = tensor_bytes(tiny / "model.safetensors")
    dst = tmp_path / "out.safetensors"
    ok(run_hoist("convert", tiny, dst, "--rename", r"^model\.=", "--drop", r"layers\.1\.", "--only", "layers|norm"))
    want = {n[len("model."):]: b for n, b in src.items() if n.startswith("model.") and "layers.1." not in n}
    want = {n: b for n, b in want.items() if "layers" in n or "norm" in n}
    assert tensor_bytes(dst) == want
    legacy = tmp_path / "legacy.safetensors"
    write_raw(legacy, {"ln.gamma": {"dtype": "U8", "shape": [2], "data_offsets": [0, 2]},
                       "ln.beta": {"dtype": "U8", "shape": [2], "data_offsets": [2, 4]},
                       "rotary_emb.inv_freq": {"dtype": "U8", "shape": [1], "data_offsets": [4, 5]}}, b"\1\2\3\4\5")
    ok(run_hoist("convert", legacy, tmp_path / "fixed.safetensors", "--compat", "hf-legacy"))
    assert tensor_bytes(tmp_path / "fixed.safetensors") == {"ln.weight": b"\1\2", "ln.bias": b"\3\4"}
    proc = run_hoist("convert", tiny, tmp_path / "x.safetensors", "--rename", "model=$2")
    assert proc.returncode == 2 and "$2 names a group" in stderr_error_line(proc)
    proc = run_hoist("convert", tiny, tmp_path / "z.safetensors", "--rename", ".*=same")  # every name -> one
    assert proc.returncode == 2 and "key mapping sends both" in stderr_error_line(proc)


def test_convert_only(run_hoist, tmp_path, conformance):
    dst = tmp_path / "out.safetensors"
    ok(run_hoist("convert", conformance / "overall.safetensors", dst, "--only", "^[hH]$"))
    assert tensor_bytes(dst) == {"h": conf_values("I16"), "H": conf_values("U16")}


@pytest.mark.parametrize("flags", [["--dtype", "bad"], ["--dtype", "u8"], ["--max-shard-size", "lots"], ["--only", "("]])
def test_convert_bad_flags_exit_2(run_hoist, tmp_path, conformance, flags):
    dst = tmp_path / "out.safetensors"
    proc = run_hoist("convert", conformance / "overall.safetensors", dst, *flags)
    assert proc.returncode == 2, proc.stderr
    stderr_error_line(proc)
    assert not dst.exists()


def test_convert_missing_source(run_hoist, tmp_path):
    missing = tmp_path / "missing.safetensors"
    proc = run_hoist("convert", missing, tmp_path / "out.safetensors")
    assert proc.returncode == 2
    assert str(missing) in stderr_error_line(proc)
