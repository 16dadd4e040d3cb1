"""Training health: warnings that a run has stalled or is going wrong, read from its metrics.

One fold serves the console and the report. ``Tracker.observe(record)`` reads one
metrics.jsonl record (one step's metrics, as the loop writes them) and returns the
warnings that begin there. The loop calls it after every step and prints what it
returns; its state is checkpointed (``state_dict``), so a resumed run warns exactly as
an uninterrupted one. The run report replays metrics.jsonl through a fresh Tracker
(``replay``) and so finds the same warnings at the same steps.

Each check is a pure function below with its threshold. A condition must hold for
``PATIENCE`` steps in a row (a gradient spike for one) before its warning fires; the
warning is dated to the first step of that streak, fires once per run, and remembers
the last step at which its condition held. A warning names the config keys that
address it (``FIXES``).

The stall warnings (entropy collapse, groups without signal) stay silent while the
run makes progress (``Tracker.progressing``): the reward's mean over the last
``TREND_WINDOW`` steps set a new high (by at least ``RISE``) within the last
``RISE_WINDOW`` steps, the last held-out evaluation beat every earlier one, or the
moving average has reached train.target_reward. Low entropy and agreeing samples are what success looks like too.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any

ENTROPY_FLOOR = 0.1
"""nats per token. At 0.1 nats the likeliest token holds about 98% of the mass (a 98/2
split has entropy 0.098 nats), so a 10-token completion repeats the greedy one with
probability about 0.98^10 = 0.82: the G samples of a prompt mostly agree and their
group-relative advantages vanish"""
ENTROPY_DROP = 0.9
"""or the entropy fell by this fraction of its value at the first step"""
SIGNAL_SHARE = 0.5
"""warn when fewer than this share of the step's groups (or sequences, without groups) carry signal"""
SPIKE_FACTOR = 10.0
"""a gradient norm above this multiple of the running median is a spike"""
SPIKE_WINDOW = 50
"""the running median is over this many previous steps' gradient norms"""
SPIKE_MIN_HISTORY = 5
"""no spike is called before this many norms were seen"""
KL_BOUND = 20.0
"""nats per sequence, with a fixed beta: the reference makes an average completion
e^20 (5e8) times less likely than the policy does; the reference no longer describes
what the policy samples (with kl.target: twice the target, the controller is not holding it)"""
AT_CAP_FRAC = 0.9
"""warn when this share of the completions reaches sampling.max_new_tokens"""
PATIENCE = 5
"""steps in a row a condition must hold (a gradient spike: one)"""
TREND_WINDOW = 5
"""progress is judged on the mean reward of this many last steps. Not on reward/moving_avg:
an EMA with decay 0.9 that starts at a low first reward climbs for ~30 steps after the
reward itself has levelled off (measured on the demo: its reward flat from step 12, its
EMA new highs until step 40), which kept stalls silent"""
RISE = 0.02
"""a new high of the recent mean reward must beat the old one by this much"""
RISE_WINDOW = 10
"""steps after a new high during which the run counts as progressing"""

FIXES: dict[str, tuple[str, str]] = {
    "entropy_collapse": ("entropy collapse", "raise algo.entropy_coef or sampling.temperature, lower optim.lr, "
                         "set train.dynamic_sampling=true, or raise algo.clip_high (clip-higher)"),
    "no_signal": ("most groups carry no signal", "set train.dynamic_sampling=true (and train.max_resample), "
                  "raise train.group_size or sampling.temperature or algo.entropy_coef, or make the task's "
                  "reward less all-or-nothing (task.options)"),
    "grad_spike": ("gradient-norm spike", "lower optim.lr, set optim.max_grad_norm, or raise train.prompts_per_step"),
    "kl_bound": ("KL to the reference past its bound", "raise kl.coef, set kl.target (adaptive beta), "
                 "or lower optim.lr"),
    "length_cap": ("completions pinned at the length cap", "raise sampling.max_new_tokens, or penalise length "
                   "in the task's reward (task.options); reward earned only by running long is a hacking symptom"),
}
STALLS = ("entropy_collapse", "no_signal")


@dataclass(frozen=True)
class HealthWarning:
    kind: str
    """a key of FIXES"""
    began: int
    """the first step of the streak that raised it"""
    message: str
    """what was seen, with the numbers of the step it fired at"""
    last: int
    """the last step at which its condition held"""

    @property
    def title(self) -> str:
        return FIXES[self.kind][0]

    @property
    def fix(self) -> str:
        """what to change, naming the config keys"""
        return FIXES[self.kind][1]

    def describe(self) -> str:
        return f"{self.title} since step {self.began}: {self.message}. To fix: {self.fix}"


@dataclass(frozen=True)
class Limits:
    """The numbers of a run's config that the checks compare against."""

    prompts_per_step: int = 16
    target_reward: float | None = None
    kl_bound: float | None = None
    """nats per sequence; None when the run has no reference (kl.coef = 0)"""
    max_new_tokens: int = 16

    @classmethod
    def of(cls, config: dict[str, Any]) -> "Limits":
        """From the plain-data config (config.yaml, or ``tokrl.config.to_dict(cfg)``)."""
        train, kl = config.get("train") or {}, config.get("kl") or {}
        coef, target = kl.get("coef") or 0.0, kl.get("target")
        bound = None if coef <= 0 else (2.0 * target if target else KL_BOUND)
        return cls(prompts_per_step=int(train.get("prompts_per_step") or 16),
                   target_reward=train.get("target_reward"), kl_bound=bound,
                   max_new_tokens=int((config.get("sampling") or {}).get("max_new_tokens") or 16))


# ------------------------------------------------------------------ the checks

def entropy_collapsed(entropy: float, start: float) -> bool:
    """Mean entropy (nats per token) below ENTROPY_FLOOR, or down ENTROPY_DROP from ``start``."""
    return entropy < ENTROPY_FLOOR or entropy < (1.0 - ENTROPY_DROP) * start


def signal_share(record: dict[str, Any], prompts_per_step: int) -> float | None:
    """The share of the step's batch that carries signal: informative groups over
    prompts_per_step, or without groups the share of sequences with a non-zero advantage."""
    if _number(record.get("groups/informative")):
        return float(record["groups/informative"]) / max(prompts_per_step, 1)
    if _number(record.get("advantage/zero_rows_frac")):
        return 1.0 - float(record["advantage/zero_rows_frac"])
    return None


def grad_spike(norm: float, history: list[float]) -> bool:
    """``norm`` above SPIKE_FACTOR times the median of the previous norms (once there are enough)."""
    return len(history) >= SPIKE_MIN_HISTORY and norm > SPIKE_FACTOR * statistics.median(history)


def kl_past(kl: float, bound: float | None) -> bool:
    return bound is not None and kl > bound


def pinned_at_cap(at_cap_frac: float) -> bool:
    return at_cap_frac >= AT_CAP_FRAC


def _number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


# ------------------------------------------------------------------ the fold

@dataclass
class Tracker:
    """What the checks remember from step to step; plain numbers, checkpointed with the run."""

    limits: Limits = field(default_factory=Limits)
    entropy_start: float | None = None
    """the policy entropy at the first step observed"""
    grad_norms: list[float] = field(default_factory=list)
    """the last SPIKE_WINDOW gradient norms"""
    recent_rewards: list[float] = field(default_factory=list)
    """reward/mean of the last TREND_WINDOW steps"""
    best_avg: float | None = None
    """the highest mean of recent_rewards so far (raised only by RISE or more)"""
    best_avg_step: int = 0
    best_eval: float | None = None
    eval_rising: bool = False
    """the last held-out evaluation beat every earlier one"""
    target_reached: bool = False
    streaks: dict[str, int] = field(default_factory=dict)
    """kind -> first step of the current run of steps where its condition holds"""
    fired: dict[str, dict[str, Any]] = field(default_factory=dict)
    """kind -> {"began", "last", "message"} of each warning raised"""

    def observe(self, record: dict[str, Any]) -> list[HealthWarning]:
        """Read one step's metrics; returns the warnings that fire at this step."""
        if not _number(record.get("step")):
            return []
        step = int(record["step"])
        self._progress(record, step)
        new = []
        for kind, message in self._conditions(record).items():
            if message is None:
                self.streaks.pop(kind, None)
                continue
            began = self.streaks.setdefault(kind, step)
            if kind in self.fired:
                self.fired[kind]["last"] = step
                continue
            patience = 1 if kind == "grad_spike" else PATIENCE
            if step - began + 1 >= patience and not (kind in STALLS and self.progressing(step)):
                self.fired[kind] = {"began": began, "last": step, "message": message}
                new.append(self._warning(kind))
        return new

    def progressing(self, step: int) -> bool:
        """Target reached, a held-out record at the last evaluation, or a new high of the
        recent mean reward within the last RISE_WINDOW steps."""
        recent = self.best_avg is not None and step - self.best_avg_step < RISE_WINDOW
        return self.target_reached or self.eval_rising or recent

    def warnings(self) -> list[HealthWarning]:
        """Every warning raised so far, in the order they began."""
        return sorted((self._warning(k) for k in self.fired), key=lambda w: (w.began, w.kind))

    def _warning(self, kind: str) -> HealthWarning:
        f = self.fired[kind]
        return HealthWarning(kind=kind, began=int(f["began"]), message=str(f["message"]), last=int(f["last"]))

    def _progress(self, record: dict[str, Any], step: int) -> None:
        reward, held_out = record.get("reward/mean"), record.get("eval/reward")
        if _number(reward):
            self.recent_rewards = (self.recent_rewards + [float(reward)])[-TREND_WINDOW:]
            recent = statistics.fmean(self.recent_rewards)
            if self.best_avg is None or recent >= self.best_avg + RISE:
                self.best_avg, self.best_avg_step = recent, step
        if _number(avg := record.get("reward/moving_avg")):
            target = self.limits.target_reward
            self.target_reached |= target is not None and avg >= target
        if _number(held_out):
            self.eval_rising = self.best_eval is not None and held_out > self.best_eval
            self.best_eval = float(held_out) if self.best_eval is None else max(self.best_eval, float(held_out))

    def _conditions(self, r: dict[str, Any]) -> dict[str, str | None]:
        """kind -> what was seen when its condition holds at this record, else None
        (kinds whose metric the record lacks are left out)."""
        lim, out = self.limits, {}
        if _number(e := r.get("policy/entropy")):
            start = self.entropy_start = float(e) if self.entropy_start is None else self.entropy_start
            out["entropy_collapse"] = (f"policy entropy {e:.3f} nats/token (it was {start:.3f} at the start) "
                                       "and the reward has stopped rising") if entropy_collapsed(e, start) else None
        if (share := signal_share(r, lim.prompts_per_step)) is not None:
            zero = r.get("groups/zero_signal_frac")
            seen = f"{zero:.0%} of the groups drawn had all-equal rewards, " if _number(zero) else ""
            out["no_signal"] = (f"{seen}only {share:.0%} of the batch carries an advantage and the reward "
                                "has stopped rising") if share < SIGNAL_SHARE else None
        if _number(g := r.get("optim/grad_norm")) and g == g and abs(g) != float("inf"):
            median = statistics.median(self.grad_norms) if self.grad_norms else 0.0
            out["grad_spike"] = (f"gradient norm {g:.4g} is over {SPIKE_FACTOR:g}x the running median {median:.4g}"
                                 if grad_spike(g, self.grad_norms) else None)
            self.grad_norms = (self.grad_norms + [float(g)])[-SPIKE_WINDOW:]
        if _number(kl := r.get("kl/ref_per_seq")) and lim.kl_bound is not None:
            out["kl_bound"] = (f"KL to the reference is {kl:.3g} nats per sequence, past {lim.kl_bound:.3g}"
                               if kl_past(kl, lim.kl_bound) else None)
        if _number(cap := r.get("completion/at_cap_frac")):
            out["length_cap"] = (f"{cap:.0%} of the completions reach sampling.max_new_tokens="
                                 f"{lim.max_new_tokens}" if pinned_at_cap(cap) else None)
        return out

    # -- checkpoints ------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Plain numbers, lists, strings and dicts (torch.load(weights_only=True) reads them)."""
        return {k: v for k, v in vars(self).items() if k != "limits"}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for k, v in state.items():
            setattr(self, k, v)


def replay(records: list[dict[str, Any]], limits: Limits) -> list[HealthWarning]:
    """The warnings of a run, from its metrics.jsonl records in order (what the console said)."""
    tracker = Tracker(limits)
    for record in records:
        tracker.observe(record)
    return tracker.warnings()
