"""The `hoist` command onto GPUs, on any machine: build/hoist_emulated is the
same command linked against the CUDA runtime emulated on the host
(src/backends/cuda/emulator.cc: two 16 GiB GPUs, asynchronous streams, device
memory the host cannot touch). The bytes that land are checked by the C++
emulated.* tests; these check what the command says about a GPU load: the
probe's JSON, the report, allocation counts, device maps over two GPUs,
casts on the device, and refusals; and, through the Python module built over
the same emulator (build/python-emulated), the CUDA DLPack tensors
hoist.load hands out and how its placement arguments reach the GPUs.

The binary comes from conftest.py's emu_bin fixture.
"""

from __future__ import annotations

import ctypes
import json
import mmap
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hoist_testlib import ok, stderr_error_line

REPO_ROOT = Path(__file__).resolve().parents[2]
GIB = 1 << 30


@pytest.fixture(scope="module")
def emu(emu_bin):
    def run(*args, timeout: float = 120, env: dict | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([str(emu_bin), *map(str, args)], capture_output=True, text=True, timeout=timeout,
                              env=None if env is None else {**os.environ, **env})

    return run


@pytest.fixture(scope="module")
def ckpt(emu, tmp_path_factory) -> Path:
    """tiny-llama in 3 shards (4 layers), written by the command itself."""
    out = tmp_path_factory.mktemp("emu") / "tiny"
    ok(emu("synth", "--arch", "tiny-llama", "--quiet", out))
    return out


def load_report(emu, ckpt, tmp_path, *flags) -> dict:
    report = tmp_path / "report.json"
    ok(emu("load", ckpt, "--quiet", "--report", report, *flags))
    return json.loads(report.read_text())


def plan_json(emu, ckpt, *flags) -> dict:
    return json.loads(ok(emu("plan", ckpt, "--json", *flags)).stdout)


def test_probe_lists_both_gpus_with_the_fields_gpu_bench_reads(emu):
    doc = json.loads(ok(emu("probe", "--json", "--host-bytes", "16MiB")).stdout)
    gpus = doc["gpus"]
    assert [g["index"] for g in gpus] == [0, 1]
    for g in gpus:
        assert g["name"] == f"hoist CUDA emulator {g['index']}"
        assert g["total_bytes"] == 16 * GIB
        assert 0 < g["free_bytes"] <= g["total_bytes"]
        # scripts/gpu-bench takes the bound from here.
        assert g["h2d_pinned_gbps"] > 0 and g["h2d_pageable_gbps"] > 0
        assert g["malloc_us_1mib"] > 0
    assert doc["host"]["threads"] >= 1


def test_load_onto_cuda0_reports_one_reservation(emu, ckpt, tmp_path):
    plan = plan_json(emu, ckpt, "--device", "cuda:0")
    stored = [t for t in plan["tensors"] if "tied_to" not in t]
    rep = load_report(emu, ckpt, tmp_path, "--device", "cuda:0")
    assert set(rep["devices"]) == {"cuda:0"}
    gpu = rep["devices"]["cuda:0"]
    assert gpu["driver_allocs"] == 1
    assert gpu["tensor_bytes"] == sum(t["nbytes"] for t in stored)
    assert gpu["bytes"] >= gpu["tensor_bytes"] and gpu["bytes"] % 256 == 0
    assert gpu["peak_reserved_bytes"] == gpu["bytes"]  # no cast, no scratch
    assert {t["device"] for t in rep["tensors"]} == {"cuda:0"}
    # Each tensor where the plan put it, in the plan's order of offsets.
    offsets = {t["name"]: t["offset"] for t in plan["tensors"]}
    for t in rep["tensors"]:
        assert t["offset"] == offsets[t["name"]], t["name"]
    assert rep["staging"]["pipeline"] is True and rep["staging"]["buffers_per_gpu"] >= 2
    # Copies overlap the reads: their span, from the first queued until the
    # GPU was done, lies within the load; no cast ran.
    stages = rep["stages"]
    assert stages["read"] > 0 and 0 < stages["copy"] <= rep["seconds"] and stages["cast"] == 0
    assert rep["device_cast_pieces"] == 0
    assert 0 < rep["time_to_first_tensor"] <= rep["seconds"]


@pytest.mark.parametrize("flags", [[], ["--dtype", "f32"], ["--direct", "on"]], ids=["raw", "cast", "direct"])
def test_pinned_memory_the_kernel_cannot_read_into_is_filled_through_ordinary_memory(emu, ckpt, tmp_path, flags):
    """Under gVisor, reads from files into cudaHostAlloc's memory fail with
    EFAULT (the emulator does the same on request): the load notices before
    its first read, goes on through ordinary memory, says so once, and the
    report records it. Without the knob nothing bounces."""
    report = tmp_path / "report.json"
    base = ["load", ckpt, "--device", "cuda:0", "--chunk-size", "4096", "--report", report, *flags]
    proc = emu(*base, env={"HOIST_EMULATOR_PINNED_REFUSES_READS": "1"})
    if proc.returncode != 0 and "--direct" in flags and "O_DIRECT" in proc.stderr:
        pytest.skip(f"no O_DIRECT here: {proc.stderr.strip()}")
    assert proc.returncode == 0, proc.stderr
    warnings = [w for w in proc.stderr.splitlines() if w.startswith("warning:")]
    assert warnings == ["warning: cuda:0: the kernel refuses reads into pinned staging memory (EFAULT, as under "
                        "gVisor); file bytes go through ordinary memory first, at the cost of a copy"], proc.stderr
    rep = json.loads(report.read_text())
    assert rep["staging"]["bounced_reads"] is True
    assert rep["warnings"] == [w.removeprefix("warning: ") for w in warnings]
    plan = plan_json(emu, ckpt, "--device", "cuda:0", *(flags if "--dtype" in flags else []))
    assert {t["name"]: t["nbytes"] for t in rep["tensors"]} == {t["name"]: t["nbytes"] for t in plan["tensors"]}
    ok(emu(*base, "--quiet"))
    rep = json.loads(report.read_text())
    assert rep["staging"]["bounced_reads"] is False and rep["warnings"] == []


def test_per_tensor_makes_one_driver_allocation_per_stored_tensor(emu, ckpt, tmp_path):
    stored = [t for t in plan_json(emu, ckpt, "--device", "cuda:0")["tensors"] if "tied_to" not in t]
    rep = load_report(emu, ckpt, tmp_path, "--device", "cuda:0", "--alloc", "per-tensor")
    assert rep["alloc"] == "per-tensor"
    assert rep["devices"]["cuda:0"]["driver_allocs"] == len(stored)


def test_no_pipeline_reads_to_host_then_copies(emu, ckpt, tmp_path):
    rep = load_report(emu, ckpt, tmp_path, "--device", "cuda:0", "--no-pipeline")
    assert rep["staging"]["pipeline"] is False
    assert rep["stages"]["copy"] > 0
    assert rep["devices"]["cuda:0"]["driver_allocs"] == 1


def test_device_map_spreads_blocks_over_two_gpus(emu, ckpt, tmp_path):
    total = json.loads(ok(emu("inspect", "--json", ckpt)).stdout)["total_bytes"]
    # Room for a little over half the model on each GPU: both are needed.
    each = total * 6 // 10
    flags = ["--device-map", "sequential", "--max-memory", f"0={each},1={each}"]
    rep = load_report(emu, ckpt, tmp_path, *flags, "--margin", "0")
    assert set(rep["devices"]) == {"cuda:0", "cuda:1"}
    for dev in ("cuda:0", "cuda:1"):
        assert rep["devices"][dev]["driver_allocs"] == 1
        assert rep["devices"][dev]["bytes"] <= each
    # A numbered block stays on one GPU; the command placed what plan placed.
    placed = {t["name"]: t["device"] for t in rep["tensors"]}
    blocks: dict[str, set] = {}
    for name, dev in placed.items():
        if name.startswith("model.layers."):
            blocks.setdefault(".".join(name.split(".")[:3]), set()).add(dev)
    assert blocks and all(len(devs) == 1 for devs in blocks.values()), blocks
    planned = {t["name"]: t["device"] for t in plan_json(emu, ckpt, *flags)["tensors"]}
    assert placed == {n: planned[n] for n in placed}


def test_cast_runs_on_the_device(emu, ckpt, tmp_path):
    plain = load_report(emu, ckpt, tmp_path, "--device", "cuda:0")
    rep = load_report(emu, ckpt, tmp_path, "--device", "cuda:0", "--dtype", "f32", "--chunk-size", "64KiB")
    assert rep["device_cast_pieces"] > 0
    # The casts' span on the GPU; the host's casting of the pieces that land
    # on the scratch at the reservation's end is counted apart, in CPU seconds.
    assert 0 < rep["stages"]["cast"] <= rep["seconds"] and 0 < rep["stages"]["copy"] <= rep["seconds"]
    assert rep["host_cast_cpu_seconds"] > 0
    floats = [t for t in rep["tensors"] if t["stored_dtype"] in ("BF16", "F16")]
    assert floats and all(t["dtype"] == "F32" and t["nbytes"] % 4 == 0 for t in floats)
    gpu = rep["devices"]["cuda:0"]
    assert gpu["tensor_bytes"] == 2 * plain["devices"]["cuda:0"]["tensor_bytes"]
    # The casts' scratch is the reservation's end: one allocation, no more.
    assert gpu["driver_allocs"] == 1 and gpu["peak_reserved_bytes"] == gpu["bytes"]


def test_max_memory_names_the_devices_a_strategy_may_use(emu, ckpt):
    """As accelerate has it: the devices --max-memory names are the ones a
    strategy fills (a GPU left out stays free for another job); one named
    with 0 takes nothing and counts in no share; naming only the disk, or
    only devices with 0, keeps every other device."""
    def devices(spec, strategy="auto"):
        return set(plan_json(emu, ckpt, "--device-map", strategy, "--max-memory", spec)["devices"])

    both = set(plan_json(emu, ckpt, "--device-map", "auto")["devices"])
    assert both == {"cuda:0", "cuda:1"}
    assert devices("0=1GiB,cpu=1GiB") == {"cuda:0"}
    assert devices("0=1GiB,1=0,cpu=1GiB") == {"cuda:0"}
    assert devices("1=1GiB") == {"cuda:1"}
    assert devices("cpu=1GiB") == {"cpu"}
    assert devices("1=0GiB,cpu=1GiB") == {"cpu"}
    assert devices("disk=1GiB") == {"cuda:0", "cuda:1"}
    assert devices("1=0") == {"cuda:0"}
    assert devices("0=0,cpu=0") == {"cuda:1"}
    # Left out, the cpu takes nothing either: a model too big for the GPUs
    # named is an error that shows the cpu at 0.
    proc = emu("plan", ckpt, "--device-map", "sequential", "--max-memory", "0=64KiB")
    assert proc.returncode == 2, proc.stderr
    assert "left of 65536 bytes" in proc.stderr, proc.stderr
    assert "cpu not used (--max-memory names other devices and not the cpu)" in proc.stderr, proc.stderr
    assert "cuda:1" not in proc.stderr, proc.stderr


def test_plan_onto_a_gpu_this_machine_lacks_warns(emu, ckpt):
    """Two GPUs here: a plan for cuda:7 is made all the same (planning for
    another machine), with a word that a load here would refuse it."""
    doc = plan_json(emu, ckpt, "--device-map", '{"model.layers.0": 7, "": "cpu"}')
    assert "cuda:7" in doc["devices"]
    assert ["cuda:7 is not on this machine (2 CUDA GPUs found): its fit is not checked, and a load here would "
            "refuse it"] == [w for w in doc["warnings"] if "cuda:7" in w], doc["warnings"]
    doc = plan_json(emu, ckpt, "--device-map", "sequential", "--max-memory", "0=64KiB,2=1GiB,cpu=1GiB")
    assert [w for w in doc["warnings"] if "cuda:2 is not on this machine" in w and "--max-memory" in w], doc["warnings"]
    assert plan_json(emu, ckpt, "--device", "cuda:1")["warnings"] == []


def test_plan_larger_than_max_memory_exits_2_naming_the_gpu(emu, ckpt, tmp_path):
    need = load_report(emu, ckpt, tmp_path, "--device", "cuda:1")["devices"]["cuda:1"]["bytes"]
    proc = emu("load", ckpt, "--device", "cuda:1", "--max-memory", "1=100KB", "--quiet")
    assert proc.returncode == 2
    line = stderr_error_line(proc)
    for part in ("cuda:1", f"needs {need} bytes", "100000 bytes", "--device-map"):
        assert part in line, f"{part!r} not in {line!r}"


@pytest.fixture(scope="module")
def llama8b_sparse(emu, tmp_path_factory) -> Path:
    """llama-3.1-8b, 14.96 GiB of holes: more than an emulated GPU's 16 GiB
    less the default 1.2 GiB margin, less than the GPU itself."""
    out = tmp_path_factory.mktemp("l8") / "m"
    ok(emu("synth", "--arch", "llama-3.1-8b", "--sparse", "--quiet", out))
    return out


def test_default_margin_refuses_what_only_the_margin_leaves_no_room_for(emu, llama8b_sparse):
    proc = emu("load", llama8b_sparse, "--device", "cuda:0", "--quiet")
    assert proc.returncode == 2, proc.stderr
    line = stderr_error_line(proc)
    assert "cuda:0" in line and "1.20 GiB) margin" in line and "16060522496 bytes" in line, line
    # hoist plan warns by the same rule, and --margin moves it.
    warned = json.loads(ok(emu("plan", "--json", "--device", "cuda:0", llama8b_sparse)).stdout)["warnings"]
    assert len(warned) == 1 and "margin" in warned[0], warned
    assert json.loads(ok(emu("plan", "--json", "--device", "cuda:0", "--margin", "0", llama8b_sparse)).stdout)[
        "warnings"] == []
    # A strategy's GPU capacity is free memory less the margin too.
    for margin, on_gpu in (("0", True), ("1.2GiB", False)):
        doc = json.loads(ok(emu("plan", "--json", "--device-map", "sequential", "--max-memory", "1=0", "--margin",
                                margin, llama8b_sparse)).stdout)
        assert (set(doc["devices"]) == {"cuda:0"}) == on_gpu, (margin, {d: v["bytes"] for d, v in doc["devices"].items()})


@pytest.mark.parametrize("flags", [[], ["--dtype", "f32"], ["--alloc", "per-tensor"]], ids=["plain", "cast", "per-tensor"])
def test_waiting_for_gpu_start_up_is_its_own_stage(emu, ckpt, tmp_path, flags):
    """A CUDA context that takes 0.6 s to start: the load waits for what
    planning did not hide, reported as stages.device_start within seconds
    (whichever call reaches the GPU first: a cast load asks it about its
    kernel before anything else)."""
    report = tmp_path / "slow-start.json"
    ok(emu("load", ckpt, "--device", "cuda:0", "--quiet", "--report", report, *flags,
           env={"HOIST_EMULATOR_CONTEXT_START_MS": "600"}))
    rep = json.loads(report.read_text())
    wait = rep["stages"]["device_start"]
    assert 0.6 - rep["stages"]["plan"] - 0.1 <= wait <= rep["seconds"], rep["stages"]
    fast = load_report(emu, ckpt, tmp_path, "--device", "cuda:0", *flags)
    assert fast["stages"]["device_start"] < wait


def test_gpus_of_a_device_map_start_at_once(emu, ckpt, tmp_path):
    """Two GPUs whose contexts take 0.6 s each to start: a load over both
    waits for them side by side (about 0.6 s), not one after the other
    (1.2 s)."""
    report = tmp_path / "two-slow-starts.json"
    ok(emu("load", ckpt, "--device-map", "balanced", "--quiet", "--report", report,
           env={"HOIST_EMULATOR_CONTEXT_START_MS": "600"}))
    rep = json.loads(report.read_text())
    assert {t["device"] for t in rep["tensors"]} == {"cuda:0", "cuda:1"}
    # The balanced map sizes itself from both GPUs' free memory, so the
    # planner is what waits for them.
    waited = rep["stages"]["plan"] + rep["stages"]["device_start"]
    assert 0.5 <= waited < 1.0, rep["stages"]


def cached_fraction(path) -> float:
    """The fraction of the file's pages in the page cache (mincore)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    size = os.path.getsize(path)
    pages = (size + mmap.PAGESIZE - 1) // mmap.PAGESIZE
    fd = os.open(path, os.O_RDONLY)
    try:
        addr = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        assert addr not in (None, ctypes.c_void_p(-1).value), ctypes.get_errno()
        vec = (ctypes.c_ubyte * pages)()
        rc = libc.mincore(addr, size, vec)
        libc.munmap(addr, size)
        assert rc == 0, ctypes.get_errno()
    finally:
        os.close(fd)
    return sum(v & 1 for v in vec) / pages


def evict(files) -> bool:
    """Drops the files from the page cache; False where this machine does not let it."""
    for f in files:
        fd = os.open(f, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    return all(cached_fraction(f) < 0.5 for f in files)


def test_cold_files_are_read_ahead_while_the_gpu_starts(emu, ckpt, tmp_path):
    """During a 0.6 s CUDA start-up the cold checkpoint is read into the page
    cache (all of it: it is small), and the load's own reads come from there;
    a load from a warm cache reads nothing ahead."""
    if not evict(sorted(ckpt.glob("*.safetensors"))):
        pytest.skip("the page cache cannot be dropped here (posix_fadvise DONTNEED)")
    report = tmp_path / "cold.json"
    ok(emu("load", ckpt, "--device", "cuda:0", "--quiet", "--report", report,
           env={"HOIST_EMULATOR_CONTEXT_START_MS": "600"}))
    rep = json.loads(report.read_text())
    assert rep["read_ahead_bytes"] == rep["bytes_read"], rep
    warm = load_report(emu, ckpt, tmp_path, "--device", "cuda:0")
    assert warm["read_ahead_bytes"] == 0


def test_absent_gpu_exits_2(emu, ckpt):
    proc = emu("load", ckpt, "--device", "cuda:2", "--quiet")
    assert proc.returncode == 2
    assert "cuda:2" in stderr_error_line(proc)


@pytest.mark.parametrize("flags", [["--alloc", "per-tensor"], [], ["--dtype", "f32"], ["--staging-buffers", "1"]],
                         ids=["per-tensor", "reserve", "cast", "one-staging-buffer"])
def test_sticky_gpu_fault_fails_the_load_with_the_fault_last_and_few_warnings(emu, ckpt, tmp_path, flags):
    # The 4th copy faults asynchronously, as an illegal address would; from
    # then on every call on cuda:0 fails, the frees of the clean-up included.
    report = tmp_path / "report.json"
    proc = emu("load", ckpt, "--device", "cuda:0", "--chunk-size", "4096", "--quiet", "--report", report, *flags,
               env={"HOIST_EMULATOR_FAULT_AFTER_COPIES": "4"})
    assert proc.returncode == 1, proc.stderr
    assert not report.exists()
    errors = [e for e in proc.stderr.splitlines() if e.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    line = errors[0]
    assert "cuda:0" in line and "an illegal memory access was encountered" in line, line
    assert proc.stderr.splitlines()[-1] == line, proc.stderr  # the fault is what the output ends with
    warnings = [w for w in proc.stderr.splitlines() if w.startswith("hoist: warning:")]
    # A few clean-up failures, then one line for the rest (per-tensor alone
    # frees dozens of allocations).
    assert 1 <= len(warnings) <= 5, proc.stderr
    if len(warnings) == 5:
        assert "not listed" in warnings[-1], warnings


def test_cpu_loads_never_start_the_cuda_runtime(emu, ckpt, tmp_path):
    """Finding GPUs starts the CUDA driver, which on a GPU machine costs a
    cpu load a fraction of a second or more; with --device cpu nothing may
    call the runtime (the emulator aborts on the first call under
    HOIST_EMULATOR_UNREACHABLE)."""
    unreachable = {"HOIST_EMULATOR_UNREACHABLE": "1"}
    ok(emu("load", ckpt, "--device", "cpu", "--quiet", env=unreachable))
    ok(emu("plan", ckpt, "--device", "cpu", env=unreachable))
    # The hook itself: a load that may use a GPU reaches the runtime and dies.
    for flags in (["--device", "cuda:0"], [], ["--device", "cpu", "--device-map", "auto"]):
        proc = emu("load", ckpt, "--quiet", *flags, env=unreachable)
        assert proc.returncode != 0 and "HOIST_EMULATOR_UNREACHABLE" in proc.stderr, (flags, proc.stderr)


# ------------------------------------------------ the Python module on GPUs

# Reads a DLPack capsule (the unversioned kind, "dltensor") with ctypes:
# what torch or cupy would import from a hoist tensor on a GPU.
DLPACK_READER = r"""
import ctypes

class DLDevice(ctypes.Structure):
    _fields_ = [("device_type", ctypes.c_int32), ("device_id", ctypes.c_int32)]

class DLDataType(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint8), ("bits", ctypes.c_uint8), ("lanes", ctypes.c_uint16)]

class DLTensor(ctypes.Structure):
    _fields_ = [("data", ctypes.c_void_p), ("device", DLDevice), ("ndim", ctypes.c_int32),
                ("dtype", DLDataType), ("shape", ctypes.POINTER(ctypes.c_int64)),
                ("strides", ctypes.POINTER(ctypes.c_int64)), ("byte_offset", ctypes.c_uint64)]

get_pointer = ctypes.pythonapi.PyCapsule_GetPointer
get_pointer.restype = ctypes.c_void_p
get_pointer.argtypes = [ctypes.py_object, ctypes.c_char_p]

def dltensor(array):
    capsule = array.__dlpack__()
    t = DLTensor.from_address(get_pointer(capsule, b"dltensor"))
    shape = [t.shape[i] for i in range(t.ndim)]
    strides = None if not t.strides else [t.strides[i] for i in range(t.ndim)]
    return {"data": t.data + t.byte_offset, "device": (t.device.device_type, t.device.device_id),
            "dtype": (t.dtype.code, t.dtype.bits, t.dtype.lanes), "shape": shape, "strides": strides}
"""


@pytest.fixture(scope="module")
def emu_py():
    """emu_py(code) runs `code` in a fresh interpreter that imports the hoist
    package built over the emulated runtime (it cannot share a process with
    the real one); the code asserts, the test checks the exit status."""
    package = REPO_ROOT / "build" / "python-emulated"
    if not (package / "hoist").is_dir():
        expected = (REPO_ROOT / "build" / "hoist_emulated.expected").is_file()
        if expected and (REPO_ROOT / "build" / "python" / "hoist").is_dir():
            pytest.fail(f"{package}/hoist is missing though the Python module is built", pytrace=False)
        pytest.skip("no Python module over the emulated runtime in this build")

    def run(code: str) -> subprocess.CompletedProcess:
        env = {**os.environ, "PYTHONPATH": str(package)}
        proc = subprocess.run([sys.executable, "-c", DLPACK_READER + code], capture_output=True, text=True,
                              timeout=120, env=env)
        assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
        return proc

    return run


def test_python_tensors_on_a_gpu_export_cuda_dlpack(emu_py, emu, ckpt, tmp_path):
    """hoist.load onto cuda:0: every tensor goes out as a CUDA DLPack tensor
    (device type 2), with the dtype code, shape and contiguous layout torch
    expects, at the address its offset in the one reservation says."""
    rep = load_report(emu, ckpt, tmp_path, "--device", "cuda:0")
    expect = {t["name"]: t for t in rep["tensors"]}
    emu_py(f"""
import hoist
expect = {expect!r}
codes = {{"BF16": (4, 16), "F16": (2, 16), "F32": (2, 32), "I64": (0, 64), "U8": (1, 8)}}
model = hoist.load({str(ckpt)!r}, device="cuda:0")
assert sorted(model.keys()) == sorted(expect), model.keys()
base = None
for name in model:
    t = dltensor(model[name])
    want = expect[name]
    assert t["device"] == (2, 0), (name, t["device"])
    assert t["shape"] == want["shape"], (name, t["shape"])
    code, bits = codes[want["dtype"]]
    assert t["dtype"] == (code, bits, 1), (name, t["dtype"])
    if t["strides"] is not None:  # contiguous, row-major
        expected, step = [], 1
        for n in reversed(t["shape"]):
            expected.insert(0, step)
            step *= n
        assert t["strides"] == expected, (name, t["strides"])
    if base is None:
        base = t["data"] - want["offset"]
    assert t["data"] - base == want["offset"], (name, t["data"] - base, want["offset"])
    assert model.info(name)["device"] == "cuda:0"
assert model.report["devices"]["cuda:0"]["driver_allocs"] == 1
""")


def test_opening_a_checkpoint_starts_its_gpus(emu_py, ckpt, monkeypatch):
    """load_into opens the checkpoint first (its key mapping may take a
    while): that starts the GPUs the load will use, so the load itself
    waits for no CUDA context. Contexts take 0.6 s to start here; a load
    1 s after opening reports no such wait, one straight after opening
    does (the control)."""
    monkeypatch.setenv("HOIST_EMULATOR_CONTEXT_START_MS", "600")
    emu_py(f"""
import time, hoist
from hoist import _hoist
ckpt = {str(ckpt)!r}
opened = _hoist.open_checkpoint(ckpt)
opened.start_devices(device="cuda:0")
time.sleep(1.0)
m = hoist.load(ckpt, device="cuda:0", _checkpoint=opened)
assert m.report["stages"]["device_start"] < 0.2, m.report["stages"]
assert m.info(m.keys()[0])["device"] == "cuda:0"
""")
    emu_py(f"""
import hoist
from hoist import _hoist
ckpt = {str(ckpt)!r}
opened = _hoist.open_checkpoint(ckpt)
opened.start_devices(device="cuda:1")  # cuda:1 starts; the load goes to cuda:0
m = hoist.load(ckpt, device="cuda:0", _checkpoint=opened)
assert m.report["stages"]["device_start"] > 0.3, m.report["stages"]
""")


def test_dropping_an_opened_checkpoint_holds_up_no_python_thread(emu_py, ckpt, monkeypatch):
    """An opened checkpoint dropped while its GPUs start (an error before
    the load) waits for them with the GIL released: another Python thread
    runs on meanwhile."""
    monkeypatch.setenv("HOIST_EMULATOR_CONTEXT_START_MS", "600")
    emu_py(f"""
import threading, time, hoist
from hoist import _hoist
ticks, stop = [], threading.Event()
def tick():
    while not stop.is_set():
        ticks.append(time.perf_counter())
        time.sleep(0.005)
opened = _hoist.open_checkpoint({str(ckpt)!r})
opened.start_devices(device_map="auto")  # both GPUs, one after the other: 1.2 s
ticker = threading.Thread(target=tick)
ticker.start()
start = time.perf_counter()
del opened
waited = time.perf_counter() - start
stop.set()
ticker.join()
during = [t for t in ticks if start <= t <= start + waited]
assert waited > 0.5, waited  # the GPUs were still starting
assert len(during) > 10 * waited, (len(during), waited)  # the ticker ran (every 5 ms) all along
""")


def test_python_placement_arguments_reach_the_gpus(emu_py, ckpt):
    """device as an int, device_map and max_memory as dicts with int keys."""
    emu_py(f"""
import hoist
ckpt = {str(ckpt)!r}
m = hoist.load(ckpt, device=1)
assert {{m.info(k)["device"] for k in m}} == {{"cuda:1"}}
assert dltensor(m[m.keys()[0]])["device"] == (2, 1)
m = hoist.load(ckpt, device_map={{"model.layers.0": 1, "": 0}}, max_memory={{0: "8GiB", 1: "8GiB"}})
placed = {{k: m.info(k)["device"] for k in m}}
assert {{d for k, d in placed.items() if k.startswith("model.layers.0.")}} == {{"cuda:1"}}, placed
assert {{d for k, d in placed.items() if not k.startswith("model.layers.0.")}} == {{"cuda:0"}}, placed
assert set(m.report["devices"]) == {{"cuda:0", "cuda:1"}}
try:
    hoist.load(ckpt, device="cuda:0", max_memory={{0: 1000}})
except MemoryError as e:
    assert "cuda:0" in str(e), e
else:
    raise AssertionError("a plan over max_memory loaded")
# margin: what is left free on each GPU (16 GiB each here).
assert len(hoist.load(ckpt, device="cuda:0", margin="15GiB")) == len(m)
try:
    hoist.load(ckpt, device="cuda:0", margin=16 << 30)
except MemoryError as e:
    assert "margin" in str(e), e
else:
    raise AssertionError("a load with no room left by margin= loaded")
""")
