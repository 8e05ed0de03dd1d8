"""Tensor parallelism: `hoist load --shard RANK/WORLD --split REGEX=DIM` and
`hoist.load(shard=(rank, world), split={regex: dim})` load one part of each
tensor a rule names.

Expected parts come from safetensors' own slicing (safe_open(...).get_slice)
on the same files, and the parts of all ranks must put back the whole tensor.

Run: PYTHONPATH=build/python HOIST_BIN=build/hoist python3 -m pytest -q tests/python/test_shard.py
"""

from __future__ import annotations

import json
import re

import pytest

from hoist_testlib import import_hoist, ok, read_header, save_linear, stderr_error_line, tensor_bytes, write_raw

hoist = import_hoist()

# Megatron's cut of a Llama: column-parallel projections and the embedding
# along their rows, row-parallel ones along their columns; norms whole.
LLAMA_SPLIT = {r"(q|k|v|gate|up)_proj": 0, r"(o|down)_proj": -1, r"embed_tokens|lm_head": 0}


@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch", reason="torch is not installed")


@pytest.fixture(scope="module")
def safe_open(torch):
    return pytest.importorskip("safetensors", reason="safetensors is not installed").safe_open


def _torch_tensor(torch, model, name, like):
    got = torch.from_dlpack(model[name])
    return got.view(like.dtype) if got.dtype != like.dtype else got


@pytest.mark.parametrize("world", [1, 2, 4])
def test_each_rank_gets_safetensors_slice_and_the_parts_make_the_whole(torch, safe_open, tiny, world):
    path = tiny / "model.safetensors"
    parts = {}
    with safe_open(str(path), "pt") as f:
        for rank in range(world):
            model = hoist.load(path, device="cpu", shard=(rank, world), split=LLAMA_SPLIT, config_ties=False)
            assert sorted(model.keys()) == sorted(f.keys())
            for name in f.keys():
                info = model.info(name)
                whole = f.get_tensor(name)
                got = _torch_tensor(torch, model, name, whole)
                if info["slice"] is None:
                    assert not any(re.search(p, name) for p in LLAMA_SPLIT), name
                    assert torch.equal(got, whole), name
                    continue
                dim, start, stop = info["slice"]["dim"], info["slice"]["start"], info["slice"]["stop"]
                assert dim == (0 if "o_proj" not in name and "down_proj" not in name else whole.dim() - 1), name
                assert stop - start == whole.shape[dim] // world and start == rank * (stop - start), name
                index = [slice(None)] * whole.dim()
                index[dim] = slice(start, stop)
                want = f.get_slice(name)[tuple(index)]
                assert tuple(got.shape) == tuple(want.shape) == tuple(info["shape"]), name
                assert torch.equal(got, want), name
                parts.setdefault(name, []).append(got.clone())
            report = model.report
            stored = sum(t["nbytes"] for t in report["tensors"])
            assert report["bytes_read"] == stored
        for name, pieces in parts.items():
            whole = f.get_tensor(name)
            dim = 0 if "o_proj" not in name and "down_proj" not in name else whole.dim() - 1
            assert torch.equal(torch.cat(pieces, dim), whole), name


def test_cli_report_plan_and_bytes_read(run_hoist, tiny, tmp_path):
    path = tiny / "model.safetensors"
    flags = ["--device", "cpu", "--shard", "1/2", "--no-config-ties"]
    for pattern, dim in LLAMA_SPLIT.items():
        flags += ["--split", f"{pattern}={dim}"]
    whole = json.loads(ok(run_hoist("inspect", "--json", path)).stdout)
    shapes = {t["name"]: t["shape"] for t in whole["tensors"]}
    whole_offsets = {t["name"]: t["offset"] for t in whole["tensors"]}
    whole_bytes = {t["name"]: t["nbytes"] for t in whole["tensors"]}
    report_path = tmp_path / "r.json"
    ok(run_hoist("load", *flags, "--report", report_path, path))
    report = json.loads(report_path.read_text())
    split = [t for t in report["tensors"] if "slice" in t]
    assert len(split) == len([n for n in shapes if any(re.search(p, n) for p in LLAMA_SPLIT)]) > 0
    for t in split:
        dim = t["slice"]["dim"]
        shape = list(shapes[t["name"]])
        assert t["slice"]["start"] == shape[dim] // 2 and t["slice"]["stop"] == shape[dim]
        shape[dim] //= 2
        assert t["shape"] == shape, t
    assert report["bytes_read"] == sum(t["nbytes"] for t in report["tensors"]) < whole["total_bytes"]
    plan = json.loads(ok(run_hoist("plan", *flags, "--json", path)).stdout)
    assert {t["name"]: t.get("slice") for t in plan["tensors"]} == {t["name"]: t.get("slice") for t in report["tensors"]}
    assert {t["name"]: t["shape"] for t in plan["tensors"]} == {t["name"]: t["shape"] for t in report["tensors"]}
    # Mapped parts: the plan and the report point at the part's first byte in the file.
    mapped_report = tmp_path / "m.json"
    ok(run_hoist("load", *flags, "--mmap", "--report", mapped_report, path))
    mapped = {t["name"]: t for t in json.loads(mapped_report.read_text())["tensors"] if t.get("mapped")}
    planned = {t["name"]: t for t in json.loads(ok(run_hoist("plan", *flags, "--mmap", "--json", path)).stdout)["tensors"]}
    assert mapped, "no part was mapped"
    for name, t in mapped.items():
        assert planned[name]["file_offset"] == t["file_offset"], name
        start = t["slice"]["start"] if "slice" in t else 0  # mapped parts are split along dimension 0
        assert t["file_offset"] == whole_offsets[name] + start * whole_bytes[name] // shapes[name][0], name


@pytest.mark.parametrize(
    "flags,message",
    [
        (["--shard", "0/3", "--split", "q_proj=0"], "does not split into 3 equal parts"),
        (["--shard", "0/2", "--split", "norm=1"], "has no dimension 1"),
        (["--split", "q_proj=0"], "--split needs --shard RANK/WORLD"),
        (["--shard", "0/2"], "--shard needs --split rules"),
        (["--shard", "2/2", "--split", "q_proj=0"], "--shard '2/2': the rank must be below the world size"),
        (["--shard", "1", "--split", "q_proj=0"], "--shard '1': expected RANK/WORLD"),
        (["--shard", "0/2", "--split", "q_proj"], "--split 'q_proj': expected REGEX=DIM"),
    ],
)
def test_bad_shard_flags_exit_2_with_one_line(run_hoist, tiny, flags, message, tmp_path):
    for command in ("load", "plan", "convert"):
        out = [tmp_path / "out"] if command == "convert" else []
        device = ["--device", "cpu"] if command != "convert" else []
        proc = run_hoist(command, *device, *flags, tiny / "model.safetensors", *out)
        assert proc.returncode == 2, proc.stderr
        assert message in stderr_error_line(proc)
        assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("world,dtype", [(2, None), (4, "f32")])
def test_convert_writes_each_ranks_part_as_a_checkpoint(run_hoist, torch, safe_open, tiny, tmp_path, world, dtype):
    """`hoist convert --shard R/W --split ...` writes what rank R loads: every
    tensor a rule names as its part (safetensors' own slice of it), the rest
    whole, readable by safetensors, and loading it gives what a load of the
    whole checkpoint with --shard gives."""
    rules = [arg for pattern, dim in LLAMA_SPLIT.items() for arg in ("--split", f"{pattern}={dim}")]
    cast = ["--dtype", dtype] if dtype else []
    pieces = {}
    with safe_open(str(tiny / "model.safetensors"), "pt") as whole_file:
        for rank in range(world):
            out = tmp_path / f"rank{rank}"
            ok(run_hoist("convert", tiny, out, "--shard", f"{rank}/{world}", *rules, *cast))
            assert json.loads((out / "config.json").read_text()) == json.loads((tiny / "config.json").read_text()) | (
                {"torch_dtype": "float32"} if dtype else {})
            loaded = hoist.load(tiny, device="cpu", shard=(rank, world), split=LLAMA_SPLIT, dtype=dtype,
                                config_ties=False)
            with safe_open(str(out / "model.safetensors"), "pt") as part_file:
                assert part_file.metadata()["hoist.shard"] == f"{rank}/{world}"
                assert part_file.metadata()["format"] == "pt"  # transformers 4 refuses metadata without one
                assert part_file.metadata()["hoist.split"].split("\n") == [f"{p}={d}" for p, d in LLAMA_SPLIT.items()]
                assert sorted(part_file.keys()) == sorted(whole_file.keys())
                for name in whole_file.keys():
                    got = part_file.get_tensor(name)
                    info = loaded.info(name)
                    want = whole_file.get_tensor(name)
                    if info["slice"] is not None:
                        index = [slice(None)] * want.dim()
                        index[info["slice"]["dim"]] = slice(info["slice"]["start"], info["slice"]["stop"])
                        want = whole_file.get_slice(name)[tuple(index)]
                        pieces.setdefault(name, []).append(got)
                    assert torch.equal(got, want.float() if dtype else want), name
                    assert torch.equal(got, _torch_tensor(torch, loaded, name, got)), name
        # The ranks' parts put back the whole tensor.
        for name, parts in pieces.items():
            want = whole_file.get_tensor(name)
            dim = 0 if "o_proj" not in name and "down_proj" not in name else want.dim() - 1
            assert torch.equal(torch.cat(parts, dim), want.float() if dtype else want), name


def test_a_part_of_a_checkpoint_without_metadata_says_its_format(run_hoist, tmp_path):
    """The part's metadata names the shard; transformers before 5 refuses
    metadata without a format, so the part gets format pt beside it."""
    src = write_raw(tmp_path / "src.safetensors", {"w": {"dtype": "U8", "shape": [4, 2], "data_offsets": [0, 8]}},
                    bytes(range(8)))
    ok(run_hoist("convert", src, tmp_path / "part.safetensors", "--shard", "1/2", "--split", "w=0"))
    _, header = read_header(tmp_path / "part.safetensors")
    assert header["__metadata__"] == {"format": "pt", "hoist.shard": "1/2", "hoist.split": "w=0"}
    assert tensor_bytes(tmp_path / "part.safetensors")["w"] == bytes(range(4, 8))


def test_load_into_a_tensor_parallel_module(torch, tmp_path):
    """A rank's module has the parts' shapes: load_into's expectations compare against them."""
    st = pytest.importorskip("safetensors.torch", reason="safetensors is not installed")
    path = tmp_path / "linear.safetensors"
    full = save_linear(torch, st, path, 64, 32, seed=7)
    for rank in range(2):
        part = torch.nn.Linear(64, 16)
        report = hoist.load_into(part, path, shard=(rank, 2), split={"": 0}, strict=True)
        assert report["bytes_read"] == (16 * 64 + 16) * 4
        assert torch.equal(part.weight, full.weight[rank * 16:(rank + 1) * 16])
        assert torch.equal(part.bias, full.bias[rank * 16:(rank + 1) * 16])
