"""Helpers shared by the Python tests (plain functions, no fixtures).

Everything here reads safetensors files with the standard library only, so a
check built on it does not depend on hoist agreeing with itself.
"""

from __future__ import annotations

import json
import struct
import subprocess
from pathlib import Path


def import_hoist():
    """The hoist Python module, or a skip saying how to build it (for tests of the module itself)."""
    import pytest

    return pytest.importorskip(
        "hoist",
        reason="the hoist Python module is not built (configure with Python development files and nanobind, "
        "then run with PYTHONPATH=build/python)",
    )


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    """Asserts exit 0, showing both streams otherwise."""
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc


def inspect_json(run_hoist, path) -> dict:
    proc = ok(run_hoist("inspect", "--json", path))
    return json.loads(proc.stdout)


def read_header(path) -> tuple[int, dict]:
    """(N, header dict) of a safetensors file, parsed independently of hoist."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        raw = f.read(n)
    assert len(raw) == n, f"{path}: short header"
    return n, json.loads(raw.decode("utf-8"))


def tensor_bytes(path) -> dict[str, bytes]:
    """name -> raw bytes of every tensor in a safetensors file (stdlib only)."""
    n, header = read_header(path)
    data = Path(path).read_bytes()[8 + n :]
    out = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        begin, end = entry["data_offsets"]
        out[name] = data[begin:end]
    return out


def write_raw(path, header, data: bytes = b"", *, length: int | None = None) -> Path:
    """Writes a hand-made safetensors file: header (dict, str or bytes), data.

    `length` overrides the 8-byte header length field.
    """
    if isinstance(header, dict):
        header = json.dumps(header)
    if isinstance(header, str):
        header = header.encode("utf-8")
    n = len(header) if length is None else length
    Path(path).write_bytes(struct.pack("<Q", n) + header + data)
    return Path(path)


def stderr_error_line(proc: subprocess.CompletedProcess) -> str:
    """The single `error: ...` line on stderr (asserts there is exactly one)."""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, f"expected one stderr line, got {len(lines)}:\n{proc.stderr}"
    assert lines[0].startswith("error:"), f"stderr does not start with 'error:': {proc.stderr!r}"
    return lines[0]


def save_linear(torch, st, path, in_features: int, out_features: int, seed: int):
    """Writes a seeded torch.nn.Linear's state_dict with safetensors.torch (st); returns the module."""
    torch.manual_seed(seed)
    module = torch.nn.Linear(in_features, out_features)
    st.save_file({k: v.contiguous() for k, v in module.state_dict().items()}, str(path))
    return module
