"""hoist load from a cold page cache: pread against io_uring, buffered and
O_DIRECT, onto one device. Each file is flushed and evicted with
posix_fadvise(DONTNEED) before every run, so the bytes come from the disk.
Prints a table and writes cold-reads.json; used by scripts/gpu-bench to
settle the read defaults on the GPU machine's disk (docs/loading.md has the
figures from the 2-core VM).

  python3 bench/cold_reads.py --dir CKPT --hoist-bin build/hoist --device cpu --out bench/out
"""

import argparse
import ctypes
import glob
import json
import mmap
import os
import statistics
import subprocess
import time

MODES = {
    "pread": ["--io", "pread"],
    "io_uring": ["--io", "uring"],
    "pread O_DIRECT": ["--io", "pread", "--direct", "on"],
    "io_uring O_DIRECT": ["--io", "uring", "--direct", "on"],
    "auto": ["--io", "auto"],
}


def cached_fraction(path):
    """The fraction of the file's pages in the page cache (mincore), or
    None where it cannot be asked."""
    size = os.path.getsize(path)
    if size == 0:
        return 0.0
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    pages = (size + mmap.PAGESIZE - 1) // mmap.PAGESIZE
    fd = os.open(path, os.O_RDONLY)
    try:
        addr = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        if addr in (None, ctypes.c_void_p(-1).value):
            return None
        vec = (ctypes.c_ubyte * pages)()
        rc = libc.mincore(addr, size, vec)
        libc.munmap(addr, size)
    finally:
        os.close(fd)
    return None if rc != 0 else sum(v & 1 for v in vec) / pages


def evict(files):
    """Drops the files from the page cache; returns why it could not, or
    None. (Some sandboxes, gVisor's among them, refuse or ignore it, some
    without an error: mincore tells. Then the reads are warm, and the JSON
    says so.)"""
    problem = None  # the first; every file is still evicted
    for path in files:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        except OSError as e:
            problem = problem or repr(e)
            continue
        finally:
            os.close(fd)
        left = cached_fraction(path)
        if left is not None and left > 0.5 and problem is None:
            problem = f"posix_fadvise(DONTNEED) left {left:.0%} of {os.path.basename(path)} in the page cache"
    return problem


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", required=True)
    ap.add_argument("--hoist-bin", required=True)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", required=True)
    ap.add_argument("--reports", help="where the per-run load report goes (default: --out)")
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--budget", type=float, default=120.0, help="seconds for all runs; later modes are skipped")
    args = ap.parse_args()
    files = sorted(glob.glob(os.path.join(args.dir, "*.safetensors")))
    total = sum(os.path.getsize(f) for f in files)
    results, evict_error = {}, None
    report = os.path.join(args.reports or args.out, "cold-read-report.json")
    section_start = time.perf_counter()
    for name, flags in MODES.items():
        times, read_times, how = [], [], ""
        for _ in range(args.runs):
            left = args.budget - (time.perf_counter() - section_start)
            if left <= 0:
                break
            evict_error = evict(files) or evict_error
            start = time.perf_counter()
            try:
                proc = subprocess.run([args.hoist_bin, "load", args.dir, "--device", args.device, "-q",
                                       "--report", report, *flags], capture_output=True, text=True, timeout=left)
            except subprocess.TimeoutExpired:
                break
            elapsed = time.perf_counter() - start
            if proc.returncode != 0:
                results[name] = {"error": proc.stderr.strip()}
                break
            rep = json.load(open(report))
            times.append(elapsed)
            read_times.append(rep["stages"]["read"])
            # What really happened: a file system that refuses O_DIRECT is read buffered.
            how = f"{rep['direct_io_files']} of {len(files)} files O_DIRECT, {rep['uring_files']} through io_uring"
        if name in results:
            continue
        if not times:
            results[name] = {"error": f"skipped: the {args.budget:.0f} s budget was spent"}
            continue
        results[name] = {"seconds": statistics.median(times), "times": times,
                         "read_seconds": statistics.median(read_times), "how": how,
                         "gbps": total / statistics.median(times) / 1e9}
    print(f"cold page cache: {args.dir} ({total} bytes in {len(files)} files) onto {args.device}, "
          f"median of up to {args.runs} whole-process runs")
    for name, r in results.items():
        if "error" in r:
            print(f"  {name:18s} failed: {r['error']}")
        else:
            print(f"  {name:18s} {r['seconds']:.3f} s  {r['gbps']:.2f} GB/s  (read stage {r['read_seconds']:.3f} s; {r['how']})")
    if evict_error:
        print(f"  WARNING: could not evict the files ({evict_error}): these reads were not cold")
    json.dump({"dir": args.dir, "bytes": total, "device": args.device, "runs": results, "evict_error": evict_error},
              open(os.path.join(args.out, "cold-reads.json"), "w"), indent=2)


if __name__ == "__main__":
    main()
