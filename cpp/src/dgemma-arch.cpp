#include "dgemma-arch.h"

namespace dgemma {

std::string arch_key(const char * suffix) { return std::string(ARCH_NAME) + "." + suffix; }

namespace {
std::string blk(int il, const char * name) { return "blk." + std::to_string(il) + "." + name; }
} // namespace

std::string fused_gate_up_name(int il) { return blk(il, "ffn_gate_up_exps.weight"); }

std::vector<tensor_spec> global_tensor_specs(const hparams & hp) {
    const int64_t H = hp.n_embd, V = hp.n_vocab, I = hp.n_ff;
    using C = tensor_class;
    return {
        {"token_embd.weight",         {H, V}, C::matrix, {}},
        {"output_norm.weight",        {H},    C::vector, {}},
        {"rope_freqs.weight",         {hp.head_dim_full / 2}, C::vector, {}},
        // llama.cpp #24427 names the pre-norm differently; accept its files too.
        {"self_cond_pre_norm.weight", {H},    C::vector, {"self_cond_norm.weight"}},
        {"self_cond_gate.weight",     {H, I}, C::matrix, {}},
        {"self_cond_up.weight",       {H, I}, C::matrix, {}},
        {"self_cond_down.weight",     {I, H}, C::matrix, {}},
    };
}

std::vector<tensor_spec> layer_tensor_specs(const hparams & hp, int il, bool fused_gate_up) {
    const int64_t H = hp.n_embd, I = hp.n_ff, E = hp.n_expert, EI = hp.n_ff_expert;
    const int64_t hd = hp.head_dim(il), nq = (int64_t) hp.n_head * hd, nkv = (int64_t) hp.n_head_kv(il) * hd;
    using C = tensor_class;
    std::vector<tensor_spec> t = {
        {blk(il, "attn_norm.weight"),           {H},       C::vector, {}},
        {blk(il, "attn_q.weight"),              {H, nq},   C::matrix, {}},
        {blk(il, "attn_k.weight"),              {H, nkv},  C::matrix, {}},
    };
    if (hp.is_swa(il)) {
        // full layers have no V projection: V is the raw K projection
        t.push_back({blk(il, "attn_v.weight"),  {H, nkv},  C::matrix, {}});
    }
    std::vector<tensor_spec> rest = {
        {blk(il, "attn_output.weight"),         {nq, H},   C::matrix, {}},
        {blk(il, "attn_q_norm.weight"),         {hd},      C::vector, {}},
        {blk(il, "attn_k_norm.weight"),         {hd},      C::vector, {}},
        {blk(il, "post_attention_norm.weight"), {H},       C::vector, {}},
        {blk(il, "ffn_norm.weight"),            {H},       C::vector, {}},
        {blk(il, "ffn_gate.weight"),            {H, I},    C::matrix, {}},
        {blk(il, "ffn_up.weight"),              {H, I},    C::matrix, {}},
        {blk(il, "ffn_down.weight"),            {I, H},    C::matrix, {}},
        {blk(il, "post_ffw_norm_1.weight"),     {H},       C::vector, {}},
        {blk(il, "ffn_gate_inp.weight"),        {H, E},    C::matrix, {}},
        {blk(il, "ffn_gate_inp.scale"),         {H},       C::vector, {}},
        {blk(il, "pre_ffw_norm_2.weight"),      {H},       C::vector, {}},
    };
    t.insert(t.end(), rest.begin(), rest.end());
    if (fused_gate_up) {
        t.push_back({fused_gate_up_name(il),           {H, 2 * EI, E}, C::matrix, {}});
    } else {
        t.push_back({blk(il, "ffn_gate_exps.weight"),  {H, EI, E},     C::matrix, {}});
        t.push_back({blk(il, "ffn_up_exps.weight"),    {H, EI, E},     C::matrix, {}});
    }
    std::vector<tensor_spec> tail = {
        {blk(il, "ffn_down_exps.weight"),       {EI, H, E}, C::matrix, {}},
        {blk(il, "ffn_down_exps.scale"),        {E},        C::vector, {}},
        {blk(il, "post_ffw_norm_2.weight"),     {H},        C::vector, {}},
        {blk(il, "post_ffw_norm.weight"),       {H},        C::vector, {}},
        {blk(il, "layer_output_scale.weight"),  {1},        C::vector, {}},
        {blk(il, "enc_layer_output_scale.weight"), {1},     C::vector, {}},
    };
    t.insert(t.end(), tail.begin(), tail.end());
    return t;
}

} // namespace dgemma
