"""The curves of a run as one PNG: small multiples of its metrics over steps.

Reads the records of metrics.jsonl and eval.jsonl (lists of dicts, see
``tokrl.metrics``); draws with matplotlib's object API (Agg, no pyplot), so it
needs no display and leaves matplotlib's global state alone.
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

# ---------------------------------------------------------------------- numbers

def moving_average(values: list[float], window: int) -> list[float]:
    """Centred mean over ``window`` values (fewer at the ends), NaNs skipped.

    Centred rather than trailing, so the smoothed curve does not lag the raw one.
    """
    half = window // 2
    finite = [v if math.isfinite(v) else 0.0 for v in values]
    sums, counts = [0.0], [0]
    for v, f in zip(values, finite):
        sums.append(sums[-1] + f)
        counts.append(counts[-1] + (1 if math.isfinite(v) else 0))
    out = []
    for i in range(len(values)):
        lo, hi = max(0, i - half), min(len(values), i + half + 1)
        n = counts[hi] - counts[lo]
        out.append((sums[hi] - sums[lo]) / n if n else math.nan)
    return out


def series(records: list[dict], key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of the records that hold a number under ``key``."""
    pairs = [(int(r["step"]), float(r[key])) for r in records
             if isinstance(r.get(key), (int, float)) and not isinstance(r.get(key), bool)
             and isinstance(r.get("step"), int)]
    return [p[0] for p in pairs], [p[1] for p in pairs]


# ----------------------------------------------------------------------- curves

# (metric key, panel title, y label, colour); the held-out panel comes from eval.jsonl
PANELS = [
    ("reward/mean", "Training reward", "mean score per completion", "#2563eb"),
    ("eval", "Held-out evaluation", "greedy decoding, test split", "#059669"),
    ("kl/ref_per_seq", "KL to the reference", "nats per sequence", "#dc2626"),
    ("policy/entropy", "Policy entropy", "nats per token", "#7c3aed"),
    ("completion/length", "Completion length", "tokens", "#d97706"),
    ("time/tokens_per_s", "Throughput", "generated tokens / s", "#475569"),
    ("memory/rss_gb", "Memory", "GB resident (RSS)", "#0891b2"),
]


def _has_kl(metrics: list[dict], config: dict) -> bool:
    """True when the run penalised KL toward a reference (kl.coef > 0 at some step)."""
    coef = (config.get("kl") or {}).get("coef")
    if isinstance(coef, (int, float)) and coef > 0:
        return True
    return any(isinstance(m.get("kl/coef"), (int, float)) and m["kl/coef"] > 0 for m in metrics)


def plan_panels(metrics: list[dict], evals: list[dict], config: dict) -> tuple[list[tuple], list[str]]:
    """The panels that have data, and a sentence for each one left out."""
    panels, skipped = [], []
    for panel in PANELS:
        key, title = panel[0], panel[1]
        if key == "eval":
            if evals:
                panels.append(panel)
            else:
                skipped.append(f"{title}: no evaluations in eval.jsonl")
        elif key == "kl/ref_per_seq" and not _has_kl(metrics, config):
            skipped.append(f"{title}: this recipe has no KL term (kl.coef = 0), so there is no reference model")
        elif not series(metrics, key)[0]:
            skipped.append(f"{title}: metrics.jsonl has no '{key}'")
        else:
            panels.append(panel)
    return panels, skipped


def _style_axes(ax) -> None:
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    for side in ("left", "bottom"):
        ax.spines[side].set_color("#cbd5e1")
    ax.tick_params(colors="#475569", labelsize=9.5, length=3)
    ax.grid(True, color="#e2e8f0", linewidth=0.8)
    ax.set_axisbelow(True)


def _plot_metric(ax, metrics: list[dict], key: str, colour: str) -> None:
    steps, values = series(metrics, key)
    window = max(1, min(50, len(values) // 12))
    if window > 1:
        ax.plot(steps, values, color=colour, alpha=0.25, linewidth=1.0, label="per step")
        ax.plot(steps, moving_average(values, window), color=colour, linewidth=2.0,
                label=f"moving average ({window} steps)")
    else:
        ax.plot(steps, values, color=colour, linewidth=1.8, marker="o", markersize=3.5, label="per step")
    if key == "reward/mean":                       # the spread of scores within each batch
        _, std = series(metrics, "reward/std")
        if len(std) == len(values) and window > 1:
            mean, spread = moving_average(values, window), moving_average(std, window)
            ax.fill_between(steps, [m - s for m, s in zip(mean, spread)], [m + s for m, s in zip(mean, spread)],
                            color=colour, alpha=0.08, linewidth=0, label="± batch std (averaged)")
    if key == "memory/rss_gb":                     # the process's peak so far, beside the RSS at each step's end
        peak_steps, peak = series(metrics, "memory/peak_rss_gb")
        if peak:
            ax.plot(peak_steps, peak, color=colour, linestyle="--", linewidth=1.4, drawstyle="steps-post",
                    label="peak so far")
            ax.legend(fontsize=8.5, frameon=False, loc="lower right", labelcolor="#334155")


def _plot_eval(ax, evals: list[dict], colour: str) -> None:
    keys = [k for k in evals[0] if k not in ("step", "n") and isinstance(evals[0][k], (int, float))
            and not isinstance(evals[0][k], bool)][:3]
    styles = [("-", "o", 1.0), ("--", "s", 0.55), (":", "^", 0.4)]
    for key, (line, marker, alpha) in zip(keys, styles):
        steps, values = series(evals, key)
        ax.plot(steps, values, color=colour, linestyle=line, linewidth=2.0, marker=marker, markersize=5,
                label=key, alpha=alpha)
    if keys:                                    # label the first and the last value of the main metric
        steps, values = series(evals, keys[0])
        for x, y in {(steps[0], values[0]), (steps[-1], values[-1])}:
            ax.annotate(f"{y:.2f}", (x, y), textcoords="offset points", xytext=(0, 7), ha="center",
                        fontsize=9.5, color="#0f172a", fontweight="bold")
        ax.legend(fontsize=8.5, frameon=False, loc="best", labelcolor="#334155")


def _note_panel(ax, skipped: list[str]) -> None:
    """A spare grid cell that says which panels were left out and why."""
    ax.axis("off")
    text = "Not plotted\n\n" + "\n\n".join(textwrap.fill(s, 40) for s in skipped)
    ax.text(0.02, 0.95, text, transform=ax.transAxes, va="top", ha="left", fontsize=10, color="#64748b",
            linespacing=1.4)


def write_curves(path: Path, metrics: list[dict], evals: list[dict], panels: list[tuple],
                 skipped: list[str] = ()) -> None:
    """One PNG with a grid of small multiples, three per row; a spare cell lists what was skipped."""
    # the object API: no pyplot, no global backend state, no display needed
    from matplotlib.figure import Figure

    cols = min(3, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig = Figure(figsize=(4.4 * cols, 3.2 * rows), dpi=130, layout="constrained")
    fig.set_facecolor("white")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    last = max([int(r["step"]) for r in metrics + evals if isinstance(r.get("step"), int)], default=1)
    pad = max(last, 1) * 0.02
    for i, (ax, (key, title, ylabel, colour)) in enumerate(zip(axes, panels)):
        _style_axes(ax)
        ax.set_xlim(-pad, last + pad)            # one step axis for every panel
        if key == "eval":
            _plot_eval(ax, evals, colour)
        else:
            _plot_metric(ax, metrics, key, colour)
            if key in ("completion/length", "time/tokens_per_s", "memory/rss_gb"):
                ax.set_ylim(bottom=0)
            if i == 0:                      # one legend explains the faint and the solid lines
                ax.legend(fontsize=8.5, frameon=False, loc="upper left", labelcolor="#334155")
        ax.set_title(title, loc="left", fontsize=12.5, fontweight="bold", color="#0f172a", pad=8)
        ax.set_ylabel(ylabel, fontsize=9.5, color="#64748b")
        ax.set_xlabel("step", fontsize=9.5, color="#64748b")
    spare = axes[len(panels):]
    for ax in spare:
        ax.set_visible(False)
    if len(spare) and skipped:
        spare[0].set_visible(True)
        _note_panel(spare[0], list(skipped))
    fig.savefig(path, format="png", facecolor="white", pil_kwargs={"optimize": True})
