"""ggml's RPC backend on loopback: dgemma-rpc-server (this package's, built by our CMake) serves its CPU
to a model on the same machine; with one server and with two (the layers split between them) the
decoder's logits and a whole generation equal the local run. Unreachable servers and bad endpoints are
clear errors, never ggml's abort."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from pygguf_diffusion import EngineError, Model, _core

SERVER = [sys.executable, "-c", "import sys; from pygguf_diffusion.rpc_server import main; sys.exit(main())"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture(scope="module")
def servers():
    procs, ports = [], []
    for _ in range(2):
        port = _free_port()
        # the CPU even where a GPU is present (the GPU check): the logits are compared bit for bit
        procs.append(subprocess.Popen([*SERVER, "--port", str(port), "-t", "1", "-d", "CPU"],
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
        ports.append(port)
    end = time.monotonic() + 30
    while not all(_listening(p) for p in ports):
        assert all(p.poll() is None for p in procs), [p.stdout.read() for p in procs if p.poll() is not None]
        assert time.monotonic() < end, "the RPC servers did not start"
        time.sleep(0.1)
    yield [f"127.0.0.1:{p}" for p in ports]
    for p in procs:
        p.kill()
        p.wait()


LOGITS = """
import sys
import numpy as np
from pygguf_diffusion import _core
path, servers = sys.argv[1], sys.argv[2:]
rng = np.random.default_rng(7)
prompt, canvas = rng.integers(0, 512, 40).astype(np.int32), rng.integers(0, 512, 8).astype(np.int32)
out = []
for model in (_core.Model(path, 0), _core.Model(path, -1, rpc_servers=servers)):
    ctx = _core.Context(model, n_ctx=256, n_threads=1)
    ctx.encode(prompt)
    out.append([ctx.decode_step(canvas, temperature=0.8), ctx.decode_step(canvas, sc="previous", temperature=0.6)])
print(all(np.array_equal(a, b) for a, b in zip(*out)), max(float(np.abs(a - b).max()) for a, b in zip(*out)))
"""


@pytest.mark.parametrize("n_servers", [1, 2])
def test_logits_and_placement_over_rpc_equal_the_local_run(servers, converted, n_servers):
    path = str(converted("spec9", "f32"))
    # the remote side has no CPU-resident output layer, so it takes the backend-independent reductions (a GPU's
    # path); the local run is asked for the same ones, so equal means bit for bit
    r = subprocess.run([sys.executable, "-c", LOGITS, path, *servers[:n_servers]], capture_output=True, text=True,
                       timeout=120, env={**os.environ, "DGEMMA_GENERIC_REDUCTIONS": "1"})
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[0] == "True", r.stdout
    remote_model = _core.Model(path, -1, rpc_servers=servers[:n_servers])
    where = remote_model.placement()

    def server_of(buffer: str) -> int:
        return next(i for i, s in enumerate(servers[:n_servers]) if s in buffer)

    layers = sorted({int(n.split(".")[1]) for n in where if n.startswith("blk.")})
    on = [server_of(where[f"blk.{i}.attn_q.weight"]) for i in layers]
    # contiguous runs in server order, as even as 6 layers allow; the globals on the last server
    assert on == sorted(on) and set(on) == set(range(n_servers)) and on.count(0) == 6 // n_servers
    assert server_of(where["token_embd.weight"]) == n_servers - 1
    assert all(server_of(d) == on[int(n.split(".")[1])] for n, d in where.items() if n.startswith("blk."))


def test_generation_over_rpc_equals_the_local_one(servers):
    kw = dict(n_ctx=256, seed=0, n_threads=1)
    local, remote = Model(**kw), Model(rpc_servers=",".join(servers), **kw)
    for q in ("4821+377=", "sort: 42 7 19"):
        p = local.apply_chat_template([{"role": "user", "content": q}])
        a, b = local.generate(p), remote.generate(p)
        assert a.tokens == b.tokens and a.stats.steps_per_canvas == b.stats.steps_per_canvas
    assert remote.runtime_info()["device"].startswith("RPC")


def test_unreachable_and_malformed_servers_are_clear_errors(converted):
    path = str(converted("spec9", "f32"))
    dead = f"127.0.0.1:{_free_port()}"
    with pytest.raises(EngineError, match=f"RPC server {dead}: cannot connect .*dgemma-rpc-server"):
        _core.Model(path, -1, rpc_servers=[dead])
    with pytest.raises(EngineError, match="not a number"):
        _core.Model(path, -1, rpc_servers=["127.0.0.1:http"])
    for bad in (["nohost"], ["h:0"], ["h:70000"], [5], "a:1,b"):
        with pytest.raises(ValueError, match="rpc_servers"):
            Model(path, rpc_servers=bad)
    r = subprocess.run([sys.executable, "-m", "pygguf_diffusion.cli", "-m", path, "-p", "x", "--rpc", dead],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "error: cannot use the RPC servers: RPC server" in r.stderr, r.stderr
    r = subprocess.run([sys.executable, "-m", "pygguf_diffusion.cli", "-m", path, "-p", "x", "--rpc", "a:b"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "error: invalid option: --rpc" in r.stderr, r.stderr


def test_the_server_refuses_a_port_in_use_and_bad_options(servers):
    port = servers[0].rsplit(":", 1)[1]
    r = subprocess.run([*SERVER, "--port", port], capture_output=True, text=True, timeout=30)
    assert r.returncode == 1 and "error: cannot serve" in r.stderr, r.stderr
    r = subprocess.run([*SERVER, "--port", "0"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 1 and "--port 0" in r.stderr
    r = subprocess.run([*SERVER, "--device", "NOPE", "--port", str(_free_port())], capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 1 and "no device 'NOPE'" in r.stderr


def test_weights_split_over_buffers_of_the_devices_maximum_size(servers, converted):
    # A device's largest buffer (Metal's maxBufferLength) may be smaller than its share of the weights: they
    # are copied into several buffers, none larger, and the logits stay those of the local run.
    path = str(converted("spec9", "f32"))
    cap = 256 * 1024
    env = {**os.environ, "DGEMMA_GENERIC_REDUCTIONS": "1", "DGEMMA_MAX_WEIGHT_BUFFER": str(cap)}
    r = subprocess.run([sys.executable, "-c", LOGITS, path, servers[0]], capture_output=True, text=True,
                       timeout=120, env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[0] == "True", r.stdout
    placement = subprocess.run(
        [sys.executable, "-c", "import json, sys; from pygguf_diffusion import _core; "
         "print(json.dumps(_core.Model(sys.argv[1], -1, rpc_servers=[sys.argv[2]]).placement()))", path, servers[0]],
        capture_output=True, text=True, timeout=120, env=env)
    assert placement.returncode == 0, placement.stderr
    where = json.loads(placement.stdout)
    from gguf import GGUFReader

    size = {t.name: int(t.n_bytes) for t in GGUFReader(path).tensors}
    per_buffer: dict[str, int] = {}
    for name, buf in where.items():
        per_buffer[buf] = per_buffer.get(buf, 0) + size[name]
    remote = {b: n for b, n in per_buffer.items() if b.startswith("RPC")}
    assert len(remote) > 3 and all(" #" in b for b in remote), remote
    assert all(n <= cap for n in remote.values()), remote   # data bytes; the allocations are padded within the cap

    # a tensor larger than the maximum is an error naming it and the way out
    r = subprocess.run([sys.executable, "-c", "import sys; from pygguf_diffusion import _core; "
                        "_core.Model(sys.argv[1], -1, rpc_servers=[sys.argv[2]])", path, servers[0]],
                       capture_output=True, text=True, timeout=120, env={**env, "DGEMMA_MAX_WEIGHT_BUFFER": "4096"})
    assert r.returncode != 0 and "largest buffer" in r.stderr and "=CPU'" in r.stderr, r.stderr


def test_an_output_layer_moved_to_a_server_returns_capped_logits(servers, converted):
    # n_gpu_layers 1 keeps the globals on the CPU while the override puts token_embd (the tied output layer)
    # on the server, so the output product runs there: the CPU's fused reductions, which cap the logits in
    # place, must not be used (they would cap a copy and leave the returned logits uncapped)
    path = str(converted("spec9", "f32"))
    rng = np.random.default_rng(7)
    prompt, canvas = rng.integers(0, 512, 40).astype(np.int32), rng.integers(0, 512, 8).astype(np.int32)
    local = _core.Model(path, 0)
    moved = _core.Model(path, 1, rpc_servers=servers[:1], tensor_overrides=[("token_embd", "RPC0")])
    assert servers[0] in moved.placement()["token_embd.weight"]
    out = []
    for model in (local, moved):
        ctx = _core.Context(model, n_ctx=256, n_threads=1)
        ctx.encode(prompt)
        out.append(np.asarray(ctx.decode_step(canvas, temperature=0.8), np.float64))
    cap = local.info()["hparams"]["logit_softcap"]
    uncapped = cap * np.arctanh(out[0] / cap)
    assert np.abs(uncapped - out[0]).max() > 1e-3   # capping visibly changes these logits
    np.testing.assert_allclose(out[1], out[0], rtol=1e-5, atol=1e-5)


CPU_MOE_LOGITS = """
import sys
import numpy as np
from pygguf_diffusion import _core
path, server = sys.argv[1], sys.argv[2]
out = []
for model in (_core.Model(path, 0), _core.Model(path, -1, cpu_moe=True, rpc_servers=[server])):
    ctx = _core.Context(model, n_ctx=256, n_threads=1)
    rng, V = np.random.default_rng(7), model.info()["hparams"]["n_vocab"]
    prompt, canvas = rng.integers(0, V, 40).astype(np.int32), rng.integers(0, V, ctx.canvas_length).astype(np.int32)
    ctx.encode(prompt)
    out.append([ctx.decode_step(canvas, temperature=0.8), ctx.decode_step(canvas, sc="previous", temperature=0.6)])
print(all(np.array_equal(a, b) for a, b in zip(*out)), max(float(np.abs(a - b).max()) for a, b in zip(*out)))
"""


def test_experts_kept_on_the_cpu_run_repacked_beside_layers_on_a_server(servers, tmp_path):
    # --cpu-moe with the other layers on a device (here a server on loopback, as a GPU would be): the CPU's
    # experts are repacked (dgemma-cpu-repack.cpp) and their products take the activations the device sends
    from pygguf_diffusion.bundled import bundled_model_path
    from pygguf_diffusion.quant.requantize import requantize
    from test_cpu_repack import _x86_avx2

    if bundled_model_path() is None or not _x86_avx2():
        pytest.skip("needs the bundled model and ggml's AVX2 q4_0 repacking")
    path = tmp_path / "m-q4_0.gguf"
    requantize(bundled_model_path(), path, "q4_0")
    where = _core.Model(str(path), -1, cpu_moe=True, rpc_servers=servers[:1]).placement()
    experts = [n for n in where if "_exps.weight" in n]   # (their .scale vectors stay in the mapping)
    assert experts and all(where[n] == "CPU_REPACK" for n in experts), {n: where[n] for n in experts}
    assert all(servers[0] in where[n] for n in where if n.startswith("blk.") and "_exps." not in n)
    # the same products as the local run (its experts repacked too, the rest computed by the same CPU
    # kernels on the server): equal bit for bit
    r = subprocess.run([sys.executable, "-c", CPU_MOE_LOGITS, str(path), servers[0]], capture_output=True,
                       text=True, timeout=120, env={**os.environ, "DGEMMA_GENERIC_REDUCTIONS": "1"})
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[0] == "True", r.stdout
