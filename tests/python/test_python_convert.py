"""hoist.convert: the CLI's `hoist convert` from Python.

Expected outputs are the CLI's own, byte for byte, for the same options, and the
values safetensors reads back from them; errors name the keyword arguments.

Run: PYTHONPATH=build/python HOIST_BIN=build/hoist python3 -m pytest -q tests/python/test_python_convert.py
"""

from __future__ import annotations

from pathlib import Path

import pytest

from hoist_testlib import import_hoist, ok, tensor_bytes

hoist = import_hoist()


def _files(path: Path) -> dict:
    if path.is_file():
        return {path.name: path.read_bytes()}
    return {p.name: p.read_bytes() for p in sorted(path.iterdir())}


CASES = {
    "cast_and_shard": ({"dtype": "f32", "max_shard_size": "100KB"}, ["--dtype", "f32", "--max-shard-size", "100KB"]),
    "shard_size_in_bytes": ({"max_shard_size": 100_000}, ["--max-shard-size", "100000"]),
    "mapping": ({"rename": {r"^model\.": "m."}, "drop": [r"norm"], "only": r"layers\.1|embed"},
                ["--rename", r"^model\.=m.", "--drop", "norm", "--only", r"layers\.1|embed"]),
    "tensor_parallel": ({"shard": (1, 2), "split": {r"(q|k|v)_proj": 0, r"o_proj": -1}, "dtype": "f16"},
                        ["--shard", "1/2", "--split", "(q|k|v)_proj=0", "--split", "o_proj=-1", "--dtype", "f16"]),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("out", ["dir", "file.safetensors"])
def test_convert_writes_what_the_cli_writes(run_hoist, tiny, tmp_path, case, out):
    kwargs, flags = CASES[case]
    if out.endswith(".safetensors") and "max_shard_size" in kwargs:
        pytest.skip("sharded output is a directory")
    mine, theirs = tmp_path / "py" / out, tmp_path / "cli" / out
    result = hoist.convert(tiny, mine, **kwargs)
    ok(run_hoist("convert", tiny, theirs, *flags))
    assert _files(mine) == _files(theirs)
    # Every file written but config.json, the index (where there is one) last.
    written = [mine] if mine.is_file() else [p for p in sorted(mine.iterdir()) if p.name != "config.json"]
    assert sorted(result["files"]) == sorted(str(p) for p in written)
    assert result["files"][-1].endswith(".index.json") == (len(written) > 1)
    assert result["bytes"] == hoist.inspect(mine)["total_bytes"] > 0
    assert result["removed"] == [] and result["warnings"] == []
    if mine.is_dir():
        assert (mine / "config.json").is_file()


def test_convert_values_read_back_with_safetensors(tiny, tmp_path):
    torch = pytest.importorskip("torch", reason="torch is not installed")
    st = pytest.importorskip("safetensors.torch", reason="safetensors is not installed")
    out = tmp_path / "f32"
    hoist.convert(tiny, out, dtype=torch.float32, max_shard_size="100KB")
    want = st.load_file(str(tiny / "model.safetensors"))
    got = {}
    for shard in sorted(out.glob("*.safetensors")):
        got.update(st.load_file(str(shard)))
    assert sorted(got) == sorted(want)
    for name, w in want.items():
        assert got[name].dtype == torch.float32 and torch.equal(got[name], w.float()), name


def test_convert_replaces_an_earlier_output_and_says_so(tiny, tmp_path):
    out = tmp_path / "out"
    first = hoist.convert(tiny, out, max_shard_size="100KB")
    assert len(first["files"]) > 2
    second = hoist.convert(tiny, out)
    assert second["files"] == [str(out / "model.safetensors")]
    assert sorted(second["removed"]) == sorted(first["files"])
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    assert tensor_bytes(out / "model.safetensors") == tensor_bytes(tiny / "model.safetensors")


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"dtype": "f33"}, "dtype 'f33': expected bf16, f16 or f32"),
        ({"max_shard_size": "lots"}, "max_shard_size: 'lots' is not a size"),
        ({"max_shard_size": 1.5}, "max_shard_size=1.5: expected a number of bytes"),
        ({"threads": 5000}, "threads 5000: expected 1 to 1024"),
        ({"threads": 2**40}, "threads=1099511627776: far too large"),
        ({"drop": {"a": 1}}, "drop={'a': 1}: expected a regex or a list of them"),
        ({"only": "("}, "only '(': not a valid regular expression"),
        ({"rename": {"": "x"}}, "rename={'': 'x'}: expected a non-empty string key"),
        ({"compat": "hf"}, "compat 'hf': the only mode is hf-legacy"),
        ({"shard": (0, 2)}, "shard needs split={regex: dim} naming the tensors to split"),
        ({"shard": (2, 2), "split": {"x": 0}}, "shard=(2, 2): expected 0 <= rank < world"),
    ],
)
def test_convert_errors_name_the_keyword_and_write_nothing(tiny, tmp_path, kwargs, message):
    out = tmp_path / "out"
    with pytest.raises(ValueError) as e:
        hoist.convert(tiny, out, **kwargs)
    assert str(e.value).startswith(message), str(e.value)
    assert "--" not in str(e.value)
    assert not out.exists()


def test_convert_missing_source(tmp_path):
    with pytest.raises(FileNotFoundError):
        hoist.convert(tmp_path / "nothing", tmp_path / "out")
    assert not (tmp_path / "out").exists()
