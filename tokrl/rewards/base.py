"""The reward protocol: how a batch of completions is scored, checked and combined.

A **sequence-level** reward is a callable

    fn(prompts, completions, **columns) -> list[float | None]

with one value per completion, the same shape of signature as TRL's reward
functions, so a TRL reward function works here unchanged. It is called by keyword
with ``prompts`` (N str), ``completions`` (N decoded str), ``completion_ids`` (N
lists of sampled token ids) and one keyword per data column (N values each); a
function without ``**kwargs`` is passed only the arguments it names. ``None``
means "cannot score this sample".

A **token-level** reward is called the same way and returns, per completion, one
float per generated token (or None for the whole completion). It must be causal:
the reward of token t may depend on tokens <= t only.

Every reward is called once per batch. A reward that returns an awaitable (an
``async def``) is awaited; all awaitables of a batch run concurrently.

Several rewards combine as a weighted sum. A ``None`` drops that reward from the
sum for that sample (TRL's semantics, for rewards that apply to some samples
only); a sample that no reward could score is **unscorable**.
"""

from __future__ import annotations

import asyncio
import inspect
import math
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from numbers import Real
from typing import Any

SEQUENCE, TOKEN = "sequence", "token"
LEVELS = (SEQUENCE, TOKEN)
RESERVED = ("prompts", "completions", "completion_ids")
"""keyword arguments every reward is offered besides the data columns"""


class RewardError(ValueError):
    """A reward failed or broke the protocol; the message names the reward."""


@dataclass
class Reward:
    """One named, weighted reward of a recipe."""

    name: str
    """the name its values are logged under (``rewards/<name>``)"""
    fn: Callable[..., Any]
    """the callable (see the module docstring for its signature)"""
    weight: float = 1.0
    """its factor in the weighted sum"""
    level: str = SEQUENCE
    """sequence (one value per completion, paid at its last token) or token (one per token)"""
    conversational: bool = False
    """pass prompts and completions in TRL's conversational format, each a one-message
    list: [{"role": "user", "content": prompt}], [{"role": "assistant", "content": completion}]"""
    columns: tuple[str, ...] = ()
    """data columns it cannot do without (checked against the data when a task is built)"""
    accepts: frozenset[str] | None = field(init=False, default=None)
    """the keyword arguments ``fn`` takes (None: any, it has **kwargs)"""

    def __post_init__(self):
        if self.level not in LEVELS:
            raise RewardError(f"reward {self.name!r}: level must be sequence or token, got {self.level!r}")
        if isinstance(self.weight, bool) or not isinstance(self.weight, Real) or not math.isfinite(self.weight):
            raise RewardError(f"reward {self.name!r}: weight must be a finite number, got {self.weight!r}")
        self.weight = float(self.weight)
        self.accepts, required = signature_of(self.fn)
        # a parameter without a default that is no standard argument must be a column
        self.columns = tuple(dict.fromkeys([*self.columns, *(p for p in required if p not in RESERVED)]))


def signature_of(fn: Callable) -> tuple[frozenset[str] | None, list[str]]:
    """(keyword arguments ``fn`` accepts, None if it has **kwargs; names it requires)."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):        # some builtins have no signature: offer everything
        return None, []
    kinds = inspect.Parameter
    names = [p.name for p in params if p.kind in (kinds.POSITIONAL_OR_KEYWORD, kinds.KEYWORD_ONLY)]
    required = [p.name for p in params
                if p.kind in (kinds.POSITIONAL_OR_KEYWORD, kinds.KEYWORD_ONLY) and p.default is p.empty]
    has_kwargs = any(p.kind is kinds.VAR_KEYWORD for p in params)
    return (None if has_kwargs else frozenset(names)), required


# ------------------------------------------------------------------------- calling

def reward_kwargs(reward: Reward, prompts: list[str], completions: list[str],
                  completion_ids: list[list[int]], columns: dict[str, list[Any]]) -> dict[str, Any]:
    """The keyword arguments of one call of ``reward`` on a batch."""
    if reward.conversational:
        prompts = [[{"role": "user", "content": p}] for p in prompts]
        completions = [[{"role": "assistant", "content": c}] for c in completions]
    kwargs = {**columns, "prompts": prompts, "completions": completions, "completion_ids": completion_ids}
    if reward.accepts is not None:
        kwargs = {k: v for k, v in kwargs.items() if k in reward.accepts}
    return kwargs


def call_rewards(rewards: list[Reward], prompts: list[str], completions: list[str],
                 completion_ids: list[list[int]], columns: dict[str, list[Any]]) -> dict[str, list]:
    """Call every reward once on the batch and check what it returned.

    returns {reward.name: values}: N floats or Nones (sequence level), or N lists of
    per-token floats or Nones (token level). Raises RewardError naming the reward on
    an exception inside it, a wrong count or a non-finite value.
    """
    raw: list[Any] = []
    for reward in rewards:
        try:
            raw.append(reward.fn(**reward_kwargs(reward, prompts, completions, completion_ids, columns)))
        except Exception as e:
            for r in raw:   # coroutines already made by async rewards will never run: close them
                if inspect.iscoroutine(r):
                    r.close()
            if isinstance(e, RewardError):
                raise
            raise RewardError(f"reward {reward.name!r} failed: {type(e).__name__}: {e}") from e
    raw = await_all(raw, [r.name for r in rewards])
    out = {}
    for reward, values in zip(rewards, raw):
        if reward.level == SEQUENCE:
            out[reward.name] = check_sequence_values(reward.name, values, completions)
        else:
            out[reward.name] = check_token_values(reward.name, values, completion_ids, completions)
    return out


def await_all(results: list[Any], names: list[str]) -> list[Any]:
    """``results`` with every awaitable replaced by its value; the awaitables run concurrently."""
    pending = [i for i, r in enumerate(results) if inspect.isawaitable(r)]
    if not pending:
        return results

    async def gather():
        return await asyncio.gather(*(results[i] for i in pending), return_exceptions=True)

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        done = asyncio.run(gather())
    else:   # called from inside an event loop (a notebook): run ours on a worker thread
        with ThreadPoolExecutor(max_workers=1) as pool:
            done = pool.submit(asyncio.run, gather()).result()
    results = list(results)
    for i, value in zip(pending, done):
        if isinstance(value, BaseException):
            raise RewardError(f"reward {names[i]!r} failed: {type(value).__name__}: {value}") from value
        results[i] = value
    return results


def _as_list(name: str, values: Any, n: int, what: str) -> list:
    if hasattr(values, "tolist") and not isinstance(values, (list, tuple)):   # numpy array, tensor
        values = values.tolist()
    if not isinstance(values, (list, tuple)):
        raise RewardError(f"reward {name!r} returned {type(values).__name__}; expected a list of {n} {what}")
    if len(values) != n:
        raise RewardError(f"reward {name!r} returned {len(values)} values for {n} completions")
    return list(values)


def _number(name: str, value: Any, i: int, completions: list[str], where: str = "") -> float:
    if isinstance(value, Real) or (hasattr(value, "item") and getattr(value, "ndim", 1) == 0):
        x = float(value)
        if math.isfinite(x):
            return x
    else:
        raise RewardError(f"reward {name!r} returned {value!r} ({type(value).__name__}){where} for completion "
                          f"{i} {_show(completions, i)}; expected a float or None")
    raise RewardError(f"reward {name!r} returned the non-finite value {value!r}{where} for completion {i} "
                      f"{_show(completions, i)}; return None for a sample it cannot score")


def _show(completions: list, i: int) -> str:
    text = completions[i] if i < len(completions) else ""
    return repr(text if len(str(text)) <= 60 else str(text)[:57] + "...")


def check_sequence_values(name: str, values: Any, completions: list[str]) -> list[float | None]:
    """N floats or Nones, or a RewardError naming the reward and the completion at fault."""
    values = _as_list(name, values, len(completions), "floats")
    return [None if v is None else _number(name, v, i, completions) for i, v in enumerate(values)]


def check_token_values(name: str, values: Any, completion_ids: list[list[int]],
                       completions: list[str]) -> list[list[float] | None]:
    """Per completion, one float per token (or None for the whole completion)."""
    values = _as_list(name, values, len(completion_ids), "lists of per-token floats")
    out: list[list[float] | None] = []
    for i, (row, ids) in enumerate(zip(values, completion_ids)):
        if row is None:
            out.append(None)
            continue
        if hasattr(row, "tolist") and not isinstance(row, (list, tuple)):
            row = row.tolist()
        if not isinstance(row, (list, tuple)) or len(row) != len(ids):
            got = f"{len(row)} values" if isinstance(row, (list, tuple)) else type(row).__name__
            raise RewardError(f"reward {name!r} returned {got} for completion {i} {_show(completions, i)} "
                              f"of {len(ids)} tokens; a token-level reward gives one float per token")
        out.append([_number(name, v, i, completions, f" at token {t}") for t, v in enumerate(row)])
    return out


# ---------------------------------------------------------------------- combining

def combine_sequence(values: dict[str, list[float | None]], weights: dict[str, float]) -> list[float | None]:
    """Σ_k w_k r_k per sample over the rewards that scored it; None where none did.

    values: {name: (N,) floats or Nones}.  returns: (N,).
    """
    n = len(next(iter(values.values()))) if values else 0
    out: list[float | None] = []
    for i in range(n):
        scored = [weights[k] * v[i] for k, v in values.items() if v[i] is not None]
        out.append(math.fsum(scored) if scored else None)
    return out


def combine_tokens(values: dict[str, list[list[float] | None]], weights: dict[str, float],
                   lengths: list[int]) -> list[list[float] | None]:
    """Σ_k w_k r_k,t per token over the rewards that scored the completion; None where none did.

    values: {name: N lists of per-token floats, or None}.  returns: N lists (len lengths[i]) or None.
    """
    out: list[list[float] | None] = []
    for i, T in enumerate(lengths):
        rows = [(weights[k], v[i]) for k, v in values.items() if v[i] is not None]
        out.append([math.fsum(w * r[t] for w, r in rows) for t in range(T)] if rows else None)
    return out


def sample_totals(values: dict[str, list]) -> dict[str, list[float | None]]:
    """Per reward, each sample's value (a token-level reward's is the sum over its tokens)."""
    return {k: [None if v is None else (math.fsum(v) if isinstance(v, list) else v) for v in vs]
            for k, vs in values.items()}
