"""Losses: pure functions over tensors.

Every loss returns a **per-token** tensor (N, T); ``aggregate`` reduces it to the
scalar that is backpropagated. Advantages, old log-probs and value targets are
constants: each loss detaches them itself, so a caller cannot leak gradient
through them by accident.
"""

from __future__ import annotations

import torch
from torch import Tensor

# ------------------------------------------------------------ log-probs, entropy
# An LM head's logits are (N, T, V) with V ~ 50k-150k, usually bf16. Upcasting them
# whole to float32 (log_softmax(logits.float())) costs a second, twice-as-large
# copy, and autograd would keep it alive until backward. Instead both functions
# below walk over blocks of the logits, upcast one block at a time, and keep only
# (N, T) float32 statistics for backward, where the gradient is recomputed blockwise.

CHUNK_ELEMENTS = 2**24
"""float32 elements per block (64 MiB); peak scratch memory is about two blocks"""


def _blocks(shape: torch.Size, chunk_elements: int):
    """Yield (rows, cols) slices covering an (N, T, V) tensor in blocks of <= chunk_elements."""
    N, T, V = shape
    cols = max(1, min(T, chunk_elements // V))          # tokens per block along T
    rows = max(1, chunk_elements // (cols * V))         # sequences per block
    # trap: slice dims 0 and 1 directly; reshaping a sliced (non-contiguous) logits
    # tensor to (N*T, V) would silently copy all of it
    for i in range(0, N, rows):
        for j in range(0, T, cols):
            yield slice(i, i + rows), slice(j, j + cols)


class _TokenLogprobs(torch.autograd.Function):
    """log softmax(z)[y], with d/dz = onehot(y) - softmax(z)."""

    @staticmethod
    def forward(ctx, logits: Tensor, tokens: Tensor, chunk_elements: int) -> Tensor:
        out = logits.new_empty(tokens.shape, dtype=torch.float32)     # (N, T)
        lse = logits.new_empty(tokens.shape, dtype=torch.float32)     # (N, T)
        for b in _blocks(logits.shape, chunk_elements):
            z = logits[b].float()                                     # (n, t, V) one block
            lse[b] = torch.logsumexp(z, dim=-1)
            out[b] = z.gather(-1, tokens[b].unsqueeze(-1)).squeeze(-1) - lse[b]
        ctx.save_for_backward(logits, tokens, lse)
        ctx.chunk_elements = chunk_elements
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        logits, tokens, lse = ctx.saved_tensors
        grad = torch.empty_like(logits)                                 # (N, T, V) logits' dtype
        for b in _blocks(logits.shape, ctx.chunk_elements):
            g = grad_out[b].unsqueeze(-1)                              # (n, t, 1)
            # trap: `logits[b].float()` IS logits[b] when already float32; the
            # subtraction makes a fresh tensor, so the in-place ops below are safe
            gz = (logits[b].float() - lse[b].unsqueeze(-1)).exp_().mul_(-g)  # -g * softmax
            gz.scatter_add_(-1, tokens[b].unsqueeze(-1), g)            # + g * onehot(y)
            grad[b] = gz
        return grad, None, None


class _Entropy(torch.autograd.Function):
    """H = -sum p log p, with dH/dz_j = -p_j (log p_j + H)."""

    @staticmethod
    def forward(ctx, logits: Tensor, chunk_elements: int) -> Tensor:
        ent = logits.new_empty(logits.shape[:2], dtype=torch.float32)  # (N, T)
        lse = logits.new_empty(logits.shape[:2], dtype=torch.float32)  # (N, T)
        for b in _blocks(logits.shape, chunk_elements):
            z = logits[b].float()                                      # (n, t, V) one block
            lse[b] = torch.logsumexp(z, dim=-1)
            logp = _log_softmax(z, lse[b])                             # (n, t, V)
            ent[b] = -(logp.exp() * logp).sum(-1)
        ctx.save_for_backward(logits, lse, ent)
        ctx.chunk_elements = chunk_elements
        return ent

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        logits, lse, ent = ctx.saved_tensors
        grad = torch.empty_like(logits)                                 # (N, T, V)
        for b in _blocks(logits.shape, ctx.chunk_elements):
            logp = _log_softmax(logits[b].float(), lse[b])             # (n, t, V)
            p = logp.exp()
            grad[b] = p.mul_(logp.add_(ent[b].unsqueeze(-1))).mul_(-grad_out[b].unsqueeze(-1))
        return grad, None


def _log_softmax(z: Tensor, lse: Tensor) -> Tensor:
    """z: (n, t, V) float32, lse: (n, t).  returns: a new (n, t, V) tensor log softmax(z)."""
    # trap: a -inf logit (top-k / top-p filtering) has p = 0 and log p = -inf, and
    # 0 * -inf = NaN; clamping log p to the most negative float makes that term 0
    return (z - lse.unsqueeze(-1)).clamp_(min=torch.finfo(torch.float32).min)


def token_logprobs(logits: Tensor, tokens: Tensor, *, chunk_elements: int = CHUNK_ELEMENTS) -> Tensor:
    """log pi(y_t | s_t) of the chosen tokens, in float32, differentiable w.r.t. logits.

    logits: (N, T, V) any float dtype (bf16 is fine), already aligned so that
    logits[:, t] scores tokens[:, t].  tokens: (N, T) long.  returns: (N, T) float32.
    Memory: one float32 block of <= chunk_elements at a time plus (N, T) statistics;
    the gradient has logits' dtype.
    """
    return _TokenLogprobs.apply(logits, tokens, chunk_elements)


def entropy(logits: Tensor, *, chunk_elements: int = CHUNK_ELEMENTS) -> Tensor:
    """Full-vocabulary entropy H(pi(.|s_t)) = logsumexp(z) - sum softmax(z) z.

    logits: (N, T, V) any float dtype.  returns: (N, T) float32, differentiable.
    Computed as -sum p log p, which is the same number without the cancellation
    between two large terms when the logits have a large common offset.
    """
    return _Entropy.apply(logits, chunk_elements)


# ------------------------------------------------------------------------ KL
KL_KINDS = ("k1", "k2", "k3")


def kl(logp: Tensor, ref_logp: Tensor, kind: str) -> Tensor:
    """Per-token estimators of KL(pi || pi_ref) on samples from pi (Schulman 2020).

    logp, ref_logp: (N, T).  returns: (N, T).
      k1 = log pi - log pi_ref                         (unbiased, can be negative)
      k2 = 1/2 (log pi - log pi_ref)^2                 (>= 0, biased)
      k3 = exp(ref - logp) - (ref - logp) - 1          (>= 0, unbiased)
    ref_logp is a constant (the reference model is frozen).
    """
    log_ratio = ref_logp.detach() - logp                               # (N, T) log pi_ref / pi
    if kind == "k1":
        return -log_ratio
    if kind == "k2":
        return 0.5 * log_ratio**2
    if kind == "k3":
        # trap: exp(x) - x - 1 cancels catastrophically near x = 0 and can come out
        # slightly negative in float32; expm1(x) >= x holds exactly in floating point.
        # Note exp overflows for x > ~88: the KL of such a token is effectively inf.
        return torch.expm1(log_ratio) - log_ratio
    raise ValueError(f"unknown KL estimator {kind!r}; valid: {', '.join(KL_KINDS)}")


# --------------------------------------------------------------- policy losses
def _per_token(advantages: Tensor) -> Tensor:
    """(N,) or (N, T) advantages -> broadcastable against (N, T), as a constant."""
    a = advantages.detach()    # trap: A is a constant; gradient through it is wrong
    return a.unsqueeze(1) if a.dim() == 1 else a


def policy_gradient(logp: Tensor, advantages: Tensor) -> Tensor:
    """REINFORCE: -A_t log pi(y_t | s_t), whose gradient is -A_t grad log pi.

    logp: (N, T).  advantages: (N,) (one per sequence) or (N, T).  returns: (N, T).
    """
    return -_per_token(advantages) * logp


def ppo_clip(logp: Tensor, old_logp: Tensor, advantages: Tensor, clip_low: float = 0.2,
             clip_high: float = 0.2, dual_clip: float | None = None) -> Tensor:
    """PPO's clipped surrogate (Schulman et al. 2017), per token.

    r = pi / pi_old;  loss = max(-A r, -A clip(r, 1 - clip_low, 1 + clip_high)).
    clip_high > clip_low is DAPO's clip-higher. dual_clip = c > 1 (Ye et al. 2020)
    further caps the loss at -c A where A < 0, so a huge ratio on a bad token
    cannot blow up the update.
    logp, old_logp: (N, T).  advantages: (N,) or (N, T).  returns: (N, T).
    """
    a = _per_token(advantages)
    # trap: no mask here, so padding entries of logp / old_logp must be finite: an inf
    # ratio on padding gives 0 * inf = NaN gradients even after aggregate masks it out
    ratio = torch.exp(logp - old_logp.detach())                        # (N, T)
    loss = torch.maximum(-a * ratio, -a * ratio.clamp(1.0 - clip_low, 1.0 + clip_high))
    if dual_clip is not None:
        if dual_clip <= 1.0:
            raise ValueError(f"dual_clip must be > 1, got {dual_clip}")
        loss = torch.where(a < 0, torch.minimum(loss, -dual_clip * a), loss)
    return loss


@torch.no_grad()
def ppo_clip_fraction(logp: Tensor, old_logp: Tensor, advantages: Tensor, clip_low: float = 0.2,
                      clip_high: float = 0.2, mask: Tensor | None = None) -> Tensor:
    """Fraction of unmasked tokens where PPO's clipped branch is active (zero gradient).

    logp, old_logp, mask: (N, T).  advantages: (N,) or (N, T).  returns: () float32.
    """
    a = _per_token(advantages)
    ratio = torch.exp(logp - old_logp)
    clipped = (-a * ratio.clamp(1.0 - clip_low, 1.0 + clip_high)) > (-a * ratio)  # (N, T)
    m = torch.ones_like(ratio) if mask is None else (mask > 0).float()
    return (clipped.float() * m).sum() / m.sum().clamp(min=1)


def gspo_clip(logp: Tensor, old_logp: Tensor, advantages: Tensor, mask: Tensor,
              clip_low: float = 3e-4, clip_high: float = 4e-4) -> Tensor:
    """GSPO (Zheng et al. 2025) in its token-level form (GSPO-token), per token.

    s_i = exp(mean_t (log pi - log pi_old)) is the sequence's length-normalized
    importance ratio; s_i,t = sg[s_i] * pi / sg[pi] has the value s_i and gradient
    s_i grad log pi_t. loss = max(-A s_i,t, -A clip(s_i,t, 1 - clip_low, 1 + clip_high)),
    so clipping is decided per sequence. With A per sequence, aggregate mode
    "seq-mean-token-mean" gives exactly GSPO's sequence-level objective and gradient.
    The ranges are ~1e-4, not 0.2, because s_i is a geometric mean over tokens.
    logp, old_logp, mask: (N, T).  advantages: (N,) or (N, T).  returns: (N, T).
    """
    m = mask > 0
    # trap: padding may hold garbage logp; select before summing, never multiply
    log_ratio = torch.where(m, logp - old_logp.detach(), 0.0)          # (N, T)
    log_s = log_ratio.sum(1) / m.sum(1).clamp(min=1)                   # (N,) log s_i
    log_s_tok = log_s.detach().unsqueeze(1) + logp - logp.detach()     # (N, T) log s_i,t
    s = torch.exp(log_s_tok)                                           # (N, T) value s_i
    a = _per_token(advantages)
    return torch.maximum(-a * s, -a * s.clamp(1.0 - clip_low, 1.0 + clip_high))


def value_loss(values: Tensor, old_values: Tensor, returns: Tensor, clip: float | None = None) -> Tensor:
    """Critic regression 1/2 (v - R)^2, optionally PPO-clipped around the old values.

    With clip: 1/2 max((v - R)^2, (v_clip - R)^2), v_clip = old + clip(v - old, +-clip).
    values, old_values, returns: (N, T).  returns: (N, T).
    """
    R = returns.detach()
    loss = (values - R) ** 2
    if clip is not None:
        old = old_values.detach()
        v_clip = old + (values - old).clamp(-clip, clip)
        loss = torch.maximum(loss, (v_clip - R) ** 2)
    return 0.5 * loss


# ----------------------------------------------------------------- reduction
# ------------------------------------------------------- engine / trainer mismatch
# A fast engine (vLLM) samples from pi_engine, a slightly different distribution than the
# pi_train the trainer computes. The update trains against pi_train's log-probs and weights
# each token by the truncated importance ratio (Yao et al. 2025, "Your efficient RL framework
# secretly brings you off-policy RL training"). All (N, T) in; mask 0 on tokens that count not.

def truncated_is_weights(train_logp: Tensor, engine_logp: Tensor, mask: Tensor, cap: float) -> Tensor:
    """min(pi_train / pi_engine, C) per token, 0 where mask is 0.  returns: (N, T)."""
    return torch.exp(train_logp - engine_logp).clamp(max=cap) * mask


def sequence_ratio(train_logp: Tensor, engine_logp: Tensor, mask: Tensor) -> Tensor:
    """exp(mean_t log(pi_train / pi_engine)) over each row's tokens: the geometric-mean ratio.

    returns: (N,); 1 for a row without tokens.
    """
    n = mask.sum(dim=1)
    return torch.exp(((train_logp - engine_logp) * mask).sum(dim=1) / n.clamp(min=1))


def mismatch_kl(train_logp: Tensor, engine_logp: Tensor, mask: Tensor) -> Tensor:
    """k3 estimate of KL(pi_engine || pi_train) per token on the engine's samples:
    r - 1 - log r with r = pi_train / pi_engine (E[r] = 1 under pi_engine; always >= 0).

    returns: (N, T) float64, 0 where mask is 0.
    """
    # trap: for |log r| ~ 1e-6 (float32 engines agree that well) exp(x) - 1 - x cancels to 0 in
    # float32; expm1 in float64 keeps the x^2 / 2 it is worth
    log_r = (train_logp - engine_logp).double()
    return (torch.expm1(log_r) - log_r) * mask


AGGREGATIONS = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm")


def aggregate(per_token: Tensor, mask: Tensor, mode: str, num_tokens: float | Tensor | None = None,
              num_seqs: float | Tensor | None = None, norm: float | None = None) -> Tensor:
    """Reduce a per-token loss to a scalar.

    per_token, mask: (N, T).  returns: () scalar.
      token-mean               sum m l / num_tokens
      seq-mean-token-mean      sum_i (sum_t m l / sum_t m) / num_seqs
      seq-mean-token-sum       sum_i sum_t m l / num_seqs
      seq-mean-token-sum-norm  seq-mean-token-sum / norm  (Dr. GRPO; default norm = T)
    num_tokens / num_seqs default to this tensor's own counts (unmasked tokens;
    sequences with at least one unmasked token). Under microbatching or data
    parallelism pass the WHOLE batch's counts, so that summing the microbatches'
    results gives the whole batch's loss. A sequence's own token count is local to
    it, so seq-mean-token-mean needs only the global num_seqs.
    """
    if mode not in AGGREGATIONS:
        raise ValueError(f"unknown aggregation {mode!r}; valid: {', '.join(AGGREGATIONS)}")
    m = mask > 0
    # trap: padding may hold garbage (inf, NaN from masked log-probs): select, never multiply
    masked = torch.where(m, per_token, 0.0)                            # (N, T)
    if mode == "token-mean":
        n = m.sum() if num_tokens is None else num_tokens
        return masked.sum() / torch.as_tensor(n, dtype=masked.dtype).clamp(min=1)
    tokens_per_seq = m.sum(1)                                          # (N,)
    seq_loss = masked.sum(1)                                           # (N,)
    if mode == "seq-mean-token-mean":
        seq_loss = seq_loss / tokens_per_seq.clamp(min=1)              # empty sequences give 0
    n_seqs = (tokens_per_seq > 0).sum() if num_seqs is None else num_seqs
    loss = seq_loss.sum() / torch.as_tensor(n_seqs, dtype=masked.dtype).clamp(min=1)
    if mode == "seq-mean-token-sum-norm":
        # trap: under microbatching the padded T can differ per microbatch; pass the
        # same norm (e.g. the generation budget max_new_tokens) to every call
        loss = loss / (per_token.shape[1] if norm is None else norm)
    return loss
