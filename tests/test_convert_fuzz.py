"""The converter against bad configs and corrupt checkpoints: every case ends in a ConversionError that
names what is wrong (and leaves no output), or in a file the engine accepts. Never a traceback of another
type, never a GGUF the engine then rejects."""
from __future__ import annotations

import json
import math
import shutil
import struct
from pathlib import Path

import pytest

from pygguf_diffusion import _core
from pygguf_diffusion.convert import ConversionError, convert

BAD_VALUES = [-1, 0, 2**40, "12", 1.5, True, [], {}, math.nan, math.inf]
TEXT_KEYS = ["num_hidden_layers", "hidden_size", "intermediate_size", "num_attention_heads",
             "num_key_value_heads", "head_dim", "global_head_dim", "num_global_key_value_heads", "vocab_size",
             "max_position_embeddings", "sliding_window", "rms_norm_eps", "num_experts", "top_k_experts",
             "moe_intermediate_size", "final_logit_softcapping", "bos_token_id", "eos_token_id", "pad_token_id"]
GEN_KEYS = ["max_denoising_steps", "t_min", "t_max", "entropy_bound", "stability_threshold",
            "confidence_threshold"]


@pytest.fixture(scope="module")
def base(tmp_path_factory, checkpoint) -> Path:
    src = checkpoint("spec9")
    dst = tmp_path_factory.mktemp("fuzz") / "ckpt"
    shutil.copytree(src, dst)
    return dst


def attempt(base: Path, tmp: Path, edit) -> str:
    """Converts a copy of base edited by edit(dir); returns 'error: …' or 'ok' (the engine read the file)."""
    d = tmp / "c"
    if d.exists():
        shutil.rmtree(d)
    shutil.copytree(base, d)
    edit(d)
    out = tmp / "o.gguf"
    out.unlink(missing_ok=True)
    try:
        convert(d, out, "f32", force=True)
    except ConversionError as e:
        assert not out.exists() and not list(tmp.glob(".o.gguf.*.part")), "an error left output behind"
        return f"error: {e}"
    _core.inspect_gguf(str(out))   # raises if the converter wrote what the engine refuses
    return "ok"


def set_json(name: str, path: list[str], value):
    def edit(d: Path) -> None:
        p = d / name
        cfg = json.loads(p.read_text()) if p.exists() else {}
        node = cfg
        for k in path[:-1]:
            node = node.setdefault(k, {})
        node[path[-1]] = value
        p.write_text(json.dumps(cfg))
    return edit


@pytest.mark.parametrize("key", TEXT_KEYS)
def test_every_bad_number_in_the_config_is_refused_by_name(base, tmp_path, key):
    results = {repr(v): attempt(base, tmp_path, set_json("config.json", ["text_config", key], v)) for v in BAD_VALUES}
    for v, r in results.items():
        if r != "ok":
            assert key in r or "shape" in r or "layer" in r, (v, r)
    if key in ("global_head_dim", "num_global_key_value_heads"):
        return   # this checkpoint sets them per layer (per_layer_config), so the values are not read
    # whatever else happens, a string, a list, an object or a boolean where a number belongs is an error
    for v in ("'12'", "[]", "{}", "True", "nan", "inf"):
        if key == "final_logit_softcapping" and v in ("[]", "{}"):   # falsy: the reference's default
            continue
        assert results[v].startswith("error:"), (key, v, results[v])
    assert results["-1"].startswith("error:"), results["-1"]


@pytest.mark.parametrize("key", GEN_KEYS)
def test_bad_sampler_defaults_are_refused_by_name(base, tmp_path, key):
    for v in (-1, "0.5", [], math.nan) + ((10**9,) if key in ("max_denoising_steps", "stability_threshold") else ()):
        r = attempt(base, tmp_path, set_json("generation_config.json", [key], v))
        assert r.startswith("error:") and key in r, (key, v, r)


@pytest.mark.parametrize("edit, expect", [
    (set_json("config.json", ["text_config", "eos_token_id"], []), "eos_token_id is an empty list"),
    (set_json("config.json", ["text_config", "num_key_value_heads"], 0), "num_key_value_heads = 0"),
    (set_json("config.json", ["text_config", "top_k_experts"], 0), "top_k_experts = 0"),
    (set_json("config.json", ["text_config", "sliding_window"], 0), "sliding_window = 0"),
    (set_json("config.json", ["text_config", "rms_norm_eps"], -1e-6), "rms_norm_eps = -1e-06"),
    (set_json("config.json", ["text_config", "head_dim"], 15), "head_dim 15 is odd"),
    (set_json("config.json", ["text_config", "layer_types"], "full_attention"), "layer_types must be a list"),
    (set_json("config.json", ["text_config", "layer_types"], [1, 2]), "layer_types has 2 entries"),
    (set_json("config.json", ["text_config", "per_layer_config"], [1]), "per_layer_config must be an object"),
    (set_json("config.json", ["text_config", "rope_parameters"], "yes"), "rope_parameters must map"),
    (set_json("config.json", ["canvas_length"], 10**6), "canvas_length = 1000000"),
    (lambda d: (set_json("config.json", ["model_type"], 5)(d), set_json("config.json", ["architectures"], 5)(d)),
     "not a DiffusionGemma"),
    (set_json("config.json", ["text_config", "rope_parameters", "full_attention", "partial_rotary_factor"], 2),
     "partial_rotary_factor = 2"),
])
def test_named_config_errors(base, tmp_path, edit, expect):
    r = attempt(base, tmp_path, edit)
    assert r.startswith("error:") and expect in r, r


def test_deeply_nested_json_is_an_error_not_a_recursion_crash(base, tmp_path):
    def edit(d: Path) -> None:
        (d / "config.json").write_text("[" * 200000 + "]" * 200000)
    r = attempt(base, tmp_path, edit)
    assert "nested too deeply" in r, r


# ---- corrupt safetensors ----------------------------------------------------------------------------------

def rewrite_header(d: Path, fn) -> None:
    """Applies fn to the parsed header of model.safetensors and writes it back before the same data."""
    p = d / "model.safetensors"
    raw = p.read_bytes()
    (hlen,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + hlen])
    fn(header)
    new = json.dumps(header).encode()
    p.write_bytes(struct.pack("<Q", len(new)) + new + raw[8 + hlen:])


def first_tensor(h: dict) -> str:
    return next(k for k in h if k != "__metadata__")


def two_tensors_same_size(h: dict) -> tuple[str, str]:
    by_size: dict[int, str] = {}
    for k, v in h.items():
        if k == "__metadata__":
            continue
        n = v["data_offsets"][1] - v["data_offsets"][0]
        if n in by_size:
            return by_size[n], k
        by_size[n] = k
    raise AssertionError("no two tensors of one size")


def alias(h: dict) -> None:
    a, b = two_tensors_same_size(h)
    h[b]["data_offsets"] = list(h[a]["data_offsets"])


def set_field(field, value):
    def fn(h: dict) -> None:
        h[first_tensor(h)][field] = value
    return fn


@pytest.mark.parametrize("fn, expect", [
    (set_field("data_offsets", [-8, 0]), "data_offsets [-8, 0] are not [begin, end]"),
    (set_field("data_offsets", [16, 8]), "are not [begin, end]"),
    (set_field("data_offsets", "0-8"), "are not [begin, end]"),
    (set_field("shape", [-1, 4]), "is not a list of non-negative integers"),
    (set_field("shape", "4x4"), "is not a list of non-negative integers"),
    (set_field("dtype", None), "has dtype None"),
    (alias, "overlap"),
    (lambda h: h.__setitem__(first_tensor(h), 7), "malformed header entry"),
])
def test_corrupt_safetensors_headers(base, tmp_path, fn, expect):
    r = attempt(base, tmp_path, lambda d: rewrite_header(d, fn))
    assert r.startswith("error:") and expect in r, r


def sharded(weight_map_edit):
    def edit(d: Path) -> None:
        shutil.move(d / "model.safetensors", d / "model-00001-of-00001.safetensors")
        raw = (d / "model-00001-of-00001.safetensors").read_bytes()
        (hlen,) = struct.unpack("<Q", raw[:8])
        names = [k for k in json.loads(raw[8:8 + hlen]) if k != "__metadata__"]
        wm = {n: "model-00001-of-00001.safetensors" for n in names}
        weight_map_edit(d, wm)
        (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": wm}))
    return edit


def outside(d: Path, wm: dict) -> None:
    shutil.copy(d / "model-00001-of-00001.safetensors", d.parent / "evil.safetensors")
    wm[next(iter(wm))] = "../evil.safetensors"


def absolute(d: Path, wm: dict) -> None:
    wm[next(iter(wm))] = str(d / "model-00001-of-00001.safetensors")


def duplicate(d: Path, wm: dict) -> None:
    shutil.copy(d / "model-00001-of-00001.safetensors", d / "model-copy.safetensors")
    wm[next(iter(wm))] = "model-copy.safetensors"


@pytest.mark.parametrize("edit, expect", [
    (sharded(lambda d, wm: None), None),   # the sharded layout itself converts
    (sharded(outside), "outside the checkpoint directory"),
    (sharded(absolute), "outside the checkpoint directory"),
    (sharded(duplicate), "is in both"),
    (sharded(lambda d, wm: wm.__setitem__(next(iter(wm)), 5)), "weight_map must map"),
])
def test_shard_indexes(base, tmp_path, edit, expect):
    r = attempt(base, tmp_path, edit)
    if expect is None:
        assert r == "ok", r
    else:
        assert r.startswith("error:") and expect in r, r
