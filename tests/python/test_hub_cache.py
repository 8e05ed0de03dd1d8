"""Models named as transformers names them ("org/name", "org/name@REVISION"),
read from the Hugging Face cache: the snapshot hoist picks must be the one
huggingface_hub's own snapshot_download(local_files_only=True) gives.

The cache is built here in huggingface_hub's layout (blobs, snapshots of
symlinks, refs) from `hoist synth` checkpoints; nothing is downloaded.

Run: PYTHONPATH=build/python HOIST_BIN=build/hoist python3 -m pytest -q tests/python/test_hub_cache.py
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from hoist_testlib import ok, stderr_error_line

hub = pytest.importorskip("huggingface_hub", reason="huggingface_hub is not installed (pip install huggingface_hub)")

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


@pytest.fixture(scope="module")
def cache(tmp_path_factory, run_hoist) -> Path:
    root = tmp_path_factory.mktemp("hub")
    src = root / "src"
    ok(run_hoist("synth", "--arch", "tiny-llama", "--quiet", src / "bf16"))
    ok(run_hoist("convert", src / "bf16", src / "f32", "--dtype", "f32"))
    cache = root / "cache"
    repo = cache / "models--org--tiny"
    add_snapshot(repo, MAIN, src / "bf16")
    add_snapshot(repo, TAGGED, src / "f32")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(MAIN)
    (repo / "refs" / "v1").write_text(TAGGED)
    return cache


def hub_snapshot(cache: Path, repo: str, revision: str | None) -> str:
    return hub.snapshot_download(repo, revision=revision, cache_dir=str(cache), local_files_only=True)


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
