"""tokrl.advantages: hand-computed values (arithmetic written out) and invariants."""

import math

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from tokrl.advantages import (MovingAverage, broadcast, discounted_returns, explained_variance,
                              gae, group_relative, leave_one_out, whiten)

PROPERTY = settings(max_examples=50, deadline=None, derandomize=True)
FLOATS = st.floats(-10, 10, allow_nan=False, width=32)


def t(x):
    return torch.tensor(x, dtype=torch.float32)


@st.composite
def batches(draw, max_n=4, max_t=8):
    """(rewards, values, mask), each (N, T); the mask may have holes and empty rows."""
    n, T = draw(st.integers(1, max_n)), draw(st.integers(1, max_t))
    grid = lambda els: t(draw(st.lists(st.lists(els, min_size=T, max_size=T), min_size=n, max_size=n)))
    return grid(FLOATS), grid(FLOATS), grid(st.sampled_from([0.0, 1.0]))


def close(a, b, atol=1e-4):
    torch.testing.assert_close(a, b, atol=atol, rtol=1e-5)


# ------------------------------------------------------------- discounted returns
def test_discounted_returns_by_hand():
    # gamma=0.5, last token is padding:
    # G_2 = 2;  G_1 = 0 + 0.5*2 = 1;  G_0 = 1 + 0.5*0 + 0.25*2 = 1.5;  G_3 = 0 (masked)
    G = discounted_returns(t([[1, 0, 2, 7]]), t([[1, 1, 1, 0]]), gamma=0.5)
    close(G, t([[1.5, 1.0, 2.0, 0.0]]))


def test_discounted_returns_skip_holes():
    # token 1 was inserted by the environment (mask 0): its reward 9 is dropped and
    # it is not a step, so token 0's next step is token 2:
    # G_3 = 2;  G_2 = 0 + 0.5*2 = 1;  G_1 = 0 (masked);  G_0 = 1 + 0.5*G_2 = 1.5
    G = discounted_returns(t([[1, 9, 0, 2]]), t([[1, 0, 1, 1]]), gamma=0.5)
    close(G, t([[1.5, 0.0, 1.0, 2.0]]))


def test_discounted_returns_ignores_garbage_on_padding():
    G = discounted_returns(t([[1, float("nan")]]), t([[1, 0]]))
    close(G, t([[1.0, 0.0]]))


# ------------------------------------------------------------------------ GAE
def test_gae_by_hand():
    # gamma=1, lam=0.5, r = [0, 0, 1], V = [0.5, 0.6, 0.8]:
    # delta_2 = 1 + 0   - 0.8 = 0.2    A_2 = 0.2
    # delta_1 = 0 + 0.8 - 0.6 = 0.2    A_1 = 0.2 + 0.5*0.2  = 0.3
    # delta_0 = 0 + 0.6 - 0.5 = 0.1    A_0 = 0.1 + 0.5*0.3  = 0.25
    # returns = A + V = [0.75, 0.9, 1.0]
    A, R = gae(t([[0, 0, 1]]), t([[0.5, 0.6, 0.8]]), t([[1, 1, 1]]), gamma=1.0, lam=0.5)
    close(A, t([[0.25, 0.3, 0.2]]))
    close(R, t([[0.75, 0.9, 1.0]]))


def test_gae_skips_holes():
    # gamma=0.5, lam=1, mask = [1, 0, 1, 1, 0]: token 1 is an env token, token 4 padding;
    # their rewards (5) and values (7, 9) must not be used.
    # t=3: delta = 1 + 0.5*0   - 0.5 = 0.5     A_3 = 0.5
    # t=2: delta = 0 + 0.5*0.5 - 2   = -1.75   A_2 = -1.75 + 0.5*0.5   = -1.5
    # t=0: delta = 0 + 0.5*V_2 - 1   = 0       A_0 = 0     + 0.5*A_2   = -0.75
    # returns = A + V = [0.25, 0, 0.5, 1.0, 0]  (= discounted returns with gamma=0.5)
    r, v, m = t([[0, 5, 0, 1, 0]]), t([[1, 7, 2, 0.5, 9]]), t([[1, 0, 1, 1, 0]])
    A, R = gae(r, v, m, gamma=0.5, lam=1.0)
    close(A, t([[-0.75, 0.0, -1.5, 0.5, 0.0]]))
    close(R, t([[0.25, 0.0, 0.5, 1.0, 0.0]]))
    close(R, discounted_returns(r, m, gamma=0.5))


def test_gae_returns_are_constants():
    v = t([[0.5, 0.2]]).requires_grad_()
    A, R = gae(t([[0, 1]]), v, t([[1, 1]]))
    assert not A.requires_grad and not R.requires_grad


@PROPERTY
@given(batches())
def test_gae_gamma_lam_one_is_reward_to_go_minus_value(batch):
    r, v, m = batch
    A, R = gae(r, v, m, gamma=1.0, lam=1.0)
    close(A, (discounted_returns(r, m, 1.0) - v) * m)
    close(R, discounted_returns(r, m, 1.0))


@PROPERTY
@given(batches(), st.floats(0.0, 1.0))
def test_gae_lam_one_returns_are_discounted_returns(batch, gamma):
    r, v, m = batch
    close(gae(r, v, m, gamma=gamma, lam=1.0)[1], discounted_returns(r, m, gamma))


@PROPERTY
@given(batches(), st.floats(0.0, 1.0))
def test_gae_lam_zero_is_td_error(batch, gamma):
    r, v, m = batch
    A, _ = gae(r, v, m, gamma=gamma, lam=0.0)
    # delta_t = r_t + gamma V_next - V_t, V_next = value of the next unmasked token (0 past the end)
    expected = torch.zeros_like(r)
    N, T = r.shape
    for i in range(N):
        for j in range(T):
            if m[i, j]:
                nxt = [v[i, k] for k in range(j + 1, T) if m[i, k]]
                v_next = nxt[0] if nxt else 0.0
                expected[i, j] = r[i, j] + gamma * v_next - v[i, j]
    close(A, expected)


# --------------------------------------------------------------------- whiten
def test_whiten_by_hand():
    # unmasked x = [1, 3, 5]: mean 3, Bessel var = (4 + 0 + 4) / 2 = 4, std 2
    x, m = t([1, 3, 5, 100]), t([1, 1, 1, 0])
    close(whiten(x, m), t([-1, 0, 1, 0]))
    # shift_mean=False adds the mean back: [-1, 0, 1] + 3
    close(whiten(x, m, shift_mean=False), t([2, 3, 4, 0]))


def test_whiten_single_token_is_finite():
    # n - 1 = 0: var is taken as 0, so the one token whitens to 0 (not NaN)
    assert torch.equal(whiten(t([[5.0, 2.0]]), t([[1, 0]])), t([[0.0, 0.0]]))


@PROPERTY
@given(batches())
def test_whiten_masked_mean_zero_var_one(batch):
    x, _, m = batch
    sel = x[m > 0]
    assume(sel.numel() >= 2 and sel.double().var() > 1e-2)
    w = whiten(x, m)[m > 0].double()
    assert abs(w.mean()) < 1e-4
    assert abs(w.var() - 1) < 1e-3                                     # Bessel-corrected


# ------------------------------------------------------- group baselines
def test_group_relative_by_hand():
    # group 1 = [1, 2, 3]: mean 2, std (Bessel) = sqrt((1 + 0 + 1) / 2) = 1 -> [-1, 0, 1] / (1 + eps)
    # group 2 = [5, 5, 5]: all equal -> 0
    s = t([1, 2, 3, 5, 5, 5])
    close(group_relative(s, 3), t([-1, 0, 1, 0, 0, 0]) / (1 + 1e-6))
    close(group_relative(s, 3, scale_by_std=False), t([-1, 0, 1, 0, 0, 0]))   # Dr. GRPO


def test_group_relative_rejects_bad_groups():
    with pytest.raises(ValueError, match="at least two"):
        group_relative(t([1, 2]), 1)
    with pytest.raises(ValueError, match="multiple"):
        group_relative(t([1, 2, 3]), 2)
    with pytest.raises(ValueError, match="at least two"):
        leave_one_out(t([1, 2]), 1)


def test_leave_one_out_by_hand():
    # [1, 2, 3]: others' means = [(2+3)/2, (1+3)/2, (1+2)/2] = [2.5, 2, 1.5]
    close(leave_one_out(t([1, 2, 3]), 3), t([-1.5, 0.0, 1.5]))
    # G=2: each is the difference to its sibling
    close(leave_one_out(t([1, 4, 2, 2]), 2), t([-3, 3, 0, 0]))


@st.composite
def groups(draw):
    g, b = draw(st.integers(2, 6)), draw(st.integers(1, 4))
    return t(draw(st.lists(FLOATS, min_size=g * b, max_size=g * b))), g


@PROPERTY
@given(groups())
def test_leave_one_out_sums_to_zero_per_group(sg):
    s, g = sg
    sums = leave_one_out(s, g).view(-1, g).sum(1)
    close(sums, torch.zeros_like(sums), atol=1e-4)


@PROPERTY
@given(st.integers(2, 8), st.integers(1, 4), FLOATS)
def test_equal_scores_give_zero_advantage(g, b, x):
    s = torch.full((g * b,), x)
    assert torch.equal(group_relative(s, g), torch.zeros(g * b))        # exactly 0, never NaN
    assert torch.equal(group_relative(s, g, scale_by_std=False), torch.zeros(g * b))
    close(leave_one_out(s, g), torch.zeros(g * b), atol=1e-5)


# ------------------------------------------------------------------ broadcast
def test_broadcast():
    close(broadcast(t([2, -1]), t([[1, 1, 0], [1, 0, 1]])), t([[2, 2, 0], [-1, 0, -1]]))


# ----------------------------------------------------------- moving average
def test_moving_average():
    ema = MovingAverage(decay=0.9)
    assert ema.value == 0.0                           # before the first update
    ema.update(10.0)
    assert ema.value == 10.0                          # the first update sets the value
    ema.update(0.0)
    assert math.isclose(ema.value, 9.0)               # 0.9*10 + 0.1*0
    ema.update(0.0)
    assert math.isclose(ema.value, 8.1)               # 0.9*9
    restored = MovingAverage(decay=0.9)
    restored.load_state_dict(ema.state_dict())
    restored.update(1.0)
    ema.update(1.0)
    assert restored.value == ema.value                # 0.9*8.1 + 0.1*1 on both
    with pytest.raises(ValueError):
        MovingAverage(decay=1.0)


# -------------------------------------------------------- explained variance
def test_explained_variance_by_hand():
    R, m = t([[1, 2, 3, 50]]), t([[1, 1, 1, 0]])                        # last token masked
    assert explained_variance(R, R, m) == 1.0                             # perfect critic
    close(explained_variance(R + 7, R, m), t(1.0))                        # a constant offset is free
    close(explained_variance(t([[2, 2, 2, -9]]), R, m), t(0.0))           # predicts the mean
    # V = [1, 2, 4]: R - V = [0, 0, -1], mean -1/3, Bessel var = (1/9 + 1/9 + 4/9) / 2 = 1/3;
    # Var R = (1 + 0 + 1) / 2 = 1  ->  EV = 1 - 1/3 = 2/3
    close(explained_variance(t([[1, 2, 4, 0]]), R, m), t(2 / 3))
    # constant returns: Var R = 0 -> defined as 0.0, not NaN
    assert explained_variance(t([[0, 1]]), t([[3, 3]]), t([[1, 1]])) == 0.0
