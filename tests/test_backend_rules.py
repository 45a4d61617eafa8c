"""Every flash-attention node of the encoder and decoder graphs meets the CUDA backend's conditions for
running it on the GPU, read from the pinned ggml source (ggml-cuda/fattn.cu,
ggml_cuda_get_best_fattn_kernel) and encoded below. A node that fails them is not an error: the scheduler
silently runs it on the CPU, copying its inputs across every step (seen on an H200, 2026-11-27: the full
layers' attention, head dim 512, left the GPU in every decoder step). Checked on a model with the released
head dims (256 sliding, 512 full) and GQA, without a GPU, for short and long prefixes and canvases."""
from __future__ import annotations

import numpy as np
import pytest

from pygguf_diffusion import _core

FATTN_KQ_STRIDE = 256
KV_TYPES = {0, 1, 30, 2, 3, 6, 7, 8}  # f32 f16 bf16 q4_0 q4_1 q5_0 q5_1 q8_0
SAME_V_HEAD_DIMS = {40, 64, 72, 80, 96, 112, 128, 256}


def cuda_runs_flash_attn(node) -> tuple[bool, str]:
    q, k, v, mask = node["src"][:4]
    gqa = q["ne"][2] // k["ne"][2]
    strides_ok = all(t["nb"][i] % 16 == 0 for t in (q, k, v, mask) if t is not None for i in (1, 2, 3))
    gqa_opt = gqa >= 2 and mask is not None and k["ne"][1] % FATTN_KQ_STRIDE == 0 and strides_ok
    hd, hd_v = k["ne"][0], v["ne"][0]
    if hd in SAME_V_HEAD_DIMS:
        if hd_v != hd:
            return False, f"V head dim {hd_v} != K head dim {hd}"
    elif hd == 512:
        if hd_v != 512 or not gqa_opt:
            return False, (f"head dim 512 needs the GQA kernel: gqa {gqa}, mask {mask is not None}, KV length "
                           f"{k['ne'][1]} % 256, strides {strides_ok}")
    else:
        return False, f"head dim {hd}"
    if k["type"] not in KV_TYPES or v["type"] not in KV_TYPES:
        return False, "K/V type"
    if mask is not None and mask["ne"][2] != 1:
        return False, "mask ne[2]"
    return True, ""


def flash_nodes(ctx):
    return [n for n in ctx.last_graph() if n["op"] == "FLASH_ATTN_EXT"]


def check(ctx, where):
    nodes = flash_nodes(ctx)
    assert nodes, where
    for n in nodes:
        ok, why = cuda_runs_flash_attn(n)
        assert ok, f"{where}: {n['name']}: {why}"
        # beyond what CUDA needs for head dim 256: the same padded, masked layout everywhere (its GQA and
        # vector kernels need it)
        q, k, v, mask = n["src"][:4]
        assert mask is not None and mask["type"] == 1 and k["ne"][1] % FATTN_KQ_STRIDE == 0, (where, n["name"])
        assert mask["ne"][0] == k["ne"][1] and mask["ne"][1] == q["ne"][1], (where, n["name"])
    return {n["src"][1]["ne"][0] for n in nodes}


@pytest.mark.parametrize("n_prompt", [5, 300])
def test_flash_attention_nodes_meet_cuda_rules(converted, n_prompt):
    m = _core.Model(str(converted("long256", "f32")), 0, False)
    ctx = _core.Context(m, 1024, 512, 2)
    rng = np.random.default_rng(0)
    ctx.encode(rng.integers(3, 500, n_prompt).astype(np.int32))
    seen = check(ctx, f"encoder, {n_prompt} tokens")
    canvas = rng.integers(3, 500, ctx.canvas_length).astype(np.int32)
    ctx.decode_step(canvas, None, 1.0, False)
    seen |= check(ctx, f"decoder after {n_prompt} tokens")
    ctx.truncate(n_prompt - 2)
    ctx.encode(rng.integers(3, 500, 7).astype(np.int32))   # a second chunk on a stored prefix
    seen |= check(ctx, "encoder, second chunk")
    ctx.decode_step(canvas, None, 1.0, False)
    ctx.decode_step(canvas, "previous", 1.0, False)
    seen |= check(ctx, "decoder, second chunk")
    assert seen == {256, 512}  # both released head dims were exercised


def test_the_rule_catches_an_unpadded_full_layer():
    # the layout the engine had before (seen on the GPU): no mask, KV length prefix + canvas
    q = {"ne": (512, 256, 16, 1), "nb": (4, 32768, 2048, 8388608), "type": 0}
    k = {"ne": (512, 320, 2, 1), "nb": (4, 4096, 2048, 1310720), "type": 0}
    ok, why = cuda_runs_flash_attn({"src": [q, k, dict(k), None]})
    assert not ok and "head dim 512 needs the GQA kernel" in why


# ggml-cuda fuses the MoE routing into one kernel when its nodes come in this order (ggml_cuda_topk_moe_fusion
# with the norm: softmax, top-k, gathered probabilities renormalised by a clamped sum), and the weighted sum
# of the experts when MUL(experts, weights) is followed by K views and K - 1 adds
# (ggml_cuda_match_moe_weighted_reduction). A node in between, or another order, runs them one kernel each.
TOPK_MOE = ["SOFT_MAX", "RESHAPE", "ARGSORT", "VIEW", "GET_ROWS", "RESHAPE", "SUM_ROWS", "CLAMP", "DIV", "RESHAPE"]


def check_moe_order(graph, where):
    routers = [i for i, n in enumerate(graph) if n["op"] == "SOFT_MAX" and n["name"].startswith("router_probs-")]
    assert routers, where
    for i in routers:
        seq = graph[i:i + len(TOPK_MOE)]
        assert [n["op"] for n in seq] == TOPK_MOE, (where, graph[i]["name"], [n["op"] for n in seq])
        src = [[t["name"] if t else None for t in n["src"][:2]] for n in seq]
        name = [n["name"] for n in seq]
        # the links the matcher follows
        assert src[1][0] == name[0] and src[2][0] == name[0] and src[3][0] == name[2], where
        assert src[4] == [name[1], name[3]] and src[5][0] == name[4] and src[6][0] == name[5], where
        assert src[7][0] == name[6] and src[8] == [name[5], name[7]] and src[9][0] == name[8], where
    weighted = [i for i, n in enumerate(graph) if n["op"] == "MUL" and n["src"][1]
                and n["src"][1]["name"].startswith("expert_weights-")]
    assert len(weighted) == len(routers), where
    for i in weighted:
        k = graph[i]["ne"][1]
        ops = [n["op"] for n in graph[i + 1:i + 2 * k]]
        assert ops[:2] == ["VIEW", "VIEW"] and ops.count("VIEW") == k and ops.count("ADD") == k - 1, (where, ops)
        views = 0
        for op in ops:   # every add sums the views so far
            views += op == "VIEW"
            assert op == "VIEW" or views >= 2, (where, ops)


def test_moe_routing_and_weighted_sum_come_in_the_order_cuda_fuses(converted):
    m = _core.Model(str(converted("long256", "f32")), 0, False)
    ctx = _core.Context(m, 512, 256, 2)
    ctx.encode(np.arange(3, 40, dtype=np.int32))
    check_moe_order(ctx.last_graph(), "encoder")
    canvas = np.arange(3, 3 + ctx.canvas_length, dtype=np.int32)
    ctx.decode_step(canvas, None, 1.0, False)
    ctx.decode_step(canvas, "previous", 1.0, False)
    check_moe_order(ctx.last_graph(), "decoder")


def test_vocabulary_wide_products_ask_for_f32_accumulation(converted):
    # self-conditioning (probabilities @ the transposed embedding) and the tied output layer contract over
    # the vocabulary or the hidden size; on CUDA an f16 operand would otherwise be accumulated in half
    # precision by cuBLAS (ggml-cuda.cu: compute type F32 only when op_params[0] == GGML_PREC_F32)
    m = _core.Model(str(converted("long256", "f16")), 0, False)
    ctx = _core.Context(m, 256, 256, 2)
    ctx.encode(np.arange(3, 20, dtype=np.int32))
    ctx.decode_step(np.arange(3, 3 + ctx.canvas_length, dtype=np.int32), None, 1.0, False)
    products = {n["src"][0]["name"]: n for n in ctx.last_graph()
                if n["op"] == "MUL_MAT" and n["src"][0]["name"] in ("token_embd_t", "token_embd.weight")}
    assert set(products) == {"token_embd_t", "token_embd.weight"}
    assert all(n["op_param0"] == 10 for n in products.values())  # GGML_PREC_F32


def test_a_decoder_step_uploads_o_of_the_canvas_whatever_the_stored_prefix(converted):
    # The masks are fixed for a canvas and every canvas row sees the same keys: the full layers' mask is
    # computed in the graph and the sliding one is a single row repeated there, so a step's uploads do not
    # grow with the prefix (a full [pad(P + C), C] mask per step was 64 MiB at a 128k context)
    m = _core.Model(str(converted("long256", "f32")), 0, False)
    ctx = _core.Context(m, 4096, 512, 2)
    C = ctx.canvas_length
    canvas = np.arange(3, 3 + C, dtype=np.int32)
    rng = np.random.default_rng(1)
    sent = {}
    for n_prompt in (5, 3000):
        ctx.truncate(0)
        ctx.encode(rng.integers(3, 500, n_prompt).astype(np.int32))
        ctx.decode_step(canvas, None, 1.0, False)
        ctx.decode_step(canvas, "previous", 1.0, False)
        sent[n_prompt] = ctx.step_input_bytes
    assert sent[5] == sent[3000], sent
    hp = m.info()["hparams"]
    rope = 2 * 4 * C * (hp["head_dim_swa"] + hp["head_dim_full"])          # cos and sin, f32, both kinds
    assert sent[3000] <= rope + 32 * C + 2 * (1024 + C) + 64, sent   # + ids, slots, uniforms; one mask row
    ctx.decode_step(canvas, np.zeros((C, m.info()["hparams"]["n_vocab"]), np.float32), 1.0, False)
    assert ctx.step_input_bytes > sent[5]   # logits a caller gives are uploaded (and counted)
