"""tokrl.losses: hand-computed values (arithmetic written out), invariants, and a bandit."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tokrl import losses
from tokrl.advantages import leave_one_out
from tokrl.losses import (AGGREGATIONS, aggregate, entropy, gspo_clip, kl, policy_gradient,
                          ppo_clip, ppo_clip_fraction, token_logprobs, value_loss)

PROPERTY = settings(max_examples=50, deadline=None, derandomize=True)
FLOATS = st.floats(-5, 5, allow_nan=False, width=32)
LN2, LN3 = math.log(2), math.log(3)


def t(x):
    return torch.tensor(x, dtype=torch.float32)


def close(a, b, atol=1e-5):
    torch.testing.assert_close(a, b, atol=atol, rtol=1e-4)


def grad(f, x):
    """d f(x).sum() / dx for a fresh leaf copy of x."""
    x = x.detach().clone().requires_grad_()
    (g,) = torch.autograd.grad(f(x).sum(), x)
    return g


@st.composite
def shapes(draw, max_n=4, max_t=6):
    return draw(st.integers(1, max_n)), draw(st.integers(1, max_t))


@st.composite
def token_batches(draw):
    """(logp, old_logp, advantages (N,) or (N, T), mask (N, T) with holes)."""
    n, T = draw(shapes())
    grid = lambda els: t(draw(st.lists(st.lists(els, min_size=T, max_size=T), min_size=n, max_size=n)))
    logp = -grid(st.floats(0, 5, width=32))
    old = -grid(st.floats(0, 5, width=32))
    adv = grid(FLOATS) if draw(st.booleans()) else t(draw(st.lists(FLOATS, min_size=n, max_size=n)))
    return logp, old, adv, grid(st.sampled_from([0.0, 1.0]))


# ------------------------------------------------------------- token log-probs
def test_token_logprobs_by_hand():
    # logits [0, ln 3] -> p = [1/4, 3/4];  logits [0, 0] -> p = [1/2, 1/2]
    logits = t([[[0.0, LN3], [0.0, LN3], [0.0, 0.0]]])             # (1, 3, 2)
    lp = token_logprobs(logits, torch.tensor([[0, 1, 1]]))
    assert lp.dtype == torch.float32 and lp.shape == (1, 3)
    close(lp, t([[math.log(0.25), math.log(0.75), math.log(0.5)]]))


@PROPERTY
@given(shapes(), st.integers(2, 9), st.sampled_from([1, 5, 13, 2**24]), st.integers(0, 2**31))
def test_token_logprobs_matches_log_softmax_gather(shape, V, chunk, seed):
    # chunk_elements 1 / 5 / 13 force one token per block, partial rows and many blocks
    n, T = shape
    g = torch.Generator().manual_seed(seed)
    logits = 3 * torch.randn(n, T, V, generator=g)
    tokens = torch.randint(0, V, (n, T), generator=g)
    w = torch.randn(n, T, generator=g)                             # a generic upstream gradient
    naive = lambda z: torch.log_softmax(z, -1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    ours = lambda z: token_logprobs(z, tokens, chunk_elements=chunk)
    close(ours(logits), naive(logits))
    close(grad(lambda z: w * ours(z), logits), grad(lambda z: w * naive(z), logits))


def test_token_logprobs_non_contiguous_logits():
    # the usual call: logits[:, P-1:-1] of a model output, a strided view
    g = torch.Generator().manual_seed(0)
    full = torch.randn(2, 7, 5, generator=g)
    tokens = torch.randint(0, 5, (2, 4), generator=g)
    z = full[:, 2:6]
    naive = torch.log_softmax(z, -1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    close(token_logprobs(z, tokens, chunk_elements=7), naive)


def test_token_logprobs_bf16():
    g = torch.Generator().manual_seed(0)
    logits = (4 * torch.randn(3, 4, 11, generator=g)).bfloat16()
    tokens = torch.randint(0, 11, (3, 4), generator=g)
    lp = token_logprobs(logits, tokens, chunk_elements=20)
    assert lp.dtype == torch.float32                               # computed in float32
    naive = lambda z: torch.log_softmax(z.float(), -1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    close(lp, naive(logits))                                       # same numbers as upcasting first
    gz = grad(lambda z: token_logprobs(z, tokens, chunk_elements=20), logits)
    assert gz.dtype == torch.bfloat16                              # gradient in the logits' dtype
    close(gz.float(), grad(naive, logits).float(), atol=1e-2)      # bf16 rounding of the gradient


@pytest.mark.parametrize("fn", [lambda z: token_logprobs(z, torch.zeros(z.shape[:2], dtype=torch.long)), entropy])
def test_memory_light_backward_saves_no_float32_logits(fn):
    # naive log_softmax(logits.float()) keeps an (N, T, V) float32 copy alive until backward;
    # ours saves only the bf16 logits themselves and (N, T) float32 statistics
    logits = torch.randn(2, 3, 50).bfloat16().requires_grad_()
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda x: saved.append(x) or x, lambda x: x):
        out = fn(logits)
    big_f32 = [x for x in saved if x.dtype == torch.float32 and x.numel() >= logits.numel()]
    assert saved and not big_f32
    out.sum().backward()
    assert logits.grad.shape == logits.shape


def test_token_logprobs_no_grad_and_inference_mode():
    logits, tokens = torch.zeros(1, 2, 4), torch.tensor([[0, 3]])
    with torch.inference_mode():
        close(token_logprobs(logits, tokens), torch.full((1, 2), -math.log(4)))


# -------------------------------------------------------------------- entropy
def test_entropy_by_hand():
    # uniform over 4: H = ln 4;  p = [1/4, 3/4]: H = -(1/4 ln 1/4 + 3/4 ln 3/4) = 0.562335
    logits = t([[[0, 0, 0, 0], [0, LN3, -math.inf, -math.inf]]])   # -inf: a top-k filtered logit
    H = entropy(logits)
    close(H, t([[math.log(4), 0.562335]]))
    g = grad(entropy, logits)
    assert torch.isfinite(g).all()                                 # 0 * -inf must not leak NaN
    close(g[0, 0], torch.zeros(4))                                 # uniform is the maximum: dH/dz = 0


@PROPERTY
@given(shapes(), st.integers(2, 9), st.sampled_from([1, 5, 13, 2**24]), st.integers(0, 2**31))
def test_entropy_matches_naive(shape, V, chunk, seed):
    n, T = shape
    g = torch.Generator().manual_seed(seed)
    logits = 3 * torch.randn(n, T, V, generator=g)
    w = torch.randn(n, T, generator=g)
    naive = lambda z: torch.logsumexp(z, -1) - (torch.softmax(z, -1) * z).sum(-1)   # DESIGN.md's formula
    ours = lambda z: entropy(z, chunk_elements=chunk)
    close(ours(logits), naive(logits))
    close(grad(lambda z: w * ours(z), logits), grad(lambda z: w * naive(z), logits))


def test_entropy_bf16():
    g = torch.Generator().manual_seed(1)
    logits = (4 * torch.randn(2, 3, 7, generator=g)).bfloat16()
    H = entropy(logits, chunk_elements=8)
    assert H.dtype == torch.float32
    p = torch.softmax(logits.float(), -1)
    close(H, -(p * p.log()).sum(-1))
    assert grad(entropy, logits).dtype == torch.bfloat16


# ------------------------------------------------------------------------- KL
def test_kl_by_hand():
    # pi = 1/2, pi_ref = 1/4:  logp - ref = ln 2
    logp, ref = t([math.log(0.5)]), t([math.log(0.25)])
    close(kl(logp, ref, "k1"), t([LN2]))                              # 0.693147
    close(kl(logp, ref, "k2"), t([0.5 * LN2**2]))                     # 0.240227
    close(kl(logp, ref, "k3"), t([0.5 + LN2 - 1]))                    # exp(-ln 2) - (-ln 2) - 1 = 0.193147
    with pytest.raises(ValueError, match="k1, k2, k3"):
        kl(logp, ref, "k4")


@PROPERTY
@given(st.lists(st.floats(-30, 0, width=32), min_size=1, max_size=20),
       st.lists(st.floats(-1e-3, 1e-3), min_size=20, max_size=20))
def test_k3_is_nonnegative(logp, eps):
    logp = t(logp)
    near = logp + t(eps[: len(logp)])                               # tiny differences: the cancellation trap
    far = logp.flip(0)
    assert (kl(logp, near, "k3") >= 0).all()
    assert (kl(logp, far, "k3") >= 0).all()
    assert (kl(logp, far, "k2") >= 0).all()


def test_kl_reference_is_constant():
    ref = t([-1.0]).requires_grad_()
    assert not kl(t([-2.0]), ref, "k3").requires_grad


# ----------------------------------------------------------- policy gradient
def test_policy_gradient_by_hand():
    logp = t([[-1.0, -2.0], [-0.5, -0.5]])
    # A per sequence [3, -1]: loss = -A logp = [[3*1, 3*2], [-1*0.5, -1*0.5]]
    close(policy_gradient(logp, t([3, -1])), t([[3, 6], [-0.5, -0.5]]))
    close(policy_gradient(logp, t([[1, 0], [2, 4]])), t([[1, 0], [1, 2]]))
    close(grad(lambda lp: policy_gradient(lp, t([3, -1])), logp), t([[-3, -3], [1, 1]]))   # -A
    a = t([3, -1]).requires_grad_()
    policy_gradient(logp.requires_grad_(), a).sum().backward()
    assert a.grad is None                                             # advantages are constants


# ------------------------------------------------------------------------ PPO
def test_ppo_clip_by_hand():
    # per token: (log ratio, A) and the loss max(-A r, -A clip(r, 0.8, 1.2))
    # r = e^0.5 = 1.6487, A =  1: max(-1.6487, -1.2)  = -1.2     clipped (grad 0)
    # r = 0.5,            A = -1: max( 0.5,     0.8)  =  0.8     clipped (grad 0)
    # r = 1.1,            A = -1: max( 1.1,     1.1)  =  1.1     unclipped, d/dlogp = -A r = 1.1
    # r = 0.5,            A =  1: max(-0.5,    -0.8)  = -0.5     unclipped, d/dlogp = -A r = -0.5
    log_r = t([[0.5, math.log(0.5), math.log(1.1), math.log(0.5)]])
    A = t([[1, -1, -1, 1]])
    old = t([[-1.0, -2.0, -3.0, -4.0]])
    loss = ppo_clip(old + log_r, old, A)
    close(loss, t([[-1.2, 0.8, 1.1, -0.5]]))
    close(grad(lambda lp: ppo_clip(lp, old, A), old + log_r), t([[0, 0, 1.1, -0.5]]))
    # 2 of the 4 tokens are clipped; a 5th, masked, clipped token does not count
    lp5, old5 = torch.cat([old + log_r, t([[0.0]])], 1), torch.cat([old, t([[-1.0]])], 1)
    frac = ppo_clip_fraction(lp5, old5, torch.cat([A, t([[1.0]])], 1), 0.2, 0.2, t([[1, 1, 1, 1, 0]]))
    close(frac, t(0.5))


def test_ppo_clip_higher():
    # r = 1.25, A = 1: symmetric 0.2 clips to -1.2; DAPO's clip_high = 0.28 keeps -1.25
    lp, old = t([[math.log(1.25)]]), t([[0.0]])
    close(ppo_clip(lp, old, t([1.0])), t([[-1.2]]))
    close(ppo_clip(lp, old, t([1.0]), clip_low=0.2, clip_high=0.28), t([[-1.25]]))


def test_ppo_dual_clip():
    # r = 4, A = -1: max(4, 1.2) = 4; dual_clip c = 3 caps it at -c A = 3 (grad 0)
    lp, old = t([[math.log(4.0), math.log(4.0)]]), t([[0.0, 0.0]])
    A = t([[-1.0, 1.0]])                                             # A > 0 is never dual-clipped
    close(ppo_clip(lp, old, A, dual_clip=3.0), t([[3.0, -1.2]]))
    close(grad(lambda x: ppo_clip(x, old, A, dual_clip=3.0), lp), t([[0.0, 0.0]]))
    with pytest.raises(ValueError, match="> 1"):
        ppo_clip(lp, old, A, dual_clip=1.0)


@PROPERTY
@given(token_batches())
def test_ppo_at_ratio_one_is_policy_gradient(batch):
    # First PPO minibatch: pi = pi_old, so r = 1 and nothing is clipped. The loss VALUES differ
    # by construction (PPO: -A r = -A; PG: -A logp), but d(-A r)/d logp = -A r = -A = d(-A logp)/d logp.
    logp, _, A, mask = batch
    a = A.unsqueeze(1).expand_as(logp) if A.dim() == 1 else A
    close(ppo_clip(logp, logp.detach(), A), -a)
    close(ppo_clip(logp, logp.detach(), A), policy_gradient(torch.exp(logp - logp.detach()), A))
    close(grad(lambda lp: ppo_clip(lp, logp.detach(), A), logp),
          grad(lambda lp: policy_gradient(lp, A), logp))
    close(grad(lambda lp: ppo_clip(lp, logp.detach(), A, dual_clip=2.0), logp),
          grad(lambda lp: policy_gradient(lp, A), logp))
    assert ppo_clip_fraction(logp, logp, A, 0.2, 0.2, mask) == 0


# ----------------------------------------------------------------------- GSPO
def test_gspo_by_hand():
    # mask [1, 1, 0]: log s = mean(0.2, -0.1) = 0.05 (the masked 5.0 is ignored); s = e^0.05 = 1.051271
    old = t([[-1.0, -1.0, -1.0]])
    lp = old + t([[0.2, -0.1, 5.0]])
    mask = t([[1, 1, 0]])
    s = math.exp(0.05)
    # A = 1, clip range [1 - 3e-4, 1 + 0.1]: unclipped, every token's loss is -A s; d/dlogp_t = -A s
    f = lambda x: gspo_clip(x, old, t([1.0]), mask, clip_low=3e-4, clip_high=0.1)
    close(f(lp), t([[-s, -s, -s]]))
    close(grad(lambda x: f(x) * mask, lp), t([[-s, -s, 0.0]]))
    # clip_high = 0.04 < 0.0513: the whole sequence is clipped to 1.04, gradient 0
    f = lambda x: gspo_clip(x, old, t([1.0]), mask, clip_low=3e-4, clip_high=0.04)
    close(f(lp), t([[-1.04, -1.04, -1.04]]))
    close(grad(f, lp), torch.zeros(1, 3))
    # A = -1: max(s, clip(s)) = max(1.0513, 1.04) = s, unclipped; d/dlogp_t = s
    f = lambda x: gspo_clip(x, old, t([-1.0]), mask, clip_low=3e-4, clip_high=0.04)
    close(grad(lambda x: f(x) * mask, lp), t([[s, s, 0.0]]))


@PROPERTY
@given(token_batches())
def test_gspo_at_ratio_one_is_length_normalized_policy_gradient(batch):
    # At pi = pi_old, s_i = 1 and d loss_{i,t} / d logp_{i,t} = -A_{i,t} s_i = -A_{i,t}: GSPO-token's
    # per-token gradient IS the PG gradient. After "seq-mean-token-mean" both give
    #   d L / d logp_{i,t} = -A_{i,t} m_{i,t} / (|y_i| * num_seqs),
    # i.e. GSPO's gradient is the PG gradient with each sequence scaled by 1/|y_i|.
    logp, _, A, mask = batch
    a = A.unsqueeze(1).expand_as(logp) if A.dim() == 1 else A
    L = lambda loss: (lambda lp: aggregate(loss(lp), mask, "seq-mean-token-mean"))
    g_gspo = grad(L(lambda lp: gspo_clip(lp, logp.detach(), A, mask)), logp)
    g_pg = grad(L(lambda lp: policy_gradient(lp, A)), logp)
    n_tok = mask.sum(1, keepdim=True).clamp(min=1)
    n_seq = (mask.sum(1) > 0).sum().clamp(min=1)
    close(g_gspo, g_pg)
    close(g_gspo, -a * mask / (n_tok * n_seq))


@PROPERTY
@given(token_batches())
def test_gspo_token_gradient_equals_sequence_gspo(batch):
    # Away from ratio 1 (unclipped, A per sequence), GSPO-token + seq-mean-token-mean has the
    # same gradient as GSPO's sequence objective  -mean_i A_i s_i(theta)  (Zheng et al. 2025, eq. 7 vs 11)
    logp, old, A, mask = batch
    A = A[:, 0] if A.dim() == 2 else A
    m = mask > 0
    keep = m.any(1)                                                  # empty sequences carry no sample

    def sequence_gspo(lp):
        log_s = torch.where(m, lp - old, 0.0).sum(1) / m.sum(1).clamp(min=1)    # (N,)
        return -(A * torch.exp(log_s))[keep].sum() / keep.sum().clamp(min=1)

    token = lambda lp: aggregate(gspo_clip(lp, old, A, mask, 1e9, 1e9), mask, "seq-mean-token-mean")
    close(grad(token, logp), grad(sequence_gspo, logp), atol=1e-3)


# ---------------------------------------------------------------- value loss
def test_value_loss_by_hand():
    # no clip: 1/2 (2 - 1)^2 = 0.5
    v, R = t([[2.0]]), t([[1.0]])
    close(value_loss(v, t([[1.5]]), R), t([[0.5]]))
    # clip 0.2, old 1.5: v_clip = 1.5 + clip(0.5, +-0.2) = 1.7; 1/2 max(1^2, 0.7^2) = 0.5
    close(value_loss(v, t([[1.5]]), R, clip=0.2), t([[0.5]]))
    # v = 1, old = 2, R = 1: v_clip = 1.8; 1/2 max(0^2, 0.8^2) = 0.32, the clipped branch: grad 0
    v = t([[1.0]])
    close(value_loss(v, t([[2.0]]), R, clip=0.2), t([[0.32]]))
    close(grad(lambda x: value_loss(x, t([[2.0]]), R, clip=0.2), v), t([[0.0]]))
    # d/dv 1/2 (v - R)^2 = v - R = 1 at v = 2
    close(grad(lambda x: value_loss(x, t([[1.5]]), R), t([[2.0]])), t([[1.0]]))


# ------------------------------------------------------------------ aggregate
def test_aggregate_by_hand():
    loss = t([[1, 2, 3], [4, 0, 0], [9, 9, 9]])
    mask = t([[1, 1, 0], [1, 0, 0], [0, 0, 0]])                       # row 3 has no tokens
    close(aggregate(loss, mask, "token-mean"), t(7 / 3))              # (1 + 2 + 4) / 3
    close(aggregate(loss, mask, "seq-mean-token-mean"), t(2.75))      # ((1 + 2)/2 + 4/1) / 2
    close(aggregate(loss, mask, "seq-mean-token-sum"), t(3.5))        # ((1 + 2) + 4) / 2
    close(aggregate(loss, mask, "seq-mean-token-sum-norm"), t(3.5 / 3))   # / T = 3
    close(aggregate(loss, mask, "seq-mean-token-sum-norm", norm=10), t(0.35))
    close(aggregate(loss, mask, "token-mean", num_tokens=14), t(0.5))     # global count: 7 / 14
    close(aggregate(loss, mask, "seq-mean-token-sum", num_seqs=7), t(1.0))
    assert aggregate(loss, torch.zeros(3, 3), "token-mean") == 0          # no tokens: 0, not NaN
    with pytest.raises(ValueError, match="token-mean, seq-mean-token-mean"):
        aggregate(loss, mask, "sum")


@PROPERTY
@given(token_batches(), st.sampled_from(AGGREGATIONS), st.data())
def test_aggregate_is_invariant_to_microbatching(batch, mode, data):
    loss, _, _, mask = batch
    n = loss.shape[0]
    cuts = sorted(data.draw(st.lists(st.integers(1, n), max_size=3)))
    num_tokens, num_seqs = mask.sum(), (mask.sum(1) > 0).sum()       # the WHOLE batch's counts
    parts = sum(aggregate(lo, ma, mode, num_tokens=num_tokens, num_seqs=num_seqs)
                for lo, ma in zip(loss.tensor_split(cuts), mask.tensor_split(cuts)))
    close(parts, aggregate(loss, mask, mode))


# --------------------------------------------------------------------- bandit
@pytest.mark.parametrize("rewards", [[1.0, 0.0, 0.5, 0.2], [2.0, 1.0, 1.5, 1.2]])
def test_reinforce_on_a_softmax_bandit_is_unbiased_and_loo_reduces_variance(rewards):
    # K = 4 arms, logits theta, fixed rewards r. E[r] = p . r and grad_theta E[r] = p * (r - p . r).
    # Each row below is one single-sample REINFORCE estimate  A * grad log pi(a),  obtained as
    # minus the gradient of policy_gradient's loss; we average M of them.
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    theta = t([0.3, -0.2, 0.1, 0.0])
    r = t(rewards)
    p = torch.softmax(theta, 0)
    analytic = p * (r - p @ r)                                       # (K,)
    M, G = 20000, 4
    actions = torch.multinomial(p, M, replacement=True, generator=gen)      # (M,)

    def estimates(advantages):                                       # (M,) -> (M / G, K)
        th = theta.repeat(M, 1).requires_grad_()                     # (M, K) one copy per sample
        logp = token_logprobs(th.unsqueeze(1), actions.unsqueeze(1))  # (M, 1)
        (g,) = torch.autograd.grad(policy_gradient(logp, advantages).sum(), th)
        # LOO couples the G samples of a group, so the i.i.d. units are group means
        return (-g).view(M // G, G, -1).mean(1)

    plain = estimates(r[actions])                                    # (a) no baseline
    loo = estimates(leave_one_out(r[actions], G))                    # (b) RLOO, groups of G = 4
    for est in (plain, loo):
        se = est.std(0) / math.sqrt(est.shape[0])
        assert ((est.mean(0) - analytic).abs() < 3 * se).all(), (est.mean(0), analytic, se)
    # A baseline need not lower EVERY component's variance: with r = [1, 0, 0.5, 0.2] the
    # zero-reward arm's component is r_a (1[a=k] - p_k), already 0 when a = k, and b = 0 is
    # near its optimal baseline; exact enumeration of G = 4 draws gives variances
    #   none [0.0324, 0.0014, 0.0143, 0.0054]  vs  LOO [0.0096, 0.0089, 0.0048, 0.0061].
    # The total (trace) variance always drops here (0.053 -> 0.029), and once every arm is
    # rewarded (r + 1: none [0.169, 0.049, 0.110, 0.076], LOO unchanged) so does each component.
    assert loo.var(0).sum() < plain.var(0).sum()
    if min(rewards) > 0:
        assert (loo.var(0) < plain.var(0)).all(), (loo.var(0), plain.var(0))


# ------------------------------------------------------- engine / trainer mismatch

def test_truncated_is_weights_by_hand():
    # ratios pi_train / pi_engine: e^0 = 1, e^0.5 = 1.6487, e^1 = 2.7183 -> capped at 2, e^-1 = 0.3679
    train = torch.tensor([[0.0, 0.5, 1.0, -1.0]])
    engine = torch.zeros(1, 4)
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    w = losses.truncated_is_weights(train, engine, mask, cap=2.0)
    assert torch.allclose(w, torch.tensor([[1.0, math.exp(0.5), 2.0, 0.0]]))


def test_sequence_ratio_is_the_geometric_mean_over_the_rows_tokens():
    # row 0: log ratios 0.2 and -0.6 -> mean -0.2 -> e^-0.2 = 0.8187; the masked 5.0 does not count
    # row 1: no tokens -> 1
    train = torch.tensor([[0.2, -0.6, 5.0], [3.0, 3.0, 3.0]])
    engine = torch.zeros(2, 3)
    mask = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    assert torch.allclose(losses.sequence_ratio(train, engine, mask), torch.tensor([math.exp(-0.2), 1.0]))


def test_mismatch_kl_by_hand_and_zero_when_the_distributions_agree():
    # log r = 0.5: r - 1 - log r = 1.6487 - 1 - 0.5 = 0.1487; log r = -0.5: 0.6065 - 1 + 0.5 = 0.1065
    train = torch.tensor([[0.5, -0.5, 0.0]])
    engine = torch.zeros(1, 3)
    k = losses.mismatch_kl(train, engine, torch.ones(1, 3))
    assert k.dtype == torch.float64           # float32 would cancel x^2/2 to 0 for |log r| ~ 1e-6
    assert torch.allclose(k, torch.tensor([[math.exp(0.5) - 1.5, math.exp(-0.5) - 0.5, 0.0]], dtype=torch.float64))
    assert not losses.mismatch_kl(train, train, torch.ones(1, 3)).any()
    tiny = losses.mismatch_kl(torch.tensor([[1e-6]]), torch.zeros(1, 1), torch.ones(1, 1))
    assert float(tiny) == pytest.approx(0.5e-12, rel=1e-3)


@given(st.lists(st.floats(-5, 5), min_size=1, max_size=8), st.lists(st.floats(-5, 5), min_size=1, max_size=8))
def test_mismatch_kl_is_never_negative(a, b):
    n = min(len(a), len(b))
    k = losses.mismatch_kl(torch.tensor([a[:n]]), torch.tensor([b[:n]]), torch.ones(1, n))
    assert bool((k >= -1e-6).all())


def test_mismatch_kl_averages_to_the_kl_between_the_distributions():
    # tokens drawn from pi_engine: the mean of r - 1 - log r is KL(pi_engine || pi_train)
    torch.manual_seed(0)
    engine = torch.tensor([0.5, 0.3, 0.2])
    train = torch.tensor([0.4, 0.4, 0.2])
    draws = torch.multinomial(engine, 200_000, replacement=True)
    k = losses.mismatch_kl(train.log()[draws][None], engine.log()[draws][None], torch.ones(1, len(draws)))
    exact = float((engine * (engine / train).log()).sum())
    assert float(k.mean()) == pytest.approx(exact, abs=2e-3)
