"""Defaults shared by the Python API and dgemma-cli (one place, so they cannot drift apart)."""

DEFAULT_N_CTX = 8192  # positions of context when none is asked for, capped at the model's context_length
INT32_MAX = 2**31 - 1  # the engine's counts (n_ctx, tokens, steps) are int32: larger values are refused
MAX_THREADS = 512  # ggml's GGML_MAX_N_THREADS: a larger pool is refused before anything is allocated
