"""Sampler pieces without a model, against the reference's own torch formulas."""
from __future__ import annotations

import numpy as np
import pytest

from pygguf_diffusion import _core


@pytest.mark.parametrize(("t_min", "t_max", "n"), [(0.4, 0.8, 48), (0.3, 0.9, 24), (0.0, 1.0, 7)])
def test_temperature_schedule_is_bit_exact(t_min, t_max, n):
    import torch

    for k in range(n, 0, -1):
        cur = torch.tensor(k, dtype=torch.int32)
        want = float(t_min + ((t_max - t_min) * (cur / n)))     # reference LinearTemperatureSchedule
        assert _core.schedule_temperature(t_min, t_max, k, n) == np.float32(want), k


def reference_accept(entropy: np.ndarray, bound: float) -> np.ndarray:
    import torch

    h = torch.as_tensor(entropy)[None]
    s, idx = torch.sort(h, dim=-1, descending=False)
    sel = torch.cumsum(s, dim=-1) - s <= bound
    return torch.scatter(torch.zeros_like(sel), -1, idx, sel)[0].numpy()


@pytest.mark.parametrize("seed", range(20))
def test_entropy_bound_acceptance_matches_reference(seed):
    rng = np.random.default_rng(seed)
    h = (rng.exponential(0.05, 256) * rng.choice([0.01, 1.0, 10.0])).astype(np.float32)
    bound = float(rng.choice([0.1, 0.5, 2.0]))
    got = _core.accept_by_entropy(h, bound)
    np.testing.assert_array_equal(got, reference_accept(h, bound))
    assert got[np.argmin(h)]  # the lowest-entropy position is always accepted


def test_acceptance_is_greedy_in_entropy_order():
    h = np.array([0.5, 0.01, 0.2, 0.02, 3.0], np.float32)
    # sorted: 0.01, 0.02, 0.2, 0.5, 3.0; cum - cur: 0, 0.01, 0.03, 0.23, 0.73 -> bound 0.1 accepts three
    np.testing.assert_array_equal(_core.accept_by_entropy(h, 0.1), [False, True, True, True, False])
