"""Fuzzing the engine's GGUF reading (tests/gguf_fuzz.py): thousands of mutated tiny GGUFs, each read,
and loaded and run where accepted, in a worker subprocess with a memory cap; a crash, a hang or an
undocumented exception type fails the test with the case that caused it. A longer run:
`python tests/gguf_fuzz.py FILE.gguf --cases 50000 --seed 1`."""
from __future__ import annotations

import pytest

import gguf_fuzz


@pytest.mark.slow
@pytest.mark.parametrize("outtype, seed", [("f32", 0), ("Q4_K_M", 1)])
def test_mutated_ggufs_are_rejected_or_run_never_crash(converted, outtype, seed):
    src = converted("spec9", outtype)
    res = gguf_fuzz.fuzz(src, 3000, seed)
    assert res["n"] >= 3000
    assert not res["failures"], res["failures"][:5]
    counts = res["counts"]
    assert sum(counts.values()) == res["n"]
    # the fuzzer reaches past the parser: some mutations load and run, many are refused by name
    assert counts["ran"] > 20 and counts["rejected"] > 1000, counts


def test_the_harness_records_crashes_and_hangs_and_goes_on(converted):
    res = gguf_fuzz.run_specs(converted("spec9", "f32"), [["cut", 10], ["abort"], ["cut", 30], ["hang"], ["cut", 7]],
                              case_timeout_s=15)   # room for a loaded 2-core machine; the hang still ends
    assert [(f["case"], f["outcome"]) for f in res["failures"]] == [(1, "crash"), (3, "timeout")]
    assert res["counts"]["rejected"] == 3
