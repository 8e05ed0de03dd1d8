"""Device-map strategies against accelerate's own (infer_auto_device_map after
get_balanced_memory), on real architectures' checkpoints of holes planned for
GPUs this machine does not have (--max-memory names them).

Where the two agree by design: which devices a --max-memory spec lets a
strategy use, and each balanced GPU's budget (an even share plus 1.25 times
the larger of the no-split block and the mean leaf module). Where hoist
departs (docs/planning.md §4): accelerate also holds the largest layer back
on GPU 0 and the cpu, for running offloaded layers; hoist places weights and
runs nothing. So the checks here are the set of devices and that each GPU
but the last is filled up to accelerate's budget and no further.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hoist_testlib import ok

torch = pytest.importorskip("torch", reason="torch is needed to build models on the meta device (pip install torch)")
transformers = pytest.importorskip("transformers", reason="transformers is needed (pip install transformers)")
accelerate = pytest.importorskip("accelerate", reason="accelerate is the reference here (pip install accelerate)")
from accelerate import init_empty_weights  # noqa: E402
from accelerate.utils import get_balanced_memory, infer_auto_device_map  # noqa: E402

GIB = 1 << 30

# (arch, strategy, --max-memory): the cases a review against accelerate 1.16
# found hoist getting wrong, and plain ones.
CASES = [
    ("llama-3.1-8b", "auto", "0=10GiB,cpu=30GiB"),
    ("llama-3.1-8b", "auto", "0=10GiB,1=0,cpu=30GiB"),  # a GPU without room counts in no share
    ("llama-3.1-8b", "auto", "0=10GiB,1=10GiB,2=0,cpu=30GiB"),
    ("qwen2.5-7b", "auto", "0=0,1=8GiB,2=8GiB,cpu=20GiB"),
    ("llama-3.1-8b", "balanced", "0=6GiB,1=6GiB,2=6GiB,cpu=30GiB"),
    ("qwen2.5-7b", "balanced", "0=3GiB,1=3GiB,2=3GiB,3=8GiB,cpu=20GiB"),
    ("llama-3.1-8b", "sequential", "1=9GiB,2=9GiB"),  # GPU 0 left out stays free
    ("llama-3.2-1b", "auto", "cpu=8GiB"),  # the cpu alone
]


def _limits(spec: str) -> dict:
    out = {}
    for item in spec.split(","):
        key, size = item.split("=")
        out[int(key) if key.isdigit() else key] = 0 if size == "0" else size
    return out


@pytest.fixture(scope="module")
def checkpoints(run_hoist, tmp_path_factory):
    made = {}

    def get(arch: str) -> Path:
        if arch not in made:
            out = tmp_path_factory.mktemp("acc") / arch
            ok(run_hoist("synth", "--arch", arch, "--sparse", "--quiet", out))
            made[arch] = out
        return made[arch]

    return get


def _accelerate(path: Path, strategy: str, limits: dict):
    config = transformers.AutoConfig.from_pretrained(path)
    with init_empty_weights():
        model = transformers.AutoModelForCausalLM.from_config(config, torch_dtype=torch.bfloat16)
    model.tie_weights()
    no_split = list(model._no_split_modules or [])
    budgets = dict(limits)
    if strategy != "sequential":
        budgets = get_balanced_memory(model, max_memory=dict(limits), no_split_module_classes=no_split,
                                      dtype=torch.bfloat16, low_zero=strategy == "balanced_low_0")
    device_map = infer_auto_device_map(model, max_memory=dict(budgets), no_split_module_classes=no_split,
                                       dtype=torch.bfloat16)
    used = {f"cuda:{d}" if isinstance(d, int) else d for d in device_map.values()}
    return used, budgets


@pytest.mark.parametrize("arch,strategy,spec", CASES, ids=[f"{a}-{s}-{m}" for a, s, m in CASES])
def test_strategy_uses_accelerates_devices_and_budgets(run_hoist, checkpoints, arch, strategy, spec):
    path = checkpoints(arch)
    limits = _limits(spec)
    acc_devices, budgets = _accelerate(path, strategy, limits)
    doc = json.loads(ok(run_hoist("plan", path, "--json", "--device-map", strategy, "--max-memory", spec)).stdout)
    placed = {d: v["bytes"] for d, v in doc["devices"].items()}
    assert set(placed) == acc_devices - {"disk"}, (placed, acc_devices)
    if strategy == "sequential":
        return
    # Each GPU but the last holds at most accelerate's budget, and no layer
    # more would fit under it: filled to the budget.
    sizes = {}
    for t in doc["tensors"]:
        parts = t["name"].split(".")
        if "layers" in parts:
            key = ".".join(parts[:parts.index("layers") + 2])
            sizes[key] = sizes.get(key, 0) + t["nbytes"]
    layer = max(sizes.values())
    gpus = sorted((int(k), v) for k, v in budgets.items() if isinstance(k, int) and v > 0)
    for index, budget in gpus[:-1]:
        got = placed.get(f"cuda:{index}", 0)
        assert got <= budget, (index, got, budget)
        assert got + layer > budget, (index, got, budget, layer)
