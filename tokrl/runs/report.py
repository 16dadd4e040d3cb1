"""The run report: one HTML page and a PNG of curves, built from a run directory.

``write_report(run_dir)`` reads only the files a run leaves behind (config.yaml,
metrics.jsonl, eval.jsonl, eval_samples.jsonl, samples.jsonl; see
``tokrl.runs.metrics`` for their records) and writes next to them:

- report-curves.png: reward, held-out metric, KL to the reference, entropy,
  completion length, tokens/s and memory (RSS, peak RSS) over steps (raw values
  faint, a moving average on top); a quantity the run did not log is left out and
  the page says so;
- report.html: the run's key facts, the curves, held-out completions before and
  after training side by side, and a token-level heatmap that colours each
  generated token of a few early and late training samples by its advantage,
  with its per-token reward in a strip underneath, and the run's health: the
  warnings of ``tokrl.runs.health`` recomputed from metrics.jsonl (what the console
  printed during training), each with the step it began and the keys that address it,
  and how many groups carried no signal early and late.

The page is self-contained: inline CSS, the PNG by relative path, no JavaScript,
nothing fetched from the network. Any file or key may be missing (a crashed run,
a recipe without KL); the report shows what is there.
"""

from __future__ import annotations

import argparse
import html
import json
from pathlib import Path
from typing import Any

import yaml

from tokrl.runs.health import Limits, replay
from tokrl.runs.heatmap import heatmap
from tokrl.runs.html import fmt, score_of, show
from tokrl.runs.logs import read_jsonl
from tokrl.runs.plots import plan_panels, series, write_curves

RUN_FILES = ("config.yaml", "metrics.jsonl", "eval.jsonl", "eval_samples.jsonl", "samples.jsonl")
CURVES_PNG = "report-curves.png"
MAX_TABLE_ROWS = 16
"""held-out prompts shown in the before/after table"""


# ---------------------------------------------------------------------- reading

def _read_config(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError:
        return {}
    return data if isinstance(data, dict) else {}


def _check_run_dir(run_dir: Path) -> None:
    if not run_dir.exists():
        raise ValueError(f"run directory {run_dir} does not exist; pass the train.output_dir of a run")
    if not run_dir.is_dir():
        raise ValueError(f"{run_dir} is a file; pass a run directory (the train.output_dir of a run)")
    if not any((run_dir / name).is_file() for name in RUN_FILES):
        raise ValueError(f"{run_dir} is not a tokrl run directory (no config.yaml or metrics.jsonl); "
                         "pass the train.output_dir of a run")


# ------------------------------------------------------------------------- HTML

def _signal_note(metrics: list[dict]) -> str:
    """How many groups carried no signal over the first and the last ten steps."""
    _, zero = series(metrics, "groups/zero_signal_frac")
    if not zero:
        return ""
    first, last = zero[:10], zero[-10:]
    return (f'<p class="note">Groups whose samples all earned the same reward (no signal): '
            f"{sum(first) / len(first):.0%} over the first {len(first)} steps, "
            f"{sum(last) / len(last):.0%} over the last {len(last)}.</p>")


def _health(metrics: list[dict], config: dict) -> str:
    """The health warnings, recomputed from metrics.jsonl as the console raised them."""
    if not metrics:
        return '<p class="note">No per-step metrics (metrics.jsonl is missing or empty): nothing to check.</p>'
    warnings = replay(metrics, Limits.of(config))
    if not warnings:
        return ('<p class="note">No warnings: no entropy collapse or groups without signal while the reward '
                "stalled, no gradient-norm spike, no KL past its bound, no completions pinned at the length "
                "cap.</p>" + _signal_note(metrics))
    items = "".join(f'<li class="warning"><b>{html.escape(w.title)}</b> from step {w.began} '
                    f'<span class="muted">(last seen at step {w.last})</span>: {html.escape(w.message)}.'
                    f'<br><span class="fix">To fix: {html.escape(w.fix)}</span></li>' for w in warnings)
    return f'<ul class="warnings">{items}</ul>' + _signal_note(metrics)


def _facts(run_dir: Path, config: dict, metrics: list[dict], evals: list[dict]) -> list[tuple[str, str, str]]:
    """(label, value, detail) of the header cards."""
    model = (config.get("model") or {}).get("name", "—")
    task = config.get("task") or {}
    options = ", ".join(f"{k}={v}" for k, v in (task.get("options") or {}).items())
    algo, kl = config.get("algo") or {}, config.get("kl") or {}
    parts = [str(algo.get("estimator", "—"))]
    if algo.get("estimator") == "reinforce":
        parts.append(f"{algo.get('baseline')} baseline")
    if algo.get("policy_loss"):
        parts.append(f"{algo['policy_loss']} loss")
    kl_text = "no KL"
    if isinstance(kl.get("coef"), (int, float)) and kl["coef"] > 0:
        where = "in reward" if kl.get("in_reward", True) else "in loss"
        kl_text = f"{kl.get('kind', 'k1')} KL {where}, β={kl['coef']:g}" + (" (adaptive)" if kl.get("target") else "")
    max_steps = (config.get("train") or {}).get("max_steps")
    steps = max((int(m["step"]) for m in metrics if "step" in m), default=0)
    steps_detail = ""
    if isinstance(max_steps, int):
        steps_detail = f"of max {max_steps}" + (" · stopped early" if steps < max_steps else "")
    facts = [("Model", html.escape(str(model)), ""),
             ("Task", html.escape(str(task.get("name", "—"))), html.escape(options)),
             ("Recipe", html.escape(" · ".join(parts)), html.escape(kl_text)),
             ("Steps", str(steps), html.escape(steps_detail))]
    if evals:
        first, last = evals[0], evals[-1]
        arrow = f"{fmt(first.get('reward'), 2)} → <b>{fmt(last.get('reward'), 2)}</b>"
        detail = f"steps {first.get('step')} → {last.get('step')}"
        if "solved" in first and "solved" in last:
            detail = f"solved {first['solved']:.0%} → {last['solved']:.0%} · n={last.get('n', '?')}"
        facts.append(("Held-out reward", arrow, html.escape(detail)))
    facts += _warm_start_fact(run_dir)
    _, speed = series(metrics, "time/tokens_per_s")
    seconds = sum(series(metrics, "time/collect_s")[1]) + sum(series(metrics, "time/update_s")[1])
    if speed:
        median = sorted(speed)[len(speed) // 2]
        facts.append(("Throughput", f"{median:,.0f} tok/s", f"median · {seconds:,.0f} s training"))
    facts += _memory_fact(metrics)
    return facts


def _warm_start_fact(run_dir: Path) -> list[tuple[str, str, str]]:
    """The supervised warm start's held-out result and fit (none without warm_start.json)."""
    path = run_dir / "warm_start.json"
    if not path.is_file():
        return []
    w = json.loads(path.read_text())
    after = w.get("eval_after") or {}
    detail = (f"{w.get('demonstrations')} demonstrations × {w.get('epochs')} epochs · "
              f"loss {fmt(w.get('loss_first'), 3)} → {fmt(w.get('loss_last'), 3)} · {fmt(w.get('seconds'), 0)} s")
    value = f"reward {fmt(after.get('reward'), 2)}" + (f" · solved {after['solved']:.0%}" if "solved" in after else "")
    return [("After warm start", value, html.escape(detail))]


def _memory_fact(metrics: list[dict]) -> list[tuple[str, str, str]]:
    """The peak resident memory of the run and the RSS at its last step (none when unlogged)."""
    _, peak = series(metrics, "memory/peak_rss_gb")
    _, rss = series(metrics, "memory/rss_gb")
    if not peak:
        return []
    return [("Peak memory", f"{max(peak):.2f} GB", f"RSS {rss[-1]:.2f} GB at the last step" if rss else "")]


def _pairs(eval_samples: list[dict], first: int, last: int) -> list[tuple[dict, dict]]:
    """(record at ``first``, record at ``last``) for each prompt of the first evaluation,
    in its order; a prompt that occurs twice pairs its occurrences in order."""
    after: dict[str, list[dict]] = {}
    for r in eval_samples:
        if r.get("step") == last:
            after.setdefault(str(r.get("prompt")), []).append(r)
    return [(r, after[str(r.get("prompt"))].pop(0)) for r in eval_samples
            if r.get("step") == first and after.get(str(r.get("prompt")))]


def _before_after(eval_samples: list[dict]) -> str:
    """The held-out table: the first and the last evaluation's completions, paired by prompt."""
    steps = sorted({r["step"] for r in eval_samples if isinstance(r.get("step"), int)})
    if not steps:
        return '<p class="note">No held-out completions (eval_samples.jsonl is missing or empty).</p>'
    if len(steps) == 1:
        return '<p class="note">Only one evaluation in eval_samples.jsonl: there is no before/after to compare.</p>'
    first, last = steps[0], steps[-1]
    pairs = _pairs(eval_samples, first, last)
    deltas = [score_of(b) - score_of(a) for a, b in pairs]
    better, worse = sum(d > 1e-9 for d in deltas), sum(d < -1e-9 for d in deltas)
    rows = []
    for (a, b), d in list(zip(pairs, deltas))[:MAX_TABLE_ROWS]:
        cls = "up" if d > 1e-9 else "down" if d < -1e-9 else "same"
        rows.append(f'<tr class="pair {cls}"><td class="mono prompt">{show(str(a.get("prompt", "")))}</td>'
                    f'<td class="mono">{show(str(a.get("completion", "")))}</td>'
                    f'<td class="num">{fmt(score_of(a), 2)}</td>'
                    f'<td class="mono">{show(str(b.get("completion", "")))}</td>'
                    f'<td class="num"><span class="pill {cls}">{fmt(score_of(b), 2)}</span></td></tr>')
    summary = (f"{len(pairs)} held-out prompts, greedy decoding, step {first} → step {last}: "
               f'<span class="up-text">{better} better</span>, {len(pairs) - better - worse} unchanged, '
               f'<span class="down-text">{worse} worse</span>.'
               + (f" The first {MAX_TABLE_ROWS} are shown." if len(pairs) > MAX_TABLE_ROWS else ""))
    head = (f'<tr><th>prompt</th><th>before (step {first})</th><th class="num">score</th>'
            f'<th>after (step {last})</th><th class="num">score</th></tr>')
    return (f'<p class="note">{summary}</p><table class="pairs"><thead>{head}</thead>'
            f'<tbody>{"".join(rows)}</tbody></table>')


CSS = """
:root { --ink:#0f172a; --soft:#475569; --faint:#94a3b8; --line:#e2e8f0; --bg:#f8fafc; --accent:#2563eb; }
* { box-sizing: border-box; }
body { margin: 0; background: var(--bg); color: var(--ink);
  font: 15px/1.55 -apple-system, BlinkMacSystemFont, "Segoe UI", Inter, "Helvetica Neue", Arial, sans-serif; }
main { max-width: 1180px; margin: 0 auto; padding: 32px 28px 56px; }
header h1 { font-size: 26px; margin: 0 0 2px; letter-spacing: -0.01em; }
header .sub { color: var(--soft); margin: 0 0 22px; }
.facts { display: grid; grid-template-columns: repeat(auto-fill, minmax(170px, 1fr)); gap: 12px; }
.fact { background: #fff; border: 1px solid var(--line); border-radius: 10px; padding: 12px 14px; min-width: 0; }
.fact .label { font-size: 11px; text-transform: uppercase; letter-spacing: .06em; color: var(--faint); }
.fact .value { font-size: 17px; font-weight: 600; overflow-wrap: anywhere; }
.fact .detail { font-size: 12.5px; color: var(--soft); overflow-wrap: anywhere; }
section { background: #fff; border: 1px solid var(--line); border-radius: 12px; padding: 20px 22px; margin-top: 22px; }
section h2 { font-size: 18px; margin: 0 0 4px; }
section > p.lead { color: var(--soft); margin: 0 0 14px; max-width: 80ch; }
img.curves { width: 100%; height: auto; display: block; }
.note { color: var(--soft); font-size: 13.5px; }
.muted { color: var(--faint); font-weight: 400; }
.mono { font-family: ui-monospace, "SF Mono", Menlo, Consolas, "DejaVu Sans Mono", monospace; font-size: 13.5px;
  white-space: pre-wrap; overflow-wrap: anywhere; }
table.pairs { border-collapse: collapse; width: 100%; font-size: 14px; }
table.pairs th { text-align: left; font-size: 11.5px; text-transform: uppercase; letter-spacing: .05em;
  color: var(--faint); font-weight: 600; border-bottom: 1px solid var(--line); padding: 6px 10px; }
table.pairs td { border-bottom: 1px solid #f1f5f9; padding: 6px 10px; vertical-align: top; }
table.pairs td.prompt { color: var(--soft); }
table.pairs .num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.pill { display: inline-block; min-width: 3.2em; text-align: center; border-radius: 999px; padding: 0 8px; }
.pill.up { background: #dcfce7; color: #166534; } .pill.down { background: #fee2e2; color: #991b1b; }
.pill.same { background: #f1f5f9; color: var(--soft); }
.up-text { color: #15803d; font-weight: 600; } .down-text { color: #b91c1c; font-weight: 600; }
.legend { display: flex; flex-wrap: wrap; gap: 12px 40px; margin: 6px 0 12px; font-size: 12px; color: var(--soft); }
.legend .name { display: block; font-weight: 600; color: var(--ink); font-size: 12.5px; }
.legend .bar { display: block; width: 340px; height: 12px; border-radius: 3px; border: 1px solid var(--line); margin: 3px 0; }
.legend .bar.thin { height: 6px; margin: 6px 0 5px; }
.legend .ends { display: flex; justify-content: space-between; width: 340px; white-space: nowrap; }
.snapshot { margin-top: 14px; }
.snapshot h3 { font-size: 14px; margin: 0 0 6px; }
.sample { display: flex; align-items: flex-start; gap: 12px; padding: 5px 0; border-bottom: 1px dashed #f1f5f9; }
.sample .prompt { color: var(--faint); flex: 0 0 auto; min-width: 6em; max-width: 32%; padding-top: 3px; }
.sample .tokens { flex: 0 1 auto; line-height: 1.2; }
.sample .score { flex: 0 0 auto; font-size: 12.5px; color: var(--soft); padding-top: 4px;
  font-variant-numeric: tabular-nums; }
.cell { display: inline-flex; flex-direction: column; margin: 0 1px 4px 0; vertical-align: top; }
.tok { font-family: ui-monospace, "SF Mono", Menlo, Consolas, "DejaVu Sans Mono", monospace; font-size: 15px;
  white-space: pre; padding: 3px 5px; border-radius: 4px; min-width: 1.4em; text-align: center; }
.rw { height: 5px; border-radius: 2px; margin: 2px 1px 0; }
ul.warnings { margin: 0; padding-left: 20px; }
li.warning { margin: 6px 0; } li.warning b { color: #b45309; } .fix { color: var(--soft); font-size: 13.5px; }
footer { color: var(--faint); font-size: 12.5px; margin-top: 26px; }
"""


def _page(run_dir: Path, config: dict, metrics: list[dict], evals: list[dict], eval_samples: list[dict],
          samples: list[dict], curves: str | None, skipped: list[str]) -> str:
    facts = "".join(f'<div class="fact"><div class="label">{label}</div><div class="value">{value}</div>'
                    f'<div class="detail">{detail}</div></div>' for label, value, detail in _facts(
                        run_dir, config, metrics, evals))
    if curves:
        plots = f'<img class="curves" src="{html.escape(curves)}" alt="training curves">'
    else:
        plots = '<p class="note">No per-step metrics to plot (metrics.jsonl is missing or empty).</p>'
    if skipped:
        plots += '<p class="note">Not plotted: ' + "; ".join(html.escape(s) for s in skipped) + ".</p>"
    present = ", ".join(name for name in RUN_FILES if (run_dir / name).is_file()) or "none"
    title = html.escape(run_dir.resolve().name)
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>tokrl run report · {title}</title>
<style>{CSS}</style>
</head>
<body>
<main>
<header>
<h1>Run report · {title}</h1>
<p class="sub">Token-level reinforcement learning with tokrl · {html.escape(str(run_dir))}</p>
<div class="facts">{facts}</div>
</header>
<section>
<h2>Training curves</h2>
<p class="lead">Faint lines are per-step values, solid lines their moving average; the held-out panel is
greedy decoding on the task's test split at each evaluation.</p>
{plots}
</section>
<section>
<h2>Health</h2>
<p class="lead">Warnings recomputed from metrics.jsonl, the ones the console printed during training. Stalls
(entropy collapse, groups without signal) are not reported while the reward is still rising.</p>
{_health(metrics, config)}
</section>
<section>
<h2>Held-out completions, before and after</h2>
<p class="lead">The same test prompts at the first and the last evaluation.</p>
{_before_after(eval_samples)}
</section>
<section>
<h2>Where credit went</h2>
<p class="lead">Training completions from an early, a middle and a late step. Each generated token is coloured by
its advantage A<sub>t</sub>, the weight the policy gradient puts on log&nbsp;π(y<sub>t</sub>): blue tokens were made
more likely, red ones less likely (each block has its own colour scale). The strip under a token is its reward
r<sub>t</sub>. Hover a token for the numbers.</p>
{heatmap(samples)}
</section>
<footer>Written by <code>tokrl report</code> from {html.escape(present)}.</footer>
</main>
</body>
</html>
"""


# ------------------------------------------------------------------------- API

def write_report(run_dir: Path) -> Path:
    """Write report.html and report-curves.png into ``run_dir``; returns report.html's path.

    Raises ValueError when ``run_dir`` is not a run directory.
    """
    run_dir = Path(run_dir)
    _check_run_dir(run_dir)
    config = _read_config(run_dir / "config.yaml")
    metrics = read_jsonl(run_dir / "metrics.jsonl")
    evals = read_jsonl(run_dir / "eval.jsonl")
    eval_samples = read_jsonl(run_dir / "eval_samples.jsonl")
    samples = read_jsonl(run_dir / "samples.jsonl")

    panels, skipped = plan_panels(metrics, evals, config)
    curves = None
    if panels:
        write_curves(run_dir / CURVES_PNG, metrics, evals, panels, skipped)
        curves = CURVES_PNG
    else:
        (run_dir / CURVES_PNG).unlink(missing_ok=True)      # never leave a stale picture behind
        skipped = []
    path = run_dir / "report.html"
    path.write_text(_page(run_dir, config, metrics, evals, eval_samples, samples, curves, skipped), encoding="utf-8")
    return path


def _command(args: argparse.Namespace) -> int:
    print(write_report(Path(args.run_dir)))
    return 0


def add_command(subparsers) -> None:
    """Register ``tokrl report RUN_DIR``."""
    p = subparsers.add_parser("report", help="write report.html (curves, before/after, token heatmap) for a run")
    p.add_argument("run_dir", help="a run directory (the train.output_dir of a run)")
    p.set_defaults(func=_command)
