"""The GPU scripts' set-up (scripts/gpu-common.sh), on each kind of machine.

The scripts run for real only on a lent GPU machine, once; the rehearsals in
scripts/test run them on the cpu and on the emulated GPU, which never take
the branch a real GPU takes. Here a stand-in `nvidia-smi` on PATH makes this
machine look like the GPU machine, and the test reads what the set-up chose:
the device, the model's size, the build's CUDA architecture, where results
go, and the refusals that must stop a run at once.
"""

from __future__ import annotations

import datetime
import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

FAKE_NVIDIA_SMI = """#!/bin/sh
case "$*" in
  -L) echo "GPU 0: NVIDIA H200 (UUID: GPU-00000000-0000-0000-0000-000000000000)" ;;
  *driver_version*) echo "NVIDIA H200, 143771 MiB, 580.95.05, 9.0" ;;
  *compute_cap*) echo "9.0" ;;
  *name*) echo "NVIDIA H200" ;;
  *) exit 1 ;;
esac
"""

FIELDS = ["have_gpu", "gpu", "device", "layers", "cuda_arch", "hoist_bin", "cuda_tests", "out", "emulated"]


def set_up(tmp_path: Path, *, gpu: bool, deps: bool, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Sources gpu-common.sh in a scratch tree and prints what it chose."""
    tree = tmp_path / "tree"
    (tree / "scripts").mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "scripts" / "gpu-common.sh", tree / "scripts")
    if deps:
        (tree / ".deps" / "include").mkdir(parents=True, exist_ok=True)
    path = os.environ["PATH"]
    if gpu:
        bin_dir = tmp_path / "bin"
        bin_dir.mkdir(exist_ok=True)
        smi = bin_dir / "nvidia-smi"
        smi.write_text(FAKE_NVIDIA_SMI)
        smi.chmod(0o755)
        path = f"{bin_dir}:{path}"
    else:
        # No nvidia-smi at all, whatever this machine has.
        path = ":".join(p for p in path.split(":") if not (Path(p) / "nvidia-smi").exists())
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("HOIST_") and k != "OUT"}
    full_env.update(PATH=path, **(env or {}))
    show = "; ".join(f'printf "%s\\n" "{name}=${{{name}[*]}}"' for name in FIELDS)
    return subprocess.run(["bash", "-c", f"set -uo pipefail; source scripts/gpu-common.sh; {show}"], cwd=tree,
                          env=full_env, capture_output=True, text=True, timeout=60)


def chosen(proc: subprocess.CompletedProcess) -> dict[str, str]:
    assert proc.returncode == 0, proc.stderr
    return dict(line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line)


@pytest.mark.skipif(Path("/dev/nvidia0").exists(), reason="this machine has a GPU: the stand-in would not decide")
class TestGpuCommon:
    def test_gpu_machine_runs_the_full_model_on_cuda_0(self, tmp_path):
        got = chosen(set_up(tmp_path, gpu=True, deps=True, env={"HOIST_EXPECT_GPU": "1"}))
        today = datetime.date.today().isoformat()
        assert got == {"have_gpu": "1", "gpu": "NVIDIA H200", "device": "cuda:0", "layers": "",
                       "cuda_arch": "90-real", "hoist_bin": "build-gpu/hoist",
                       "cuda_tests": "build-gpu/hoist_cuda_tests", "out": f"bench/results/{today}-NVIDIA-H200",
                       "emulated": "0"}

    def test_gpu_machine_writes_to_out_when_given(self, tmp_path):
        got = chosen(set_up(tmp_path, gpu=True, deps=True, env={"HOIST_EXPECT_GPU": "1", "OUT": str(tmp_path / "o")}))
        assert got["out"] == str(tmp_path / "o") and (tmp_path / "o").is_dir()
        assert got["device"] == "cuda:0" and got["layers"] == ""

    def test_gpu_machine_without_the_carried_deps_stops_at_once(self, tmp_path):
        proc = set_up(tmp_path, gpu=True, deps=False, env={"HOIST_EXPECT_GPU": "1"})
        assert proc.returncode == 1
        assert "no .deps/" in proc.stderr and "scripts/pack-deps" in proc.stderr
        assert proc.stdout == ""

    def test_expecting_a_gpu_where_there_is_none_stops_at_once(self, tmp_path):
        proc = set_up(tmp_path, gpu=False, deps=True, env={"HOIST_EXPECT_GPU": "1"})
        assert proc.returncode == 1
        assert "no GPU here" in proc.stderr
        assert proc.stdout == ""

    def test_emulated_rehearsal(self, tmp_path):
        got = chosen(set_up(tmp_path, gpu=False, deps=False, env={"HOIST_EMULATE": "1"}))
        assert (got["device"], got["layers"], got["emulated"]) == ("cuda:0", "--layers 2", "1")
        assert (got["hoist_bin"], got["cuda_tests"]) == ("build-gpu/hoist_emulated", "build-gpu/hoist_cuda_emulated_tests")
        assert got["out"] == "bench/out"

    def test_cpu_rehearsal(self, tmp_path):
        got = chosen(set_up(tmp_path, gpu=False, deps=False))
        assert (got["have_gpu"], got["gpu"], got["device"], got["layers"]) == ("0", "cpu", "cpu", "--layers 2")
        assert got["out"] == "bench/out"
