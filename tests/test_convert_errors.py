"""Converter failures: clear messages, non-zero exit codes, and never a partial output file."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from pygguf_diffusion.convert import ConversionError, convert
from pygguf_diffusion.convert import converter as converter_mod


@pytest.fixture
def ckpt_copy(checkpoint, tmp_path) -> Path:
    dst = tmp_path / "ckpt"
    shutil.copytree(checkpoint("spec9"), dst)
    return dst


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pygguf_diffusion.convert.cli", *args], capture_output=True,
                          text=True, timeout=300)


def edit_config(ckpt: Path, fn) -> None:
    p = ckpt / "config.json"
    c = json.loads(p.read_text())
    fn(c)
    p.write_text(json.dumps(c))


def rewrite_weights(ckpt: Path, fn) -> None:
    p = ckpt / "model.safetensors"
    tensors = load_file(str(p))
    fn(tensors)
    save_file(tensors, str(p))


def outputs(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir())


def test_not_a_directory(tmp_path):
    with pytest.raises(ConversionError, match="not a directory"):
        convert(tmp_path / "nope", tmp_path / "o.gguf")


def test_missing_config(tmp_path):
    (tmp_path / "m").mkdir()
    with pytest.raises(ConversionError, match=r"config\.json.*missing"):
        convert(tmp_path / "m", tmp_path / "o.gguf")


def test_not_diffusion_gemma(ckpt_copy, tmp_path):
    edit_config(ckpt_copy, lambda c: c.update(model_type="gemma4", architectures=["Gemma4ForCausalLM"]))
    with pytest.raises(ConversionError, match="not a DiffusionGemma checkpoint"):
        convert(ckpt_copy, tmp_path / "o.gguf")


def test_missing_tensor(ckpt_copy, tmp_path):
    rewrite_weights(ckpt_copy, lambda t: t.pop("model.decoder.layers.3.router.scale"))
    with pytest.raises(ConversionError, match=r"missing tensors.*blk\.3\.ffn_gate_inp\.scale"):
        convert(ckpt_copy, tmp_path / "o.gguf")


def test_missing_encoder_layer_scalar(ckpt_copy, tmp_path):
    rewrite_weights(ckpt_copy, lambda t: t.pop("model.encoder.language_model.layers.2.layer_scalar"))
    with pytest.raises(ConversionError, match=r"blk\.2\.enc_layer_output_scale"):
        convert(ckpt_copy, tmp_path / "o.gguf")


def test_v_proj_on_full_layer_is_rejected(ckpt_copy, tmp_path):
    import numpy as np

    rewrite_weights(ckpt_copy, lambda t: t.update({"model.decoder.layers.5.self_attn.v_proj.weight":
                                                   np.zeros((32, 80), np.float32)}))
    with pytest.raises(ConversionError, match="not expected by config.json"):
        convert(ckpt_copy, tmp_path / "o.gguf")


def test_shape_mismatch(ckpt_copy, tmp_path):
    edit_config(ckpt_copy, lambda c: c["text_config"].update(intermediate_size=64))
    with pytest.raises(ConversionError, match=r"has shape \[96, 80\], expected \[64, 80\]"):
        convert(ckpt_copy, tmp_path / "o.gguf")


def test_unsupported_dtype(ckpt_copy, tmp_path):
    import numpy as np

    rewrite_weights(ckpt_copy, lambda t: t.update({"model.decoder.norm.weight": np.arange(80, dtype=np.int64)}))
    with pytest.raises(ConversionError, match="dtype I64"):
        convert(ckpt_copy, tmp_path / "o.gguf")


def test_truncated_shard_leaves_no_output(ckpt_copy, tmp_path):
    p = ckpt_copy / "model.safetensors"
    data = p.read_bytes()
    p.write_bytes(data[: len(data) - 1000])
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    with pytest.raises(ConversionError, match="truncated"):
        convert(ckpt_copy, out_dir / "o.gguf")
    assert outputs(out_dir) == []


@pytest.mark.parametrize("name", ["o.gguf", "model[v2]*?.gguf"])  # glob characters in the name
def test_interrupted_conversion_leaves_no_partial_file(checkpoint, tmp_path, monkeypatch, name):
    calls = {"n": 0}
    real = converter_mod.encode_rows

    def interrupted(*args):
        calls["n"] += 1
        if calls["n"] == 20:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(converter_mod, "encode_rows", interrupted)
    with pytest.raises(KeyboardInterrupt):
        convert(checkpoint("spec9"), tmp_path / name, "f16")
    assert calls["n"] == 20
    assert outputs(tmp_path) == []


def test_refuses_to_overwrite_without_force(checkpoint, tmp_path):
    out = tmp_path / "o.gguf"
    out.write_bytes(b"precious")
    with pytest.raises(ConversionError, match="already exists.*--force"):
        convert(checkpoint("spec9"), out, "f32")
    assert out.read_bytes() == b"precious"
    convert(checkpoint("spec9"), out, "f32", force=True)
    assert out.read_bytes()[:4] == b"GGUF"


def test_bad_outtype(checkpoint, tmp_path):
    with pytest.raises(ConversionError, match="--outtype q3_x: unsupported type or mix 'q3_x'; choose a mix"):
        convert(checkpoint("spec9"), tmp_path / "o.gguf", "q3_x")


def test_cli_success_and_errors(checkpoint, tmp_path):
    out = tmp_path / "m.gguf"
    ok = run_cli(str(checkpoint("explicit")), "--outfile", str(out), "--outtype", "q8_0")
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip() == str(out)
    assert out.read_bytes()[:4] == b"GGUF"

    again = run_cli(str(checkpoint("explicit")), "--outfile", str(out))
    assert again.returncode == 1
    last = again.stderr.strip().splitlines()[-1]
    assert last.startswith("error: cannot convert:") and "--force" in last

    missing = run_cli(str(tmp_path / "nowhere"), "--outfile", str(tmp_path / "x.gguf"))
    assert missing.returncode == 1
    assert "error: cannot convert:" in missing.stderr and "not a directory" in missing.stderr
    assert "Traceback" not in missing.stderr

    bad_type = run_cli(str(checkpoint("explicit")), "--outtype", "q4_z")
    assert bad_type.returncode == 2
    assert bad_type.stderr.startswith("error: --outtype q4_z: unsupported type or mix 'q4_z'; choose a mix (Q8_0")
    bad_override = run_cli(str(checkpoint("explicit")), "--tensor-type", "attn_q")
    assert bad_override.returncode == 2 and "expected PATTERN=TYPE" in bad_override.stderr
    bad_regex = run_cli(str(checkpoint("explicit")), "--tensor-type", "attn_(q=q8_0")
    assert bad_regex.returncode == 2 and "bad pattern" in bad_regex.stderr
    assert not list(checkpoint("explicit").glob("*.gguf"))


def test_root_script_is_the_same_command(checkpoint, tmp_path):
    script = Path(__file__).resolve().parents[1] / "convert_hf_to_gguf.py"
    out = tmp_path / "s.gguf"
    r = subprocess.run([sys.executable, str(script), str(checkpoint("explicit")), "--outfile", str(out),
                        "--outtype", "f16"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert out.read_bytes()[:4] == b"GGUF"


def test_missing_tokenizer(ckpt_copy, tmp_path):
    (ckpt_copy / "tokenizer.json").unlink()
    with pytest.raises(ConversionError, match=r"tokenizer\.json: missing tokenizer"):
        convert(ckpt_copy, tmp_path / "o.gguf")
    assert outputs(tmp_path) == ["ckpt"]


def test_unreadable_config(ckpt_copy, tmp_path):
    (ckpt_copy / "config.json").write_text("{not json")
    with pytest.raises(ConversionError, match=r"config\.json: cannot read config\.json"):
        convert(ckpt_copy, tmp_path / "o.gguf")


@pytest.mark.parametrize("victim", ["model.safetensors", "config.json"])
def test_force_never_overwrites_the_checkpoint_it_reads(ckpt_copy, victim):
    target = ckpt_copy / victim
    before = target.read_bytes()
    with pytest.raises(ConversionError, match=rf"is one of the checkpoint's own files \({victim}\)"):
        convert(ckpt_copy, target, "f32", force=True)
    assert target.read_bytes() == before
    link = ckpt_copy / "out.gguf"
    link.symlink_to(target)  # the same file under another name
    with pytest.raises(ConversionError, match="is one of the checkpoint's own files"):
        convert(ckpt_copy, link, "f32", force=True)
    assert target.read_bytes() == before


def test_a_part_file_left_by_a_killed_run_is_removed_by_the_next(ckpt_copy, tmp_path):
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    out = tmp_path / "m.gguf"
    stale = tmp_path / f".m.gguf.{gone.stdout.strip()}.abc123.part"  # its writer has exited (SIGKILL)
    live = tmp_path / f".m.gguf.{os.getpid()}.def456.part"  # a conversion still running
    stale.write_bytes(b"x" * 1000)
    live.write_bytes(b"y")
    convert(ckpt_copy, out, "f32")
    assert out.is_file() and not stale.exists() and live.exists()


@pytest.mark.skipif(os.name != "posix", reason="POSIX signals")
@pytest.mark.parametrize("signame", ["SIGTERM", "SIGHUP"])
def test_sigterm_or_sighup_mid_write_leaves_no_part_file(ckpt_copy, tmp_path, signame):
    out = tmp_path / "m.gguf"
    child = textwrap.dedent(f"""
        import sys, time
        from pygguf_diffusion.convert import converter, cli
        slow = converter._write_tensor
        def write(*a, **k):
            time.sleep(0.2)  # a big model: the signal lands while tensors are written
            return slow(*a, **k)
        converter._write_tensor = write
        sys.exit(cli.main([{str(ckpt_copy)!r}, "--outfile", {str(out)!r}, "--outtype", "f32"]))
    """)
    p = subprocess.Popen([sys.executable, "-c", child], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not list(tmp_path.glob(".m.gguf.*.part")) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert list(tmp_path.glob(".m.gguf.*.part")), "the conversion never started writing"
    p.send_signal(getattr(signal, signame))
    _, err = p.communicate(timeout=60)
    signum = getattr(signal, signame)
    assert p.returncode == 128 + signum, err
    assert f"error: terminated by signal {int(signum)}: no output was written" in err
    assert not out.exists() and not list(tmp_path.glob(".m.gguf.*"))


def test_quantizer_refusals_name_the_tensor(checkpoint, tmp_path):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(checkpoint("spec9"), ckpt)
    st = next(ckpt.glob("*.safetensors"))
    tensors = load_file(st)
    key = next(k for k in tensors if k.endswith("layers.2.mlp.down_proj.weight"))
    tensors[key][0, 0] = 1e6  # finite, but beyond f16's range
    save_file(tensors, st, metadata={"format": "pt"})
    with pytest.raises(ConversionError, match=r"tensor blk\.2\.ffn_down\.weight \(.*down_proj.weight\): quantize: "
                                              r"ggml produced invalid f16 data"):
        convert(ckpt, tmp_path / "o.gguf", "f16")
    assert outputs(tmp_path) == ["ckpt"]


def test_an_imatrix_of_another_model_is_refused(checkpoint, tmp_path):
    from pygguf_diffusion.quant.imatrix import Imatrix

    im = Imatrix(datasets=["x"])
    im.add("blk.0.attn_q.weight", np.ones((1, 7)), np.ones(1))
    path = im.save(tmp_path / "im.gguf")
    # "released" has rows of 64, which q8_0's blocks of 32 fit (spec9's 80 would fall back to f16)
    with pytest.raises(ConversionError, match="'blk.0.attn_q.weight' has rows of 7, the tensor blk.0.attn_q.weight "
                                              "rows of 64; the importance matrix belongs to another model"):
        convert(checkpoint("released"), tmp_path / "o.gguf", "q8_0", imatrix=path)
    r = run_cli(str(checkpoint("released")), "--outfile", str(tmp_path / "o.gguf"), "--outtype", "q8_0",
                "--imatrix", str(path))
    assert r.returncode == 1 and "Traceback" not in r.stderr and "belongs to another model" in r.stderr
    assert outputs(tmp_path) == ["im.gguf"]
