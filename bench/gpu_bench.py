"""Times hoist against safetensors and transformers on one checkpoint.

Every loader runs RUNS times; the table gives medians. Python loaders run
in this process after a warm-up that creates the CUDA context, so no loader
is charged for it; hoist runs both through its Python module in this process
(same footing) and as the CLI, a whole process that starts its own context:
CLI rows take the load's seconds from its report less stages.device_start
(the wait for that start-up which planning did not hide), which is reported
beside them.
Used by scripts/gpu-bench; also runs on the cpu as a rehearsal.
"""

import argparse
import datetime
import gc
import glob
import json
import os
import statistics
import subprocess
import sys
import time


def sync(device):
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def release(device):
    gc.collect()
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()
        torch.cuda.empty_cache()


def timed(fn, device, runs):
    times = []
    for _ in range(runs):
        release(device)
        start = time.perf_counter()
        result = fn()
        sync(device)
        times.append(time.perf_counter() - start)
        del result
    release(device)
    return times


def load_seconds(report):
    """A CLI load's own seconds: the report's, less the wait for the GPU's
    CUDA context to start (once per process; in-process loaders never pay it)."""
    return report["seconds"] - report["stages"]["device_start"]


def check_dlpack(hoist, folder, shards, device):
    """The tensors hoist.load hands out through DLPack sit on the device and
    hold the file's values: the first and last tensor of every shard, compared
    with safetensors' own load of the same tensors."""
    import torch
    from safetensors import safe_open

    model = hoist.load(folder, device=device)
    checked = []
    for shard in shards:
        with safe_open(shard, framework="pt", device=device) as f:
            names = sorted(f.keys())
            for name in {names[0], names[-1]}:
                t = torch.from_dlpack(model[name])
                ref = f.get_tensor(name)
                ok = str(t.device) == str(ref.device) and t.dtype == ref.dtype and torch.equal(t, ref)
                checked.append({"name": name, "device": str(t.device), "dtype": str(t.dtype), "equal": ok})
    bad = [c for c in checked if not c["equal"]]
    print(f"DLPack check: {len(checked) - len(bad)} of {len(checked)} tensors on {device} equal safetensors' load")
    if bad:
        raise AssertionError(f"DLPack tensors differ from safetensors: {bad}")
    return {"ok": True, "tensors": checked}


def check_consumers(hoist, folder, shards, device):
    """CuPy and JAX take hoist's DLPack tensors too, without a copy: for the
    first and last tensor of the first shard, each consumer's array sits at
    the address torch sees and, read back through DLPack into torch, equals
    safetensors' load. A consumer that is not installed is reported, not
    failed; wrong bytes or a copy are failures."""
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # JAX must not take the GPU's memory
    import torch
    from safetensors import safe_open

    consumers = {}
    # A consumer without a GPU of its own (a CPU-only jaxlib, a CuPy built
    # for another CUDA) cannot take a GPU tensor from anyone: reported like
    # one not installed, not counted against hoist.
    try:
        import cupy

        if device != "cpu" and cupy.cuda.runtime.getDeviceCount() < 1:
            raise RuntimeError("CuPy sees no GPU")
        consumers["cupy"] = (cupy.from_dlpack, lambda a: a.data.ptr)
    except Exception as e:  # not installed, or no CUDA for it
        print(f"consumer check: no cupy ({e!r})", file=sys.stderr)
    try:
        import jax
        import jax.numpy as jnp

        if device != "cpu" and not jax.devices("gpu"):
            raise RuntimeError("JAX has no GPU backend")
        consumers["jax"] = (jnp.from_dlpack, lambda a: a.unsafe_buffer_pointer())
    except Exception as e:
        print(f"consumer check: no jax ({e!r})", file=sys.stderr)
    if device == "cpu":
        consumers.pop("cupy", None)  # cupy holds GPU arrays only
    model = hoist.load(folder, device=device)
    out = {"ok": True, "tensors": []}
    with safe_open(shards[0], framework="pt", device=device) as f:
        names = sorted(f.keys())
        for name in {names[0], names[-1]}:
            ref = f.get_tensor(name)
            ptr = torch.from_dlpack(model[name]).data_ptr()
            for consumer, (take, address) in consumers.items():
                row = {"consumer": consumer, "name": name}
                try:
                    arr = take(model[name])
                    row["zero_copy"] = address(arr) == ptr
                    row["equal"] = bool(torch.equal(torch.from_dlpack(arr).to(ref.device), ref))
                except Exception as e:
                    row["error"] = repr(e)
                out["tensors"].append(row)
                if not (row.get("zero_copy") and row.get("equal")):
                    out["ok"] = False
    good = sum(1 for r in out["tensors"] if r.get("zero_copy") and r.get("equal"))
    print(f"consumer check ({', '.join(consumers) or 'none installed'}): {good} of {len(out['tensors'])} "
          f"arrays zero-copy and equal to safetensors' load")
    if not out["ok"]:
        raise AssertionError(f"DLPack consumers: {out['tensors']}")
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", required=True)
    ap.add_argument("--device", default="cuda:0")
    ap.add_argument("--hoist-bin", required=True)
    ap.add_argument("--out", required=True, help="where the results .json and .md go")
    ap.add_argument("--reports", help="where each run's load report goes (default: --out)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--run-timeout", type=float, default=60.0, help="seconds one CLI load may take")
    ap.add_argument("--gpu-name", default="cpu")
    ap.add_argument("--bound-gbps", type=float, default=0.0)
    ap.add_argument("--emulated", action="store_true",
                    help="the GPU is the CUDA runtime emulated on the host (build-gpu/hoist_emulated): "
                         "only the command's own loads run; torch and the Python module have no such GPU")
    ap.add_argument("--deadline", type=float, default=0.0,
                    help="epoch seconds; loaders run fewer times near it and the sweep is cut short")
    args = ap.parse_args()
    # Once: a run that crosses midnight still writes one pair of files.
    args.date = datetime.date.today().isoformat()
    reports_dir = args.reports or args.out
    os.makedirs(reports_dir, exist_ok=True)

    import torch

    device, runs = args.device, args.runs
    shards = sorted(glob.glob(os.path.join(args.dir, "*.safetensors")))
    total = sum(os.path.getsize(f) for f in shards)
    if device.startswith("cuda") and not args.emulated:
        try:
            torch.zeros(1, device=device)  # CUDA context up before any timer
        except Exception as e:
            # torch's rows then fail one by one, and hoist's command still runs.
            print(f"torch cannot use {device}: {e!r}", file=sys.stderr)
    results, sweep = {}, {}

    def seconds_left():
        return args.deadline - time.time() if args.deadline else float("inf")

    def runs_now(slack):
        # Fewer runs (at least one) rather than run past the device's limit.
        return runs if seconds_left() > slack else 1

    def save():
        # After every loader, so a run cut short still leaves its figures.
        write_results(args, results, sweep, total, len(shards), device, runs)

    def cli(name, *flags):
        times, reports = [], []
        for r in range(runs):
            if r and seconds_left() < 60:
                break
            report = os.path.join(reports_dir, f"bench-{name}-{r}.json")
            start = time.perf_counter()
            subprocess.run([args.hoist_bin, "load", args.dir, "--device", device, "--report", report, "-q", *flags],
                           check=True, timeout=args.run_timeout)
            times.append(time.perf_counter() - start)
            reports.append(json.load(open(report)))
        rep = reports[len(reports) // 2]
        loads = [load_seconds(r) for r in reports]
        results[name] = {"seconds": statistics.median(loads), "timed": "cli report",
                         "report_seconds": statistics.median(r["seconds"] for r in reports),
                         "device_start_seconds": statistics.median(r["stages"]["device_start"] for r in reports),
                         "process_seconds": statistics.median(times), "times": loads,
                         # GB/s and the fraction of the bound count the file bytes read
                         # (what crossed the bus); a cast places more (output_bytes).
                         "bytes": rep["bytes_read"], "output_bytes": rep["total_bytes"],
                         "driver_allocs": rep["devices"][device]["driver_allocs"],
                         # Where one run's time went, for the next round of tuning: plan,
                         # device_start, reserve (allocation and the first staging buffers
                         # pinned), read, copy, cast; and the staging ring used.
                         "stages": rep["stages"], "time_to_first_tensor": rep["time_to_first_tensor"],
                         "staging": rep["staging"], "threads": rep["threads"]}

    def in_process(name, fn, slack):
        times = timed(fn, device, runs_now(slack))
        results[name] = {"seconds": statistics.median(times), "timed": "in process", "times": times, "bytes": total}

    def attempt(name, fn, *fn_args):
        # One loader failing must not lose the others' figures: report it.
        if args.emulated and name not in ("hoist_cli", "hoist_per_tensor", "hoist_no_pipeline", "hoist_cast_f32"):
            results[name] = {"seconds": None, "skipped": "emulated GPU"}
            return
        try:
            fn(*fn_args)
        except Exception as e:
            print(f"{name} failed: {e!r}", file=sys.stderr)
            results[name] = {"seconds": None, "error": repr(e)}
        save()

    # What the targets compare first: hoist's command (a process of
    # its own, under a timeout), then the two baselines, then hoist in this
    # process, which has never hung or crashed on a GPU but must not take
    # the baselines with it if it does. Then the variants, then the sweep.
    attempt("hoist_cli", cli, "hoist_cli")

    def st():
        from safetensors.torch import load_file

        in_process("safetensors", lambda: [load_file(f, device=device) for f in shards], 60)

    def hf():
        import transformers

        # device_map needs accelerate (scripts/gpu-bench unpacks the carried
        # wheel where it is missing); the cpu is the default anyway.
        placement = {"device_map": device} if device != "cpu" else {}
        # `dtype` since 4.56; before, `torch_dtype` (an unknown keyword would
        # load float32 and time twice the bytes).
        major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
        placement["dtype" if (major, minor) >= (4, 56) else "torch_dtype"] = torch.bfloat16
        in_process("transformers", lambda: transformers.AutoModelForCausalLM.from_pretrained(args.dir, **placement), 60)

    attempt("safetensors", st)
    attempt("transformers", hf)
    try:
        import hoist

        if args.emulated:
            raise ImportError("the Python module does not drive the emulated GPU")
    except ImportError as e:
        hoist = None
        print(f"WARNING: the hoist Python module is not importable ({e}); the hoist row is the CLI's own timing "
              "and nothing checked DLPack here", file=sys.stderr)
        results["hoist"] = dict(results["hoist_cli"], python_module_missing=repr(e))
    if hoist is not None:
        attempt("hoist", in_process, "hoist", lambda: hoist.load(args.dir, device=device), 60)
        # The one check of GPU tensors' values in the bench: before the
        # variants, so that a run cut short still has it.
        attempt("dlpack_check", lambda: results.update(dlpack_check=check_dlpack(hoist, args.dir, shards, device)))
    attempt("hoist_per_tensor", cli, "hoist_per_tensor", "--alloc", "per-tensor")
    attempt("hoist_no_pipeline", cli, "hoist_no_pipeline", "--no-pipeline")
    attempt("hoist_cast_f32", cli, "hoist_cast_f32", "--dtype", "f32")
    if hoist is not None:
        attempt("hoist_load_file", in_process, "hoist_load_file",
                lambda: [hoist.load_file(f, device=device) for f in shards], 60)
        # The transformers model, built and filled by hoist: against the
        # transformers row, the same object at the end.
        attempt("hoist_from_pretrained", in_process, "hoist_from_pretrained",
                lambda: hoist.from_pretrained(args.dir, device=device), 60)
        if seconds_left() > 60:  # JAX's start-up takes seconds
            attempt("consumer_check",
                    lambda: results.update(consumer_check=check_consumers(hoist, args.dir, shards, device)))

    # One run each of the read settings around the defaults, to settle them
    # on this machine: chunk (= staging buffer) size, reader threads, and the
    # ring's depth (4 is pinned almost whole before the reads; 32 mostly
    # while copies run).
    settings = [("--chunk-size", c) for c in ("8MiB", "16MiB", "32MiB", "64MiB")]
    settings += [("--threads", t) for t in ("8", "16", "32")]
    settings += [("--staging-buffers", b) for b in ("4", "32")]
    for flag, value in settings:
        if seconds_left() < 45:
            print("sweep cut short: too close to the deadline", file=sys.stderr)
            break
        report = os.path.join(reports_dir, f"sweep{flag}-{value}.json")
        try:
            subprocess.run([args.hoist_bin, "load", args.dir, "--device", device, "--report", report, "-q", flag, value],
                           check=True, timeout=args.run_timeout)
            rep = json.load(open(report))
            seconds = load_seconds(rep)
            sweep[f"{flag} {value}"] = {"seconds": seconds, "gbps": rep["total_bytes"] / seconds / 1e9,
                                        "device_start_seconds": rep["stages"]["device_start"],
                                        "threads": rep["threads"], "chunk_bytes": rep["staging"]["chunk_bytes"],
                                        "buffers_per_gpu": rep["staging"]["buffers_per_gpu"]}
        except Exception as e:
            sweep[f"{flag} {value}"] = {"seconds": None, "error": repr(e)}
        save()
    md = write_results(args, results, sweep, total, len(shards), device, runs)
    print(md)
    # The figures are written either way; a wrong tensor fails the run, and
    # so does a GPU run where the Python module's checks could not run.
    for check in ("dlpack_check", "consumer_check"):
        if results.get(check) is not None and not results[check].get("ok"):
            sys.exit(1)
    if hoist is None and device != "cpu" and not args.emulated:
        print("FAILED: the hoist Python module was not built here, so its GPU checks (DLPack, load_file) did not run",
              file=sys.stderr)
        sys.exit(1)


def consumers_line(check):
    """One line on CuPy's and JAX's arrays, for the .md."""
    if check is None:
        return "CuPy/JAX check: not run"
    if "tensors" not in check:
        return f"CuPy/JAX check: FAILED ({check.get('error')})"
    parts = []
    for r in check["tensors"]:
        if r.get("zero_copy") and r.get("equal"):
            verdict = "zero-copy, equal"
        else:
            verdict = r.get("error") or f"zero_copy={r.get('zero_copy')} equal={r.get('equal')}"
        parts.append(f"{r['consumer']} {r['name']}: {verdict}")
    return "CuPy/JAX check: " + ("; ".join(parts) or "no consumer installed")


CHECKS = ("dlpack_check", "consumer_check")  # in results while running; not loaders


def targets(args, results):
    """The pipeline issue's targets against this run's figures: a list of
    (target, measured, met), met None where the run has no figure for it."""
    rows = []

    def row(target, value, text, goal):
        rows.append((target, text if value is not None else "no figure", None if value is None else value >= goal))

    plain = results.get("hoist_cli") or {}
    gbps = plain["bytes"] / plain["seconds"] / 1e9 if plain.get("seconds") else None
    frac = gbps / args.bound_gbps if gbps and args.bound_gbps else None
    row("hoist (command) at >= 85% of the pinned host-to-device bound", frac,
        f"{frac:.0%} ({gbps:.2f} of {args.bound_gbps:.2f} GB/s)" if frac else "", 0.85)
    # Against the baselines, hoist timed as they are (in this process), else
    # the command's own seconds.
    own = results.get("hoist") or {}
    base = own if own.get("seconds") and not own.get("python_module_missing") else plain
    for name, times in (("safetensors", 5), ("transformers", 3)):
        other = results.get(name) or {}
        ratio = other["seconds"] / base["seconds"] if other.get("seconds") and base.get("seconds") else None
        row(f">= {times}x faster than {name}", ratio, f"{ratio:.2f}x" if ratio else "", times)
    # The cast's rate in the checkpoint's bytes, which both loads read and
    # copy alike: the f32 output is twice as large, and counting it would
    # let a cast twice as slow pass.
    cast = results.get("hoist_cast_f32") or {}
    share = None
    if cast.get("seconds") and plain.get("seconds"):
        share = (cast["bytes"] / cast["seconds"]) / (plain["bytes"] / plain["seconds"])
    row("cast bf16->f32 within 10% of the plain load's rate (checkpoint bytes per second)", share,
        f"{share:.0%} of the plain load's rate" if share else "", 0.9)
    cat = None
    try:
        with open(os.path.join(args.out, "cpu-vs-cat.json")) as f:
            cat = json.load(f).get("cat_over_hoist")
    except (OSError, ValueError):
        pass
    row("hoist load --device cpu faster than cat (llama-3.2-1b, page cache)", cat,
        f"cat / hoist = {cat:.2f}" if cat else "", 1.0)
    return rows


def write_results(args, results, sweep, total, nfiles, device, runs):
    """Writes <date>-<gpu>.json and .md to args.out; returns the markdown."""
    # Each row against hoist timed the same way: in this Python process
    # (hoist.load, safetensors, transformers), or the load's own seconds in
    # the command's report (hoist_cli and its variants).
    bases = {r.get("timed"): r["seconds"] for k in ("hoist_cli", "hoist")
             if (r := results.get(k) or {}).get("seconds") and not r.get("python_module_missing")}
    lines = ["| loader | timed | runs | seconds (median) | GB/s | seconds / hoist's, timed alike "
             "| fraction of pinned H2D bound |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    runs_only = {k: v for k, v in results.items() if k not in CHECKS}
    for name, r in runs_only.items():
        if r.get("seconds") is None:
            lines.append(f"| {name} | | | {'skipped: ' + r['skipped'] if 'skipped' in r else 'failed'} | | | |")
            continue
        gbps = r["bytes"] / r["seconds"] / 1e9
        r["gbps"] = gbps
        frac = f"{gbps / args.bound_gbps:.2f}" if args.bound_gbps else "-"
        base = bases.get(r.get("timed"))
        ratio = f"{r['seconds'] / base:.2f}" if base else "-"
        lines.append(f"| {name} | {r.get('timed', '')} | {len(r.get('times', []))} | {r['seconds']:.3f} | {gbps:.2f} "
                     f"| {ratio} | {frac} |")
    cast, plain = results.get("hoist_cast_f32") or {}, results.get("hoist_cli") or {}
    cast_note = "cast bf16->f32: not run" if not cast else "cast bf16->f32: failed"
    if cast.get("seconds") and plain.get("seconds"):
        cast_note = (f"cast bf16->f32 delivers {cast['output_bytes'] / cast['seconds'] / 1e9:.2f} GB/s of output "
                     f"against {plain['output_bytes'] / plain['seconds'] / 1e9:.2f} GB/s without a cast; it reads "
                     f"the same file bytes in {cast['seconds'] / plain['seconds']:.2f}x the time")
    date = args.date
    header = (f"# hoist load benchmark, {date}\n\nmachine: {args.gpu_name}; checkpoint: {args.dir} "
              f"({total} bytes in {nfiles} files, warm page cache); device {device}\n"
              f"pinned host-to-device bound (hoist probe: median of 5 timed 256 MiB copies after a warm-up): "
              f"{args.bound_gbps:.2f} GB/s\n\n")
    sweep_lines = ["| hoist load, one run | seconds | GB/s | threads | staging buffers |", "| --- | ---: | ---: | ---: | ---: |"]
    for name, r in sweep.items():
        if r.get("seconds") is None:
            sweep_lines.append(f"| {name} | failed | | | |")
        else:
            sweep_lines.append(f"| {name} | {r['seconds']:.3f} | {r['gbps']:.2f} | {r['threads']} | {r['buffers_per_gpu']} |")
    dlpack = results.get("dlpack_check")
    dlpack_note = ("DLPack check: not run" if dlpack is None else
                   f"DLPack check: {len(dlpack['tensors'])} tensors equal safetensors' load" if dlpack.get("ok") else
                   f"DLPack check: FAILED ({dlpack.get('error')})")
    consumer_note = consumers_line(results.get("consumer_check"))
    goals = targets(args, results)
    goal_lines = ["| target | this run | met |", "| --- | --- | --- |"]
    goal_lines += [f"| {t} | {m} | {'-' if ok is None else 'yes' if ok else 'NO'} |" for t, m, ok in goals]
    md = (header + "\n".join(lines) + "\n\n" + cast_note + "\n\n" + "\n".join(goal_lines) + "\n\n" + dlpack_note +
          "\n\n" + consumer_note + "\n\n" + "\n".join(sweep_lines) + "\n")
    cli_stages = (results.get("hoist_cli") or {}).get("stages")
    if cli_stages:
        md += ("\nhoist_cli, one run's stages (s): " + ", ".join(f"{k} {v:.3f}" for k, v in cli_stages.items()) +
               f"; first tensor at {results['hoist_cli']['time_to_first_tensor']:.3f} s\n")
    bounced = [name for name, r in runs_only.items() if (r.get("staging") or {}).get("bounced_reads")]
    if bounced:
        md += (f"\nNOTE: the kernel refused reads into pinned staging memory (EFAULT, as gVisor does) in "
               f"{', '.join(bounced)}: those loads read through ordinary memory first, one more copy per byte; "
               f"their figures are not the pipeline's on a plain kernel\n")
    starts = [r["device_start_seconds"] for r in runs_only.values() if r.get("device_start_seconds") is not None]
    if starts:
        md += (f"\ncli report: the load's seconds less its wait for CUDA start-up (stages.device_start, "
               f"{min(starts):.3f}-{max(starts):.3f} s in these runs); in process: timed in this Python process, "
               f"CUDA already started\n")
    doc = {"gpu": args.gpu_name, "date": date, "bytes": total, "h2d_pinned_gbps": args.bound_gbps,
           "device": device, "runs": runs_only, "checks": {k: results[k] for k in CHECKS if k in results},
           "sweep": sweep, "targets": [{"target": t, "measured": m, "met": ok} for t, m, ok in goals]}
    slug = args.gpu_name.replace(" ", "-").replace("/", "-")
    with open(os.path.join(args.out, f"{date}-{slug}.json"), "w") as f:
        json.dump(doc, f, indent=2)
    with open(os.path.join(args.out, f"{date}-{slug}.md"), "w") as f:
        f.write(md)
    return md


if __name__ == "__main__":
    main()
