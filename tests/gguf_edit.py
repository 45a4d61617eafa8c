"""Rewrite a GGUF with deliberate changes, to test that the engine rejects (or accepts) what it should."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGUFReader, GGUFValueType, GGUFWriter


def _field_value(field: Any) -> tuple[Any, GGUFValueType, GGUFValueType | None]:
    vtype = field.types[0]
    if vtype == GGUFValueType.ARRAY:
        sub = field.types[1]
        return field.contents(), vtype, sub
    return field.contents(), vtype, None


def rewrite(src: Path, dst: Path, *, drop_keys: tuple[str, ...] = (), set_keys: dict[str, Any] | None = None,
            drop_tensors: tuple[str, ...] = (), rename: dict[str, str] | None = None,
            edit_tensor: Callable[[str, np.ndarray], np.ndarray | None] | None = None,
            extra_tensors: dict[str, np.ndarray] | None = None,
            split_gate_up: bool = False, raw_tensors: dict[str, tuple[np.ndarray, Any]] | None = None,
            alignment: int | None = None) -> Path:
    """set_keys maps key -> (value, GGUFValueType[, sub type]) or a plain value keeping the old type.
    raw_tensors replaces a tensor by (uint8 bytes shaped [rows, bytes per row], GGMLQuantizationType)."""
    r = GGUFReader(src)
    arch = r.fields["general.architecture"].contents()
    if "general.architecture" in (set_keys or {}):
        arch = set_keys["general.architecture"]
    w = GGUFWriter(dst, arch)
    if alignment is not None:
        w.add_custom_alignment(alignment)
        drop_keys = (*drop_keys, "general.alignment")
    set_keys = dict(set_keys or {})
    for name, field in r.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture" or name in drop_keys:
            continue
        value, vtype, sub = _field_value(field)
        if name in set_keys:
            v = set_keys.pop(name)
            if isinstance(v, tuple):
                value, vtype, *rest = v
                sub = rest[0] if rest else None
            else:
                value = v
        w.add_key_value(name, value, vtype, sub)
    for name, v in set_keys.items():
        if name == "general.architecture":
            continue
        value, vtype, *rest = v
        w.add_key_value(name, value, vtype, rest[0] if rest else None)
    rename = rename or {}
    for t in r.tensors:
        if t.name in drop_tensors:
            continue
        if t.name in (raw_tensors or {}):
            continue  # written last, below
        data = np.array(t.data)
        shape = tuple(int(x) for x in reversed(t.shape))  # numpy order
        if t.tensor_type.name in ("F32", "F16"):
            data = data.reshape(shape)
            if split_gate_up and t.name.endswith("ffn_gate_up_exps.weight"):
                half = data.shape[1] // 2
                base = t.name[: -len("ffn_gate_up_exps.weight")]
                w.add_tensor(base + "ffn_gate_exps.weight", np.ascontiguousarray(data[:, :half]))
                w.add_tensor(base + "ffn_up_exps.weight", np.ascontiguousarray(data[:, half:]))
                continue
            if edit_tensor is not None:
                edited = edit_tensor(t.name, data)
                if edited is not None:
                    data = edited
            w.add_tensor(rename.get(t.name, t.name), np.ascontiguousarray(data))
        else:
            w.add_tensor(rename.get(t.name, t.name), data, raw_shape=data.shape, raw_dtype=t.tensor_type)
    for name, data in (extra_tensors or {}).items():
        w.add_tensor(name, data)
    # last, so that a block size the gguf package disagrees with ggml on (q8_1) shifts no other tensor
    for name, (raw, qtype) in (raw_tensors or {}).items():
        w.add_tensor(name, raw, raw_shape=raw.shape, raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return dst
