"""hoist: load model checkpoints (safetensors) at the speed of the hardware.

    import hoist
    state = hoist.load_file("model.safetensors")             # like safetensors.torch.load_file
    model = hoist.load("ckpt_dir", device="cuda:0", dtype="bf16")
    t = torch.from_dlpack(model["model.embed_tokens.weight"])  # zero-copy
    report = hoist.load_into(torch_module, "ckpt_dir")          # fills parameters in place
    lm = hoist.from_pretrained("ckpt_dir", device="cuda:0")     # a transformers model, ready to run

Tensors are DLPack arrays over hoist's own reservation (one per device):
`torch.from_dlpack`, `numpy.from_dlpack`, `cupy.from_dlpack` and JAX take
them without a copy. Device memory is returned when the Model and every
tensor taken from it are gone. Errors raise ValueError (bad input),
FileNotFoundError, MemoryError (the plan does not fit) or OSError (I/O),
with the CLI's one-line messages.
"""

from __future__ import annotations

import collections.abc
import contextlib
import json
import operator
import os
import re
import threading
from typing import Any, Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

from . import _hoist

__all__ = ["Model", "convert", "from_pretrained", "inspect", "load", "load_file", "load_into", "plan"]
__version__ = "0.1.0"

# Stored dtype -> torch dtype name, for dtypes DLPack hands out as raw bytes.
_FP8_TORCH = {
    "F8_E4M3": "float8_e4m3fn",
    "F8_E5M2": "float8_e5m2",
    "F8_E4M3FNUZ": "float8_e4m3fnuz",
    "F8_E5M2FNUZ": "float8_e5m2fnuz",
    "F8_E8M0": "float8_e8m0fnu",
}
# F4 (fp4 e2m1) packs two elements a byte: torch's float4_e2m1fn_x2 (2.8
# and later) holds a byte, so its shape halves the last dimension.
_FP4_TORCH = "float4_e2m1fn_x2"


# Stored dtype -> numpy dtype name, for tensors left in their file.
_NUMPY_TYPES = {
    "BOOL": "bool", "U8": "uint8", "I8": "int8", "I16": "int16", "U16": "uint16", "I32": "int32", "U32": "uint32",
    "I64": "int64", "U64": "uint64", "F16": "float16", "F32": "float32", "F64": "float64", "C64": "complex64",
}


def _dtype_text(dtype: Any) -> str:
    """bf16/f16/f32 from a string or a torch/numpy dtype."""
    if dtype is None:
        return ""
    if not isinstance(dtype, str) and type(dtype).__module__.split(".")[0] != "torch":
        try:  # numpy dtypes and scalar types
            import numpy as np

            dtype = np.dtype(dtype).name
        except (ImportError, TypeError):
            pass
    text = str(dtype).replace("torch.", "")
    aliases = {"bfloat16": "bf16", "float16": "f16", "half": "f16", "float32": "f32", "float": "f32"}
    return aliases.get(text, text)


def _path_text(path: Union[str, os.PathLike]) -> str:
    text = os.fspath(path)
    if isinstance(text, bytes):
        text = os.fsdecode(text)
    if "\0" in text:  # the C++ side would stop at it and open another file
        raise ValueError(f"{text!r}: a path cannot contain a NUL byte")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # bytes that are not UTF-8, decoded as surrogates
        raise ValueError(f"{path!r}: hoist takes paths whose bytes are UTF-8") from None
    return text


def _device_text(device: Any) -> str:
    if device is None:
        return ""
    if isinstance(device, bool):  # an int to Python, never a device
        raise ValueError(f"device={device!r}: expected 'cpu', 'cuda', 'cuda:N', N or a torch.device")
    if _whole(device) is not None:
        if _whole(device) < 0:
            raise ValueError(f"device={device!r}: expected 'cpu', 'cuda', 'cuda:N', N >= 0 or a torch.device")
        return f"cuda:{_whole(device)}"
    text = str(device)
    return "cuda:0" if text == "cuda" else text


def _max_memory_pairs(max_memory: Union[None, str, Mapping[Any, Any]]) -> List[Tuple[str, str]]:
    """{0: "20GiB", "cpu": 64 << 30} (or the CLI's "0=20GiB,cpu=64GiB") as (device, size) pairs."""
    if max_memory is None:
        return []
    if isinstance(max_memory, str):
        return _hoist.split_max_memory(max_memory)
    if not isinstance(max_memory, Mapping):
        raise ValueError(f"max_memory={max_memory!r}: expected {{device: size}}, as {{0: '20GiB', 'cpu': '64GiB'}}")
    pairs = []
    for key, value in max_memory.items():
        device = str(_whole(key)) if _whole(key) is not None else str(key)
        pairs.append((device, _size_text(f"max_memory[{key!r}]", value)))
    return pairs


def _whole(value: Any) -> Optional[int]:
    """An integer, numpy's included (operator.index), but not a bool; else None."""
    if isinstance(value, bool):
        return None
    try:
        return operator.index(value)
    except TypeError:
        return None


def _size_text(name: str, value: Union[str, int]) -> str:
    """A size keyword: "16MiB", "5GB", or a number of bytes."""
    if isinstance(value, str):
        return value
    number = _whole(value)
    if number is None:
        raise ValueError(f"{name}={value!r}: expected a number of bytes or a size such as '16MiB'")
    return str(number)


def _count(name: str, value: Any) -> int:
    number = _whole(value)
    if number is None:
        raise ValueError(f"{name}={value!r}: expected a whole number")
    if not -(1 << 31) <= number < 1 << 31:  # the core's own limits are far below; its int cannot hold it
        raise ValueError(f"{name}={value!r}: far too large")
    return number


def _shard_text(shard: Optional[Sequence[int]]) -> str:
    if shard is None:
        return ""
    if isinstance(shard, str):  # the CLI's "RANK/WORLD"
        return shard
    try:
        rank, world = shard
    except (TypeError, ValueError):
        raise ValueError(f"shard={shard!r}: expected (rank, world)") from None
    rank, world = _whole(rank), _whole(world)
    if rank is None or world is None:
        raise ValueError(f"shard={shard!r}: expected (rank, world), two whole numbers")
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"shard={shard!r}: expected 0 <= rank < world")
    return f"{rank}/{world}"


def _split_rules(split: Optional[Mapping[str, int]]) -> List[str]:
    if split is None:
        return []
    if not isinstance(split, Mapping):
        raise ValueError(f"split={split!r}: expected {{regex: dim}}")
    rules = []
    for pattern, dim in split.items():
        if not isinstance(pattern, str) or _whole(dim) is None:
            raise ValueError(f"split={{{pattern!r}: {dim!r}}}: expected {{regex: dim}}, a dimension as a whole number")
        if not -64 <= _whole(dim) < 64:  # safetensors shapes have far fewer dimensions
            raise ValueError(f"split={{{pattern!r}: {dim!r}}}: no tensor has that dimension")
        rules.append(f"{pattern}={_whole(dim)}")
    return rules


def _pairs(name: str, value: Union[None, Mapping[str, str], Iterable[Sequence[str]]]) -> List[Tuple[str, str]]:
    """{a: b} or [(a, b), ...] as (a, b) pairs of strings, `a` not empty."""
    if value is None:
        return []
    if isinstance(value, (str, bytes)):
        raise ValueError(f"{name}={value!r}: expected {{key: value}} or (key, value) pairs")
    items = value.items() if isinstance(value, Mapping) else value
    pairs = []
    for item in items:
        try:
            if isinstance(item, (str, bytes)):  # "ab" would unpack into ("a", "b")
                raise ValueError
            a, b = item
        except (TypeError, ValueError):
            raise ValueError(f"{name}: expected {{key: value}} or (key, value) pairs, got {item!r}") from None
        if not isinstance(a, str) or not isinstance(b, str) or not a:
            raise ValueError(f"{name}={{{a!r}: {b!r}}}: expected a non-empty string key and a string value")
        pairs.append((a, b))
    return pairs


def _list(name: str, value: Union[None, str, Iterable[str]]) -> List[str]:
    """A regex or a list of them."""
    if value is None:
        return []
    iterable = isinstance(value, Iterable) and not isinstance(value, (Mapping, bytes))
    items = [value] if isinstance(value, str) else list(value) if iterable else None
    if items is None or not all(isinstance(v, str) for v in items):
        raise ValueError(f"{name}={value!r}: expected a regex or a list of them")
    return items


def _text(name: str, value: Any) -> str:
    """A string keyword; None is the empty default."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ValueError(f"{name}={value!r}: expected a string")
    return value


def _flag(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name}={value!r}: expected True or False")
    return value


def _device_map_text(device_map: Any) -> str:
    """accelerate's {module: device} (devices as N, "cuda:N", "cpu", "disk" or torch.device), or a strategy."""
    if device_map is None or isinstance(device_map, str):
        return device_map or ""
    if not isinstance(device_map, Mapping):
        raise ValueError(f"device_map={device_map!r}: expected {{module: device}} or a strategy such as 'auto'")
    entries = {}
    for key, value in device_map.items():
        if not isinstance(key, str):
            raise ValueError(f"device_map={{{key!r}: ...}}: module names are strings ('' for the whole model)")
        if isinstance(value, str):
            entries[key] = value
        elif _whole(value) is not None and _whole(value) >= 0:
            entries[key] = _whole(value)
        elif type(value).__module__.split(".")[0] == "torch" and type(value).__name__ == "device":
            entries[key] = _device_text(value)
        else:
            raise ValueError(f"device_map={{{key!r}: {value!r}}}: expected a device: N, 'cuda:N', 'cpu' or 'disk'")
    return json.dumps(entries)


class Model:
    """A loaded checkpoint: a read-only mapping name -> DLPack tensor."""

    def __init__(self, native: "_hoist.Model"):
        self._native = native
        self._report: Optional[Dict[str, Any]] = None
        self._file_maps: Dict[str, Any] = {}  # file -> copy-on-write numpy memmap of the whole file

    def __getitem__(self, name: str):
        if name not in self:  # a Mapping's KeyError, with the whole name, for any key
            raise KeyError(name)
        info = self._native.info(name)
        if info["device"] == "disk":
            return self._disk_array(info)
        return self._native.tensor(name)

    def _disk_array(self, info: Dict[str, Any]):
        """A tensor left in its file: a view of a copy-on-write numpy memmap
        of the file (one per file, so one file handle however many tensors),
        or where numpy has no type for it, a DLPack array over that view.
        Writable, as tensors in memory are, because torch imports every
        DLPack array as writable (a read-only mapping would crash on the
        first write); writes stay in this process's memory and are seen by
        later lookups of this Model; the file is never changed."""
        import numpy as np

        whole = self._file_maps.get(info["file"])
        if whole is None:
            whole = self._file_maps[info["file"]] = np.memmap(info["file"], dtype=np.uint8, mode="c")
        raw = whole[info["file_offset"]:info["file_offset"] + info["nbytes"]]
        stored = info["stored_dtype"]
        np_type = _NUMPY_TYPES.get(stored)
        if np_type is None:
            # No numpy type (BF16, FP8, sub-byte): a DLPack array of the
            # stored type over the same bytes, as a tensor in memory is.
            return _hoist.typed_view(raw, stored, info["shape"])
        return raw.view(np.dtype(np_type)).reshape(info["shape"])

    def info(self, name: str) -> Dict[str, Any]:
        """name, device, dtype (after any cast), stored_dtype, shape, nbytes, file, file_offset, tied (and
        tied_to: the name of the tensor whose memory it shares), mapped, slice (None, or {"dim", "start",
        "stop"}: the part of the stored tensor a split loaded)."""
        return self._native.info(name)

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        try:
            return name in self._native
        except (TypeError, UnicodeError):  # a lone surrogate has no UTF-8: no tensor has that name
            return False

    def __len__(self) -> int:
        return len(self._native)

    def __iter__(self) -> Iterator[str]:
        return iter(self._native.keys())

    def keys(self) -> List[str]:
        return self._native.keys()

    def items(self):
        return ((k, self[k]) for k in self.keys())

    def values(self):
        return (self[k] for k in self.keys())

    def get(self, name: str, default: Any = None):
        return self[name] if name in self else default

    @property
    def report(self) -> Dict[str, Any]:
        """The load report, as `hoist load --report` writes it."""
        if self._report is None:
            self._report = self._native.report()
        return self._report

    def __repr__(self) -> str:
        devices = ", ".join(sorted(self.report["devices"]))
        return f"<hoist.Model: {len(self)} tensors on {devices or 'no device'}>"


def load(
    path: Union[str, os.PathLike],
    device: Any = None,
    device_map: Union[None, str, Mapping[str, Any]] = None,
    max_memory: Union[None, str, Mapping[Any, Any]] = None,
    dtype: Any = None,
    rename: Union[None, Mapping[str, str], Iterable[Sequence[str]]] = None,
    drop: Union[None, str, Iterable[str]] = None,
    expect: Union[None, Iterable[str], Mapping[str, Any]] = None,
    *,
    tie: Union[None, Mapping[str, str], Iterable[Sequence[str]]] = None,
    only: Optional[str] = None,
    compat: Optional[str] = None,
    config_ties: bool = True,
    alloc: str = "reserve",
    threads: int = 0,
    io: str = "pread",
    direct: str = "off",
    chunk_size: Union[str, int] = "16MiB",
    staging_buffers: int = 0,
    pipeline: bool = True,
    margin: Union[str, int] = "1.2GiB",
    strict: bool = False,
    progress: Optional[Callable[[int, int], Any]] = None,
    mmap: bool = False,
    shard: Optional[Sequence[int]] = None,
    split: Optional[Mapping[str, int]] = None,
    no_split: Union[None, str, Iterable[str]] = None,
    _checkpoint: Optional["_hoist.Checkpoint"] = None,
) -> Model:
    """Loads a checkpoint (a .safetensors file or a directory) onto devices.

    device: "cpu", "cuda", "cuda:N" or N; default cuda:0 when a GPU is present, else cpu.
    device_map: accelerate's format ({"model.layers.0": 0, "": "cpu"}) or
        "auto", "balanced", "balanced_low_0", "sequential"; max_memory: {0: "20GiB", "cpu": "64GiB"}
        (as in accelerate, a strategy then uses only the devices named; {1: 0} alone leaves GPU 1 out).
    dtype: cast floating-point tensors ("bf16", "f16", "f32" or a torch dtype); quantized data and scales never.
    rename: {regex: replacement} (first match wins); drop: regex(es);
    expect: names, or {name: {"dtype": ..., "shape": [...]}}; tensors not expected are never read,
        and model.report lists missing, unexpected and mismatched; strict=True makes any of them a
        ValueError, raised before anything is read (the CLI's --strict).
    The rest are the CLI's `hoist load` options: alloc ("reserve" or "per-tensor"), threads (0: default),
    io ("pread", "auto", "uring"), direct ("off", "auto", "on"), chunk_size ("16MiB" or bytes),
    staging_buffers (0: each GPU's share of the readers + 2, at most 32), pipeline (False: read everything to host memory first),
    margin (memory left free on each GPU: "1.2GiB", bytes, or 0).
    progress: called as progress(bytes_done, bytes_total) on this thread as soon as the load knows its
        size, about every 0.1 s while it reads, and once at the end (done == total); an exception it
        raises stops the load, which returns its memory, and propagates. So does Ctrl-C.
    mmap: cpu tensors that need no cast are private (copy-on-write) mappings of their files, brought
        into memory by the load, instead of copies (the CLI's --mmap): no second copy of the weights
        beside the page cache, and processes that map one file share its memory. A tensor whose
        place in its file does not suit its element type is copied as before. Writes stay in
        this process; a file cut short while mapped makes an access to the lost part raise SIGBUS.
    shard=(rank, world) with split={regex: dim}: tensor parallelism (the CLI's --shard and --split). A
        tensor whose name the first matching regex finds is split along dim (negative: from the last)
        into `world` equal parts, and only part `rank` is read and loaded; the others load whole.
        model.info(name)["slice"] says which part: {"dim", "start", "stop"}.
    no_split: regex(es) naming modules a device_map strategy keeps on one device (the CLI's --no-split).
    hoist.plan(path, ...) with the same arguments shows where everything would go, reading nothing.
    """
    request = _request(path, device, device_map, max_memory, dtype, rename, drop, expect, tie, only, compat,
                       config_ties, margin, strict, mmap, shard, split, no_split)
    native = _hoist.load(
        request,
        alloc=_text("alloc", alloc),
        threads=_count("threads", threads),
        io=_text("io", io),
        direct=_text("direct", direct),
        chunk_size=_size_text("chunk_size", chunk_size),
        staging_buffers=_count("staging_buffers", staging_buffers),
        pipeline=_flag("pipeline", pipeline),
        checkpoint=_checkpoint,
        progress=progress,
    )
    return Model(native)


def _request(path, device, device_map, max_memory, dtype, rename, drop, expect, tie, only, compat, config_ties,
             margin, strict, mmap, shard, split, no_split) -> "_hoist.PlanRequest":
    """The core's PlanRequest from load's and plan's keyword arguments."""
    expect_json = ""
    if expect is not None:
        try:
            expect_json = json.dumps(dict(expect) if isinstance(expect, Mapping) else list(expect))
        except TypeError as e:
            raise ValueError(f"expect: expected names, or {{name: {{'dtype': ..., 'shape': [...]}}}} ({e})") from None
    r = _hoist.PlanRequest()
    r.path = _path_text(path)
    r.device = _device_text(device)
    r.device_map = _device_map_text(device_map)
    r.max_memory = _max_memory_pairs(max_memory)
    r.dtype = _dtype_text(dtype)
    r.renames = _pairs("rename", rename)
    r.drops = _list("drop", drop)
    r.ties = _pairs("tie", tie)
    r.no_split = _list("no_split", no_split)
    r.expect_json = expect_json
    r.only = _text("only", only)
    r.compat = _text("compat", compat)
    r.no_config_ties = not _flag("config_ties", config_ties)
    r.margin = _size_text("margin", margin)
    r.strict = _flag("strict", strict)
    r.map_host = _flag("mmap", mmap)
    r.shard = _shard_text(shard)
    r.splits = _split_rules(split)
    return r


def plan(
    path: Union[str, os.PathLike],
    device: Any = None,
    device_map: Union[None, str, Mapping[str, Any]] = None,
    max_memory: Union[None, str, Mapping[Any, Any]] = None,
    dtype: Any = None,
    rename: Union[None, Mapping[str, str], Iterable[Sequence[str]]] = None,
    drop: Union[None, str, Iterable[str]] = None,
    expect: Union[None, Iterable[str], Mapping[str, Any]] = None,
    *,
    tie: Union[None, Mapping[str, str], Iterable[Sequence[str]]] = None,
    only: Optional[str] = None,
    compat: Optional[str] = None,
    config_ties: bool = True,
    margin: Union[str, int] = "1.2GiB",
    strict: bool = False,
    mmap: bool = False,
    shard: Optional[Sequence[int]] = None,
    split: Optional[Mapping[str, int]] = None,
    no_split: Union[None, str, Iterable[str]] = None,
) -> Dict[str, Any]:
    """Where hoist.load with the same arguments would put each tensor, from the headers alone (the CLI's
    `hoist plan --json`): nothing else is read and nothing is reserved, so it needs no memory for the
    model and answers "will it fit?" before a load is tried.

    Returns {"tensors": [{"name", "device", "dtype", "shape", "nbytes", "offset", ...}],
    "devices": {"cuda:0": {"bytes": reservation, "tensors": count, "available": bytes, "fits": bool}, ...},
    "warnings": [...], "missing": [...], "unexpected": [...], "mismatched": [...]} (the last three
    against `expect`). A tensor's "offset" is its place in its device's single reservation (None for
    one that stays in its file, which gives "file" and "file_offset" instead); "tied_to" names the
    tensor a tied one shares memory with, "slice" a tensor-parallel part.
    A device's "available" is what a load could have there (free memory less `margin` on a GPU, capped
    by max_memory), and "fits" whether its reservation fits in it; both are None where that is unknown
    (a device this machine lacks and max_memory does not size).
    A strategy that cannot place the model raises MemoryError, as the load would; bad arguments and
    files raise ValueError or FileNotFoundError with the load's messages; a
    reservation larger than a GPU's free memory less `margin` is a warning here and an error in a load.
    Devices are not checked against this machine's: a plan for cuda:3, or for a device_map over GPUs
    this machine lacks, is a plan for a machine that has them (sizes come from max_memory there); a
    load onto a device that is not present fails.
    """
    request = _request(path, device, device_map, max_memory, dtype, rename, drop, expect, tie, only, compat,
                       config_ties, margin, strict, mmap, shard, split, no_split)
    return _hoist.plan(request)


def convert(
    src: Union[str, os.PathLike],
    dst: Union[str, os.PathLike],
    dtype: Any = None,
    *,
    max_shard_size: Union[str, int] = "5GB",
    only: Optional[str] = None,
    rename: Union[None, Mapping[str, str], Iterable[Sequence[str]]] = None,
    drop: Union[None, str, Iterable[str]] = None,
    compat: Optional[str] = None,
    shard: Optional[Sequence[int]] = None,
    split: Optional[Mapping[str, int]] = None,
    threads: int = 0,
    sync: bool = True,
) -> Dict[str, Any]:
    """Writes the checkpoint `src` to `dst` as a load with the same arguments would hold it (the
    CLI's `hoist convert`): floating-point tensors cast to `dtype`, names mapped by rename, drop,
    only and compat, and with shard=(rank, world) and split={regex: dim} one tensor-parallel rank's
    parts. `dst` ending in .safetensors is one file where everything fits in max_shard_size
    ("5GB", "2GiB" or bytes); otherwise a directory of Hugging Face-style shards with
    model.safetensors.index.json. Metadata is kept; config.json beside `src` is copied beside
    the output in a directory, its dtype the cast's. Tensors stream through in pieces, so a
    checkpoint larger than memory converts. The files replace nothing until they are whole and,
    unless sync=False, on the disk; the call returns once their new names are too (the CLI's
    --no-sync is sync=False).

    Returns {"files": written (index last), "removed": an earlier conversion's outputs this one
    replaced, "warnings": [...], "bytes": data bytes written, "seconds": ..., "sync_seconds": of
    those, waiting for the disk}.
    """
    return _hoist.convert(
        _path_text(src),
        _path_text(dst),
        dtype=_dtype_text(dtype),
        only=_text("only", only),
        renames=_pairs("rename", rename),
        drops=_list("drop", drop),
        compat=_text("compat", compat),
        max_shard_size=_size_text("max_shard_size", max_shard_size),
        threads=_count("threads", threads),
        shard=_shard_text(shard),
        splits=_split_rules(split),
        sync=_flag("sync", sync),
    )


def inspect(path: Union[str, os.PathLike]) -> Dict[str, Any]:
    """The checkpoint's catalogue from its headers alone, every rule checked (the CLI's
    `hoist inspect --json`): {"files": [...], "tensors": [{"name", "dtype", "shape", "file", "offset",
    "nbytes"}], "total_bytes": N, "metadata": {...}, "warnings": [...]}. "dtype" is the stored one
    ("BF16", "F8_E4M3", ...); "offset" is the tensor's byte offset in its file. `path` is what load
    takes: a file, a directory, an index file, or "org/name" in the Hugging Face cache.
    """
    return _hoist.inspect(_path_text(path))


def _to_torch(model: Model, name: str):
    import torch

    info = model.info(name)
    if info["device"] == "disk":
        import numpy as np

        raw = model._disk_array(info)  # a numpy memmap view, or a DLPack array of a type numpy lacks
        tensor = torch.from_numpy(raw) if isinstance(raw, np.ndarray) else torch.from_dlpack(raw)
    else:
        tensor = torch.from_dlpack(model[name])
    fp8 = _FP8_TORCH.get(info["stored_dtype"])
    if fp8 is not None and hasattr(torch, fp8):
        tensor = tensor.view(getattr(torch, fp8)).reshape(info["shape"])
    shape = info["shape"]
    if info["stored_dtype"] == "F4" and hasattr(torch, _FP4_TORCH) and shape and shape[-1] % 2 == 0:
        # As safetensors.torch gives it; an odd last dimension stays raw bytes.
        tensor = tensor.view(getattr(torch, _FP4_TORCH)).reshape(shape[:-1] + [shape[-1] // 2])
    return tensor


def load_file(path: Union[str, os.PathLike], device: Any = "cpu", dtype: Any = None,
              mmap: bool = False) -> Dict[str, "torch.Tensor"]:
    """Drop-in for safetensors.torch.load_file: {name: torch.Tensor}, zero-copy.

    Tied aliases from a config.json are not added, so the keys are the file's.
    mmap=True: cpu tensors are mappings of the file (as safetensors' are), see load().
    """
    model = load(path, device=device, dtype=dtype, config_ties=False, mmap=mmap)
    return {name: _to_torch(model, name) for name in model.keys()}


class _Conversions:
    """transformers' own mapping from checkpoint names to a model's (5.0 and
    later), for the names a checkpoint holds: renames (Mixtral's
    block_sparse_moe -> mlp), and the converters that build model tensors
    from checkpoint tensors by transformers' own operations: experts merged
    into one 3-D tensor, fused qkv or gate_up projections chunked or split,
    transposes, rope permutations. Names are grouped exactly as
    from_pretrained groups them (rename_source_key, one copy of a converter
    per first target), and each group is converted by the converter itself."""

    def __init__(self, module, names: List[str]):
        self.direct: Dict[str, str] = {}  # module name -> checkpoint name
        self.groups: Dict[str, Any] = {}  # first target -> converter holding its checkpoint names
        self.sources_of: Dict[str, List[str]] = {}  # first target -> its checkpoint names, in order
        self.targets_of: Dict[str, List[str]] = {}  # first target -> the module names it makes (first first)
        self.error = ""  # why transformers' mapping could not be used, when it could not
        self.active = False  # whether the mapping changes anything
        self._module = module
        self._tensor_of = None
        try:
            import transformers
        except Exception:  # no transformers (or a broken one): plain names
            return
        if not isinstance(module, getattr(transformers, "PreTrainedModel", ())):
            return
        try:
            self._map(module, names)
        except Exception as e:  # transformers before 5.0, or internals that changed
            self.direct, self.groups, self.sources_of, self.targets_of = {}, {}, {}, {}
            self.error = f"{type(e).__name__}: {e}"
        self.active = bool(self.groups) or any(k != v for k, v in self.direct.items())

    def _map(self, module, names: List[str]) -> None:
        import copy

        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import WeightConverter, WeightRenaming, dot_natural_key, rename_source_key

        transforms = get_model_conversion_mapping(module)
        renamings = [t for t in transforms if isinstance(t, WeightRenaming)]
        converters = [t for t in transforms if isinstance(t, WeightConverter)]
        by_pattern = {p: c for c in converters for p in c.source_patterns}
        state = module.state_dict()
        prefix = getattr(module, "base_model_prefix", None)
        mapped = []  # (name, module key, converter pattern) for the names the module has
        for name in names:
            key, pattern = rename_source_key(name, renamings, converters, prefix, state)
            if key not in state and name in state:  # as from_pretrained: a renamed key the model lacks falls back
                key, pattern = rename_source_key(name, [], [], prefix, state)
            if key in state:
                mapped.append((name, key, pattern))
        # In from_pretrained's order (experts stack in numeric order). Renaming
        # depends on the name alone, so sorting only what the module has
        # gives the same order for less (a checkpoint's unused 90,000 names).
        mapped.sort(key=lambda m: dot_natural_key(m[0]))
        for name, key, pattern in mapped:
            # A module tensor comes from one place: the first checkpoint
            # name (in from_pretrained's order) that maps to it decides
            # whether it is renamed or converted; a name of the other kind
            # is left out (not read, reported unexpected).
            if pattern is None:
                if key not in self.groups:
                    self.direct.setdefault(key, name)
                continue
            if key in self.direct:
                continue
            group = self.groups.get(key)
            if group is None:
                group = self.groups[key] = copy.deepcopy(by_pattern[pattern])
                self.sources_of[key] = []
                # The module names it makes, as from_pretrained names them.
                made = [key.replace(group.target_patterns[0], t, 1) for t in group.target_patterns]
                self.targets_of[key] = [t for t in made if t in state]
            group.add_tensor(key, name, pattern, lambda name=name: self._tensor_of(name))
            self.sources_of[key].append(name)

    def checkpoint_device_map(self, device_map: Mapping[str, Any], warnings: List[str]) -> Dict[str, Any]:
        """accelerate's device map names the module's tensors; the load reads
        the checkpoint's. Each checkpoint tensor goes where the map puts the
        module tensor it becomes, by the load's own longest-prefix rule; a
        converter's inputs go where its first target goes (a map that puts
        its targets apart is warned about)."""
        names = list(self.direct) + [t for targets in self.targets_of.values() for t in targets]
        devices, map_warnings = _hoist.place_by_map(names, _device_map_text(device_map))
        warnings.extend(map_warnings)
        device_of = dict(zip(names, devices))
        out = {ckpt: device_of[key] for key, ckpt in self.direct.items()}
        for key, sources in self.sources_of.items():
            targets = self.targets_of[key]
            device = device_of.get(targets[0]) if targets else None
            if device is None:
                continue
            apart = [t for t in targets if device_of[t] != device]
            if apart:
                warnings.append(f"load_into: device_map puts {', '.join(apart)} apart from {targets[0]} ({device}), "
                                f"but all are made from the same checkpoint tensors ({sources[0]}, ...): "
                                f"they go to {device}")
            out.update({n: device for n in sources})
        return out

    def convert(self, key: str, tensor_of) -> Dict[str, Any]:
        """Runs the converter of the group whose first target is `key`, on
        the tensors tensor_of(checkpoint name) gives: {module name: (tensor,
        whether it shares memory with one of them)}. Chunk and Split give
        views of their input, Transpose may give the input itself; stack
        and cat give new memory."""
        group = self.groups.pop(key)
        inputs = set()

        def recorded(name):
            tensor = tensor_of(name)
            inputs.add(tensor.untyped_storage().data_ptr())
            return tensor

        self._tensor_of = recorded  # what the group's add_tensor callables call
        try:
            made = group.convert(key, model=self._module, config=getattr(self._module, "config", None))
        finally:
            self._tensor_of = None
        out = {}
        for name, value in made.items():
            value = value[0] if isinstance(value, list) else value
            out[name] = (value, value.untyped_storage().data_ptr() in inputs)
        return out

    def release(self) -> None:
        """Forgets every converter not run (and the checkpoint tensors it holds)."""
        self.groups = {}


def _some_names(names: List[str], shown: int = 3) -> str:
    text = ", ".join(repr(n) for n in names[:shown])
    return text + (f" and {len(names) - shown} more" if len(names) > shown else "")


def load_into(module, path: Union[str, os.PathLike], device: Any = None, strict: bool = False,
              **kwargs) -> Dict[str, Any]:
    """Fills a torch.nn.Module's parameters and buffers in place from a checkpoint.

    The names of module.state_dict() are the expected set: other tensors are
    never read. Parameters that share storage (tied weights) stay tied. Where
    dtype and device agree, a parameter takes the loaded memory zero-copy;
    otherwise the values are copied into it (never FP8 into a wider dtype:
    that needs the scales, and is reported mismatched). A transformers (5.0
    and later) model gets transformers' own key mapping, as from_pretrained
    applies it: renames, and converters run by transformers' own operations
    (Mixtral's per-expert weights merged into its 3-D gate_up_proj/down_proj,
    a fused qkv chunked or split into q/k/v, transposes); then every
    parameter is copied, so the load's reservation goes when this returns. A
    device_map given as a mapping names the module's tensors, as
    accelerate's do; a checkpoint tensor goes where the tensor it becomes
    goes. A conversion the checkpoint's tensors do not fit leaves its
    parameters alone, reported mismatched with the reason in the report's
    warnings. Returns the load report, with its missing, unexpected and
    mismatched lists (module names; unexpected ones are the checkpoint's).
    strict=True (as torch's load_state_dict) raises ValueError naming them
    where any list is not empty, after filling what matched.
    """
    import torch

    named = list(module.named_parameters(remove_duplicate=False)) + list(module.named_buffers(remove_duplicate=False))

    def tie_key(tensor) -> Any:
        """Tensors that are one: the same object, or (in memory) distinct
        objects viewing the same bytes of one storage the same way, as
        torch's load_state_dict keeps them by copying into each."""
        if tensor.device.type == "meta" or tensor.numel() == 0:
            return ("object", id(tensor))
        return ("view", tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape),
                tuple(tensor.stride()), tensor.dtype, str(tensor.device))

    ties: Dict[Any, List[str]] = {}  # one entry per tensor: every name sharing it
    objects: Dict[Any, List[Any]] = {}  # and the distinct tensor objects that are it
    for name, tensor in named:
        key = tie_key(tensor)
        ties.setdefault(key, []).append(name)
        same = objects.setdefault(key, [])
        if not any(o is tensor for o in same):
            same.append(tensor)
    tensors = {key: same[0] for key, same in objects.items()}
    tie_of = {name: key for key, names in ties.items() for name in names}
    state = module.state_dict()
    if device is None and "device_map" not in kwargs:
        first = next((t for t in tensors.values() if t.device.type != "meta"), None)
        device = str(first.device) if first is not None else None
    # The checkpoint's names as this load will know them (rename, drop,
    # only and compat applied), from its headers, read once: the load below
    # takes the opened checkpoint over. Then the GPUs it will use start (a
    # CUDA context each), while transformers' key mapping runs.
    checkpoint = kwargs.pop("_checkpoint", None)  # from_pretrained's, when it has read the headers already
    if checkpoint is None:
        checkpoint = _hoist.open_checkpoint(_path_text(path))
    checkpoint_names = _hoist.mapped_names(checkpoint, renames=_pairs("rename", kwargs.get("rename")),
                                           drops=_list("drop", kwargs.get("drop")), only=_text("only", kwargs.get("only")),
                                           compat=_text("compat", kwargs.get("compat")))
    device_map = kwargs.get("device_map")
    checkpoint.start_devices(
        device=_device_text(device),
        device_map=_device_map_text(device_map))
    conv = _Conversions(module, checkpoint_names)
    warnings: List[str] = []
    if conv.error:
        warnings.append(f"load_into: transformers' key mapping for {type(module).__name__} failed ({conv.error}); "
                        "checkpoint names are used as they are")
    if conv.active and isinstance(kwargs.get("device_map"), Mapping):
        kwargs["device_map"] = conv.checkpoint_device_map(kwargs["device_map"], warnings)
    # module name -> the checkpoint tensor that fills it as it is.
    in_checkpoint = set(checkpoint_names)
    direct = conv.direct if conv.active else {n: n for n in state if n in in_checkpoint}
    # Tied names are one tensor: the first of them the checkpoint holds
    # fills it, and a second copy in the checkpoint is not read.
    spare = {direct[n] for names in ties.values() for n in [n for n in names if n in direct][1:]}
    direct = {key: ckpt for key, ckpt in direct.items() if ckpt not in spare}
    # The load reads what maps to the module and judges shapes in the
    # checkpoint's names (a converter's inputs have no module shape).
    expect = {ckpt: {"shape": list(state[key].shape)} for key, ckpt in direct.items()}
    expect.update({name: {} for names in conv.sources_of.values() for name in names})
    model = load(path, device=device, expect=expect, config_ties=False, _checkpoint=checkpoint, **kwargs)
    report = model.report
    bad = set(report["mismatched"])
    mismatched = [key for key, ckpt in direct.items() if ckpt in bad]
    report["unexpected"] = [n for n in report["unexpected"] if n not in spare]
    filled = set()

    def fill(name: str, loaded, take: bool) -> None:
        """Puts `loaded` in the module tensor `name` and every name tied to
        it; `take`: the memory may become the parameter's without a copy."""
        names = ties[tie_of[name]]
        if any(n in filled for n in names):
            return  # tied to a tensor already filled
        target = tensors[tie_of[name]]
        # A shape that differs, or FP8 data for a wider parameter: its
        # values mean nothing without their scales, which are the model's
        # quantizer's business, not a cast's.
        fp8_into_wider = loaded.is_floating_point() and loaded.element_size() == 1 and target.dtype != loaded.dtype
        if tuple(loaded.shape) != tuple(target.shape) or fp8_into_wider:
            mismatched.append(name)
            return
        filled.update(names)
        if target.device.type == "meta":
            # Nothing to copy into: put the loaded tensor in place of the
            # meta one under every name that shares it (as
            # load_state_dict(assign=True) does), keeping ties.
            value = loaded.to(dtype=target.dtype, copy=not take)
            shares_the_load = value.data_ptr() == loaded.data_ptr()
            if isinstance(target, torch.nn.Parameter):
                value = torch.nn.Parameter(value, requires_grad=target.requires_grad)
            (aliased if shares_the_load else copied).append([value])
            for n in names:
                owner_name, _, attr = n.rpartition(".")
                owner = module.get_submodule(owner_name) if owner_name else module
                setattr(owner, attr, value)
        elif take and loaded.dtype == target.dtype and loaded.device == target.device:
            same = objects[tie_of[name]]
            for tensor in same:  # zero-copy; every object sharing the storage takes the same memory
                tensor.data = loaded
            aliased.append(same)
        else:
            target.data.copy_(loaded)  # objects sharing its storage see the copy too
            copied.append([target])

    # Where anything is converted, every parameter is copied (converted
    # tensors are copies already, unless they are views of what was read):
    # a parameter that took the load's memory zero-copy would keep the
    # whole reservation, and every tensor in it, alive beside them.
    converting = bool(conv.groups)
    aliased: List[List[Any]] = []  # module tensors that are the load's memory (objects sharing it together)
    copied: List[List[Any]] = []   # module tensors with memory of their own
    try:
        with torch.no_grad():
            for names in ties.values():  # tie groups in module order: the first name with a source fills it
                key = next((n for n in names if n in direct and direct[n] in model and direct[n] not in bad), None)
                if key is not None:
                    fill(key, _to_torch(model, direct[key]), take=not converting)
            for key in list(conv.groups):
                try:
                    made = conv.convert(key, lambda n: _to_torch(model, n))
                except Exception as e:  # the checkpoint's tensors do not fit the op (an expert short, shapes apart)
                    mismatched.extend(conv.targets_of[key] or [key])
                    warnings.append(f"load_into: {key}: {type(e).__name__}: {e}")
                    continue
                for name, (value, is_view) in made.items():
                    if name in tie_of:
                        fill(name, value, take=not is_view)
                del made
        # A module tensor left in the load's memory keeps the whole
        # reservation alive; where others were copies anyway (a cast, another
        # device), that would hold twice the model: those become copies too.
        if aliased and copied:
            for same in aliased:
                clone = same[0].data.clone()
                for tensor in same:
                    tensor.data = clone
    finally:
        conv.release()
    # Buffers no checkpoint holds (rotary frequencies) have no values on the
    # meta device: a module built under torch.device("meta") cannot run.
    unset = [n for n, b in module.named_buffers(remove_duplicate=False) if b.device.type == "meta" and n not in filled]
    if unset:
        warnings.append(f"load_into: {len(unset)} buffers are still on the meta device, with no values "
                        f"({_some_names(unset)}): build the module with its parameters alone on meta, "
                        "or use hoist.from_pretrained")
    report["warnings"] = list(report.get("warnings", [])) + warnings
    # Names the module ties to a loaded tensor are not missing.
    report["missing"] = [n for n in state if n not in filled and n not in mismatched]
    report["mismatched"] = mismatched
    if strict:
        found = "; ".join(f"{len(report[k])} {what} ({_some_names(report[k])})"
                          for k, what in (("missing", "missing"), ("unexpected", "unexpected"),
                                          ("mismatched", "mismatched in dtype or shape, or not convertible"))
                          if report[k])
        if found:
            # load_into's own findings (a conversion that failed, and why) go along; the whole report too.
            why = "".join(f"; {w}" for w in warnings[:2]) + (f"; and {len(warnings) - 2} more" if len(warnings) > 2 else "")
            error = ValueError(f"{_path_text(path)}: not what {type(module).__name__} expects (strict): {found}{why}")
            error.report = report
            raise error
    return report


_META_BUILD = threading.Lock()  # one model built on meta at a time


@contextlib.contextmanager
def _parameters_on_meta(torch):
    """Parameters this thread makes while this runs are moved to the meta
    device as they are registered, before the module initializes them: no
    memory and no random initialization. Buffers are made for real, so those
    a model computes in __init__ and never saves (rotary frequencies) hold
    their values. (accelerate's init_empty_weights does the same.) The patch
    of torch.nn.Module is process-wide while it lasts, so builds take turns
    and other threads' modules are left alone."""
    with _META_BUILD:
        register = torch.nn.Module.register_parameter
        builder = threading.get_ident()

        def on_meta(module, name, param):
            register(module, name, param)
            if param is not None and param.device.type != "meta" and threading.get_ident() == builder:
                meta = type(param)(param.to("meta"), requires_grad=param.requires_grad)
                meta.__dict__.update(param.__dict__)
                module._parameters[name] = meta

        torch.nn.Module.register_parameter = on_meta
        try:
            yield
        finally:
            torch.nn.Module.register_parameter = register


def _one_device(device: Any, device_map: Any) -> Any:
    """from_pretrained's device from device= or a device_map that names one device."""
    if device_map is None:
        return device
    if device is not None:
        raise ValueError("give device or device_map, not both")
    if isinstance(device_map, Mapping) and list(device_map) == [""]:
        return device_map[""]
    if isinstance(device_map, Mapping) or device_map in ("auto", "balanced", "balanced_low_0", "sequential"):
        raise ValueError(f"device_map={device_map!r}: from_pretrained puts the whole model on one device "
                         "(device=, or device_map={'': device}); for a model spread over devices use "
                         "hoist.load_into with a module of your own")
    return device_map


def from_pretrained(path: Union[str, os.PathLike], device: Any = None, dtype: Any = None, *,
                    device_map: Any = None, model_class: Any = None, config: Any = None,
                    strict: bool = False, return_report: bool = False, **kwargs):
    """A transformers model with its weights loaded by hoist, ready to run: what
    transformers.AutoModelForCausalLM.from_pretrained(path, device_map=device,
    dtype=dtype) gives, from a local checkpoint directory (or an "org/name" in
    the Hugging Face cache).

    The model is built from its config.json with its parameters on the meta
    device (no memory, no random initialization) and its buffers computed as
    usual; then hoist.load_into fills every parameter in one load, zero-copy
    where the checkpoint's dtype is the model's, and the buffers move to the
    device. Ties the config asks for stay tied; transformers' key mapping
    (renames, merged experts) applies as in load_into.

    device: one device for the whole model, as hoist.load takes it (default
        cuda:0 when torch sees a GPU, else cpu); device_map may name it as
        {"": device} or "cuda:0". Spreading a model over several devices is
        load_into's business.
    dtype (or torch_dtype): the model's dtype (a torch dtype or "bf16", "f16", "f32"); default
        (or "auto") as transformers' "auto": the config's dtype, else the checkpoint's
        first floating-point dtype. Modules transformers keeps in float32
        (_keep_in_fp32_modules) stay float32. Where every parameter has the
        model's dtype, hoist casts while it loads; otherwise each parameter is
        cast from the stored values as it is filled.
    model_class: default transformers.AutoModelForCausalLM (AutoModel for
        checkpoints with no causal-LM head works too); config: a config to
        use instead of the checkpoint's config.json.
    strict: also refuse checkpoint tensors the model has no place for (a
        parameter the checkpoint lacks, or one whose shape differs, is always
        a ValueError: the model would hold meta tensors). return_report:
        return (model, load report). The other keywords are hoist.load's
        (rename, drop, threads, chunk_size, mmap, ...).
    """
    import torch
    import transformers

    if "torch_dtype" in kwargs:  # transformers' older name for dtype, which it still takes
        if dtype is not None:
            raise ValueError("give dtype or torch_dtype, not both")
        dtype = kwargs.pop("torch_dtype")
    device = _one_device(device, device_map)
    if device is None:  # as hoist.load chooses: the first GPU where there is one
        device = "cuda:0" if torch.cuda.is_available() else "cpu"
    local = _hoist.resolve_path(_path_text(path))
    if not os.path.exists(local):
        raise FileNotFoundError(f"{local}: no such file or directory")
    config_dir = local if os.path.isdir(local) else os.path.dirname(local) or "."
    if config is None:
        config = transformers.AutoConfig.from_pretrained(config_dir)
    if getattr(config, "quantization_config", None):
        raise ValueError(f"{local}: a quantized checkpoint (quantization_config in its config) needs its quantizer: "
                         "load it with transformers' from_pretrained")
    if isinstance(dtype, str) and dtype.lower() == "auto":
        dtype = None  # the default, as transformers spells it
    if dtype is None:  # transformers' "auto": the config's, else the checkpoint's first floating-point dtype
        dtype = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    opened = None  # the headers, read once: load_into takes them over
    if dtype is None:
        opened = _hoist.open_checkpoint(local)
        stored = [d for d in opened.dtypes() if d in ("BF16", "F16", "F32", "F64")]
        dtype = {"BF16": "bfloat16", "F16": "float16", "F32": "float32", "F64": "float64"}[stored[0]] if stored else None
    dtype = dtype or torch.get_default_dtype()
    if isinstance(dtype, str):  # the names hoist.load takes, and torch's own
        names = {"bf16": "bfloat16", "f16": "float16", "fp16": "float16", "half": "float16", "f32": "float32",
                 "fp32": "float32", "float": "float32", "f64": "float64", "fp64": "float64"}
        dtype = getattr(torch, names.get(dtype.lower(), dtype.lower()), dtype)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"dtype={dtype!r}: expected a floating-point torch dtype, \"auto\", or bf16, f16 or f32")
    model_class = model_class or transformers.AutoModelForCausalLM
    major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
    dtype_keyword = "dtype" if (major, minor) >= (4, 56) else "torch_dtype"
    # Auto classes build with from_config; a model class itself with _from_config.
    build = getattr(model_class, "from_config", None) or model_class._from_config
    try:
        with _parameters_on_meta(torch):
            model = build(config, **{dtype_keyword: dtype})
    except (RuntimeError, TypeError, NotImplementedError) as e:
        raise ValueError(f"{local}: building {getattr(model_class, '__name__', model_class)} with its parameters on the "
                         f"meta device failed ({type(e).__name__}: {e}); build the module yourself and fill it with "
                         "hoist.load_into") from e
    # Modules transformers keeps in float32 whatever the model's dtype
    # (_keep_in_fp32_modules for float16, _strict ones for bfloat16 too), as
    # its from_pretrained applies them while it loads.
    plan = model._get_dtype_plan(dtype) if hasattr(model, "_get_dtype_plan") else {}
    if plan:
        policy = re.compile("|".join(f"(?P<g{i}>{glob.replace('*', '.*')})" for i, glob in enumerate(plan)))
        wanted = list(plan.values())
        replaced: Dict[int, Any] = {}  # id of a tensor -> its meta replacement, so tied names stay one tensor
        for kind, named in (("_parameters", model.named_parameters(remove_duplicate=False)),
                            ("_buffers", model.named_buffers(remove_duplicate=False))):
            for name, tensor in list(named):
                found = policy.search(name)
                if found is None or not tensor.is_floating_point():
                    continue
                if id(tensor) not in replaced:
                    new = tensor.detach().to(wanted[int(found.lastgroup[1:])])  # a computed buffer keeps its values
                    if isinstance(tensor, torch.nn.Parameter):
                        new = torch.nn.Parameter(new, requires_grad=tensor.requires_grad)
                    replaced[id(tensor)] = new
                owner_name, _, attr = name.rpartition(".")
                getattr(model.get_submodule(owner_name) if owner_name else model, kind)[attr] = replaced[id(tensor)]
    # hoist casts on the way in where every floating-point parameter has the
    # model's dtype; otherwise each is cast from the stored values as it is
    # filled (a float32 module must not get values rounded to float16 first).
    floats = [t for t in model.parameters() if t.is_floating_point()]
    if dtype in (torch.bfloat16, torch.float16, torch.float32) and all(t.dtype == dtype for t in floats):
        kwargs.setdefault("dtype", dtype)
    report = load_into(model, local, device=device, _checkpoint=opened, **kwargs)
    # Parameters still on the meta device have no values: the checkpoint
    # lacks them or holds another shape.
    on_meta = {name for name, t in list(model.named_parameters(remove_duplicate=False)) +
               list(model.named_buffers(remove_duplicate=False)) if t.device.type == "meta"}
    unfilled = [n for n in report["missing"] + report["mismatched"] if n in on_meta]
    unexpected = report["unexpected"] if strict else []
    leftover = sorted(on_meta - set(unfilled))
    if unfilled or unexpected or leftover:
        parts = [f"{len(names)} {what} ({_some_names(names)})" for names, what in
                 ((unfilled, "missing from the checkpoint or of another shape"),
                  (unexpected, "unexpected (strict)"), (leftover, "left on the meta device")) if names]
        error = ValueError(f"{local}: not what {type(model).__name__} expects: {'; '.join(parts)}")
        error.report = report
        raise error
    # The buffers the model computed in __init__ (on the cpu) go where the
    # parameters are; the parameters themselves do not move.
    first = next(model.parameters(), None)
    if first is not None:
        model.to(first.device)
    model.eval()
    # The generation config as transformers' from_pretrained makes it: the
    # checkpoint's generation_config.json, else one read from config.json.
    generation = os.path.join(config_dir, "generation_config.json")
    can_generate = getattr(model, "can_generate", lambda: False)()
    if can_generate and getattr(model, "generation_config", None) is not None:
        try:
            if os.path.isfile(generation):
                model.generation_config = transformers.GenerationConfig.from_pretrained(config_dir)
            else:
                model.generation_config = transformers.GenerationConfig.from_pretrained(
                    config_dir, config_file_name="config.json", _from_model_config=True)
        except (OSError, ValueError, TypeError) as e:
            report.setdefault("warnings", []).append(f"from_pretrained: {generation}: {e}")
    return (model, report) if return_report else model


# Model has the Mapping methods; registered rather than derived, so it keeps
# identity equality and hashing (a Mapping compares by values).
collections.abc.Mapping.register(Model)
