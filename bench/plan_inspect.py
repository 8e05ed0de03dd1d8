"""hoist.inspect and hoist.plan in one process (imports done), beside the
whole `hoist inspect --json` and `hoist plan --json` processes they stand for,
on a checkpoint's headers alone: how long "what is in it, and where would it
go?" takes before anything is loaded. Medians of several runs; the plan is
accelerate's "auto" strategy over a machine described by max_memory (four
80 GB GPUs and the cpu), so it needs no GPU.

  PYTHONPATH=build/python python3 bench/plan_inspect.py CKPT [--runs 5] [--hoist build/hoist]

CKPT is best a header-only synth (`hoist synth --arch deepseek-v3 --sparse
DIR`: 91,991 tensors, 688.57 GB, headers only).
"""

import argparse
import statistics
import subprocess
import time

import hoist

MAX_MEMORY = {0: "80GB", 1: "80GB", 2: "80GB", 3: "80GB", "cpu": "500GB", "disk": "2TB"}
MAX_MEMORY_FLAG = "0=80GB,1=80GB,2=80GB,3=80GB,cpu=500GB,disk=2TB"


def median_seconds(run, runs):
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times), min(times), max(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("path")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--hoist", default="build/hoist")
    args = ap.parse_args()
    catalogue = hoist.inspect(args.path)
    plan = hoist.plan(args.path, device_map="auto", max_memory=MAX_MEMORY)
    print(f"{args.path}: {len(catalogue['tensors'])} tensors in {len(catalogue['files'])} files, "
          f"{catalogue['total_bytes'] / 1e9:.2f} GB; auto plan: " +
          ", ".join(f"{d} {v['tensors']} tensors" + (f" {v['bytes'] / 1e9:.2f} GB" if d != "disk" else " left in their files")
                    for d, v in plan["devices"].items()))
    cli = [args.hoist, "plan", args.path, "--json", "--device-map", "auto", "--max-memory", MAX_MEMORY_FLAG]
    rows = {
        "hoist.inspect(path)": lambda: hoist.inspect(args.path),
        "hoist inspect --json (process)": lambda: subprocess.run([args.hoist, "inspect", "--json", args.path],
                                                                 check=True, capture_output=True),
        "hoist.plan(path, device_map='auto', ...)": lambda: hoist.plan(args.path, device_map="auto",
                                                                       max_memory=MAX_MEMORY),
        "hoist plan --json --device-map auto (process)": lambda: subprocess.run(cli, check=True,
                                                                                capture_output=True),
    }
    for name, run in rows.items():
        med, lo, hi = median_seconds(run, args.runs)
        print(f"  {name:48s} median {med:.3f} s  min {lo:.3f}  max {hi:.3f}  ({args.runs} runs)")


if __name__ == "__main__":
    main()
