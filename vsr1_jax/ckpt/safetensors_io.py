"""Safetensors read and written by hand: a file's header parsed and checked against its size, tensors memory-mapped
on demand (a read-only array backed by the page cache, pages dropped after use), sharded folders with their index,
and a streaming writer. The checkpoint conversion (ckpt/hf_read.py, ckpt/write.py) uses it both ways."""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import mmap
import os
import re
from typing import Callable, Iterable

import ml_dtypes
import numpy as np

from vsr1_jax.errors import UserError

INDEX_FILE = "model.safetensors.index.json"


class SafetensorsError(UserError, ValueError):
    """A safetensors file or folder is unreadable or inconsistent; the message names the file and key."""


def _listing(keys: Iterable[str], n: int = 12) -> str:
    keys = list(keys)
    more = f" … and {len(keys) - n} more" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


# safetensors dtype codes <-> numpy (bf16 and fp8 through ml_dtypes; numpy itself has no bfloat16).
ST_DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype(np.float64), "F32": np.dtype(np.float32), "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16), "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn),
    "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2), "I64": np.dtype(np.int64), "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16), "I8": np.dtype(np.int8), "U64": np.dtype(np.uint64), "U32": np.dtype(np.uint32),
    "U16": np.dtype(np.uint16), "U8": np.dtype(np.uint8), "BOOL": np.dtype(np.bool_),
}
NP_TO_ST = {v: k for k, v in ST_DTYPES.items()}


# The format: 8-byte little-endian header length N, N bytes of JSON {key: {dtype, shape, data_offsets: [b, e]},
# "__metadata__": {str: str}}, then the data section; offsets are relative to its start.

@dataclasses.dataclass(frozen=True)
class TensorInfo:
    dtype: str                 # safetensors code, e.g. "BF16"
    shape: tuple[int, ...]
    begin: int
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.begin


class SafetensorsFile:
    """One .safetensors file: header parsed and checked against the file size, data memory-mapped on demand."""

    def __init__(self, path: str):
        self.path = path
        size = os.path.getsize(path)
        if size < 8:
            raise SafetensorsError(f"{path}: truncated or not a safetensors file ({size} bytes)")
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if n > size - 8:
                raise SafetensorsError(f"{path}: truncated or not a safetensors file (header of {n} bytes announced, "
                                   f"file has {size})")
            raw = f.read(n)
        try:
            header = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise SafetensorsError(f"{path}: corrupt safetensors header ({e})") from None
        if not isinstance(header, dict):
            raise SafetensorsError(f"{path}: corrupt safetensors header (not a JSON object)")
        self.metadata = header.pop("__metadata__", None)
        self.data_start = 8 + n
        data_size = size - self.data_start
        self.tensors: dict[str, TensorInfo] = {}
        for key, h in header.items():
            try:
                dt, shape, (b, e) = h["dtype"], tuple(int(s) for s in h["shape"]), h["data_offsets"]
            except (KeyError, TypeError, ValueError):
                raise SafetensorsError(f"{path}: corrupt safetensors header entry for {key!r}: {h!r}") from None
            if dt not in ST_DTYPES:
                raise SafetensorsError(f"{path}: tensor {key!r} has unsupported dtype {dt!r}")
            if not 0 <= b <= e or e - b != math.prod(shape) * ST_DTYPES[dt].itemsize:
                raise SafetensorsError(f"{path}: corrupt safetensors header: tensor {key!r} ({dt}, {list(shape)}) has "
                                   f"data_offsets [{b}, {e}]")
            if e > data_size:
                raise SafetensorsError(f"{path}: truncated: tensor {key!r} needs data bytes up to {e} but the file "
                                   f"holds only {data_size} after the header")
            self.tensors[key] = TensorInfo(dt, shape, b, e)
        self._mm: mmap.mmap | None = None

    def get(self, key: str) -> np.ndarray:
        """A read-only array backed by the page cache (no copy); pages are read when touched."""
        t = self.tensors[key]
        dt = ST_DTYPES[t.dtype]
        if t.nbytes == 0:
            return np.zeros(t.shape, dt)
        if self._mm is None:
            with open(self.path, "rb") as f:
                self._mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        count = t.nbytes // dt.itemsize
        return np.frombuffer(self._mm, dt, count, self.data_start + t.begin).reshape(t.shape)

    def release(self, key: str) -> None:
        """Drop the tensor's pages from this process (after copying it); a later `get` reads them again."""
        t = self.tensors.get(key)
        if self._mm is None or t is None or not hasattr(mmap, "MADV_DONTNEED"):
            return
        start = -(-(self.data_start + t.begin) // mmap.PAGESIZE) * mmap.PAGESIZE
        stop = (self.data_start + t.end) // mmap.PAGESIZE * mmap.PAGESIZE
        if stop > start:
            self._mm.madvise(mmap.MADV_DONTNEED, start, stop - start)

    def close(self) -> None:
        if self._mm is not None:
            with contextlib.suppress(BufferError):  # arrays still referencing it keep the mapping alive
                self._mm.close()
            self._mm = None


class SafetensorsFolder:
    """The weights of an HF folder: `model.safetensors.index.json` shards, else every top-level *.safetensors."""

    def __init__(self, folder: str):
        index = os.path.join(folder, INDEX_FILE)
        if os.path.exists(index):
            try:
                with open(index) as f:
                    weight_map = json.load(f)["weight_map"]
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise SafetensorsError(f"{index}: not a valid safetensors index ({e!r})") from None
            names = list(dict.fromkeys(weight_map.values()))
            for name in names:
                if not os.path.exists(os.path.join(folder, name)):
                    raise SafetensorsError(f"{index}: shard {name} is listed but missing from {folder}")
        else:
            weight_map = None
            names = sorted(n for n in os.listdir(folder) if n.endswith(".safetensors"))
            if not names:
                found = sorted(n for n in os.listdir(folder) if n.endswith((".bin", ".pt", ".pth")))
                hint = f" (found {found}; re-save with safe_serialization)" if found else ""
                raise SafetensorsError(f"{folder}: no *.safetensors weights{hint}")
        self.folder = folder
        self.file_names = names
        self.files = {n: SafetensorsFile(os.path.join(folder, n)) for n in names}
        self._where: dict[str, str] = {}
        for n in names:
            for key in self.files[n].tensors:
                if key in self._where:
                    raise SafetensorsError(f"{folder}: tensor {key!r} is stored twice ({self._where[key]} and {n})")
                self._where[key] = n
        if weight_map is not None:
            bad = [k for k, n in weight_map.items() if self._where.get(k) != n]
            if bad:
                raise SafetensorsError(f"{index}: {len(bad)} keys are not in the shard the index names, e.g. "
                                   f"{_listing(bad)}")
        # The source order: the index's order for shards (what the writer produced), else header order.
        self.keys = list(self._where)
        if weight_map is not None:
            self.keys = list(weight_map) + [k for k in self._where if k not in weight_map]

    def info(self, key: str) -> TensorInfo:
        return self.files[self._where[key]].tensors[key]

    def get(self, key: str) -> np.ndarray:
        if key not in self._where:
            raise KeyError(key)
        return self.files[self._where[key]].get(key)

    def release(self, key: str) -> None:
        self.files[self._where[key]].release(key)

    def close(self) -> None:
        for f in self.files.values():
            f.close()


def write_safetensors(path: str, items: list[tuple[str, str, tuple[int, ...]]],
                      get: Callable[[str], np.ndarray], on_tensor: Callable[[int], None] | None = None) -> int:
    """Write (key, dtype code, shape) tensors in this order, fetching each with `get` just before writing it."""
    header: dict = {"__metadata__": {"format": "pt"}}
    off = 0
    for key, dt, shape in items:
        n = math.prod(shape) * ST_DTYPES[dt].itemsize
        header[key] = {"dtype": dt, "shape": list(shape), "data_offsets": [off, off + n]}
        off += n
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # safetensors pads the header to 8 bytes so the data section is aligned
    with open(path, "wb") as f:
        f.write(len(raw).to_bytes(8, "little"))
        f.write(raw)
        for key, dt, shape in items:
            x = get(key)
            if x.dtype != ST_DTYPES[dt] or tuple(x.shape) != tuple(shape):
                raise SafetensorsError(f"{key}: internal error, produced {x.dtype}{list(x.shape)}, "
                                   f"expected {dt}{list(shape)}")
            f.write(np.ascontiguousarray(x).reshape(-1).view(np.uint8).data)
            if on_tensor is not None:
                on_tensor(x.nbytes)
    return off


def parse_size(s: str | int) -> int:
    """'5GB' (10^9), '100KB', '2GiB' (2^30), '500MiB', or a number of bytes (as transformers' max_shard_size)."""
    if isinstance(s, int):
        return s
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B)?\s*", s, re.IGNORECASE)
    if not m:
        raise SafetensorsError(f"cannot read size {s!r} (e.g. 5GB, 500MB, 2GiB, or bytes)")
    unit = (m.group(2) or "B").upper()
    scale = 1 if unit == "B" else (1024 if "I" in unit else 1000) ** ("KMGT".index(unit[0]) + 1)
    return int(float(m.group(1)) * scale)
