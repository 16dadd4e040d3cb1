"""The run report's token-level heatmap: each generated token of a few early, middle and
late training samples coloured by its advantage, with its per-token reward in a strip
underneath, so you can see where the credit went. In a multi-turn episode the environment's
tokens (``policy`` 0 in samples.jsonl) are greyed: they are state, never credited."""

from __future__ import annotations

import html
import math
from typing import Any

from tokrl.runs.html import colour, fmt, gradient, score_of, show, signed

SAMPLES_PER_SNAPSHOT = 4
"""training samples shown per snapshot (early, middle, late) of the heatmap"""
ADVANTAGE_CMAP = "RdBu"      # red: made less likely, blue: made more likely
REWARD_CMAP = "PiYG"         # pink: penalty, green: reward
ENV_COLOURS = ("#e2e8f0", "#64748b")   # background, text of an environment token


def snapshots(samples: list[dict]) -> list[tuple[str, int, list[dict]]]:
    """(label, step, samples) for the first, a middle and the last logged step."""
    by_step: dict[int, list[dict]] = {}
    for s in samples:
        if isinstance(s.get("step"), int) and isinstance(s.get("token_texts"), list):
            by_step.setdefault(s["step"], []).append(s)
    steps = sorted(by_step)
    if not steps:
        return []
    picks = [("Early", steps[0]), ("Middle", steps[len(steps) // 2]), ("Late", steps[-1])]
    out, seen = [], set()
    for label, step in picks:
        if step not in seen:
            seen.add(step)
            out.append((label, step, by_step[step][:SAMPLES_PER_SNAPSHOT]))
    return out


def numbers(values: Any) -> list[float | None]:
    """A per-token list from samples.jsonl with anything that is not a number as None."""
    if not isinstance(values, list):
        return []
    return [float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None for v in values]


def max_abs(lists: list[list[float | None]]) -> float:
    return max((abs(x) for values in lists for x in values if x is not None and math.isfinite(x)), default=0.0)


def sample_row(sample: dict, adv_scale: float, rew_scale: float | None, adv_cmap, rew_cmap) -> str:
    """One training completion: its prompt, a coloured span per token, its score.

    Each token's background is its advantage on ±adv_scale; with rew_scale, a strip
    under it shows its reward on ±rew_scale. The title (tooltip) has the numbers.
    """
    advs, rews, env = numbers(sample.get("advantages")), numbers(sample.get("rewards")), env_tokens(sample)
    cells = []
    for t, text in enumerate(sample["token_texts"]):
        a = advs[t] if t < len(advs) and t not in env else None
        r = rews[t] if t < len(rews) else None
        bg, fg = colour(a, adv_scale, adv_cmap) if a is not None else ("#f1f5f9", "#0f172a")
        if t in env:
            bg, fg = ENV_COLOURS
        title = (f"{'environment token' if t in env else 'token'} {t}: {str(text)!r}"
                 + (f" · advantage {signed(a, 4)}" if a is not None else "")
                 + (f" · reward {signed(r, 4)}" if r is not None else ""))
        strip = ""
        if rew_scale is not None:
            strip_bg = colour(r, rew_scale, rew_cmap)[0] if r is not None else "transparent"
            strip = f'<span class="rw" style="background:{strip_bg}"></span>'
        cells.append(f'<span class="cell" title="{html.escape(title)}"><span class="tok" '
                     f'style="background:{bg};color:{fg}">{show(str(text))}</span>{strip}</span>')
    return (f'<div class="sample"><span class="mono prompt">{show(str(sample.get("prompt", "")))}</span>'
            f'<span class="tokens">{"".join(cells)}</span>'
            f'<span class="score">score {fmt(score_of(sample), 2)}</span></div>')


def env_tokens(sample: dict) -> set[int]:
    """The positions of a multi-turn sample's environment tokens (``policy`` 0)."""
    policy = sample.get("policy")
    return {t for t, p in enumerate(policy) if p == 0} if isinstance(policy, list) else set()


def legend(adv_cmap, rew_cmap, rew_scale: float | None, multi_turn: bool = False) -> str:
    legend = (f'<div class="legend"><div><span class="name">token: advantage A<sub>t</sub></span>'
              f'<span class="bar" style="background:{gradient(adv_cmap)}"></span>'
              '<span class="ends"><span>− made less likely</span><span>0</span>'
              '<span>made more likely +</span></span></div>')
    if rew_scale is not None:
        legend += (f'<div><span class="name">strip: reward r<sub>t</sub></span>'
                   f'<span class="bar thin" style="background:{gradient(rew_cmap)}"></span>'
                   f'<span class="ends"><span>−{fmt(rew_scale, 2)}</span><span>0</span>'
                   f'<span>+{fmt(rew_scale, 2)}</span></span></div>')
    if multi_turn:
        legend += (f'<div><span class="name">grey: environment tokens</span><span class="envkey" style="background:'
                   f'{ENV_COLOURS[0]};color:{ENV_COLOURS[1]}">observation</span><span class="ends"><span>state, '
                   'never actions: no advantage, no gradient</span></span></div>')
    return legend + "</div>"


def heatmap(samples: list[dict]) -> str:
    """Training samples as rows of coloured token spans, one block per snapshot.

    Advantages use one colour scale per block (their size changes a lot during
    training; the block header states it), rewards one scale for the whole page.
    """
    from matplotlib import colormaps

    shots = snapshots(samples)
    if not shots:
        return '<p class="note">No training samples with per-token data (samples.jsonl is missing or empty).</p>'
    adv_cmap, rew_cmap = colormaps[ADVANTAGE_CMAP], colormaps[REWARD_CMAP]
    shown = [s for _, _, group in shots for s in group]
    has_adv = any(numbers(s.get("advantages")) for s in shown)
    has_rew = any(numbers(s.get("rewards")) for s in shown)
    rew_scale = max_abs([numbers(s.get("rewards")) for s in shown]) if has_rew else None
    blocks = []
    for label, step, group in shots:
        adv_scale = max_abs([numbers(s.get("advantages")) for s in group])
        rows = "".join(sample_row(s, adv_scale, rew_scale, adv_cmap, rew_cmap) for s in group)
        scale = f"colour scale ±{fmt(adv_scale, 3)}" if has_adv else "no advantages logged"
        blocks.append(f'<div class="snapshot"><h3>{label} <span class="muted">· step {step} · {scale}</span></h3>'
                      f'{rows}</div>')
    note = "" if has_adv else '<p class="note">This run logged no advantages; tokens are uncoloured.</p>'
    multi_turn = any(env_tokens(s) for s in shown)
    return legend(adv_cmap, rew_cmap, rew_scale, multi_turn) + note + "".join(blocks)
