"""The C++ library as a program outside the project uses it: examples/load.cc,
built from the public headers alone (build/hoist_example), and the same
program over the emulated CUDA runtime (build/hoist_example_emulated), which
takes its GPU branch. Each loads a checkpoint and prints a tensor's first
bytes, read back from where it landed: they must be the file's."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from hoist_testlib import tensor_bytes

REPO_ROOT = Path(__file__).resolve().parents[2]


def _example(name: str) -> Path:
    path = REPO_ROOT / "build" / name
    if not path.is_file():
        emulated_expected = (REPO_ROOT / "build" / "hoist_emulated.expected").is_file()
        if name == "hoist_example" or emulated_expected:
            pytest.fail(f"{path} is missing: the build makes it (scripts/build)", pytrace=False)
        pytest.skip("configured without the CUDA toolkit's headers: no emulated example")
    return path


@pytest.mark.parametrize("binary,device", [("hoist_example", "cpu"), ("hoist_example_emulated", "cuda:0")])
def test_the_library_example_loads_a_checkpoint_where_it_says(tiny, binary, device):
    want = tensor_bytes(tiny / "model.safetensors")
    for name in (None, "model.norm.weight"):
        proc = subprocess.run([str(_example(binary)), str(tiny), *([name] if name else [])], capture_output=True,
                              text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        summary, tensor = proc.stdout.splitlines()
        # No GPU on a plain build here: the host; the emulator has two.
        on = "cpu" if binary == "hoist_example" and "cuda:0" not in summary else device
        assert summary.startswith(f"21 tensors, 279168 bytes onto {on} in ") and summary.endswith(" 1 allocation(s)")
        shown, rest = tensor.split(": ", 1)
        assert name is None or shown == name
        head = bytes.fromhex(rest.split("first bytes ")[1].replace(" ", ""))
        assert head == want[shown][:8], (shown, head, want[shown][:8])


def test_the_library_example_fails_in_one_line(tiny):
    proc = subprocess.run([str(_example("hoist_example")), str(tiny), "no.such.tensor"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr == f"error: no tensor 'no.such.tensor' in {tiny}\n"
