"""hoist.from_pretrained against transformers' from_pretrained, in one
process with the imports done: seconds until the model is ready, and until
its first forward pass has run (which touches every weight, so a loader that
maps the file and reads pages lazily pays for them there). Runs alternate;
the first run of each loader is dropped (it pays transformers' lazy imports).

  PYTHONPATH=build/python python3 bench/from_pretrained.py CKPT [--device cpu] [--runs 5]
"""

import argparse
import gc
import statistics
import time

import torch
import transformers

import hoist


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("path")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    transformers.logging.set_verbosity_error()
    placement = {"device_map": args.device} if args.device != "cpu" else {}
    loaders = {
        "hoist.from_pretrained": lambda: hoist.from_pretrained(args.path, device=args.device),
        "hoist.from_pretrained(mmap=True)": lambda: hoist.from_pretrained(args.path, device=args.device, mmap=True),
        "transformers from_pretrained": lambda: transformers.AutoModelForCausalLM.from_pretrained(
            args.path, dtype="auto", **placement),
    }
    if args.device != "cpu":
        del loaders["hoist.from_pretrained(mmap=True)"]  # mapping is for cpu tensors
    tokens = torch.tensor([[1, 2, 3, 4]], device=args.device)
    times = {name: ([], []) for name in loaders}
    for run in range(args.runs):
        for name, load in loaders.items():
            start = time.perf_counter()
            model = load()
            ready = time.perf_counter()
            with torch.no_grad():
                model(tokens)
            if args.device != "cpu":
                torch.cuda.synchronize()
            done = time.perf_counter()
            if run:
                times[name][0].append(ready - start)
                times[name][1].append(done - start)
            del model
            gc.collect()
    print(f"{args.path} on {args.device}, {torch.get_num_threads()} torch threads, medians of {args.runs - 1} runs")
    print(f"{'':34s} {'ready':>8s} {'first forward':>14s}")
    for name, (ready, forward) in times.items():
        print(f"{name:34s} {statistics.median(ready):7.3f}s {statistics.median(forward):13.3f}s")


if __name__ == "__main__":
    main()
