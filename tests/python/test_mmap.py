"""`hoist load --mmap` and `hoist.load(..., mmap=True)`: cpu tensors as
copy-on-write mappings of their files instead of copies.

Expected bytes come from the files themselves (parsed with the standard
library in hoist_testlib) and from safetensors.torch; which tensors are
mapped follows from each tensor's absolute file offset and element size.

Run: PYTHONPATH=build/python HOIST_BIN=build/hoist python3 -m pytest -q tests/python/test_mmap.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hoist_testlib import import_hoist, ok, read_header, save_linear, tensor_bytes, write_raw

hoist = import_hoist()

ELEMENT_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2, "F16": 2,
                 "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8, "C64": 8}


@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch", reason="torch is not installed")


def expected_mapping(path) -> dict[str, bool]:
    """name -> whether --mmap maps it: not empty, and at an absolute file offset that is a multiple of
    its element size (at most 8)."""
    n, header = read_header(path)
    out = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        begin, end = entry["data_offsets"]
        out[name] = end > begin and (8 + n + begin) % min(ELEMENT_BYTES[entry["dtype"]], 8) == 0
    return out


@pytest.fixture(scope="module")
def unaligned(tmp_path_factory) -> Path:
    """A hand-written file whose data section starts at an odd offset (the format allows it; the
    reference writer pads to 8): some tensors sit on a multiple of their element size, some do not."""
    layout = [("a", "U8", [1]), ("b", "F32", [2]), ("c", "I16", [2]), ("d", "F64", [1]), ("e", "F32", [1]),
              ("f", "BF16", [3]), ("g", "U8", [0])]
    header, offset = {}, 0
    for name, dtype, shape in layout:
        size = ELEMENT_BYTES[dtype] * (shape[0] if shape else 1)
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header)
    text += " " * ((1 - 8 - len(text)) % 8)  # 8 + N = 1 (mod 8)
    assert (8 + len(text)) % 8 == 1
    path = write_raw(tmp_path_factory.mktemp("mmap") / "unaligned.safetensors", text,
                     bytes((k * 37 + 11) % 256 for k in range(offset)))
    want = expected_mapping(path)
    assert want == {"a": True, "b": False, "c": True, "d": False, "e": False, "f": True, "g": False}
    return path


def _bytes(torch, tensor) -> bytes:
    t = torch.from_dlpack(tensor) if not isinstance(tensor, torch.Tensor) else tensor
    return bytes(t.contiguous().reshape(-1).view(torch.uint8).numpy())


def test_mmap_maps_what_suits_its_element_and_copies_the_rest(torch, unaligned):
    model = hoist.load(str(unaligned), device="cpu", mmap=True)
    want = expected_mapping(unaligned)
    raw = tensor_bytes(unaligned)
    for name in want:
        info = model.info(name)
        assert info["mapped"] is want[name], f"{name}: mapped {info['mapped']}"
        assert _bytes(torch, model[name]) == raw[name], name
    report = model.report
    assert report["mapped_bytes"] == sum(len(raw[n]) for n, m in want.items() if m)
    assert report["mapped_files"] == 1
    assert report["devices"]["cpu"]["driver_allocs"] == 1  # b, d, e and the empty g: in the arena
    # Without mmap nothing is mapped.
    plain = hoist.load(str(unaligned), device="cpu")
    assert not any(plain.info(n)["mapped"] for n in want) and plain.report["mapped_bytes"] == 0


def test_mmap_load_file_matches_safetensors(torch, tiny, tmp_path):
    """The reference writer orders tensors by alignment and pads its header, so each of its
    tensors can be mapped, whatever the mix of dtypes."""
    st = pytest.importorskip("safetensors.torch", reason="safetensors is not installed")
    g = torch.Generator().manual_seed(1)
    mixed = {"b": torch.tensor([True, False, True]), "u8": torch.arange(3, dtype=torch.uint8),
             "i16": torch.arange(3, dtype=torch.int16), "f16": torch.randn(3, generator=g).half(),
             "bf": torch.randn(5, generator=g).bfloat16(), "f32": torch.randn(3, generator=g),
             "f64": torch.randn(3, generator=g).double(), "i64": torch.arange(3),
             "i32": torch.arange(5, dtype=torch.int32), "f8": torch.randn(3, generator=g).to(torch.float8_e4m3fn)}
    st.save_file(mixed, str(tmp_path / "mixed.safetensors"))
    for path in (tiny / "model.safetensors", tmp_path / "mixed.safetensors"):
        want = st.load_file(str(path))
        got = hoist.load_file(path, mmap=True)
        assert sorted(got) == sorted(want)
        for name, w in want.items():
            assert got[name].dtype == w.dtype and got[name].shape == w.shape, name
            assert _bytes(torch, got[name]) == _bytes(torch, w), name
        assert all(expected_mapping(path).values()), path
        report = hoist.load(path, device="cpu", mmap=True, config_ties=False).report
        assert report["mapped_bytes"] == report["total_bytes"] > 0, path
        assert report["devices"]["cpu"]["driver_allocs"] == 0, path


def test_mmap_writes_stay_in_the_process(torch, tiny, tmp_path):
    path = tmp_path / "copy.safetensors"
    path.write_bytes((tiny / "model.safetensors").read_bytes())
    before = path.read_bytes()
    got = hoist.load_file(path, mmap=True)
    w = got["model.norm.weight"]
    original = w.clone()
    w.add_(1)
    assert not torch.equal(w, original)
    assert path.read_bytes() == before
    again = hoist.load_file(path, mmap=True)
    assert torch.equal(again["model.norm.weight"], original)
    assert torch.equal(got["model.norm.weight"], original + 1)  # the first load keeps its own write


MEMORY_PROBE = """
import json, sys
import hoist

def status():
    fields = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("RssAnon", "RssFile"):
                fields[key] = int(value.split()[0]) * 1024
    return fields

before = status()
model = hoist.load(sys.argv[1], device="cpu", mmap=sys.argv[2] == "1")
after = status()
print(json.dumps({k: after[k] - before[k] for k in after}))
"""


def test_mmap_takes_no_fresh_memory_and_leaves_nothing_to_fault_in(tmp_path):
    """The mapped load's weights are the page cache's pages, mapped into the process by the load
    (file-backed resident memory grows by the checkpoint), where a plain load copies them into
    fresh anonymous memory."""
    size = 64 << 20
    path = write_raw(tmp_path / "big.safetensors",
                     {"w": {"dtype": "U8", "shape": [size], "data_offsets": [0, size]}}, os.urandom(size))
    env = dict(os.environ)
    growth = {}
    for mmap in ("1", "0"):
        proc = subprocess.run([sys.executable, "-c", MEMORY_PROBE, str(path), mmap], capture_output=True, text=True,
                              timeout=120, env=env)
        assert proc.returncode == 0, proc.stderr
        growth[mmap] = json.loads(proc.stdout)
    mapped, copied = growth["1"], growth["0"]
    assert mapped["RssAnon"] < 16 << 20, growth
    assert mapped["RssFile"] >= size * 9 // 10, growth
    assert copied["RssAnon"] >= size * 9 // 10, growth


def test_cli_mmap_report_plan_and_summary(run_hoist, unaligned, tmp_path):
    want = expected_mapping(unaligned)
    raw = tensor_bytes(unaligned)
    report_path = tmp_path / "r.json"
    proc = ok(run_hoist("load", "--device", "cpu", "--mmap", "--report", report_path, unaligned))
    mapped_bytes = sum(len(raw[n]) for n, m in want.items() if m)
    assert f"{mapped_bytes} B of it mapped from 1 file" in proc.stdout, proc.stdout
    report = json.loads(report_path.read_text())
    assert report["mapped_bytes"] == mapped_bytes and report["mapped_files"] == 1
    _, header = read_header(unaligned)
    n = read_header(unaligned)[0]
    for t in report["tensors"]:
        assert t.get("mapped", False) is want[t["name"]], t
        if want[t["name"]]:
            assert t["offset"] is None and t["file"] == str(unaligned.resolve())
            assert t["file_offset"] == 8 + n + header[t["name"]]["data_offsets"][0]
        else:
            assert isinstance(t["offset"], int)
    plan = json.loads(ok(run_hoist("plan", "--device", "cpu", "--mmap", "--json", unaligned)).stdout)
    assert {t["name"]: t.get("mapped", False) for t in plan["tensors"]} == want
    # b (8 bytes at 0), d (8 at 256), e (4 at 512), the empty g (at 768): the reservation's exact size.
    assert plan["devices"]["cpu"]["bytes"] == 768
    plain = json.loads(ok(run_hoist("plan", "--device", "cpu", "--json", unaligned)).stdout)
    assert plain["devices"]["cpu"]["bytes"] > plan["devices"]["cpu"]["bytes"]


def test_load_into_with_mmap(torch, tmp_path):
    st = pytest.importorskip("safetensors.torch", reason="safetensors is not installed")
    path = tmp_path / "linear.safetensors"
    saved = save_linear(torch, st, path, 64, 32, seed=3)
    module = torch.nn.Linear(64, 32)
    report = hoist.load_into(module, path, mmap=True, strict=True)
    assert report["mapped_bytes"] == (64 * 32 + 32) * 4
    for name, value in saved.state_dict().items():
        assert torch.equal(module.state_dict()[name], value), name
    # The parameters are the mapping's memory, not copies of it.
    ranges = []
    with open("/proc/self/maps") as f:
        for line in f:
            if line.rstrip().endswith(str(path.resolve())):
                begin, end = (int(x, 16) for x in line.split()[0].split("-"))
                ranges.append((begin, end))
    assert ranges, "the file is not mapped"
    for name, p in module.named_parameters():
        assert any(b <= p.data_ptr() < e for b, e in ranges), f"{name} is not in the file's mapping"
