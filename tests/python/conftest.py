"""Shared fixtures for the tests that run the built `hoist` binary.

The binary is found through $HOIST_BIN, else <repo>/build/hoist. A missing
binary is a test failure with a message saying how to build it, never a skip:
these tests exist to exercise it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

# Let the test modules import hoist_testlib whatever pytest's import mode.
sys.path.insert(0, str(Path(__file__).resolve().parent))

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_BIN = REPO_ROOT / "build" / "hoist"
CONFORMANCE_DIR = REPO_ROOT / "testdata" / "conformance"

# Generous: the slowest single command in the suite takes well under a second.
COMMAND_TIMEOUT_S = 120


def _find_hoist() -> Path:
    env = os.environ.get("HOIST_BIN")
    path = Path(env) if env else DEFAULT_BIN
    return path


@pytest.fixture(scope="session")
def hoist_bin() -> Path:
    path = _find_hoist()
    if not path.is_file() or not os.access(path, os.X_OK):
        how = "set HOIST_BIN" if not os.environ.get("HOIST_BIN") else "HOIST_BIN points at nothing runnable"
        pytest.fail(
            f"hoist binary not found at {path} ({how}); build it with "
            f"`cmake -S {REPO_ROOT} -B {REPO_ROOT}/build -G Ninja && ninja -C {REPO_ROOT}/build hoist` "
            f"or set HOIST_BIN=/path/to/hoist",
            pytrace=False,
        )
    return path


@pytest.fixture(scope="session")
def run_hoist(hoist_bin):
    """run_hoist(*args, timeout=..., cwd=...) -> CompletedProcess with text stdout/stderr."""

    def run(*args, timeout: float = COMMAND_TIMEOUT_S, cwd=None) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(Path(hoist_bin).resolve()), *[str(a) for a in args]],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=cwd,
        )

    return run


@pytest.fixture(scope="session")
def emu_bin() -> Path:
    """The command built over the CUDA runtime emulated on the host: $HOIST_EMULATED_BIN, else
    <repo>/build/hoist_emulated. The build configures it wherever the CUDA toolkit's headers are (it
    needs no nvcc) and then leaves build/hoist_emulated.expected: a missing binary is a failure where
    that marker is, a skip elsewhere."""
    path = Path(os.environ.get("HOIST_EMULATED_BIN", REPO_ROOT / "build" / "hoist_emulated"))
    if not path.is_file():
        if (path.parent / "hoist_emulated.expected").is_file():
            pytest.fail(f"{path} is missing: build it (scripts/build -DHOIST_BUILD_TESTS=ON)", pytrace=False)
        pytest.skip("configured without the CUDA toolkit's headers: no emulated GPU command")
    return path


@pytest.fixture(scope="session")
def conformance() -> Path:
    assert CONFORMANCE_DIR.is_dir(), f"missing {CONFORMANCE_DIR}"
    return CONFORMANCE_DIR


@pytest.fixture(scope="session")
def tiny(tmp_path_factory, run_hoist) -> Path:
    """hoist synth --arch tiny-llama: bf16, untied, one file with config.json beside it (about 280 kB).

    Shared by the test files; tests copy it before changing anything."""
    from hoist_testlib import ok

    out = tmp_path_factory.mktemp("tiny") / "m"
    ok(run_hoist("synth", "--arch", "tiny-llama", "--quiet", out))
    return out

