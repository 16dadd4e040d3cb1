"""Turn bookkeeping of multi-turn episodes: where a turn ends, what the environment answers,
and the ids that answer becomes.

Token in, token out: the policy's ids are kept as sampled and each observation is
tokenized once, on its own, and appended as ids; the conversation is never re-tokenized
from text (BPE could merge across a turn boundary, and the policy would be trained on
ids it never chose). One rule puts every environment's observation into the
conversation (``ObservationFormat``): with a chat template, as a user turn between the
template's markers; without one, its text inline right after the turn's stop.
Observation tokens carry mask 0: they are state, never actions.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from tokrl.tasks.base import Environment

_U, _A, _O = "\u2402user\u2402", "\u2402assistant\u2402", "\u2402observation\u2402"


class ObservationFormat:
    """Observation text -> ids: a user turn of the chat template (chat) or the text inline."""

    def __init__(self, tokenizer, chat: bool):
        self.tokenizer, self.chat = tokenizer, chat
        self.close = self.close_after_eos = self.before = self.after = ""
        if chat:
            self.close, self.before, self.after = chat_markers(tokenizer)
            eos = tokenizer.eos_token or ""
            # the policy's EOS already closed its turn when it is the template's end marker
            self.close_after_eos = self.close[len(eos):] if eos and self.close.startswith(eos) else self.close

    def text(self, observation: str, ended_with_eos: bool) -> str:
        """The observation as it enters the conversation (chat markers around it)."""
        if not self.chat:
            return observation
        return (self.close_after_eos if ended_with_eos else self.close) + self.before + observation + self.after

    def ids(self, observation: str, ended_with_eos: bool) -> list[int]:
        """The observation's ids, tokenized once on their own."""
        return list(self.tokenizer(self.text(observation, ended_with_eos), add_special_tokens=False)["input_ids"])


def chat_markers(tokenizer) -> tuple[str, str, str]:
    """(close, before, after): the text that ends an assistant turn, and the text around a
    user message that follows it up to the next assistant turn, read off the tokenizer's
    chat template."""
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("model.chat_template is true but the tokenizer has no chat template; set it to false")
    user, assistant = {"role": "user", "content": _U}, {"role": "assistant", "content": _A}
    base = tokenizer.apply_chat_template([user, assistant], tokenize=False)
    full = tokenizer.apply_chat_template([user, assistant, {"role": "user", "content": _O}], tokenize=False,
                                         add_generation_prompt=True)
    if not full.startswith(base) or _A not in base or full[len(base):].count(_O) != 1:
        raise ValueError("the tokenizer's chat template does not render a conversation turn by turn; "
                         "set model.chat_template=false for multi-turn tasks")
    before, after = full[len(base):].split(_O)
    return base[base.index(_A) + len(_A):], before, after


def call_with_timeout(fn, timeout: float, *args):
    """fn(*args) in a daemon thread; TimeoutError when it has not returned after ``timeout`` s."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn(*args)
        except BaseException as e:          # re-raised in the caller's thread
            box["error"] = e
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise TimeoutError
    if "error" in box:
        raise box["error"]
    return box["value"]


class EpisodeError(ValueError):
    """An environment misbehaved (raised, answered a non-string, timed out): one line."""


@dataclass
class Episode:
    """One episode's completion so far: policy and environment ids with their per-token data."""

    env: Environment
    ids: list[int] = field(default_factory=list)
    policy: list[float] = field(default_factory=list)
    """1.0 where the policy chose the token, 0.0 where the environment inserted it"""
    logprobs: list[float] = field(default_factory=list)
    entropy: list[float] = field(default_factory=list)
    rewards: list[float] = field(default_factory=list)
    pending: deque = field(default_factory=deque)
    """observation ids still to feed"""
    turn_start: int = 0
    turns: int = 0
    done: bool = False
    truncated: bool = False
    error: str | None = None


class Turns:
    """N episodes at their own turns. The engine asks ``forced`` (an observation id to feed, or
    None: sample) and reports each token with ``add``; ``done`` says who has finished.

    turn_cap: most tokens of one policy turn (sampling.max_new_tokens); task: the
    EnvironmentTask (its limits and name); skip_bad: an environment error ends that
    episode (``error`` set) instead of raising.
    """

    def __init__(self, task, tokenizer, envs: list[Environment], fmt: ObservationFormat, turn_cap: int,
                 skip_bad: bool = False):
        self.task, self.tokenizer, self.fmt = task, tokenizer, fmt
        self.turn_cap, self.skip_bad = turn_cap, skip_bad
        self.budget = task.max_episode_tokens
        self.episodes = [Episode(env) for env in envs]
        self.stops = [tuple(getattr(env, "stop", ()) or ()) for env in envs]

    def forced(self, row: int) -> int | None:
        pending = self.episodes[row].pending
        return pending[0] if pending else None

    def done(self, row: int) -> bool:
        return self.episodes[row].done

    def add(self, row: int, token: int, logp: float, ent: float) -> None:
        """Record the episode's next token: an observation id being fed, or the policy's."""
        ep = self.episodes[row]
        forced = bool(ep.pending)
        if forced:
            ep.pending.popleft()
        ep.ids.append(int(token))
        ep.policy.append(0.0 if forced else 1.0)
        ep.logprobs.append(0.0 if forced else float(logp))
        ep.entropy.append(0.0 if forced else float(ent))
        ep.rewards.append(0.0)
        if forced:
            if not ep.pending:
                ep.turn_start = len(ep.ids)          # the observation is in: the policy's turn begins
            return
        text = self.turn_end(row, ep)
        if text is not None:
            self.end_turn(row, ep, text, ended_with_eos=token == self.tokenizer.eos_token_id)
        elif len(ep.ids) >= self.budget:
            ep.done = ep.truncated = True

    def turn_end(self, row: int, ep: Episode) -> str | None:
        """The turn's text when its last token ended it (EOS, a stop string, the turn cap or the
        episode budget), else None. A stop string ends the text (what follows it inside the
        last token is dropped from the text, never from the ids)."""
        turn = ep.ids[ep.turn_start:]
        text = self.tokenizer.decode(turn, skip_special_tokens=True)
        for stop in self.stops[row]:
            at = text.find(stop)
            if at >= 0:
                return text[: at + len(stop)]
        if turn[-1] == self.tokenizer.eos_token_id or len(turn) >= self.turn_cap or len(ep.ids) >= self.budget:
            return text
        return None

    def end_turn(self, row: int, ep: Episode, text: str, ended_with_eos: bool) -> None:
        """Ask the environment; its reward lands on the turn's last token, its observation is queued."""
        ep.turns += 1
        try:
            observation, reward, done = self.step(ep, text)
        except EpisodeError as e:
            if not self.skip_bad:
                raise
            ep.error, ep.done = str(e), True
            return
        ep.rewards[-1] += reward
        if done or observation is None:
            ep.done = True
            return
        ids = self.fmt.ids(observation, ended_with_eos)
        if ep.turns >= self.task.max_turns or len(ep.ids) + len(ids) >= self.budget:
            ep.done = ep.truncated = True            # a limit: truncated, not an error
            return
        ep.pending.extend(ids)

    def step(self, ep: Episode, text: str) -> tuple[str | None, float, bool]:
        """env.step(text), checked: (observation, reward, done)."""
        where = f"environment {self.task.name} at turn {ep.turns}"
        timeout = self.task.step_timeout
        try:
            out = call_with_timeout(ep.env.step, timeout, text)
        except TimeoutError:
            raise EpisodeError(f"{where}: step took longer than task.options.step_timeout={timeout} s; make it "
                                    "faster or raise step_timeout") from None
        except Exception as e:
            raise EpisodeError(f"{where}: step raised {type(e).__name__}: {e}") from None
        if not isinstance(out, tuple) or len(out) != 4:
            raise EpisodeError(f"{where}: step returned {type(out).__name__}; return (observation, reward, "
                                    "done, info)")
        observation, reward, done, _ = out
        if observation is not None and not isinstance(observation, str):
            raise EpisodeError(f"{where}: step returned an observation of type {type(observation).__name__}; "
                                    "return a str (or None to end the episode)")
        if isinstance(reward, bool) or not isinstance(reward, (int, float)) or not math.isfinite(reward):
            raise EpisodeError(f"{where}: step returned the reward {reward!r}; return a finite number")
        return observation, float(reward), bool(done)
