"""Defaults shared by the Python API and dgemma-cli (one place, so they cannot drift apart)."""

DEFAULT_N_CTX = 8192  # positions of context when none is asked for, capped at the model's context_length
