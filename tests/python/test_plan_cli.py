"""The device layer from the command line: `hoist plan`, device maps, key
mapping, `hoist load --alloc/--expect/--max-memory`, `hoist probe`.

Expected sizes come from parsing the safetensors headers with the standard
library (hoist_testlib.read_header) and from the rules in the issue (256-byte
aligned offsets, exact reservations, aliases and disk tensors count nothing);
expected placements come from the device map or strategy semantics, computed
here, never from hoist itself.

Everything runs without a GPU: `hoist plan` needs no device, and loads go to
the cpu. Tests that only make sense on a machine without a GPU skip when
`hoist probe --json` lists one.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from hoist_testlib import ok, read_header, stderr_error_line, write_raw

ALIGN = 256
GIB = 1 << 30
ELEM_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "U16": 2, "I16": 2, "F16": 2, "BF16": 2,
              "U32": 4, "I32": 4, "F32": 4, "U64": 8, "I64": 8, "F64": 8}
FLOATS = {"F16", "BF16", "F32", "F64"}
PLAN_TENSOR_KEYS = {"name", "device", "dtype", "shape", "nbytes", "offset"}

# The device-map example, and where each tensor of a Llama must go.
LAYER1_MAP = {"model.layers.1": 1, "model": 0, "lm_head": "cpu"}


# ------------------------------------------------------------------- helpers


def align(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def header_tensors(path: Path) -> dict[str, dict]:
    """name -> {"dtype", "shape", "nbytes"} over every .safetensors file of a
    checkpoint (file or directory), parsed with the standard library."""
    files = [path] if path.is_file() else sorted(path.glob("*.safetensors"))
    assert files, f"no .safetensors under {path}"
    out = {}
    for f in files:
        _, header = read_header(f)
        for name, entry in header.items():
            if name == "__metadata__":
                continue
            begin, end = entry["data_offsets"]
            out[name] = {"dtype": entry["dtype"], "shape": entry["shape"], "nbytes": end - begin}
    return out


def placed(doc: dict) -> dict:
    """A plan's devices without "available", which is the free memory of the moment (it moves
    between two runs)."""
    return {d: {k: v for k, v in e.items() if k != "available"} for d, e in doc["devices"].items()}


def plan_json(run_hoist, *args) -> dict:
    proc = ok(run_hoist("plan", "--json", *args))
    assert "error:" not in proc.stderr, proc.stderr
    return json.loads(proc.stdout)


def load_report(run_hoist, tmp_path: Path, *args, name: str = "report.json") -> dict:
    report = tmp_path / name
    ok(run_hoist("load", "--quiet", "--report", report, *args))
    return json.loads(report.read_text())


def by_name(doc: dict) -> dict[str, dict]:
    tensors = {t["name"]: t for t in doc["tensors"]}
    assert len(tensors) == len(doc["tensors"]), "duplicate tensor names in the plan"
    return tensors


def check_reservations(doc: dict) -> None:
    """The plan's offsets and reservations, as the issue defines them: on each
    device, tensors in plan (catalogue) order at 256-aligned offsets, packed;
    the reservation is the end of the last tensor; aliases take no room and
    sit at their source's offset; disk tensors have no offset and the disk
    counts no bytes."""
    tensors = by_name(doc)
    ends: dict[str, int] = {}
    for t in doc["tensors"]:
        dev = t["device"]
        if dev == "disk":
            assert t["offset"] is None, t
            continue
        assert isinstance(t["offset"], int) and t["offset"] % ALIGN == 0, t
        if "tied_to" in t:
            src = tensors[t["tied_to"]]
            assert (t["device"], t["offset"]) == (src["device"], src["offset"]), (t, src)
            continue
        want = align(ends.get(dev, 0)) if dev in ends else 0
        assert t["offset"] == want, f"{t['name']}: offset {t['offset']}, packed layout says {want}"
        ends[dev] = t["offset"] + t["nbytes"]
    devices = doc["devices"]
    placed = {t["device"] for t in doc["tensors"]}
    assert set(devices) == placed, (sorted(devices), sorted(placed))
    for dev, info in devices.items():
        if dev == "disk":
            assert info["bytes"] == 0, info
            continue
        assert info["bytes"] == ends.get(dev, 0), f"{dev}: reservation {info['bytes']}, tensors end at {ends.get(dev)}"
        mine = [t for t in doc["tensors"] if t["device"] == dev and "tied_to" not in t]
        if mine:
            assert info["bytes"] == max(t["offset"] + t["nbytes"] for t in mine)


def packed_bytes(sizes: list[int]) -> int:
    """The exact reservation for tensors of these sizes, packed in order."""
    end = 0
    for i, n in enumerate(sizes):
        end = (align(end) if i else 0) + n
    return end


def unit_of(name: str) -> str:
    """The unit a strategy never splits: the name up to its first all-digit
    component (model.layers.N), else the module (the name minus its last part)."""
    parts = name.split(".")
    for i, p in enumerate(parts[:-1]):
        if p.isdigit():
            return ".".join(parts[: i + 1])
    return ".".join(parts[:-1]) if len(parts) > 1 else name


def devices_of_units(doc: dict) -> dict[str, set]:
    units: dict[str, set] = {}
    for t in doc["tensors"]:
        units.setdefault(unit_of(t["name"]), set()).add(t["device"])
    return units


def unit_bytes(doc: dict) -> dict[str, int]:
    out: dict[str, int] = {}
    for t in doc["tensors"]:
        out[unit_of(t["name"])] = out.get(unit_of(t["name"]), 0) + align(t["nbytes"])
    return out


def layer1_expected_device(name: str) -> str:
    if name.startswith("model.layers.1."):
        return "cuda:1"
    if name.startswith("lm_head.") or name == "lm_head":
        return "cpu"
    assert name.startswith("model."), name
    return "cuda:0"


# ------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def gpu_count(run_hoist) -> int:
    proc = ok(run_hoist("probe", "--json"))
    return len(json.loads(proc.stdout)["gpus"])


@pytest.fixture
def no_gpu(gpu_count):
    if gpu_count:
        pytest.skip(f"this machine has {gpu_count} CUDA GPU(s); the test is about a GPU-less machine")


@pytest.fixture(scope="module")
def llama8b_12(run_hoist, tmp_path_factory) -> Path:
    """llama-3.1-8b with 12 layers (so model.layers.1 and .10/.11 exist), sparse."""
    d = tmp_path_factory.mktemp("llama8b_12") / "m"
    ok(run_hoist("synth", "--arch", "llama-3.1-8b", "--sparse", "--layers", "12", "--quiet", d))
    return d


@pytest.fixture(scope="module")
def llama8b(run_hoist, tmp_path_factory) -> Path:
    """The full llama-3.1-8b layout (about 15 GiB in bf16), sparse."""
    d = tmp_path_factory.mktemp("llama8b") / "m"
    ok(run_hoist("synth", "--arch", "llama-3.1-8b", "--sparse", "--quiet", d))
    return d


@pytest.fixture(scope="module")
def llama8b_by_name(llama8b, tmp_path_factory) -> Path:
    """The llama8b fixture's tensors in one sparse file, listed by name as the
    reference writer (safetensors.save_file) lists them: lm_head first, then
    model.layers.0, .1, .10, ..., .19, .2, ...: the order of real checkpoints."""
    tensors = header_tensors(llama8b)
    header, offset = {}, 0
    for name in sorted(tensors):
        t = tensors[name]
        header[name] = {"dtype": t["dtype"], "shape": t["shape"], "data_offsets": [offset, offset + t["nbytes"]]}
        offset += t["nbytes"]
    d = tmp_path_factory.mktemp("llama8b_by_name") / "m"
    d.mkdir()
    path = write_raw(d / "model.safetensors", header)
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size + offset)  # a hole: planning reads no data
    shutil.copy(llama8b / "config.json", d / "config.json")
    return d


@pytest.fixture(scope="module")
def llama1b_1(run_hoist, tmp_path_factory) -> Path:
    """llama-3.2-1b (tie_word_embeddings true, no lm_head.weight), one layer, sparse."""
    d = tmp_path_factory.mktemp("llama1b") / "m"
    ok(run_hoist("synth", "--arch", "llama-3.2-1b", "--sparse", "--layers", "1", "--quiet", d))
    return d


@pytest.fixture(scope="module")
def tiny_tied(tiny, tmp_path_factory) -> Path:
    """tiny-llama with tie_word_embeddings true: its lm_head.weight becomes an
    alias of model.embed_tokens.weight (same shape)."""
    d = tmp_path_factory.mktemp("tiny_tied") / "m"
    shutil.copytree(tiny, d)
    config = json.loads((d / "config.json").read_text())
    config["tie_word_embeddings"] = True
    (d / "config.json").write_text(json.dumps(config))
    h = header_tensors(d)
    assert h["lm_head.weight"]["shape"] == h["model.embed_tokens.weight"]["shape"]
    return d


@pytest.fixture(scope="module")
def legacy_file(tmp_path_factory) -> Path:
    """Old-style names: LayerNorm gamma/beta and a stale rotary_emb.inv_freq."""
    np = pytest.importorskip("numpy")
    st = pytest.importorskip("safetensors.numpy")
    path = tmp_path_factory.mktemp("legacy") / "legacy.safetensors"
    st.save_file(
        {
            "bert.encoder.layer.0.attention.output.LayerNorm.gamma": np.ones(8, np.float32),
            "bert.encoder.layer.0.attention.output.LayerNorm.beta": np.zeros(8, np.float32),
            "bert.encoder.layer.0.attention.self.query.weight": np.ones((8, 8), np.float32),
            "model.layers.0.self_attn.rotary_emb.inv_freq": np.ones(16, np.float32),
        },
        str(path),
    )
    return path


LEGACY_MAPPED = {
    "bert.encoder.layer.0.attention.output.LayerNorm.weight": 32,
    "bert.encoder.layer.0.attention.output.LayerNorm.bias": 32,
    "bert.encoder.layer.0.attention.self.query.weight": 256,
}


# ------------------------------------------------------------------- help


@pytest.mark.parametrize(
    "sub,flags",
    [
        ("plan", ["--device", "--device-map", "--max-memory", "--dtype", "--tie", "--rename", "--drop", "--compat",
                  "--expect", "--no-split", "--no-config-ties", "--json"]),
        ("probe", ["--json"]),
        ("load", ["--alloc", "--margin", "--device-map", "--max-memory", "--expect", "--report"]),
    ],
)
def test_help(run_hoist, sub, flags):
    proc = ok(run_hoist(sub, "--help"))
    for flag in flags:
        assert flag in proc.stdout, f"`hoist {sub} --help` does not mention {flag}:\n{proc.stdout}"


def test_app_help_lists_plan_and_probe(run_hoist):
    proc = ok(run_hoist("--help"))
    assert re.search(r"^\s*plan\b", proc.stdout, re.M) and re.search(r"^\s*probe\b", proc.stdout, re.M), proc.stdout


# ---------------------------------------------------------- plan: JSON shape


def test_plan_json_default_cpu_exact(run_hoist, llama8b_12, no_gpu):
    proc = ok(run_hoist("plan", "--json", llama8b_12))
    assert proc.stderr == ""
    doc = json.loads(proc.stdout)
    assert {"tensors", "devices"} <= set(doc)
    header = header_tensors(llama8b_12)
    assert len(header) == 3 + 12 * 9  # embed, norm, lm_head + 9 per layer
    assert sorted(t["name"] for t in doc["tensors"]) == sorted(header)
    for t in doc["tensors"]:
        assert set(t) == PLAN_TENSOR_KEYS, t  # no tie in this config
        h = header[t["name"]]
        assert t["device"] == "cpu"
        assert (t["dtype"], t["shape"], t["nbytes"]) == (h["dtype"], h["shape"], h["nbytes"]), t
        assert t["offset"] % ALIGN == 0
    assert list(doc["devices"]) == ["cpu"]
    check_reservations(doc)
    # Exact: packed in order, no factor, no slack beyond alignment.
    assert doc["devices"]["cpu"]["bytes"] == packed_bytes([t["nbytes"] for t in doc["tensors"]])
    assert doc["devices"]["cpu"]["bytes"] <= sum(align(h["nbytes"]) for h in header.values())


def test_plan_table_agrees_with_json(run_hoist, llama8b_12):
    doc = plan_json(run_hoist, llama8b_12)
    proc = ok(run_hoist("plan", llama8b_12))
    for t in doc["tensors"]:
        row = [ln.split() for ln in proc.stdout.splitlines() if ln.split()[:1] == [t["name"]]]
        assert len(row) == 1, t["name"]
        assert row[0][1:5] == [t["device"], t["dtype"], str(t["nbytes"]), str(t["offset"])], row
    for dev, info in doc["devices"].items():
        assert re.search(rf"^{re.escape(dev)}:.*\b{info['bytes']}\b", proc.stdout, re.M), proc.stdout


def test_plan_device_flag_needs_no_device(run_hoist, llama8b_12):
    doc = plan_json(run_hoist, "--device", "cuda:7", llama8b_12)
    assert {t["device"] for t in doc["tensors"]} == {"cuda:7"}
    assert list(doc["devices"]) == ["cuda:7"]
    assert doc["warnings"] == []  # no GPU here: plainly a plan for another machine
    check_reservations(doc)
    cpu = plan_json(run_hoist, "--device", "cpu", llama8b_12)
    assert doc["devices"]["cuda:7"]["bytes"] == cpu["devices"]["cpu"]["bytes"]


@pytest.mark.parametrize("device", ["cpu", "cuda:0", "cuda:3"])
def test_plan_warns_when_a_reservation_exceeds_max_memory(run_hoist, llama8b_12, device):
    short = "cpu" if device == "cpu" else device.split(":")[1]
    doc = plan_json(run_hoist, "--device", device, "--max-memory", f"{short}=1GiB", llama8b_12)
    need = doc["devices"][device]["bytes"]
    assert need > GIB
    warning = f"{device}: the plan needs {need} bytes"
    fit = [w for w in doc["warnings"] if w.startswith(warning)]
    assert fit, doc["warnings"]
    assert "only 1073741824 bytes" in fit[0] and "--max-memory" in fit[0]
    # The table form says it on stderr; with room, nothing is said.
    proc = ok(run_hoist("plan", "--device", device, "--max-memory", f"{short}=1GiB", llama8b_12))
    assert f"warning: {warning}" in proc.stderr, proc.stderr
    roomy = plan_json(run_hoist, "--device", device, "--max-memory", f"{short}={need}", llama8b_12)
    assert not [w for w in roomy["warnings"] if "the plan needs" in w], roomy["warnings"]


def test_plan_device_and_device_map_exclusive(run_hoist, llama8b_12):
    proc = run_hoist("plan", "--device", "cpu", "--device-map", '{"": 0}', llama8b_12)
    assert proc.returncode == 2
    assert "--device-map" in stderr_error_line(proc)
    assert proc.stdout == ""


# ------------------------------------------------------------- device maps


@pytest.mark.parametrize("source", ["inline", "file"])
def test_device_map_layer1_not_layer10(run_hoist, llama8b_12, tmp_path, source):
    text = json.dumps(LAYER1_MAP)
    arg = text
    if source == "file":
        arg = tmp_path / "map.json"
        arg.write_text(text)
    doc = plan_json(run_hoist, "--device-map", arg, llama8b_12)
    got = {t["name"]: t["device"] for t in doc["tensors"]}
    assert sorted(got) == sorted(header_tensors(llama8b_12))
    for name, dev in got.items():
        assert dev == layer1_expected_device(name), f"{name} on {dev}"
    # The trap in the issue: model.layers.10.* / 11.* are not under model.layers.1.
    for n in ("10", "11"):
        layer = [d for name, d in got.items() if name.startswith(f"model.layers.{n}.")]
        assert len(layer) == 9 and set(layer) == {"cuda:0"}, (n, layer)
    assert {d for name, d in got.items() if name.startswith("model.layers.1.")} == {"cuda:1"}
    assert got["lm_head.weight"] == "cpu"
    assert set(doc["devices"]) == {"cpu", "cuda:0", "cuda:1"}
    check_reservations(doc)
    assert doc.get("warnings", []) == []


def test_device_map_integer_means_cuda_n(run_hoist, llama8b_12):
    a = plan_json(run_hoist, "--device-map", '{"": 3}', llama8b_12)
    b = plan_json(run_hoist, "--device-map", '{"": "cuda:3"}', llama8b_12)
    assert a["tensors"] == b["tensors"] and placed(a) == placed(b)
    assert list(a["devices"]) == ["cuda:3"]
    c = plan_json(run_hoist, "--device-map", '{"model.layers.2": 2, "": "cuda:0"}', llama8b_12)
    assert {t["device"] for t in c["tensors"] if t["name"].startswith("model.layers.2.")} == {"cuda:2"}


def test_device_map_uncovered_tensor_exit_2(run_hoist, llama8b_12):
    proc = run_hoist("plan", "--json", "--device-map", '{"model": 0}', llama8b_12)
    assert proc.returncode == 2
    line = stderr_error_line(proc)
    assert "lm_head.weight" in line, line
    assert proc.stdout == ""


def test_device_map_unmatched_key_warns_table(run_hoist, llama8b_12):
    m = dict(LAYER1_MAP, **{"nothing.here": 0})
    proc = ok(run_hoist("plan", "--device-map", json.dumps(m), llama8b_12))
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("warning:") and "nothing.here" in lines[0], proc.stderr
    assert "lm_head.weight" in proc.stdout


def test_device_map_unmatched_key_warns_json(run_hoist, llama8b_12):
    """With --json the warning travels in the document (stdout stays JSON),
    and on stderr as without it."""
    m = dict(LAYER1_MAP, **{"nothing.here": 0})
    proc = ok(run_hoist("plan", "--json", "--device-map", json.dumps(m), llama8b_12))
    assert "error:" not in proc.stderr
    doc = json.loads(proc.stdout)
    assert any("nothing.here" in w for w in doc["warnings"]), doc["warnings"]
    assert [f"warning: {w}" for w in doc["warnings"]] == proc.stderr.splitlines()
    # The placement is the same as without the stray key.
    base = plan_json(run_hoist, "--device-map", json.dumps(LAYER1_MAP), llama8b_12)
    assert doc["tensors"] == base["tensors"] and placed(doc) == placed(base)


def test_device_map_shadowed_key_does_not_warn(run_hoist, llama8b_12):
    """"model" and "" cover tensors that longer keys take: they match, so no
    warning (only a key that covers nothing is one)."""
    m = {"model": 0, "model.layers": 1, "model.embed_tokens": 0, "model.norm": 0, "lm_head": 0, "": "cpu"}
    proc = ok(run_hoist("plan", "--json", "--device-map", json.dumps(m), llama8b_12))
    assert json.loads(proc.stdout)["warnings"] == [] and proc.stderr == "", proc.stderr


def test_device_map_disk_counts_nothing(run_hoist, llama8b_12):
    m = {"model.norm": "disk", "lm_head": "disk", "": "cpu"}
    doc = plan_json(run_hoist, "--device-map", json.dumps(m), llama8b_12)
    disk = sorted(t["name"] for t in doc["tensors"] if t["device"] == "disk")
    assert disk == ["lm_head.weight", "model.norm.weight"]
    assert all(t["offset"] is None for t in doc["tensors"] if t["device"] == "disk")
    assert doc["devices"]["disk"]["bytes"] == 0
    check_reservations(doc)
    header = header_tensors(llama8b_12)
    cpu_sizes = [header[t["name"]]["nbytes"] for t in doc["tensors"] if t["device"] == "cpu"]
    assert doc["devices"]["cpu"]["bytes"] == packed_bytes(cpu_sizes)
    everything = plan_json(run_hoist, "--device", "cpu", llama8b_12)["devices"]["cpu"]["bytes"]
    assert doc["devices"]["cpu"]["bytes"] <= everything - header["lm_head.weight"]["nbytes"]


@pytest.mark.parametrize(
    "bad",
    ['{"": -1}', '{"": true}', '{"": "gpu"}', '{"": 0', '["model"]', '{"a": 0, "a": 1, "": 0}', "no-such-map.json"],
)
def test_device_map_bad_exit_2(run_hoist, llama8b_12, bad):
    proc = run_hoist("plan", "--device-map", bad, llama8b_12)
    assert proc.returncode == 2, proc.stderr
    stderr_error_line(proc)
    assert proc.stdout == ""


# -------------------------------------------------------------- strategies

STRATS = ["auto", "balanced", "balanced_low_0", "sequential"]
MAXMEM_2 = "0=10GiB,1=10GiB,cpu=4GiB"


@pytest.mark.parametrize("strategy", STRATS)
def test_strategy_never_splits_a_layer(run_hoist, llama8b, strategy):
    doc = plan_json(run_hoist, "--device-map", strategy, "--max-memory", MAXMEM_2, llama8b)
    assert sorted(t["name"] for t in doc["tensors"]) == sorted(header_tensors(llama8b))
    units = devices_of_units(doc)
    layers = [u for u in units if re.fullmatch(r"model\.layers\.\d+", u)]
    assert len(layers) == 32
    split = {u: d for u, d in units.items() if len(d) != 1}
    assert not split, f"units split across devices: {split}"
    check_reservations(doc)
    limits = {"cuda:0": 10 * GIB, "cuda:1": 10 * GIB, "cpu": 4 * GIB}
    for dev, info in doc["devices"].items():
        assert dev in limits or dev == "disk", dev
        if dev in limits:
            assert info["bytes"] <= limits[dev], (dev, info)


def test_strategy_auto_is_balanced(run_hoist, llama8b):
    a = plan_json(run_hoist, "--device-map", "auto", "--max-memory", MAXMEM_2, llama8b)
    b = plan_json(run_hoist, "--device-map", "balanced", "--max-memory", MAXMEM_2, llama8b)
    assert a["tensors"] == b["tensors"]


def test_strategy_balanced_is_even(run_hoist, llama8b):
    doc = plan_json(run_hoist, "--device-map", "balanced", "--max-memory", MAXMEM_2, llama8b)
    devs = doc["devices"]
    assert set(devs) == {"cuda:0", "cuda:1"}, "15 GiB fits in 2 x 10 GiB: nothing on cpu or disk"
    largest = max(unit_bytes(doc).values())
    a, b = devs["cuda:0"]["bytes"], devs["cuda:1"]["bytes"]
    assert abs(a - b) <= largest, (a / GIB, b / GIB, largest / GIB)
    # And a third GPU takes a fair share too.
    doc3 = plan_json(run_hoist, "--device-map", "balanced", "--max-memory", "0=10GiB,1=10GiB,2=10GiB,cpu=4GiB", llama8b)
    sizes = [doc3["devices"][f"cuda:{i}"]["bytes"] for i in range(3)]
    assert max(sizes) - min(sizes) <= 2 * largest, [s / GIB for s in sizes]


def test_strategy_sequential_fills_gpu0_first(run_hoist, llama8b):
    doc = plan_json(run_hoist, "--device-map", "sequential", "--max-memory", MAXMEM_2, llama8b)
    assert set(doc["devices"]) == {"cuda:0", "cuda:1"}
    # Units in catalogue order: every cuda:0 unit comes before every cuda:1 unit.
    order = []
    for t in doc["tensors"]:
        u = unit_of(t["name"])
        if not order or order[-1][0] != u:
            order.append((u, t["device"]))
    devs = [d for _, d in order]
    first1 = devs.index("cuda:1")
    assert set(devs[:first1]) == {"cuda:0"} and set(devs[first1:]) == {"cuda:1"}, order
    # cuda:0 is full: the first unit that went to cuda:1 would not have fit.
    ub = unit_bytes(doc)
    used0 = sum(ub[u] for u, d in order if d == "cuda:0")
    assert used0 + ub[order[first1][0]] > 10 * GIB
    assert doc["devices"]["cuda:0"]["bytes"] > doc["devices"]["cuda:1"]["bytes"]


def test_strategy_balanced_low_0_keeps_gpu0_light(run_hoist, llama8b):
    doc = plan_json(run_hoist, "--device-map", "balanced_low_0", "--max-memory", "0=10GiB,1=10GiB,2=10GiB,cpu=4GiB",
                    llama8b)
    devs = doc["devices"]
    largest = max(unit_bytes(doc).values())
    g0 = devs.get("cuda:0", {"bytes": 0})["bytes"]
    assert g0 <= largest, g0 / GIB
    assert g0 < devs["cuda:1"]["bytes"] and g0 < devs["cuda:2"]["bytes"]
    assert "cpu" not in devs and "disk" not in devs, "15 GiB fits on cuda:1 and cuda:2"


def test_strategy_balanced_low_0_uses_gpu0_before_cpu_and_disk(run_hoist, llama8b):
    doc = plan_json(run_hoist, "--device-map", "balanced_low_0", "--max-memory", MAXMEM_2, llama8b)
    devs = doc["devices"]
    assert "cpu" not in devs and "disk" not in devs, {d: v["bytes"] / GIB for d, v in devs.items()}
    assert devs["cuda:0"]["bytes"] < devs["cuda:1"]["bytes"]


@pytest.mark.parametrize("strategy", STRATS)
def test_strategy_follows_layer_numbers_not_file_order(run_hoist, llama8b, llama8b_by_name, strategy):
    """Real checkpoints list layers by name (1, 10, 11, 2, ...). A strategy
    still fills devices in layer order, so each device holds one run of
    consecutive layers, and the placement is the same whatever the file order."""
    args = ["--device-map", strategy, "--max-memory", "0=6GiB,1=6GiB,2=6GiB,cpu=4GiB"]
    sorted_doc = plan_json(run_hoist, *args, llama8b_by_name)
    model_doc = plan_json(run_hoist, *args, llama8b)
    placed = {t["name"]: t["device"] for t in sorted_doc["tensors"]}
    assert placed == {t["name"]: t["device"] for t in model_doc["tensors"]}
    rank = {"cuda:0": 0, "cuda:1": 1, "cuda:2": 2, "cpu": 3}
    if strategy == "balanced_low_0":
        rank["cuda:0"] = 2.5  # GPU 0 takes what the others cannot, after them
    layer_device = {}
    for name, dev in placed.items():
        m = re.match(r"model\.layers\.(\d+)\.", name)
        if m:
            layer_device[int(m.group(1))] = dev
    walk = [rank[placed["model.embed_tokens.weight"]]] + [rank[layer_device[i]] for i in range(32)]
    walk += [rank[placed["model.norm.weight"]], rank[placed["lm_head.weight"]]]
    assert walk == sorted(walk), [layer_device[i] for i in range(32)]
    assert len(set(walk)) >= 2, "the test needs the model spread over devices"


def test_plan_table_says_which_layers_each_device_holds(run_hoist, llama8b_by_name):
    """The footer of the table names each device's units in order, layers as
    ranges, from the JSON's own placement."""
    args = ["--device-map", "sequential", "--max-memory", "0=6GiB,1=6GiB,2=6GiB,cpu=10GiB", llama8b_by_name]
    doc = plan_json(run_hoist, *args)
    table = ok(run_hoist("plan", *args)).stdout
    layers = {}
    for t in doc["tensors"]:
        m = re.match(r"model\.layers\.(\d+)\.", t["name"])
        if m:
            layers.setdefault(t["device"], set()).add(int(m.group(1)))
    for dev, numbers in layers.items():
        lo, hi = min(numbers), max(numbers)
        assert numbers == set(range(lo, hi + 1)), (dev, sorted(numbers))
        line = next(ln for ln in table.splitlines() if ln.startswith(dev + ":"))
        assert f"model.layers.{lo}-{hi}" in line or (lo == hi and f"model.layers.{lo}" in line), line
    head = next(ln for ln in table.splitlines() if ln.startswith(by_name(doc)["lm_head.weight"]["device"] + ":"))
    assert head.rstrip().endswith("lm_head"), head
    # A layer a map splits between devices is a part on each.
    table = ok(run_hoist("plan", "--device-map", json.dumps({"model.layers.0.self_attn": 0, "": "cpu"}),
                         llama8b_by_name)).stdout
    gpu = next(ln for ln in table.splitlines() if ln.startswith("cuda:0:"))
    cpu = next(ln for ln in table.splitlines() if ln.startswith("cpu:"))
    assert gpu.rstrip().endswith(": part of model.layers.0"), gpu
    assert ": model.embed_tokens, part of model.layers.0, model.layers.1-31, model.norm, lm_head" in cpu, cpu


def test_strategy_balanced_low_0_puts_overflow_on_gpu0_not_cpu(run_hoist, llama8b):
    """The embedding (1 GiB) is larger than GPU 0's share would be; GPU 0
    still takes what GPU 1 cannot hold before anything goes to the cpu."""
    doc = plan_json(run_hoist, "--device-map", "balanced_low_0", "--max-memory", "0=14.8GiB,1=14.8GiB,cpu=64GiB",
                    llama8b)
    devs = {d: v["bytes"] for d, v in doc["devices"].items()}
    assert set(devs) == {"cuda:0", "cuda:1"}, devs
    assert 0 < devs["cuda:0"] < devs["cuda:1"] <= 14.8 * GIB, devs
    # GPU 0 got only units that no longer fitted on GPU 1.
    ub = unit_bytes(doc)
    gpu0_units = [u for u, d in devices_of_units(doc).items() if d == {"cuda:0"}]
    assert all(devs["cuda:1"] + ub[u] > 14.8 * GIB for u in gpu0_units), gpu0_units


@pytest.mark.parametrize("strategy", STRATS)
@pytest.mark.parametrize("disk", ["", ",disk=0", ",disk=1GiB"])
def test_strategy_nothing_fits_exit_2(run_hoist, llama8b, strategy, disk):
    proc = run_hoist("plan", "--json", "--device-map", strategy, "--max-memory", "0=1GiB,1=1GiB,cpu=1GiB" + disk,
                     llama8b)
    assert proc.returncode == 2, proc.stdout[:500]
    line = stderr_error_line(proc)
    assert "fits on no device" in line, line
    # Where disk was not allowed, the error says how to allow it.
    assert ("--max-memory disk=SIZE" in line) == (disk != ",disk=1GiB"), line
    assert proc.stdout == ""


def test_strategy_spills_to_disk_only_when_allowed(run_hoist, llama8b):
    doc = plan_json(run_hoist, "--device-map", "sequential", "--max-memory", "0=1GiB,1=1GiB,cpu=1GiB,disk=1TB",
                    llama8b)
    assert doc["devices"]["disk"]["bytes"] == 0
    assert len([t for t in doc["tensors"] if t["device"] == "disk"]) > 0
    check_reservations(doc)
    for dev in ("cuda:0", "cuda:1", "cpu"):
        assert doc["devices"].get(dev, {"bytes": 0})["bytes"] <= GIB


def test_strategy_no_split(run_hoist, llama8b_12):
    args = ["--device-map", "balanced", "--max-memory", "0=2GiB,1=2GiB,cpu=64GiB,disk=64GiB"]
    base = plan_json(run_hoist, *args, llama8b_12)
    spread = {t["device"] for t in base["tensors"] if t["name"].startswith("model.layers.")}
    assert len(spread) >= 2, spread
    whole = plan_json(run_hoist, *args, "--no-split", r"model\.layers", llama8b_12)
    assert len({t["device"] for t in whole["tensors"] if t["name"].startswith("model.layers.")}) == 1
    check_reservations(whole)


# ------------------------------------------------------------------- dtype


@pytest.mark.parametrize("dtype,elem", [("bf16", 2), ("f16", 2), ("f32", 4)])
def test_plan_dtype_on_float_model(run_hoist, llama8b_12, dtype, elem):
    doc = plan_json(run_hoist, "--dtype", dtype, llama8b_12)
    header = header_tensors(llama8b_12)
    for t in doc["tensors"]:
        h = header[t["name"]]
        assert t["dtype"] == {"bf16": "BF16", "f16": "F16", "f32": "F32"}[dtype]
        assert t["nbytes"] == h["nbytes"] // 2 * elem
    check_reservations(doc)


@pytest.fixture(scope="module")
def quantized_file(tmp_path_factory) -> Path:
    np = pytest.importorskip("numpy")
    st = pytest.importorskip("safetensors.numpy")
    path = tmp_path_factory.mktemp("quant") / "q.safetensors"
    st.save_file(
        {
            "layer.q.weight": np.zeros((32, 16), np.int8),
            "layer.q.weight_scale": np.ones(32, np.float32),
            "layer.packed.qweight": np.zeros((8, 16), np.int32),
            "layer.nf4.weight": np.zeros(300, np.uint8),
            "layer.nf4.absmax": np.ones(10, np.float32),
            "layer.dense.weight": np.zeros((10, 8), np.float32),
            "layer.dense.bias": np.zeros(10, np.float16),
            "layer.wide": np.zeros(3, np.float64),
        },
        str(path),
    )
    return path


QUANT_BF16 = {  # name -> (dtype, nbytes) under --dtype bf16
    "layer.q.weight": ("I8", 512),
    "layer.q.weight_scale": ("F32", 128),
    "layer.packed.qweight": ("I32", 512),
    "layer.nf4.weight": ("U8", 300),
    "layer.nf4.absmax": ("F32", 40),
    "layer.dense.weight": ("BF16", 160),
    "layer.dense.bias": ("BF16", 20),
    "layer.wide": ("BF16", 6),
}


def test_plan_dtype_never_casts_quantized_or_scales(run_hoist, quantized_file):
    stored = {t["name"]: (t["dtype"], t["nbytes"]) for t in plan_json(run_hoist, quantized_file)["tensors"]}
    header = header_tensors(quantized_file)
    assert stored == {n: (h["dtype"], h["nbytes"]) for n, h in header.items()}
    doc = plan_json(run_hoist, "--dtype", "bf16", quantized_file)
    got = {t["name"]: (t["dtype"], t["nbytes"]) for t in doc["tensors"]}
    assert got == QUANT_BF16
    check_reservations(doc)
    f32 = {t["name"]: (t["dtype"], t["nbytes"]) for t in plan_json(run_hoist, "--dtype", "f32", quantized_file)["tensors"]}
    assert f32["layer.dense.bias"] == ("F32", 40) and f32["layer.wide"] == ("F32", 12)
    for n in ("layer.q.weight", "layer.q.weight_scale", "layer.packed.qweight", "layer.nf4.weight", "layer.nf4.absmax"):
        assert f32[n] == QUANT_BF16[n]


def test_plan_dtype_keeps_fp8(run_hoist, tmp_path):
    torch = pytest.importorskip("torch")
    if not hasattr(torch, "float8_e4m3fn"):
        pytest.skip("this torch has no float8_e4m3fn")
    st = pytest.importorskip("safetensors.torch")
    path = tmp_path / "fp8.safetensors"
    st.save_file(
        {
            "mlp.weight": torch.zeros(64, 8, dtype=torch.float8_e4m3fn),
            "mlp.weight_scale_inv": torch.ones(4, dtype=torch.float32),
            "mlp.q.weight": torch.zeros(16, 16, dtype=torch.int8),
            "mlp.q.weight_scale": torch.ones(16, dtype=torch.float32),
            "norm.weight": torch.ones(64, dtype=torch.float32),
        },
        str(path),
    )
    header = header_tensors(path)
    assert header["mlp.weight"]["dtype"] == "F8_E4M3"
    doc = plan_json(run_hoist, "--dtype", "bf16", path)
    got = {t["name"]: (t["dtype"], t["nbytes"]) for t in doc["tensors"]}
    assert got == {
        "mlp.weight": ("F8_E4M3", 512),
        "mlp.weight_scale_inv": ("F32", 16),
        "mlp.q.weight": ("I8", 256),
        "mlp.q.weight_scale": ("F32", 64),
        "norm.weight": ("BF16", 128),
    }
    check_reservations(doc)


@pytest.mark.parametrize("bad", ["f8", "int8", "bfloat", "F64"])
def test_plan_bad_dtype_exit_2(run_hoist, tiny, bad):
    proc = run_hoist("plan", "--dtype", bad, tiny)
    assert proc.returncode == 2
    stderr_error_line(proc)


# -------------------------------------------------------------------- ties


def test_plan_config_tie_counted_once(run_hoist, llama1b_1):
    header = header_tensors(llama1b_1)
    assert "lm_head.weight" not in header and "model.embed_tokens.weight" in header
    assert json.loads((llama1b_1 / "config.json").read_text())["tie_word_embeddings"] is True
    doc = plan_json(run_hoist, llama1b_1)
    t = by_name(doc)
    assert "lm_head.weight" in t
    lm, emb = t["lm_head.weight"], t["model.embed_tokens.weight"]
    assert lm["tied_to"] == "model.embed_tokens.weight"
    assert (lm["device"], lm["dtype"], lm["offset"]) == (emb["device"], emb["dtype"], emb["offset"])
    check_reservations(doc)
    # The reservation is the checkpoint's tensors packed, without the alias.
    sizes = [header[x["name"]]["nbytes"] for x in doc["tensors"] if "tied_to" not in x]
    assert len(sizes) == len(header)
    assert doc["devices"]["cpu"]["bytes"] == packed_bytes(sizes)
    untied = plan_json(run_hoist, "--no-config-ties", llama1b_1)
    assert "lm_head.weight" not in by_name(untied)
    assert not any("tied_to" in x for x in untied["tensors"])
    assert untied["devices"]["cpu"]["bytes"] == doc["devices"]["cpu"]["bytes"]


def test_plan_explicit_tie_equals_config_tie(run_hoist, llama1b_1):
    config = plan_json(run_hoist, llama1b_1)
    explicit = plan_json(run_hoist, "--no-config-ties", "--tie", "lm_head.weight=model.embed_tokens.weight", llama1b_1)
    assert explicit["tensors"] == config["tensors"]
    assert placed(explicit) == placed(config)


def test_device_map_sending_a_tied_alias_elsewhere_warns(run_hoist, llama1b_1):
    """One storage, one device: lm_head.weight stays with the embedding, and
    the plan says the map's "lm_head": "cpu" was overruled."""
    m = {"model": 0, "lm_head": "cpu"}
    doc = plan_json(run_hoist, "--device-map", json.dumps(m), llama1b_1)
    t = by_name(doc)
    assert t["lm_head.weight"]["device"] == t["model.embed_tokens.weight"]["device"] == "cuda:0"
    assert len(doc["warnings"]) == 1, doc["warnings"]
    assert all(x in doc["warnings"][0] for x in ("lm_head.weight", "cuda:0", "cpu")), doc["warnings"]
    # Where the map agrees, or only its catch-all "" placed the alias, nothing to say.
    assert plan_json(run_hoist, "--device-map", json.dumps({"": 0}), llama1b_1)["warnings"] == []
    doc = plan_json(run_hoist, "--device-map", json.dumps({"model": 0, "": "cpu"}), llama1b_1)
    assert doc["warnings"] == [] and by_name(doc)["lm_head.weight"]["device"] == "cuda:0"

def test_plan_tie_existing_tensor_frees_its_bytes(run_hoist, tiny):
    """tiny-llama stores lm_head.weight; tying it makes it an alias costing nothing."""
    header = header_tensors(tiny)
    base = plan_json(run_hoist, tiny)
    tied = plan_json(run_hoist, "--tie", "lm_head.weight=model.embed_tokens.weight", tiny)
    t = by_name(tied)
    assert t["lm_head.weight"]["tied_to"] == "model.embed_tokens.weight"
    check_reservations(tied)
    sizes = [header[x["name"]]["nbytes"] for x in tied["tensors"] if "tied_to" not in x]
    assert tied["devices"]["cpu"]["bytes"] == packed_bytes(sizes)
    assert tied["devices"]["cpu"]["bytes"] <= base["devices"]["cpu"]["bytes"] - header["lm_head.weight"]["nbytes"]


def test_plan_tie_shape_mismatch_exit_2(run_hoist, tiny):
    proc = run_hoist("plan", "--tie", "model.norm.weight=model.embed_tokens.weight", tiny)
    assert proc.returncode == 2
    assert "model.norm.weight" in stderr_error_line(proc)


def test_plan_tie_unknown_source_warns(run_hoist, tiny):
    proc = ok(run_hoist("plan", "--tie", "x.weight=no.such.tensor", tiny))
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("warning:") and "no.such.tensor" in lines[0], proc.stderr
    doc = plan_json(run_hoist, "--tie", "x.weight=no.such.tensor", tiny)
    assert "x.weight" not in by_name(doc)


@pytest.mark.parametrize("bad", ["lm_head.weight", "=model.embed_tokens.weight"])
def test_plan_tie_malformed_exit_2(run_hoist, tiny, bad):
    proc = run_hoist("plan", "--tie", bad, tiny)
    assert proc.returncode == 2
    assert "--tie" in stderr_error_line(proc)


def test_plan_tied_alias_lives_with_its_source(run_hoist, llama1b_1):
    doc = plan_json(run_hoist, "--device-map", '{"model.embed_tokens": 1, "": "cpu"}', llama1b_1)
    t = by_name(doc)
    assert t["model.embed_tokens.weight"]["device"] == "cuda:1"
    assert t["lm_head.weight"]["device"] == "cuda:1"
    check_reservations(doc)
    assert doc["devices"]["cuda:1"]["bytes"] == t["model.embed_tokens.weight"]["nbytes"]


# ------------------------------------------------------------- key mapping


def test_rename_first_match_wins(run_hoist, tiny):
    doc = plan_json(run_hoist, "--rename", r"layers=L", "--rename", r"^model\.=M.", tiny)
    names = [t["name"] for t in doc["tensors"]]
    header = header_tensors(tiny)

    def mapped(n: str) -> str:
        if "layers" in n:
            return n.replace("layers", "L", 1)
        if n.startswith("model."):
            return "M." + n[len("model."):]
        return n

    assert sorted(names) == sorted(mapped(n) for n in header)
    assert "model.L.0.mlp.up_proj.weight" in names  # not M.L.0...: the second rule was not applied
    assert "M.embed_tokens.weight" in names and "lm_head.weight" in names


def test_rename_group_references_and_device_map_after_mapping(run_hoist, tiny):
    doc = plan_json(run_hoist, "--rename", r"^model\.layers\.(\d+)\.=blocks.$1.", "--device-map",
                    '{"blocks.1": 2, "": "cpu"}', tiny)
    t = by_name(doc)
    assert t["blocks.1.mlp.up_proj.weight"]["device"] == "cuda:2"
    assert t["blocks.0.mlp.up_proj.weight"]["device"] == "cpu"
    assert not any(n.startswith("model.layers.") for n in t)
    check_reservations(doc)


def test_drop(run_hoist, tiny):
    header = header_tensors(tiny)
    doc = plan_json(run_hoist, "--drop", r"\.mlp\.", "--drop", "^lm_head", tiny)
    kept = [n for n in header if ".mlp." not in n and not n.startswith("lm_head")]
    assert sorted(t["name"] for t in doc["tensors"]) == sorted(kept)
    assert doc["devices"]["cpu"]["bytes"] == packed_bytes([header[t["name"]]["nbytes"] for t in doc["tensors"]])


def test_drop_sees_names_before_rename(run_hoist, tiny):
    doc = plan_json(run_hoist, "--rename", "mlp=ffn", "--drop", r"\.mlp\.", tiny)
    names = [t["name"] for t in doc["tensors"]]
    assert not any(".mlp." in n or ".ffn." in n for n in names), names


def test_only_applies_to_mapped_names(run_hoist, tiny):
    doc = plan_json(run_hoist, "--rename", r"^model\.=M.", "--only", r"^M\.", tiny)
    names = sorted(t["name"] for t in doc["tensors"])
    want = sorted("M." + n[len("model."):] for n in header_tensors(tiny) if n.startswith("model."))
    assert names == want


def test_plan_expect_lists(run_hoist, tiny, tmp_path):
    header = header_tensors(tiny)
    expect = tmp_path / "expect.json"
    expect.write_text(json.dumps(["model.norm.weight", "not.there"]))
    doc = plan_json(run_hoist, "--expect", expect, tiny)
    assert [t["name"] for t in doc["tensors"]] == ["model.norm.weight"]
    assert doc["missing"] == ["not.there"] and doc["mismatched"] == []
    assert sorted(doc["unexpected"]) == sorted(set(header) - {"model.norm.weight"})
    assert doc["devices"]["cpu"]["bytes"] == header["model.norm.weight"]["nbytes"]


def test_compat_hf_legacy(run_hoist, legacy_file):
    raw = plan_json(run_hoist, legacy_file)
    assert sorted(t["name"] for t in raw["tensors"]) == sorted(header_tensors(legacy_file))
    doc = plan_json(run_hoist, "--compat", "hf-legacy", legacy_file)
    got = {t["name"]: t["nbytes"] for t in doc["tensors"]}
    assert got == LEGACY_MAPPED
    check_reservations(doc)
    assert doc["devices"]["cpu"]["bytes"] == packed_bytes([t["nbytes"] for t in doc["tensors"]])


def test_compat_unknown_mode_exit_2(run_hoist, legacy_file):
    proc = run_hoist("plan", "--compat", "hf-modern", legacy_file)
    assert proc.returncode == 2
    assert "--compat" in stderr_error_line(proc)


def test_rename_collision_exit_2(run_hoist, legacy_file):
    proc = run_hoist("plan", "--json", "--rename", "(gamma|beta)$=w", legacy_file)
    assert proc.returncode == 2
    line = stderr_error_line(proc)
    assert "LayerNorm.gamma" in line and "LayerNorm.beta" in line and "LayerNorm.w" in line, line
    assert proc.stdout == ""
    # Also when compat and a rename meet on one name.
    proc = run_hoist("plan", "--compat", "hf-legacy", "--rename", "bias$=weight", legacy_file)
    assert proc.returncode == 2
    assert "LayerNorm.weight" in stderr_error_line(proc)


@pytest.mark.parametrize(
    "flags",
    [["--rename", "([=x"], ["--drop", "(["], ["--only", "(["], ["--rename", "no-equals-sign"],
     ["--device-map", "balanced", "--max-memory", "cpu=1GiB", "--no-split", "(["]],
    ids=["rename-regex", "drop-regex", "only-regex", "rename-form", "no-split-regex"],
)
def test_bad_key_mapping_exit_2(run_hoist, tiny, flags):
    proc = run_hoist("plan", *flags, tiny)
    assert proc.returncode == 2, proc.stdout[:300]
    line = stderr_error_line(proc)
    assert flags[-2] in line, line
    assert proc.stdout == ""


# ------------------------------------------------------------ load --expect


def test_load_expect_list(run_hoist, tiny, tmp_path):
    header = header_tensors(tiny)
    expect = tmp_path / "expect.json"
    expect.write_text(json.dumps(["model.embed_tokens.weight", "model.norm.weight", "not.in.checkpoint"]))
    report = load_report(run_hoist, tmp_path, "--expect", expect, tiny)
    assert report["missing"] == ["not.in.checkpoint"]
    assert report["mismatched"] == []
    assert sorted(report["unexpected"]) == sorted(set(header) - {"model.embed_tokens.weight", "model.norm.weight"})
    assert sorted(t["name"] for t in report["tensors"]) == ["model.embed_tokens.weight", "model.norm.weight"]
    # Unexpected tensors are neither allocated nor read.
    loaded = header["model.embed_tokens.weight"]["nbytes"] + header["model.norm.weight"]["nbytes"]
    assert report["bytes_read"] == loaded
    assert report["devices"]["cpu"]["bytes"] == packed_bytes(
        [header["model.embed_tokens.weight"]["nbytes"], header["model.norm.weight"]["nbytes"]])


def test_load_expect_dtype_and_shape(run_hoist, tiny, tmp_path):
    header = header_tensors(tiny)
    emb = header["model.embed_tokens.weight"]
    expect = tmp_path / "expect.json"
    expect.write_text(json.dumps({
        "model.embed_tokens.weight": {"dtype": "BF16", "shape": emb["shape"]},   # matches
        "model.norm.weight": {"dtype": "F32"},                                   # dtype differs
        "lm_head.weight": {"shape": list(reversed(header["lm_head.weight"]["shape"]))},  # shape differs
        "gone.weight": {},
    }))
    report = load_report(run_hoist, tmp_path, "--expect", expect, tiny)
    assert report["missing"] == ["gone.weight"]
    assert sorted(report["mismatched"]) == ["lm_head.weight", "model.norm.weight"]
    assert len(report["unexpected"]) == len(header) - 3
    assert sorted(t["name"] for t in report["tensors"]) == ["lm_head.weight", "model.embed_tokens.weight",
                                                             "model.norm.weight"]
    # The expected dtype is compared after the cast.
    report = load_report(run_hoist, tmp_path, "--expect", expect, "--dtype", "f32", tiny, name="f32.json")
    assert sorted(report["mismatched"]) == ["lm_head.weight", "model.embed_tokens.weight"]


def test_load_compat_then_expect_clean(run_hoist, legacy_file, tmp_path):
    expect = tmp_path / "expect.json"
    expect.write_text(json.dumps(sorted(LEGACY_MAPPED)))
    raw = load_report(run_hoist, tmp_path, "--expect", expect, legacy_file, name="raw.json")
    assert sorted(raw["missing"]) == sorted(n for n in LEGACY_MAPPED if "LayerNorm" in n)
    assert len(raw["unexpected"]) == 3
    report = load_report(run_hoist, tmp_path, "--compat", "hf-legacy", "--expect", expect, legacy_file)
    assert (report["missing"], report["unexpected"], report["mismatched"]) == ([], [], [])
    assert sorted(t["name"] for t in report["tensors"]) == sorted(LEGACY_MAPPED)
    assert report["bytes_read"] == sum(LEGACY_MAPPED.values())


@pytest.mark.parametrize("text", ['["a", 3]', '"a"', "{not json", '{"a": {"dtype": "Q7"}}'])
def test_load_bad_expect_exit_2(run_hoist, tiny, tmp_path, text):
    expect = tmp_path / "expect.json"
    expect.write_text(text)
    proc = run_hoist("load", "--expect", expect, tiny)
    assert proc.returncode == 2
    stderr_error_line(proc)


# ----------------------------------------------------------- load --alloc


@pytest.mark.parametrize("alloc", ["per-tensor", "reserve"])
def test_load_alloc_counts(run_hoist, tiny, tmp_path, alloc):
    header = header_tensors(tiny)
    report = load_report(run_hoist, tmp_path, "--alloc", alloc, tiny)
    assert report["alloc"] == alloc
    assert list(report["devices"]) == ["cpu"]
    cpu = report["devices"]["cpu"]
    assert cpu["driver_allocs"] == (len(header) if alloc == "per-tensor" else 1)
    assert report["bytes_read"] == sum(h["nbytes"] for h in header.values())
    plan = plan_json(run_hoist, "--device", "cpu", tiny)
    if alloc == "reserve":
        assert cpu["bytes"] == plan["devices"]["cpu"]["bytes"]
    else:
        assert cpu["bytes"] == sum(h["nbytes"] for h in header.values())
    assert cpu["peak_reserved_bytes"] >= cpu["bytes"] > 0


@pytest.mark.parametrize("alloc", ["per-tensor", "reserve"])
def test_load_alloc_counts_with_tie(run_hoist, tiny_tied, tmp_path, alloc):
    header = header_tensors(tiny_tied)
    report = load_report(run_hoist, tmp_path, "--alloc", alloc, tiny_tied)
    tied = [t["name"] for t in report["tensors"] if t.get("tied")]
    assert tied == ["lm_head.weight"]
    cpu = report["devices"]["cpu"]
    assert cpu["driver_allocs"] == (len(header) - 1 if alloc == "per-tensor" else 1)
    # The alias's bytes are not read.
    assert report["bytes_read"] == sum(h["nbytes"] for h in header.values()) - header["lm_head.weight"]["nbytes"]


def test_load_reserve_one_alloc_per_device_with_disk(run_hoist, tiny, tmp_path):
    report = load_report(run_hoist, tmp_path, "--device-map", '{"model.layers": "disk", "": "cpu"}', tiny)
    assert report["devices"]["cpu"]["driver_allocs"] == 1
    assert report["devices"].get("disk", {}).get("driver_allocs", 0) == 0
    header = header_tensors(tiny)
    on_disk = [t["name"] for t in report["tensors"] if t["device"] == "disk"]
    assert sorted(on_disk) == sorted(n for n in header if n.startswith("model.layers."))
    assert report["bytes_read"] == sum(h["nbytes"] for n, h in header.items() if n not in on_disk)


def test_load_bad_alloc_exit_2(run_hoist, tiny):
    proc = run_hoist("load", "--alloc", "lazy", tiny)
    assert proc.returncode == 2
    stderr_error_line(proc)


def test_load_absent_gpu_exit_2(run_hoist, tiny, no_gpu):
    proc = run_hoist("load", "--device", "cuda:0", tiny)
    assert proc.returncode == 2
    assert "cuda:0" in stderr_error_line(proc)
    assert proc.stdout == ""
    proc = run_hoist("load", "--device-map", '{"model.layers.1": 1, "": "cpu"}', tiny)
    assert proc.returncode == 2
    assert "cuda:1" in stderr_error_line(proc)


@pytest.mark.parametrize("alloc", ["reserve", "per-tensor"])
def test_load_refused_before_allocation(run_hoist, llama1b_1, alloc):
    """0.60 GiB of plan against a 1 MB limit: refused with a line that names
    the device, what is needed and available, and points at --device-map.
    (The checkpoint is sparse: a refusal reads nothing.)"""
    proc = run_hoist("load", "--alloc", alloc, "--max-memory", "cpu=1MB", llama1b_1)
    assert proc.returncode == 2
    line = stderr_error_line(proc)
    assert re.search(r"\bcpu\b", line), line
    assert "0.60 GiB" in line or "646983680" in line or "647" in line, line
    assert "--device-map" in line, line
    assert proc.stdout == ""


def test_load_refusal_sizes_are_readable_for_small_plans(run_hoist, tiny):
    proc = run_hoist("load", "--max-memory", "cpu=100kB", tiny)
    assert proc.returncode == 2
    line = stderr_error_line(proc)
    m = re.search(r"needs (\d+) bytes \([\d.]+ \w+\) but only (\d+) bytes", line)
    assert m, line
    # The reservation: every tensor, plus alignment padding.
    assert int(m.group(1)) >= sum(h["nbytes"] for h in header_tensors(tiny).values()), line
    assert int(m.group(2)) == 100_000, line


def test_load_auto_spills_to_disk(run_hoist, tiny, tmp_path, no_gpu):
    header = header_tensors(tiny)
    total = sum(h["nbytes"] for h in header.values())
    report = load_report(run_hoist, tmp_path, "--device-map", "auto", "--max-memory", "cpu=100kB,disk=1GB", tiny)
    devices = {t["name"]: t["device"] for t in report["tensors"]}
    assert sorted(devices) == sorted(header)
    disk = [n for n, d in devices.items() if d == "disk"]
    assert disk and set(devices.values()) <= {"cpu", "disk"}
    assert report["bytes_read"] < total
    assert report["bytes_read"] == sum(header[n]["nbytes"] for n, d in devices.items() if d != "disk")
    assert report["devices"]["cpu"]["bytes"] <= 100_000
    assert report["devices"]["cpu"]["driver_allocs"] == 1
    # Layers stay whole.
    units: dict[str, set] = {}
    for n, d in devices.items():
        units.setdefault(unit_of(n), set()).add(d)
    assert all(len(v) == 1 for v in units.values()), units


def test_load_unmatched_key_warns(run_hoist, tiny):
    proc = ok(run_hoist("load", "--device-map", '{"nothing.here": "cpu", "": "cpu"}', tiny))
    warnings = [ln for ln in proc.stderr.splitlines() if ln.startswith("warning:")]
    assert len(warnings) == 1 and "nothing.here" in warnings[0], proc.stderr
    assert "error:" not in proc.stderr


# -------------------------------------------------------------------- probe


@pytest.mark.parametrize("args, message", [
    (["--host-bytes", "lots"], "is not a size"),
    (["--host-bytes", "4KiB"], "too small"),
    (["--host-bytes", "1000TB"], "available"),
    (["--threads", "0"], "--threads"),
])
def test_probe_rejects_bad_host_arguments(run_hoist, args, message):
    proc = run_hoist("probe", *args)
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert message in proc.stderr and proc.stderr.startswith("error:"), proc.stderr
    assert proc.stdout == "", proc.stdout  # nothing measured or printed before the error


def test_probe_text(run_hoist, gpu_count):
    proc = ok(run_hoist("probe", "--host-bytes", "32MiB"))
    assert re.search(r"^host  \d+ cores$", proc.stdout, re.M), proc.stdout
    assert re.search(r"^  fresh memory, first touch +[\d.]+ GB/s  \(0\.03 GiB, \d+ threads", proc.stdout, re.M), proc.stdout
    if gpu_count:
        assert re.search(r"^cuda:0\b", proc.stdout, re.M), proc.stdout
    else:
        first = proc.stdout.splitlines()[0]
        assert first.startswith("no CUDA GPU found") or "no CUDA backend" in first, proc.stdout


def test_probe_json(run_hoist, gpu_count):
    proc = ok(run_hoist("probe", "--json", "--host-bytes", "64MiB", "--threads", "3"))
    doc = json.loads(proc.stdout)
    assert set(doc) <= {"gpus", "cuda", "host"} and isinstance(doc["gpus"], list)
    host = doc["host"]
    assert host["bytes"] == 64 << 20 and host["threads"] == 3 and host["cores"] >= 1, host
    assert host["fresh_memory_seconds"] > 0 and host["fresh_memory_gbps"] > 0 and host["memcpy_gbps"] > 0, host
    assert abs(host["fresh_memory_gbps"] - host["bytes"] / host["fresh_memory_seconds"] / 1e9) < 1e-6 * host["fresh_memory_gbps"]
    # A virtio balloon (device 0x0005) offering VIRTIO_BALLOON_F_REPORTING (feature bit 5).
    balloons = [d for d in Path("/sys/bus/virtio/devices").glob("*") if (d / "device").read_text().strip() == "0x0005"]
    assert host["free_page_reporting"] is any((d / "features").read_text()[5:6] == "1" for d in balloons)
    if not gpu_count:
        assert doc["gpus"] == []
        assert doc.get("cuda", False) is False
    for g in doc["gpus"]:
        assert {"index", "name", "free_bytes", "total_bytes", "h2d_pinned_gbps"} <= set(g)


# ------------------------------------------------------- a 92k-tensor FP8 model


def test_deepseek_v3_plans_over_eight_gpus(run_hoist, tmp_path):
    """The whole DeepSeek-V3 FP8 layout (91,991 tensors, 688.57 GB, written
    sparse) planned with --device-map auto over eight 140 GiB GPUs and cast
    to f32: no layer is split, the layers fill the GPUs in order and none
    goes to the cpu, the FP8 weights and their
    F32 scales keep their bytes while the BF16 tensors double, and each
    reservation is exactly its tensors, 256-byte aligned."""
    d = tmp_path / "ds3"
    ok(run_hoist("synth", "--arch", "deepseek-v3", "--sparse", "--quiet", d))
    tensors = header_tensors(d)
    assert len(tensors) == 91991
    gpus = ",".join(f"{i}=140GiB" for i in range(8))
    proc = ok(run_hoist("plan", "--json", "--device-map", "auto", "--max-memory", f"{gpus},cpu=8GiB",
                        "--dtype", "f32", d))
    plan = json.loads(proc.stdout)
    # The published index's total_size (2 bytes per element), tolerated.
    assert any("2 bytes per element" in w for w in plan["warnings"]), plan["warnings"]
    assert {t["name"] for t in plan["tensors"]} == set(tensors)
    layer_devices, used = {}, {}
    for t in plan["tensors"]:
        src = tensors[t["name"]]
        want_dtype = "F32" if src["dtype"] == "BF16" else src["dtype"]
        assert (t["dtype"], t["nbytes"]) == (want_dtype, src["nbytes"] * (2 if src["dtype"] == "BF16" else 1)), t
        m = re.match(r"model\.layers\.(\d+)\.", t["name"])
        if m:
            layer_devices.setdefault(int(m.group(1)), set()).add(t["device"])
        used[t["device"]] = max(used.get(t["device"], 0), t["offset"] + align(t["nbytes"]))
    assert sorted(layer_devices) == list(range(62))
    assert all(len(devs) == 1 for devs in layer_devices.values()), "a layer was split"
    walk = [int(layer_devices[i].pop().split(":")[1]) for i in range(62)]
    assert walk == sorted(walk) and walk[0] == 0 and walk[-1] >= 6, walk
    assert all(dev.startswith("cuda:") for dev in used), sorted(used)
    for dev, end in used.items():
        assert plan["devices"][dev]["bytes"] == end, dev
