"""Models named as transformers names them ("org/name", "org/name@REVISION"),
read from the Hugging Face cache: the snapshot hoist picks must be the one
huggingface_hub's own snapshot_download(local_files_only=True) gives.

The cache is built here in huggingface_hub's layout (blobs, snapshots of
symlinks, refs) from `hoist synth` checkpoints; nothing is downloaded.

Run: PYTHONPATH=build/python HOIST_BIN=build/hoist python3 -m pytest -q tests/python/test_hub_cache.py
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from hoist_testlib import ok, stderr_error_line

hub = pytest.importorskip("huggingface_hub", reason="huggingface_hub is not installed (pip install huggingface_hub)")

# huggingface_hub (2.x) refuses a snapshot short of its commit's listing
# (trees/COMMIT.json); earlier ones returned it as it was.
HUB_CHECKS_LISTINGS = hasattr(importlib.import_module("huggingface_hub._snapshot_download"),
                              "_raise_if_incomplete_snapshot")

MAIN = "1" * 40
TAGGED = "2" * 40


def add_snapshot(repo: Path, commit: str, source: Path) -> None:
    """Files of `source` as huggingface_hub stores them: blobs named by
    content, a snapshot of relative symlinks to them."""
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for f in sorted(source.iterdir()):
        digest = hashlib.sha256(f.read_bytes()).hexdigest()
        shutil.copyfile(f, repo / "blobs" / digest)
        (snapshot / f.name).symlink_to(Path("..") / ".." / "blobs" / digest)


def add_refs(repo: Path, refs: dict[str, str]) -> None:
    for name, commit in refs.items():
        (repo / "refs" / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / "refs" / name).write_text(commit)


def add_listing(repo: Path, commit: str, files: list[str]) -> None:
    """trees/COMMIT.json, the commit's file listing as snapshot_download keeps it."""
    (repo / "trees").mkdir(exist_ok=True)
    listing = {"format_version": 1, "files": {f: {"size": 1, "blob_id": "0" * 40} for f in files}}
    (repo / "trees" / f"{commit}.json").write_text(json.dumps(listing))


LONG = "n" * 20 + "/" + "m" * 90  # namespace and name may each be 96 long


@pytest.fixture(scope="module")
def cache(tmp_path_factory, run_hoist) -> Path:
    root = tmp_path_factory.mktemp("hub")
    src = root / "src"
    ok(run_hoist("synth", "--arch", "tiny-llama", "--quiet", src / "bf16"))
    ok(run_hoist("convert", src / "bf16", src / "f32", "--dtype", "f32"))
    ok(run_hoist("convert", src / "bf16", src / "sharded", "--max-shard-size", "100kB"))
    shards = sorted(f.name for f in (src / "sharded").glob("*.safetensors"))
    assert len(shards) > 1
    cache = root / "cache"
    repo = cache / "models--org--tiny"
    add_snapshot(repo, MAIN, src / "bf16")
    add_snapshot(repo, TAGGED, src / "f32")
    add_refs(repo, {"main": MAIN, "v1": TAGGED, "v1+cu121": TAGGED, "refs/pr/1": TAGGED,
                    "newline": MAIN + "\n", "3" * 40: MAIN})
    add_snapshot(cache / ("models--" + LONG.replace("/", "--")), MAIN, src / "bf16")
    add_refs(cache / ("models--" + LONG.replace("/", "--")), {"main": MAIN})
    # An interrupted download: the last shard never came.
    partial = root / "partial"
    shutil.copytree(src / "sharded", partial)
    (partial / shards[-1]).unlink()
    add_snapshot(cache / "models--org--partial", MAIN, partial)
    add_refs(cache / "models--org--partial", {"main": MAIN})
    add_listing(cache / "models--org--partial", MAIN, [*shards, "model.safetensors.index.json", "config.json"])
    # Whole weights, some other file not downloaded (allow_patterns).
    add_snapshot(cache / "models--org--weights", MAIN, src / "bf16")
    add_refs(cache / "models--org--weights", {"main": MAIN})
    add_listing(cache / "models--org--weights", MAIN, ["model.safetensors", "config.json", "README.md"])
    return cache


def hoist_snapshot(hoist_bin, cache: Path, cwd: Path, name: str) -> str | None:
    """The snapshot `hoist inspect NAME` reads; None when it refuses the name (exit 2)."""
    proc = subprocess.run([str(hoist_bin), "inspect", "--json", name], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, "HF_HUB_CACHE": str(cache)})
    if proc.returncode == 2:
        return None
    ok(proc)
    folders = {str(Path(f).parent) for f in json.loads(proc.stdout)["files"]}
    assert len(folders) == 1, folders
    return folders.pop()


def hub_snapshot(cache: Path, repo: str, revision: str | None) -> str:
    return hub.snapshot_download(repo, revision=revision, cache_dir=str(cache), local_files_only=True)


def hub_snapshot_or_none(cache: Path, name: str) -> str | None:
    repo, _, revision = name.partition("@")
    try:
        return hub_snapshot(cache, repo, revision or None)
    except FileNotFoundError:  # LocalEntryNotFoundError, IncompleteSnapshotError
        return None


@pytest.mark.parametrize("name", [
    "org/tiny", "org/tiny@main", "org/tiny@v1", f"org/tiny@{TAGGED}", "org/tiny@v1+cu121", "org/tiny@refs/pr/1",
    "org/tiny@newline", f"org/tiny@{'3' * 40}", "org/tiny@v9", "org/absent", LONG, "org/partial",
])
def test_hoist_and_huggingface_hub_pick_the_same_snapshot_or_refuse_alike(hoist_bin, cache, tmp_path, name):
    """Refused by both: a ref file with a newline after the commit, a commit
    hash looked up in refs/, an unknown revision or repo, and a snapshot that
    lacks a weight file its commit's listing names."""
    expected = None if name == "org/partial" and not HUB_CHECKS_LISTINGS else hub_snapshot_or_none(cache, name)
    assert hoist_snapshot(hoist_bin, cache, tmp_path, name) == expected


def test_a_snapshot_with_whole_weights_loads_though_another_file_was_not_downloaded(hoist_bin, cache, tmp_path):
    """huggingface_hub asks for every listed file (README.md too); a load
    needs the weights only, so hoist asks for those."""
    if HUB_CHECKS_LISTINGS:
        assert hub_snapshot_or_none(cache, "org/weights") is None
    assert hoist_snapshot(hoist_bin, cache, tmp_path, "org/weights") == str(cache / "models--org--weights" / "snapshots" / MAIN)


def test_an_interrupted_download_is_one_line_naming_the_missing_weights(hoist_bin, cache, tmp_path):
    proc = subprocess.run([str(hoist_bin), "load", "org/partial", "--device", "cpu"], capture_output=True, text=True,
                          cwd=tmp_path, env={**os.environ, "HF_HUB_CACHE": str(cache)})
    assert proc.returncode == 2, proc.stderr
    line = stderr_error_line(proc)
    assert line.startswith("error: org/partial: the Hugging Face cache's snapshot") and "interrupted download" in line


SPECS = [("org/tiny", None), ("org/tiny", "main"), ("org/tiny", "v1"), ("org/tiny", TAGGED)]


@pytest.mark.parametrize("repo,revision", SPECS, ids=["main by default", "main", "a tag", "a commit"])
def test_cli_reads_the_snapshot_huggingface_hub_gives(hoist_bin, cache, tmp_path, repo, revision):
    name = repo if revision is None else f"{repo}@{revision}"
    proc = subprocess.run([str(hoist_bin), "inspect", "--json", name], capture_output=True, text=True,
                          cwd=tmp_path, env={**os.environ, "HF_HUB_CACHE": str(cache)})
    ok(proc)
    files = json.loads(proc.stdout)["files"]
    assert files and {str(Path(f).parent) for f in files} == {hub_snapshot(cache, repo, revision)}


@pytest.mark.parametrize("repo,revision", SPECS, ids=["main by default", "main", "a tag", "a commit"])
def test_python_load_reads_the_snapshot_huggingface_hub_gives(cache, tmp_path, monkeypatch, repo, revision):
    hoist = pytest.importorskip("hoist", reason="the hoist Python module is not built (PYTHONPATH=build/python)")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.chdir(tmp_path)
    name = repo if revision is None else f"{repo}@{revision}"
    expected = hub_snapshot(cache, repo, revision)
    model = hoist.load(name, device="cpu")
    assert model.report["path"] == expected
    dtype = "F32" if revision in ("v1", TAGGED) else "BF16"
    assert model.info("model.norm.weight")["dtype"] == dtype


def test_a_repo_the_cache_lacks_is_one_line_exit_2_as_huggingface_hub_refuses_it(hoist_bin, cache, tmp_path):
    for name, repo, revision in [("org/absent", "org/absent", None), ("org/tiny@v9", "org/tiny", "v9")]:
        with pytest.raises(FileNotFoundError):  # huggingface_hub's LocalEntryNotFoundError
            hub_snapshot(cache, repo, revision)
        proc = subprocess.run([str(hoist_bin), "load", name, "--device", "cpu"], capture_output=True, text=True,
                              cwd=tmp_path, env={**os.environ, "HF_HUB_CACHE": str(cache)})
        assert proc.returncode == 2, proc.stderr
        line = stderr_error_line(proc)
        assert line.startswith(f"error: {name}: no such file or directory") and str(cache) in line, line


def test_an_existing_directory_wins_over_the_cache(run_hoist, hoist_bin, cache, tmp_path):
    local = tmp_path / "org" / "tiny"
    ok(run_hoist("synth", "--arch", "tiny-llama", "--quiet", local))
    proc = subprocess.run([str(hoist_bin), "inspect", "--json", "org/tiny"], capture_output=True, text=True,
                          cwd=tmp_path, env={**os.environ, "HF_HUB_CACHE": str(cache)})
    ok(proc)
    assert [Path(f).parent for f in json.loads(proc.stdout)["files"]] == [Path("org/tiny")]


def test_from_pretrained_builds_the_model_from_the_snapshots_config(cache, tmp_path, monkeypatch):
    hoist = pytest.importorskip("hoist", reason="the hoist Python module is not built (PYTHONPATH=build/python)")
    torch = pytest.importorskip("torch", reason="torch is not installed")
    pytest.importorskip("transformers", reason="transformers is not installed")
    from safetensors.torch import load_file

    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.chdir(tmp_path)
    model = hoist.from_pretrained("org/tiny", device="cpu")
    want = load_file(str(Path(hub_snapshot(cache, "org/tiny", None)) / "model.safetensors"))
    got = model.state_dict()
    assert got.keys() == want.keys()
    assert all(torch.equal(got[name], want[name]) for name in want)
