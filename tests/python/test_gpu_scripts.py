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
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# Answers as an H200 machine would (scripts/test uses it too).
FAKE_NVIDIA_SMI = REPO / "tests" / "gpu-machine" / "nvidia-smi"

FIELDS = ["have_gpu", "gpu", "device", "layers", "cuda_arch", "hoist_bin", "cuda_tests", "out", "emulated"]


def set_up(tmp_path: Path, *, gpu: bool, deps: bool, env: dict[str, str] | None = None,
           then: str = "") -> subprocess.CompletedProcess:
    """Sources gpu-common.sh in a scratch tree and prints what it chose (and
    what the commands `then` print)."""
    tree = tmp_path / "tree"
    (tree / "scripts").mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "scripts" / "gpu-common.sh", tree / "scripts")
    if deps:
        (tree / ".deps" / "include").mkdir(parents=True, exist_ok=True)
    path = os.environ["PATH"]
    if gpu:
        path = f"{FAKE_NVIDIA_SMI.parent}:{path}"
    else:
        # No nvidia-smi at all, whatever this machine has.
        path = ":".join(p for p in path.split(":") if not (Path(p) / "nvidia-smi").exists())
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("HOIST_") and k != "OUT"}
    full_env.update(PATH=path, **(env or {}))
    show = "; ".join(f'printf "%s\\n" "{name}=${{{name}[*]}}"' for name in FIELDS)
    return subprocess.run(["bash", "-c", f"set -uo pipefail; source scripts/gpu-common.sh; {show}; {then or ':'}"], cwd=tree,
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


def _gpu_bench():
    import importlib.util
    spec = importlib.util.spec_from_file_location("gpu_bench", REPO / "bench" / "gpu_bench.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_targets_judge_each_figure_of_a_run(tmp_path):
    """The targets table gpu-bench ends with: each target met, missed or
    without a figure, from the run's own numbers."""
    import argparse
    import json
    targets = _gpu_bench().targets
    gb = 16_000_000_000
    results = {
        "hoist_cli": {"seconds": 0.40, "bytes": gb, "output_bytes": gb},  # 40 GB/s
        "hoist": {"seconds": 0.45, "bytes": gb},
        "safetensors": {"seconds": 2.50, "bytes": gb},    # 5.6x hoist's 0.45 s
        "transformers": {"seconds": 1.20, "bytes": gb},   # 2.7x
        # A cast twice as slow delivers 94% of the plain load's output bytes
        # per second (its output is twice as large): a miss all the same.
        "hoist_cast_f32": {"seconds": 0.85, "bytes": gb, "output_bytes": 2 * gb},
    }
    args = argparse.Namespace(bound_gbps=50.0, out=str(tmp_path))

    def judged():
        rows = {target: (text, met) for target, text, met in targets(args, results)}
        assert len(rows) == 5
        return lambda start: next(v for k, v in rows.items() if k.startswith(start))

    rows = judged()
    assert rows("hoist (command) at >= 85% of the pinned host-to-device bound") == ("80% (40.00 of 50.00 GB/s)", False)
    assert rows(">= 5x faster than safetensors") == ("5.56x", True)
    assert rows(">= 3x faster than transformers") == ("2.67x", False)
    assert rows("cast bf16->f32 within 10% of the plain load's rate") == ("47% of the plain load's rate", False)
    assert rows("hoist load --device cpu faster than cat") == ("no figure", None)

    args.bound_gbps = 45.0
    results["hoist_cast_f32"]["seconds"] = 0.43
    del results["transformers"]
    (tmp_path / "cpu-vs-cat.json").write_text(json.dumps({"cat_over_hoist": 1.3}))
    rows = judged()
    assert rows("hoist (command) at >= 85% of the pinned host-to-device bound")[1] is True
    assert rows(">= 3x faster than transformers") == ("no figure", None)
    assert rows("cast bf16->f32 within 10% of the plain load's rate") == ("93% of the plain load's rate", True)
    assert rows("hoist load --device cpu faster than cat") == ("cat / hoist = 1.30", True)


def test_results_say_when_reads_bounced_through_ordinary_memory(tmp_path):
    """Under gVisor the loads go on through a bounce copy: the results must
    say so beside figures that are not the pipeline's own."""
    import argparse
    write_results = _gpu_bench().write_results
    gb = 16_000_000_000
    args = argparse.Namespace(bound_gbps=50.0, out=str(tmp_path), date="2026-12-07", gpu_name="Test GPU",
                              dir="/ckpt")
    for bounced in (False, True):
        run = {"seconds": 0.5, "bytes": gb, "output_bytes": gb, "timed": "cli report",
               "staging": {"chunk_bytes": 16 << 20, "buffers_per_gpu": 18, "pipeline": True, "bounced_reads": bounced}}
        md = write_results(args, {"hoist_cli": run}, {}, gb, 4, "cuda:0", 3)
        assert ("NOTE: the kernel refused reads into pinned staging memory" in md) == bounced, md
        assert "in hoist_cli:" in md or not bounced, md


def test_the_second_script_finds_the_checkpoint_where_the_first_put_it(tmp_path):
    """gpu-bench must reuse gpu-check's checkpoint (or its failure) where it
    is, even when /dev/shm's room, which chose the place, has changed since;
    and the names are this checkout's own."""
    # /dev/shm has all the room in the world now (a stand-in df), and the
    # checkpoint is in build-gpu/ all the same.
    then = ('df() { printf "Avail\\n99000000000000\\n"; }; mkdir -p "build-gpu/${ckpt_prefix}llama-3.1-8b"; touch "build-gpu/${ckpt_prefix}llama-3.1-8b.complete"; '
            'echo "prefix=$ckpt_prefix"; echo "found=$(checkpoint llama-3.1-8b)"; '
            'rm "build-gpu/${ckpt_prefix}llama-3.1-8b.complete"; touch "build-gpu/${ckpt_prefix}llama-3.1-8b.failed"; '
            'checkpoint llama-3.1-8b; echo "failed_rc=$?"')
    proc = set_up(tmp_path, gpu=True, deps=True, env={"HOIST_EXPECT_GPU": "1"}, then=then)
    got = chosen(proc)
    assert got["prefix"].startswith("hoist-ckpt-") and got["prefix"] != "hoist-ckpt-"
    assert got["found"] == f"build-gpu/{got['prefix']}llama-3.1-8b"
    assert got["failed_rc"] == "1" and "failed earlier" in proc.stderr
    # Another checkout's names differ.
    other = set_up(tmp_path / "other", gpu=True, deps=True, env={"HOIST_EXPECT_GPU": "1"}, then='echo "prefix=$ckpt_prefix"')
    assert chosen(other)["prefix"] != got["prefix"]


def test_build_steps_end_before_the_device_tools_limit(tmp_path):
    """Under scripts/gpu-all a build step may run only until its deadline
    (the device tool kills the call 60 s later), never less than 30 s; alone,
    its own limit."""
    import time
    show = 'echo "limit=$(step_limit 400)"; echo "short=$(step_limit 45)"'
    alone = chosen(set_up(tmp_path, gpu=False, deps=False, then=show))
    assert (alone["limit"], alone["short"]) == ("400", "45")
    soon = chosen(set_up(tmp_path, gpu=False, deps=False, then=show,
                         env={"HOIST_DEADLINE": str(int(time.time()) + 100)}))
    assert 90 <= int(soon["limit"]) <= 100 and soon["short"] == "45"
    past = chosen(set_up(tmp_path, gpu=False, deps=False, then=show, env={"HOIST_DEADLINE": "1"}))
    assert (past["limit"], past["short"]) == ("30", "30")


@pytest.mark.parametrize("check_exit, bench_runs", [(3, False), (1, True), (0, True)])
def test_gpu_all_skips_the_bench_only_when_the_check_could_not_build(tmp_path, check_exit, bench_runs):
    """gpu-check's exit 3 means the command did not build: gpu-bench would
    fail the same way, so gpu-all does not run it; any other failure of the
    check leaves the bench to run."""
    tree = tmp_path / "tree"
    (tree / "scripts").mkdir(parents=True)
    shutil.copy(REPO / "scripts" / "gpu-all", tree / "scripts")
    (tree / "scripts" / "gpu-check").write_text(f"exit {check_exit}\n")
    (tree / "scripts" / "gpu-bench").write_text("touch bench-ran\n")
    proc = subprocess.run(["bash", "scripts/gpu-all"], cwd=tree, capture_output=True, text=True, timeout=60)
    assert (tree / "bench-ran").exists() == bench_runs
    assert proc.returncode == (0 if check_exit == 0 else 1), proc.stdout
    assert ("gpu-bench skipped" in proc.stdout) == (not bench_runs)


def test_every_time_limit_in_the_gpu_scripts_ends_in_a_kill():
    """`timeout` sends one SIGTERM, and `hoist load` takes it as a request to
    stop at its next read: a load stuck where no read comes (a GPU's start-up,
    a hung driver call) would outlive its limit and the device time. Each
    limit must follow with SIGKILL (-k)."""
    scripts = [REPO / "scripts" / name for name in ("gpu-all", "gpu-check", "gpu-bench", "gpu-common.sh")]
    bare = []
    for script in scripts:
        for number, line in enumerate(script.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            if re.search(r"\btimeout\s", code) and "command -v" not in code and not re.search(r"\btimeout\s+-k\s", code):
                bare.append(f"{script.name}:{number}: {line.strip()}")
    assert not bare, "\n".join(bare)
