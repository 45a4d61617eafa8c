#!/usr/bin/env python3
"""Convert a Hugging Face DiffusionGemma checkpoint to GGUF (same as the `dgemma-convert` command).

    python convert_hf_to_gguf.py path/to/diffusiongemma-26B-A4B-it --outfile model-BF16.gguf --outtype bf16
"""
import sys

from pygguf_diffusion.convert.cli import main

if __name__ == "__main__":
    sys.exit(main())
