"""GenerationStats: every figure of the stats line follows its README definition."""
from __future__ import annotations

from pygguf_diffusion import GenerationStats


def test_line_figures():
    st = GenerationStats(prompt_tokens=50, prompt_ms=250.0, steps_per_canvas=[4, 2], decoder_forwards=6,
                         decode_ms=600.0, ttft_ms=700.0, total_ms=1000.0, committed_tokens=24,
                         tokens_per_forward=4.0, peak_rss_bytes=2**30)
    assert st.prompt_tok_s == 200.0          # 50 tokens / 0.25 s
    assert st.decode_tok_s == 40.0           # 24 committed / 0.6 s of denoising
    assert st.committed_tok_s == 24.0        # 24 committed / 1 s end to end
    assert st.ms_per_step == 100.0 and st.steps_per_canvas_mean == 3.0
    assert st.line() == ("24 tokens | prompt 50 tok at 200.0 tok/s | decode 40.0 tok/s | end-to-end 24.0 tok/s"
                         " | TTFT 0.70 s | 3.0 steps/canvas at 100.0 ms/step | 4.00 tok/forward")


def test_zero_times_do_not_divide_by_zero():
    st = GenerationStats(prompt_tokens=0, prompt_ms=0.0, steps_per_canvas=[], decoder_forwards=0, decode_ms=0.0,
                         ttft_ms=0.0, total_ms=0.0, committed_tokens=0, tokens_per_forward=0.0, peak_rss_bytes=0)
    assert "decode 0.0 tok/s" in st.line() and "0.0 steps/canvas at 0.0 ms/step" in st.line()
