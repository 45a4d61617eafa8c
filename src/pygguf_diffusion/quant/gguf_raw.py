"""A GGUF read as byte ranges over a memory map, and the few encoders a rewrite needs.

gguf-py's GGUFReader builds numpy objects for every string of the metadata: for a 262,144-token
vocabulary that is ~700 MB of memory before any tensor is read. Requantization changes only a handful of
keys, so it copies every other key-value pair as the bytes it already is, and needs from this module only
where each pair and each tensor lies.
"""
from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass

import numpy as np

MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32
T_UINT32, T_INT32, T_STRING, T_ARRAY = 4, 5, 8, 9
_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}  # fixed-size value types
_FORMATS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}


class RawGGUFError(ValueError):
    pass


@dataclass(frozen=True)
class RawKV:
    key: str
    vtype: int
    start: int   # the key's length field
    end: int     # one past the value


@dataclass(frozen=True)
class RawTensor:
    name: str
    ne: tuple[int, ...]  # ggml order: ne[0] is the row length
    type_id: int
    offset: int          # from the start of the data section

    @property
    def shape(self) -> tuple[int, ...]:
        """numpy order"""
        return tuple(reversed(self.ne))


class RawGGUF:
    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        with open(self.path, "rb") as f:
            self.mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        self._pos = 0
        try:
            self._parse()
        except (struct.error, UnicodeDecodeError, IndexError) as e:
            raise RawGGUFError(f"{self.path}: cannot parse GGUF metadata ({e})") from None

    def close(self) -> None:
        try:
            self.mm.close()
        except BufferError:  # a tensor view still alive (an exception's traceback): the GC unmaps it later
            pass

    # ---- parsing ---------------------------------------------------------------------------------------------
    def _u(self, fmt: str) -> int:
        (v,) = struct.unpack_from(fmt, self.mm, self._pos)
        self._pos += struct.calcsize(fmt)
        return v

    def _str(self) -> str:
        n = self._u("<Q")
        if self._pos + n > len(self.mm):
            raise RawGGUFError(f"{self.path}: a string runs past the end of the file")
        s = self.mm[self._pos:self._pos + n].decode("utf-8")
        self._pos += n
        return s

    def _skip_value(self, vtype: int) -> None:
        if vtype in _SIZES:
            self._pos += _SIZES[vtype]
        elif vtype == T_STRING:
            self._pos += 8 + self._u_peek_q()
        elif vtype == T_ARRAY:
            etype, count = self._u("<I"), self._u("<Q")
            if etype in _SIZES:
                self._pos += count * _SIZES[etype]
            elif etype == T_STRING:
                mm, pos, unpack = self.mm, self._pos, struct.unpack_from
                for _ in range(count):
                    pos += 8 + unpack("<Q", mm, pos)[0]
                self._pos = pos
            else:  # nested arrays: never written by llama.cpp's tools
                for _ in range(count):
                    self._skip_value(etype)
        else:
            raise RawGGUFError(f"{self.path}: unknown metadata value type {vtype}")
        if self._pos > len(self.mm):
            raise RawGGUFError(f"{self.path}: the metadata runs past the end of the file")

    def _u_peek_q(self) -> int:
        return struct.unpack_from("<Q", self.mm, self._pos)[0]

    def _parse(self) -> None:
        if self.mm[:4] != MAGIC:
            raise RawGGUFError(f"{self.path}: not a GGUF file")
        self._pos = 4
        self.version = self._u("<I")
        n_tensors, n_kv = self._u("<Q"), self._u("<Q")
        self.kvs: list[RawKV] = []
        for _ in range(n_kv):
            start = self._pos
            key = self._str()
            vtype = self._u("<I")
            self._skip_value(vtype)
            self.kvs.append(RawKV(key, vtype, start, self._pos))
        self.tensors: list[RawTensor] = []
        for _ in range(n_tensors):
            name = self._str()
            n_dims = self._u("<I")
            ne = tuple(self._u("<Q") for _ in range(n_dims))
            type_id = self._u("<I")
            self.tensors.append(RawTensor(name, ne, type_id, self._u("<Q")))
        self.alignment = int(self.scalar("general.alignment", DEFAULT_ALIGNMENT))
        self.data_offset = self._pos + (-self._pos % self.alignment)

    # ---- access ----------------------------------------------------------------------------------------------
    def scalar(self, key: str, default=None):
        """A fixed-size or string value (None / default when absent)."""
        for kv in self.kvs:
            if kv.key != key:
                continue
            pos = kv.start + 8 + struct.unpack_from("<Q", self.mm, kv.start)[0] + 4
            if kv.vtype in _FORMATS:
                return struct.unpack_from(_FORMATS[kv.vtype], self.mm, pos)[0]
            if kv.vtype == T_STRING:
                n = struct.unpack_from("<Q", self.mm, pos)[0]
                return self.mm[pos + 8:pos + 8 + n].decode("utf-8")
            raise RawGGUFError(f"{self.path}: '{key}' is an array")
        return default

    def kv_bytes(self, kv: RawKV) -> bytes:
        return self.mm[kv.start:kv.end]

    def tensor_data(self, t: RawTensor, nbytes: int) -> np.ndarray:
        start = self.data_offset + t.offset
        if start + nbytes > len(self.mm):
            raise RawGGUFError(f"{self.path}: tensor '{t.name}' runs past the end of the file")
        return np.frombuffer(self.mm, dtype=np.uint8, count=nbytes, offset=start)


# ---- encoders ----------------------------------------------------------------------------------------------
def _s(s: str) -> bytes:
    b = s.encode("utf-8")
    return struct.pack("<Q", len(b)) + b


def header(version: int, n_tensors: int, n_kv: int) -> bytes:
    return MAGIC + struct.pack("<IQQ", version, n_tensors, n_kv)


def kv_u32(key: str, v: int) -> bytes:
    return _s(key) + struct.pack("<II", T_UINT32, v)


def kv_i32(key: str, v: int) -> bytes:
    return _s(key) + struct.pack("<Ii", T_INT32, v)


def kv_str(key: str, v: str) -> bytes:
    return _s(key) + struct.pack("<I", T_STRING) + _s(v)


def tensor_info(name: str, ne: tuple[int, ...], type_id: int, offset: int) -> bytes:
    return _s(name) + struct.pack(f"<I{len(ne)}QIQ", len(ne), *ne, type_id, offset)
