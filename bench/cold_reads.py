"""hoist load from a cold page cache: pread against io_uring, buffered and
O_DIRECT, onto one device. Each file is flushed and evicted with
posix_fadvise(DONTNEED) before every run, so the bytes come from the disk.
Prints a table and writes cold-reads.json; used by scripts/gpu-bench to
settle the read defaults on the GPU machine's disk (docs/loading.md has the
figures from the 2-core VM).

  python3 bench/cold_reads.py --dir CKPT --hoist-bin build/hoist --device cpu --out bench/out
"""

import argparse
import glob
import json
import os
import statistics
import subprocess
import time

MODES = {
    "pread": ["--io", "pread"],
    "io_uring": ["--io", "uring"],
    "pread O_DIRECT": ["--io", "pread", "--direct", "on"],
    "io_uring O_DIRECT": ["--io", "uring", "--direct", "on"],
    "default (auto)": [],
}


def evict(files):
    for path in files:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", required=True)
    ap.add_argument("--hoist-bin", required=True)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", required=True)
    ap.add_argument("--runs", type=int, default=2)
    args = ap.parse_args()
    files = sorted(glob.glob(os.path.join(args.dir, "*.safetensors")))
    total = sum(os.path.getsize(f) for f in files)
    results = {}
    for name, flags in MODES.items():
        times = []
        for _ in range(args.runs):
            evict(files)
            start = time.perf_counter()
            proc = subprocess.run([args.hoist_bin, "load", args.dir, "--device", args.device, "-q", *flags],
                                  capture_output=True, text=True)
            elapsed = time.perf_counter() - start
            if proc.returncode != 0:  # O_DIRECT is refused on some file systems: say so, go on
                results[name] = {"error": proc.stderr.strip()}
                break
            times.append(elapsed)
        else:
            results[name] = {"seconds": statistics.median(times), "times": times,
                             "gbps": total / statistics.median(times) / 1e9}
    print(f"cold page cache: {args.dir} ({total} bytes in {len(files)} files) onto {args.device}, "
          f"median of {args.runs} whole-process runs")
    for name, r in results.items():
        if "error" in r:
            print(f"  {name:18s} failed: {r['error']}")
        else:
            print(f"  {name:18s} {r['seconds']:.3f} s  {r['gbps']:.2f} GB/s")
    json.dump({"dir": args.dir, "bytes": total, "device": args.device, "runs": results},
              open(os.path.join(args.out, "cold-reads.json"), "w"), indent=2)


if __name__ == "__main__":
    main()
