"""hoist.inspect and hoist.plan: a checkpoint's catalogue, and where a load would put each tensor,
from the headers alone.

Expected values come from the files' headers parsed with the standard library
(hoist_testlib.read_header), from the CLI's own `hoist inspect --json` and `hoist plan --json`
with the same options, and from the load report of a load made with the same arguments.

Run: PYTHONPATH=build/python HOIST_BIN=build/hoist python3 -m pytest -q tests/python/test_plan_inspect.py
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from hoist_testlib import import_hoist, ok, read_header, stderr_error_line, write_raw

hoist = import_hoist()


@pytest.fixture(scope="module")
def sharded(tiny, run_hoist, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("plan") / "sharded"
    ok(run_hoist("convert", tiny, out, "--max-shard-size", "100KB"))
    assert len(list(out.glob("*.safetensors"))) >= 2
    return out


def _cli_json(run_hoist, *args) -> dict:
    return json.loads(ok(run_hoist(*args)).stdout)


# --------------------------------------------------------------- inspect


@pytest.mark.parametrize("which", ["file", "dir", "sharded", "index"])
def test_inspect_matches_the_headers(tiny, sharded, which):
    path = {
        "file": tiny / "model.safetensors",
        "dir": tiny,
        "sharded": sharded,
        "index": sharded / "model.safetensors.index.json",
    }[which]
    got = hoist.inspect(path)
    files = sorted(sharded.glob("*.safetensors")) if which in ("sharded", "index") else [tiny / "model.safetensors"]
    assert sorted(got["files"]) == [str(f) for f in files]
    want = {}
    metadata = {}
    for f in files:
        n, header = read_header(f)
        metadata.update(header.pop("__metadata__", {}))
        for name, entry in header.items():
            begin, end = entry["data_offsets"]
            want[name] = {"dtype": entry["dtype"], "shape": entry["shape"], "file": str(f), "offset": 8 + n + begin,
                          "nbytes": end - begin}
    assert {t["name"]: {k: t[k] for k in ("dtype", "shape", "file", "offset", "nbytes")} for t in got["tensors"]} == want
    assert len(got["tensors"]) == len(want)  # no name twice
    assert got["total_bytes"] == sum(t["nbytes"] for t in want.values())
    assert got["warnings"] == []
    if which in ("file", "dir"):
        assert got["metadata"] == metadata


def test_inspect_is_the_cli_inspect_json(run_hoist, sharded):
    got = hoist.inspect(sharded)
    warnings = got.pop("warnings")
    assert warnings == []
    assert got == _cli_json(run_hoist, "inspect", "--json", sharded)


def test_inspect_reports_the_catalogue_warnings(tiny, tmp_path, run_hoist):
    # A directory holding model.safetensors is read as transformers reads it: that file alone, with a
    # warning naming the other file beside it.
    d = tmp_path / "two"
    d.mkdir()
    (d / "model.safetensors").write_bytes((tiny / "model.safetensors").read_bytes())
    (d / "extra.safetensors").write_bytes((tiny / "model.safetensors").read_bytes())
    got = hoist.inspect(d)
    assert got["files"] == [str(d / "model.safetensors")]
    assert len(got["warnings"]) == 1 and "extra.safetensors" in got["warnings"][0], got["warnings"]
    cli = run_hoist("inspect", "--json", d)
    assert cli.stderr.strip() == f"warning: {got['warnings'][0]}"


def _read_so_far() -> int:
    with open("/proc/self/io") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("rchar:"))


def _peak_virtual_bytes() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmPeak:"))


def test_inspect_reads_no_tensor_data(tmp_path):
    # A header whose data section is a hole of 64 GiB: a catalogue reads the header and nothing else.
    f = tmp_path / "big.safetensors"
    n_bytes = 64 << 30
    header = json.dumps({"w": {"dtype": "U8", "shape": [n_bytes], "data_offsets": [0, n_bytes]}}).encode()
    header += b" " * (-len(header) % 8)
    with open(f, "wb") as out:
        out.write(len(header).to_bytes(8, "little") + header)
        out.truncate(8 + len(header) + n_bytes)
    before = _read_so_far()
    got = hoist.inspect(f)
    assert _read_so_far() - before < 1 << 20
    assert got["total_bytes"] == n_bytes
    assert got["tensors"][0]["shape"] == [n_bytes]


def test_inspect_errors_name_the_file(tmp_path, run_hoist):
    bad = write_raw(tmp_path / "bad.safetensors", {"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}},
                    b"\0" * 4)
    with pytest.raises(ValueError) as e:
        hoist.inspect(bad)
    assert str(bad) in str(e.value) and "'w'" in str(e.value) and "\n" not in str(e.value)
    assert stderr_error_line(run_hoist("inspect", bad)) == f"error: {e.value}"

    lfs = tmp_path / "lfs.safetensors"
    lfs.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:00\nsize 12\n")
    with pytest.raises(ValueError, match="Git LFS pointer"):
        hoist.inspect(lfs)
    with pytest.raises(FileNotFoundError):
        hoist.inspect(tmp_path / "nothing-here.safetensors")


# --------------------------------------------------------------- plan

CASES = {
    "cpu": ({"device": "cpu"}, ["--device", "cpu"]),
    "cast": ({"device": "cpu", "dtype": "f32"}, ["--device", "cpu", "--dtype", "f32"]),
    "disk": ({"device_map": "auto", "max_memory": {"cpu": "100KB", "disk": "1GB"}},
             ["--device-map", "auto", "--max-memory", "cpu=100KB,disk=1GB"]),
    "explicit_map": ({"device_map": {"model.layers.0": "cpu", "": "disk"}},
                     ["--device-map", '{"model.layers.0": "cpu", "": "disk"}']),
    "no_split": ({"device_map": "sequential", "max_memory": {"cpu": "150KB", "disk": "1GB"},
                  "no_split": r"model\.layers"},
                 ["--device-map", "sequential", "--max-memory", "cpu=150KB,disk=1GB", "--no-split", r"model\.layers"]),
    "shard": ({"device": "cpu", "shard": (1, 2), "split": {r"(q|k|v)_proj": 0, r"o_proj": -1}},
              ["--device", "cpu", "--shard", "1/2", "--split", "(q|k|v)_proj=0", "--split", "o_proj=-1"]),
    "mapping": ({"device": "cpu", "rename": {r"^model\.": "m."}, "drop": r"norm",
                 "tie": {"lm_head.weight": "m.embed_tokens.weight"}},
                ["--device", "cpu", "--rename", r"^model\.=m.", "--drop", "norm",
                 "--tie", "lm_head.weight=m.embed_tokens.weight"]),
    "mmap": ({"device": "cpu", "mmap": True}, ["--device", "cpu", "--mmap"]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_plan_is_the_cli_plan_json(run_hoist, tiny, case):
    kwargs, flags = CASES[case]
    got = hoist.plan(tiny, **kwargs)
    want = _cli_json(run_hoist, "plan", tiny, *flags, "--json")
    # "available" is free memory at that moment (it moves between two runs): both have it or neither.
    for doc in (got, want):
        for device in doc["devices"].values():
            available = device.pop("available", "absent")
            device["available"] = available if available in ("absent", None) else "bytes"
    assert got == want
    assert got["tensors"], case


def test_plan_no_split_keeps_a_unit_on_one_device(tiny):
    # By default a strategy may put each decoder layer on another device; a no_split rule naming
    # model.layers keeps all of them on one.
    def layer_devices(plan):
        return {t["device"] for t in plan["tensors"] if t["name"].startswith("model.layers.")}

    kwargs = dict(CASES["no_split"][0])
    assert layer_devices(hoist.plan(tiny, **kwargs)) == {"disk"}
    kwargs.pop("no_split")
    assert layer_devices(hoist.plan(tiny, **kwargs)) == {"cpu", "disk"}


@pytest.mark.parametrize("case", ["cpu", "cast", "disk", "shard", "mapping", "mmap", "no_split"])
def test_a_load_follows_its_plan(tiny, case):
    kwargs = CASES[case][0]
    planned = hoist.plan(tiny, **kwargs)
    model = hoist.load(tiny, **kwargs)
    report = model.report
    loaded = {t["name"]: t for t in report["tensors"]}
    assert sorted(loaded) == sorted(t["name"] for t in planned["tensors"])
    for t in planned["tensors"]:
        got = loaded[t["name"]]
        for key in ("device", "dtype", "shape"):
            assert got[key] == t[key], f"{case} {t['name']}: {key} {got[key]!r}, planned {t[key]!r}"
        # A tied tensor takes no bytes of its own in the plan; the report gives the view's size.
        source = next(s for s in planned["tensors"] if s["name"] == t["tied_to"]) if "tied_to" in t else t
        assert got["nbytes"] == source["nbytes"], f"{case} {t['name']}: nbytes"
        assert got.get("tied", False) == ("tied_to" in t), f"{case} {t['name']}: tied"
        assert got.get("tied_to") == t.get("tied_to"), f"{case} {t['name']}: tied_to"
        if t["offset"] is not None:
            assert got["offset"] == t["offset"], f"{case} {t['name']}: offset"
        else:  # stays in its file, or mapped from it: where
            for key in ("file", "file_offset"):
                assert got[key] == t[key], f"{case} {t['name']}: {key} {got[key]!r}, planned {t[key]!r}"
        assert got.get("mapped", False) == t.get("mapped", False), f"{case} {t['name']}: mapped"
    for device, d in planned["devices"].items():
        if device != "disk":
            assert report["devices"][device]["bytes"] == d["bytes"], device


def test_plan_reserves_nothing(run_hoist, tmp_path):
    # Llama 3.1 70B (141 GB in bf16) planned onto the cpu of a machine with far less memory: headers
    # only (--sparse leaves the data as a file hole), and the plan's reservation is the model's size.
    out = tmp_path / "70b"
    ok(run_hoist("synth", "--arch", "llama-3.1-70b", "--sparse", "--quiet", out))
    peak, read = _peak_virtual_bytes(), _read_so_far()
    got = hoist.plan(out, device="cpu")
    # Not even address space for it (a reservation would be a 141 GB mapping), and no tensor read.
    assert _peak_virtual_bytes() - peak < 1 << 30
    assert _read_so_far() - read < 64 << 20
    assert got["devices"]["cpu"]["bytes"] >= hoist.inspect(out)["total_bytes"] > 140e9
    assert len(got["tensors"]) == 723


def test_plan_expect_reports_and_strict_refuses(tiny):
    names = [t["name"] for t in hoist.inspect(tiny)["tensors"]]
    expect = names[1:] + ["model.extra.weight"]
    got = hoist.plan(tiny, device="cpu", expect=expect)
    assert got["missing"] == ["model.extra.weight"]
    assert got["unexpected"] == [names[0]]
    assert names[0] not in {t["name"] for t in got["tensors"]}
    with pytest.raises(ValueError, match="model.extra.weight"):
        hoist.plan(tiny, device="cpu", expect=expect, strict=True)


def test_plan_errors_name_keywords(tiny):
    with pytest.raises(ValueError, match=r"^dtype 'f33': expected bf16, f16 or f32$"):
        hoist.plan(tiny, device="cpu", dtype="f33")
    with pytest.raises(ValueError, match=r"^no_split '\(': "):
        hoist.plan(tiny, device_map="auto", no_split="(")
    with pytest.raises(MemoryError, match=r"raise max_memory"):
        hoist.plan(tiny, device_map="auto", max_memory={"cpu": "1KB"})
    with pytest.raises(ValueError, match=r"^split '\(': not a valid regular expression"):
        hoist.plan(tiny, device="cpu", shard=(0, 2), split={"(": 0})
    with pytest.raises(ValueError, match=r"^tie=\{'x=y': 'x=y'\}: a tensor cannot be tied to itself$"):
        hoist.plan(tiny, device="cpu", tie={"x=y": "x=y"})
    assert hoist.plan(tiny, device="cpu", tie={"a": "no=such"})["warnings"] == [
        "tie={'a': 'no=such'}: the source is not loaded; nothing tied"]
    with pytest.raises(FileNotFoundError):
        hoist.plan(tiny / "nothing", device="cpu")


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"only": 5}, "only=5: expected a string"),
        ({"compat": 5}, "compat=5: expected a string"),
        ({"strict": "yes"}, "strict='yes': expected True or False"),
        ({"mmap": 1}, "mmap=1: expected True or False"),
        ({"config_ties": "no"}, "config_ties='no': expected True or False"),
        ({"device_map": 5}, "device_map=5: expected {module: device}"),
        ({"device_map": {0: "cpu"}}, "device_map={0: ...}: module names are strings"),
        ({"device_map": {"": 1.5}}, "device_map={'': 1.5}: expected a device"),
        ({"drop": [5]}, "drop=[5]: expected a regex or a list of them"),
        ({"no_split": b"x"}, "no_split=b'x': expected a regex or a list of them"),
        ({"rename": ["ab"]}, "rename: expected {key: value} or (key, value) pairs, got 'ab'"),
        ({"rename": "a=b"}, "rename='a=b': expected {key: value} or (key, value) pairs"),
        ({"expect": [object]}, "expect: expected names"),
    ],
)
def test_arguments_of_the_wrong_type_are_value_errors_naming_them(tiny, kwargs, message):
    for call in (hoist.plan, hoist.load):
        with pytest.raises(ValueError) as e:
            call(tiny, **kwargs)
        assert str(e.value).startswith(message), str(e.value)
        assert "\n" not in str(e.value)


@pytest.mark.parametrize("kwargs,message", [({"alloc": 5}, "alloc=5: expected a string"),
                                            ({"io": 3}, "io=3: expected a string"),
                                            ({"pipeline": "no"}, "pipeline='no': expected True or False")])
def test_load_options_of_the_wrong_type_are_value_errors_naming_them(tiny, kwargs, message):
    with pytest.raises(ValueError) as e:
        hoist.load(tiny, device="cpu", **kwargs)
    assert str(e.value).startswith(message), str(e.value)


def test_device_map_values_may_be_numpy_ints_and_torch_devices(tiny):
    np = pytest.importorskip("numpy", reason="numpy is not installed")
    torch = pytest.importorskip("torch", reason="torch is not installed")
    def placed(doc):  # free memory ("available") moves between two calls
        return doc["tensors"], {d: v["bytes"] for d, v in doc["devices"].items()}

    plain = hoist.plan(tiny, device_map={"model.layers.0": "cpu", "": "disk"})
    assert placed(hoist.plan(tiny, device_map={"model.layers.0": torch.device("cpu"), "": "disk"})) == placed(plain)
    numbered = hoist.plan(tiny, device_map={"": np.int64(0)}, max_memory={0: "1GB"})
    assert {t["device"] for t in numbered["tensors"]} == {"cuda:0"}


def test_paths_that_are_not_utf8_are_refused_in_one_line(tmp_path):
    with pytest.raises(ValueError, match="UTF-8"):
        hoist.inspect(os.fsencode(str(tmp_path)) + b"/ns\xff")


def test_plan_says_whether_each_device_can_hold_its_reservation(tiny):
    roomy = hoist.plan(tiny, device="cpu")["devices"]["cpu"]
    with open("/proc/meminfo") as f:
        total = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemTotal:"))
    assert roomy["fits"] is True and roomy["bytes"] < roomy["available"] <= total, roomy
    tight = hoist.plan(tiny, device="cpu", max_memory={"cpu": 1000})
    assert tight["devices"]["cpu"]["available"] == 1000 and tight["devices"]["cpu"]["fits"] is False
    assert any(w.startswith("cpu: the plan needs") for w in tight["warnings"]), tight["warnings"]
    with pytest.raises(MemoryError):  # what the plan foretold
        hoist.load(tiny, device="cpu", max_memory={"cpu": 1000})
    spread = hoist.plan(tiny, device_map="auto", max_memory={"cpu": "100KB", "disk": "1GB"})["devices"]
    assert "available" not in spread["disk"] and spread["cpu"]["available"] == 100_000


def test_plan_for_a_device_this_machine_lacks_cannot_tell_whether_it_fits(tiny):
    torch = pytest.importorskip("torch", reason="torch is not installed")
    if torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    unknown = hoist.plan(tiny, device="cuda:7")["devices"]["cuda:7"]
    assert unknown["available"] is None and unknown["fits"] is None
    sized = hoist.plan(tiny, device_map={"": 7}, max_memory={7: "1KB"})["devices"]["cuda:7"]
    assert sized["available"] == 1000 and sized["fits"] is False


@pytest.mark.parametrize("enabled", [True, False])
def test_inspect_plan_and_report_leave_the_garbage_collector_as_they_found_it(tiny, enabled):
    # The documents are built with the collector paused; it must come back as it was.
    import gc

    was = gc.isenabled()
    try:
        gc.enable() if enabled else gc.disable()
        hoist.inspect(tiny)
        assert gc.isenabled() == enabled
        hoist.plan(tiny)
        assert gc.isenabled() == enabled
        assert hoist.load(tiny, device="cpu").report["tensors"]
        assert gc.isenabled() == enabled
    finally:
        gc.enable() if was else gc.disable()


def test_python_documents_are_the_cli_json_with_python_types(run_hoist, tmp_path):
    # What json.loads makes of the CLI's text: the same values and types (str with any
    # character, int, nested dicts and lists) and the same key order.
    meta = {"z": "last", "a": "é ✓ \"quoted\"\n\u0000", "big": str(2**64 - 1)}
    header = {"__metadata__": meta, "w": {"dtype": "U8", "shape": [2, 3], "data_offsets": [0, 6]}}
    path = write_raw(tmp_path / "m.safetensors", header, bytes(6))
    doc = hoist.inspect(path)
    cli = json.loads(ok(run_hoist("inspect", "--json", path)).stdout)
    assert doc == {**cli, "warnings": []}
    assert list(doc) == [*cli, "warnings"] and list(doc["metadata"]) == list(cli["metadata"])  # the same order
    assert doc["metadata"] == meta
    assert type(doc["total_bytes"]) is int and doc["tensors"][0]["shape"] == [2, 3]
