"""KL-penalty coefficient controllers: beta in  reward - beta * KL(pi || pi_ref).

Both share one small protocol: ``.value`` (the current beta), ``update(kl, n_steps)``
after each step, and ``state_dict()`` / ``load_state_dict()`` for checkpoints. The
state is beta alone: target and horizon are configuration, and on resume the
config (which may have been edited) is the authority.
"""

from __future__ import annotations


class FixedKL:
    """A constant beta."""

    def __init__(self, coef: float):
        if coef < 0:
            raise ValueError(f"KL coefficient must be >= 0, got {coef}")
        self.value = float(coef)

    def update(self, kl: float, n_steps: int) -> None:
        """Nothing to adapt."""

    def state_dict(self) -> dict:
        return {"value": self.value}

    def load_state_dict(self, state: dict) -> None:
        self.value = float(state["value"])


class AdaptiveKL:
    """Proportional controller of Ziegler et al. 2019 ("Fine-Tuning LMs from Human Preferences").

    e = clip(KL / target - 1, -0.2, 0.2);  beta <- beta * (1 + e * n / horizon),
    where KL is the observed divergence (in the unit the config states: per-token
    mean or per-sequence sum) and n the number of samples in the batch. The clip
    bounds the change per sample, so one surprising batch cannot swing beta.
    """

    def __init__(self, init_coef: float, target: float, horizon: float):
        if init_coef < 0 or target <= 0 or horizon <= 0:
            raise ValueError(f"need init_coef >= 0, target > 0, horizon > 0; "
                             f"got {init_coef}, {target}, {horizon}")
        self.value = float(init_coef)
        self.target = float(target)
        self.horizon = float(horizon)

    def update(self, kl: float, n_steps: int) -> None:
        """kl: the batch's observed KL (a float or a 0-d tensor); n_steps: samples in the batch."""
        error = min(max(float(kl) / self.target - 1.0, -0.2), 0.2)    # proportional error, clipped
        self.value *= 1.0 + error * n_steps / self.horizon

    def state_dict(self) -> dict:
        return {"value": self.value}

    def load_state_dict(self, state: dict) -> None:
        self.value = float(state["value"])
