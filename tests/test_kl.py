"""tokrl.kl: KL coefficient controllers, arithmetic written out."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tokrl.kl import AdaptiveKL, FixedKL

PROPERTY = settings(max_examples=50, deadline=None, derandomize=True)


def test_fixed_kl():
    ctl = FixedKL(0.05)
    ctl.update(kl=100.0, n_steps=256)
    assert ctl.value == 0.05                                # never moves
    other = FixedKL(1.0)
    other.load_state_dict(ctl.state_dict())
    assert other.value == 0.05
    with pytest.raises(ValueError):
        FixedKL(-1.0)


def test_adaptive_kl_by_hand():
    ctl = AdaptiveKL(init_coef=0.1, target=6.0, horizon=10000)
    # KL = 9: error = clip(9/6 - 1 = 0.5, +-0.2) = 0.2;  beta = 0.1 * (1 + 0.2 * 256/10000) = 0.100512
    ctl.update(kl=9.0, n_steps=256)
    assert math.isclose(ctl.value, 0.100512)
    # KL = 5.7: error = 5.7/6 - 1 = -0.05 (inside the clip);  beta *= 1 - 0.05 * 100/10000 = 0.9995
    ctl.update(kl=5.7, n_steps=100)
    assert math.isclose(ctl.value, 0.100512 * 0.9995)
    # KL = 0: error = clip(-1, +-0.2) = -0.2;  beta *= 1 - 0.2 * 500/10000 = 0.99
    ctl.update(kl=torch.tensor(0.0), n_steps=500)            # a 0-d tensor is accepted
    assert math.isclose(ctl.value, 0.100512 * 0.9995 * 0.99)


def test_adaptive_kl_state_round_trip():
    ctl = AdaptiveKL(0.2, target=1.0, horizon=100)
    ctl.update(3.0, 10)                                      # 0.2 * (1 + 0.2 * 10/100) = 0.204
    restored = AdaptiveKL(0.2, target=1.0, horizon=100)
    restored.load_state_dict(ctl.state_dict())
    assert math.isclose(restored.value, 0.204)
    ctl.update(0.5, 10)
    restored.update(0.5, 10)
    assert restored.value == ctl.value


def test_adaptive_kl_validates():
    for args in [(-0.1, 1.0, 10), (0.1, 0.0, 10), (0.1, 1.0, 0)]:
        with pytest.raises(ValueError):
            AdaptiveKL(*args)


@PROPERTY
@given(st.floats(1e-3, 10), st.floats(1e-3, 10), st.floats(0, 100), st.integers(1, 1000))
def test_adaptive_kl_moves_towards_target(beta, target, kl, n):
    horizon = 1000                                           # n <= horizon: the factor stays in [0.8, 1.2]
    ctl = AdaptiveKL(beta, target, horizon)
    ctl.update(kl, n)
    if kl > target:
        assert ctl.value >= beta                             # too far from the reference: penalize more
    elif kl < target:
        assert ctl.value <= beta
    assert 0.8 * beta - 1e-12 <= ctl.value <= 1.2 * beta + 1e-12
