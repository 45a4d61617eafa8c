"""A fuzzer for the engine's GGUF reading: mutations of a valid tiny GGUF, each run in a worker subprocess
with a memory cap; a worker that crashes or hangs is replaced and the case is recorded.

    python tests/gguf_fuzz.py SOURCE.gguf [--cases N] [--seed S]      (a longer run than the test's)

Mutations: truncation (at every metadata boundary and at random points), bit flips and byte stores in the
metadata and in the data, structural edits (the tensor and key counts, string lengths, value and tensor
types, tensor offsets, dimension counts and sizes, names, the architecture) and semantic edits of every
hyper-parameter (zero, one, negative, huge, NaN, infinite). Each case is read with inspect_gguf; what it
accepts is loaded and run (one encode, one decoder step). Outcomes: `rejected` (EngineError, ValueError,
FileNotFoundError or MemoryError: a documented error), `ran`, and the failures `exception` (any other
type), `crash` (the worker died) and `timeout`.
"""
from __future__ import annotations

import os
import random
import struct
import sys
from pathlib import Path

from fuzz_workers import CASE_TIMEOUT_S, cap_memory, main, run_cases, serve


def _offset(reader, arr) -> int:
    return arr.__array_interface__["data"][0] - reader.data.__array_interface__["data"][0]


def layout(path: Path) -> dict:
    """Byte positions of the parts of a GGUF that mutations target (via gguf-py's reader)."""
    from gguf import GGUFReader, GGUFValueType

    r = GGUFReader(path)
    kv, tensors, bounds = [], [], {0, 4, 8, 16, 24, r.data_offset}
    for name, f in r.fields.items():
        if name.startswith("GGUF."):
            continue
        parts = [(_offset(r, p), p.nbytes) for p in f.parts]
        bounds.update(o for o, _ in parts)
        entry = {"name": name, "key_len": parts[0], "type": parts[2], "vtype": int(f.types[0]), "values": []}
        if f.types[0] == GGUFValueType.ARRAY:
            entry["array_type"], entry["array_len"] = parts[3], parts[4]
            entry["values"] = [parts[i] for i in f.data][:64]
            entry["etype"] = int(f.types[1])
        else:
            entry["values"] = [parts[i] for i in f.data]
            if f.types[0] == GGUFValueType.STRING:
                entry["str_len"] = parts[3]
        kv.append(entry)
    for t in r.tensors:
        parts = [(_offset(r, p), p.nbytes) for p in t.field.parts]
        bounds.update(o for o, _ in parts)
        nd = int(t.field.parts[2][0])   # parts: name length, name, dim count, dims (one array), type, offset
        dims = [(parts[3][0] + 8 * i, 8) for i in range(nd)]
        tensors.append({"name": t.name, "name_len": parts[0], "name_bytes": parts[1], "n_dims": parts[2],
                        "dims": dims, "type": parts[4], "offset": parts[5],
                        "data": (int(t.data_offset), int(t.n_bytes))})
    return {"kv": kv, "tensors": tensors, "data_offset": r.data_offset, "bounds": sorted(bounds)}


def cases(lay: dict, size: int, n: int, seed: int) -> list[list]:
    """Deterministic mutation specs: ["cut", pos] or ["put", pos, hex bytes], several puts per case
    allowed as ["multi", [spec, ...]]."""
    rnd = random.Random(seed)
    u32 = lambda v: struct.pack("<I", v & 0xFFFFFFFF).hex()  # noqa: E731
    u64 = lambda v: struct.pack("<Q", v & 0xFFFFFFFFFFFFFFFF).hex()  # noqa: E731
    out: list[list] = []
    meta_end = lay["data_offset"]
    bounds = lay["bounds"]   # every field and tensor-info boundary (thousands): a sample of 150
    for b in sorted(rnd.sample(bounds, min(len(bounds), 150))) + [lay["data_offset"]]:
        for d in (-1, 0, 1):
            if 0 < b + d < size:
                out.append(["cut", b + d])
    for pos in (8, 16):   # tensor and key counts
        for v in (0, 1, 2**32, 2**63 - 1, -1, 10**6):
            out.append(["put", pos, u64(v)])
    scalars = {4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d", 0: "<B", 1: "<b", 2: "<H",
               3: "<h"}
    for e in lay["kv"]:
        o, w = e["key_len"]
        for v in (0, 2**40, 10**6):
            out.append(["put", o, u64(v)])
        to, _ = e["type"]
        for v in (rnd.randrange(0, 13), 13, 255, 0xFFFFFFFF):
            out.append(["put", to, u32(v)])
        if "str_len" in e:
            so, _ = e["str_len"]
            for v in (0, 2**40, 3, 2**63):
                out.append(["put", so, u64(v)])
        if "array_len" in e:
            ao, _ = e["array_len"]
            for v in (0, 1, 2**40, 2**61):
                out.append(["put", ao, u64(v)])
            out.append(["put", e["array_type"][0], u32(rnd.choice([8, 9, 13, 200]))])
        vt = e.get("etype", e["vtype"])
        fmt = scalars.get(vt)
        for vo, vw in e["values"][:4]:
            if fmt is None:   # strings: change a byte, or make them invalid UTF-8
                if vw:
                    out.append(["put", vo + rnd.randrange(vw), "ff"])
                    out.append(["put", vo, "41"])
                continue
            vals = [0, 1, -1, 2**31 - 1, 2**63 - 1] if fmt in ("<i", "<q", "<I", "<Q") else \
                [0.0, -1.0, 1e30, float("nan"), float("inf"), -float("inf")] if fmt in ("<f", "<d") else [0, 1]
            for v in vals:
                try:
                    b = struct.pack(fmt, v if fmt not in ("<I", "<Q") else v & ((1 << (8 * vw)) - 1))
                except struct.error:
                    b = struct.pack(fmt, 0) if fmt not in ("<f", "<d") else struct.pack(fmt, 0.0)
                out.append(["put", vo, b[:vw].hex()])
    for t in rnd.sample(lay["tensors"], min(len(lay["tensors"]), 40)):
        out.append(["put", t["type"][0], u32(rnd.randrange(0, 42))])
        out.append(["put", t["type"][0], u32(0xFFFF)])
        o = t["offset"][0]
        for v in (1, 32, 2**40, 0, size):
            out.append(["put", o, u64(v if v in (0, 2**40, size) else rnd.randrange(0, 4096) * v)])
        out.append(["put", t["n_dims"][0], u32(rnd.choice([0, 5, 255]))])
        for do, _ in t["dims"]:
            for v in (0, 1, 2**40, 3):
                out.append(["put", do, u64(v)])
        no, nw = t["name_bytes"]
        if nw:
            out.append(["put", no + rnd.randrange(nw), rnd.choice(["2e", "00", "ff", "41"])])
        out.append(["put", t["name_len"][0], u64(rnd.choice([0, 2**40, nw + 1]))])
        d0, dn = t["data"]
        if dn:
            out.append(["put", lay["data_offset"] + d0 + rnd.randrange(dn), rnd.choice(["ff", "7f", "00"]) * 2])
    arch = next(e for e in lay["kv"] if e["name"] == "general.architecture")
    ao, aw = arch["values"][0]
    out.append(["put", ao, b"gemma4".ljust(aw, b"x")[:aw].hex()])
    for _ in range(max(0, n - len(out))):
        k = rnd.random()
        if k < 0.45:
            out.append(["put", rnd.randrange(0, meta_end), f"{1 << rnd.randrange(8):02x}"])   # a set bit
        elif k < 0.65:
            out.append(["put", rnd.randrange(0, meta_end), rnd.choice(["00", "ff", "7f", "80"])])
        elif k < 0.8:
            out.append(["cut", rnd.randrange(1, size)])
        else:
            out.append(["multi", [["put", rnd.randrange(0, meta_end), f"{rnd.randrange(256):02x}"]
                                  for _ in range(rnd.randint(2, 8))]])
    rnd.shuffle(out)
    return out[:n] if n else out


def apply(src: bytes, spec: list) -> bytes:
    if spec[0] == "cut":
        return src[:spec[1]]
    if spec[0] == "multi":
        for s in spec[1]:
            src = apply(src, s)
        return src
    pos, data = spec[1], bytes.fromhex(spec[2])
    b = bytearray(src)
    b[pos:pos + len(data)] = data
    return bytes(b)


def run_case(path: str) -> tuple[str, str]:
    import numpy as np

    from pygguf_diffusion import EngineError, _core

    try:
        _core.inspect_gguf(path)
        m = _core.Model(path, 0, False)
        ctx = _core.Context(m, 64, 16, 1)
        ctx.encode(np.arange(3, 7, dtype=np.int32))
        ctx.decode_step(np.full(ctx.canvas_length, 3, dtype=np.int32), None, 1.0, False)
        return "ran", ""
    except (EngineError, ValueError, FileNotFoundError, MemoryError) as e:
        return "rejected", f"{type(e).__name__}: {str(e)[:200]}"
    except Exception as e:  # noqa: BLE001 - the point is to find these
        return "exception", f"{type(e).__name__}: {str(e)[:200]}"


def worker(src_path: str, cases_path: str, start: int, tmpdir: str) -> None:
    cap_memory()
    import pygguf_diffusion._core  # noqa: F401 - imported before READY: start-up is not a case's time

    src = Path(src_path).read_bytes()
    cur = os.path.join(tmpdir, "case.gguf")

    def run_one(_i: int, spec: list) -> tuple[str, str]:
        Path(cur).write_bytes(apply(src, spec))
        return run_case(cur)

    serve(cases_path, start, run_one)


def fuzz(src: Path, n: int, seed: int) -> dict:
    """Runs n cases (0: the structured ones only); returns {"counts": Counter, "failures": [...], "n"}."""
    return run_specs(src, cases(layout(src), src.stat().st_size, n, seed))


def run_specs(src: Path, specs: list[list], case_timeout_s: float = CASE_TIMEOUT_S) -> dict:
    """Runs the given mutation specs in workers (["abort"] and ["hang"] test the harness itself)."""
    return run_cases([sys.executable, __file__, "--worker", str(src)], specs, case_timeout_s)


if __name__ == "__main__":
    sys.exit(main(__doc__, "source", 5000, fuzz, worker))
