"""Learned vs exact step rewards inside RL: the stepwise recipe with three reward arms.

    python benchmarks/prm_rl.py --prm runs/prm --seeds 0 1 2          # SmolLM2, ~5 min per run
    python benchmarks/prm_rl.py --quick                               # tiny model, plumbing only

Each arm trains ``configs/smollm2_stepwise.yaml`` (warm start, then RL) with the same
seeds, steps and samples; only ``task.options.rewards`` differs:

  outcome      the exact outcome reward alone (the last line's last number is the answer)
  prm          outcome + the PRM's step scores ({reward_model: DIR, level: step})
  step_match   outcome + the exact step checker (the upper bound for a PRM)

Per arm and seed: the held-out accuracy over training (eval curve), the first evaluated
step whose accuracy reaches ``--target``, the final accuracy and the wall time. Held-out
accuracy is re-scored from ``eval_samples.jsonl`` by the outcome alone: the run's own
``solved`` (summed reward >= 1) counts step rewards too. The curve's step 0 is the base
model, before the warm start; ``warm_start_solved`` (arm outcome, whose score is the
outcome alone) is the policy RL starts from, the same in every arm of a seed.

Gaming check, on the policy's own training samples (``samples.jsonl``: every sample of
every step): per window of steps, the PRM's score of each step beside step_match's
verdict: mean PRM score on steps the checker calls right and wrong, and the agreement
(score > 0.5 iff right). Arm prm is trained against the PRM; in the other arms the same
numbers are a control. Means and spreads are over seeds.

``--quick`` runs the plumbing on the tiny random model: its character tokenizer has no
newline, so steps are joined by "," and arm prm uses a tiny PRM trained here, on data
from ``tokrl.tasks.stepwise`` with that separator. Its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import DEFAULT_CACHE, RESULTS, ROOT, emit, header, log, set_threads  # noqa: E402

RECIPE = ROOT / "configs" / "smollm2_stepwise.yaml"
ARMS = ("outcome", "prm", "step_match")
QUICK = {"model": {"name": "tiny-random", "chat_template": False, "lora_rank": 0},
         "task": {"options": {"num_train": 16, "num_test": 4, "min_ops": 1, "max_ops": 2, "separator": ","}},
         "sampling": {"max_new_tokens": 16},
         "warm_start": {"epochs": 1},
         "train": {"prompts_per_step": 2, "group_size": 2, "eval_samples": 4}}


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--prm", help="a trained process reward model directory (arm prm; without it the arm is skipped)")
    p.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=30, help="RL steps per run")
    p.add_argument("--eval-every", type=int, default=5)
    p.add_argument("--target", type=float, default=0.5, help="held-out accuracy whose first step is reported")
    p.add_argument("--step-weight", type=float, default=1.0, help="weight of the step reward beside the outcome's 1")
    p.add_argument("--differences", action="store_true", help="pay step rewards as differences v_k - v_(k-1)")
    p.add_argument("--recipe", default=str(RECIPE))
    p.add_argument("--runs-dir", help="keep the run directories here (default: a temporary directory)")
    p.add_argument("--cache-dir", default=DEFAULT_CACHE)
    p.add_argument("--quick", action="store_true", help="tiny model and a tiny PRM: the plumbing, seconds")
    p.add_argument("--out", default=None, help="default: benchmarks/results/prm_rl.json (not written with --quick)")
    args = p.parse_args(argv)
    if args.quick:
        args.seeds, args.steps, args.eval_every = args.seeds[:1], 2, 1
    return args


def merged(base: dict, update: dict) -> dict:
    out = dict(base)
    for k, v in update.items():
        out[k] = merged(out.get(k, {}), v) if isinstance(v, dict) else v
    return out


def recipe(args, arm: str, seed: int, prm: str | None, run_dir: Path):
    """The Config of one run: the recipe, its arm's rewards, the seed and the step counts."""
    import yaml

    from tokrl.config import load_config

    data = yaml.safe_load(Path(args.recipe).read_text())
    if args.quick:
        data = merged(data, QUICK)
    separator = data["task"]["options"].get("separator", "\n")
    extra = {"outcome": [], "prm": [{"reward_model": prm, "level": "step", "differences": args.differences}],
             "step_match": [{"name": "step_match", "separator": separator, "differences": args.differences}]}[arm]
    data["task"]["options"]["rewards"] = [dict(r, weight=args.step_weight) for r in extra]
    t = data["train"]
    t.update({"seed": seed, "max_steps": args.steps, "eval_every": args.eval_every, "output_dir": str(run_dir),
              "save_model": False, "log_samples": t["prompts_per_step"] * t["group_size"]})   # every sample
    data["log"] = {**data.get("log", {}), "report": False}
    path = run_dir.parent / f"{run_dir.name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return load_config(path)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def heldout_curve(run_dir: Path, answers: dict[str, str], separator: str) -> list[list[float]]:
    """[[step, accuracy]] per evaluation: the share of held-out completions whose outcome is right."""
    from tokrl.tasks.stepwise_task import final_answer

    by_step: dict[int, list[float]] = {}
    for r in read_jsonl(run_dir / "eval_samples.jsonl"):
        right = final_answer(r["completion"], separator) == answers[r["prompt"]]
        by_step.setdefault(r["step"], []).append(float(right))
    return [[step, sum(v) / len(v)] for step, v in sorted(by_step.items())]


def gaming(run_dir: Path, prm, references: dict[str, list[str]], window: int) -> list[dict]:
    """Per window of training steps: the PRM's step scores beside step_match's verdicts on the
    policy's own samples (``prm``: a StepRewardModelReward, for its model and separators)."""
    from tokrl.rewards.step_match import judge_steps
    from tokrl.rewards.steps import score_steps, split_steps

    windows: dict[int, dict[str, list[float]]] = {}
    samples = [s for s in read_jsonl(run_dir / "samples.jsonl") if split_steps(s["completion"], prm.separator)]
    steps = [[s["completion"][a:b] for a, b in split_steps(s["completion"], prm.separator)] for s in samples]
    scores = score_steps(prm.model, prm.prm_tokenizer, [s["prompt"] for s in samples], steps, prm.prm_separator)
    for s, written, p in zip(samples, steps, scores):
        w = windows.setdefault((s["step"] - 1) // window, {"right": [], "wrong": [], "agree": []})
        for ok, score in zip(judge_steps(references[s["prompt"]], written), p):
            if score is not None:
                w["right" if ok else "wrong"].append(score)
                w["agree"].append(float((score > 0.5) == ok))
    mean = lambda v: sum(v) / len(v) if v else None                                       # noqa: E731
    return [{"steps": [k * window + 1, (k + 1) * window], "n_steps": len(w["agree"]), "n_right": len(w["right"]),
             "prm_mean_right": mean(w["right"]), "prm_mean_wrong": mean(w["wrong"]), "agreement": mean(w["agree"])}
            for k, w in sorted(windows.items())]


def run_one(args, arm: str, seed: int, prm_dir: str | None, prm, root: Path) -> dict:
    from tokrl.training.loop import train

    run_dir = root / f"{arm}-seed{seed}"
    cfg = recipe(args, arm, seed, prm_dir, run_dir)
    log(f"prm_rl: arm {arm}, seed {seed}: {args.steps} steps -> {run_dir}")
    t0 = time.perf_counter()
    result = train(cfg, run_dir)
    wall = time.perf_counter() - t0
    task = result["state"].task
    answers = {e["prompt"]: e["answer"] for e in task.examples("test")}
    references = {e["prompt"]: e["steps"] for e in task.examples("train")}
    curve = heldout_curve(run_dir, answers, task.separator)
    reached = next((step for step, acc in curve if step > 0 and acc >= args.target), None)
    out = {"curve": curve, "steps_to_target": reached, "final_accuracy": curve[-1][1], "wall_s": round(wall, 1)}
    if arm == "outcome" and result.get("warm_start"):
        out["warm_start_solved"] = result["warm_start"]["eval_after"]["solved"]
    if prm is not None:
        out["prm_vs_checker"] = gaming(run_dir, prm, references, args.eval_every)
    return out


def quick_prm(root: Path, cache_dir: str) -> str:
    """A tiny PRM on the tiny model, trained here on stepwise data with steps joined by ","."""
    from tokrl.offline.process_reward import ProcessRewardConfig, fit, prepare, save
    from tokrl.tasks.data import write_jsonl
    from tokrl.tasks.stepwise import StepsDataConfig, generate

    train, _ = generate(StepsDataConfig(questions=40, min_ops=1, max_ops=2, seed=0))
    write_jsonl(root / "steps.jsonl", train)
    cfg = ProcessRewardConfig(data=str(root / "steps.jsonl"), model="tiny-random", cache_dir=cache_dir,
                              step_separator=",", epochs=1, batch_size=16, test_fraction=0.2,
                              output_dir=str(root / "prm"))
    run = prepare(cfg)
    save(run, root / "prm", fit(run))
    return str(root / "prm")


def spread(values: list) -> dict:
    """mean, sample standard deviation, min and max over seeds of the values that are not None."""
    v = [x for x in values if x is not None]
    if not v:
        return {"n": 0, "values": values}
    return {"mean": statistics.fmean(v), "std": statistics.stdev(v) if len(v) > 1 else 0.0, "min": min(v),
            "max": max(v), "n": len(v), "values": values}


def summarize_arm(runs: list[dict]) -> dict:
    """Over seeds: final accuracy, steps to target (None: not reached), wall time, the mean curve
    and the mean gaming numbers per window."""
    out = {k: spread([r.get(k) for r in runs]) for k in ("final_accuracy", "steps_to_target", "wall_s")}
    out["reached_target"] = sum(r["steps_to_target"] is not None for r in runs)
    steps = [step for step, _ in runs[0]["curve"]]
    out["curve_mean"] = [[s, statistics.fmean(r["curve"][i][1] for r in runs)] for i, s in enumerate(steps)]
    if "prm_vs_checker" in runs[0]:
        out["prm_vs_checker"] = [
            {"steps": w["steps"], **{k: spread([r["prm_vs_checker"][i][k] for r in runs
                                               if i < len(r["prm_vs_checker"])])
                                     for k in ("prm_mean_right", "prm_mean_wrong", "agreement")}}
            for i, w in enumerate(runs[0]["prm_vs_checker"])]
    return out


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    set_threads()
    import torch

    from tokrl.rewards.steps import StepRewardModelReward

    root = Path(args.runs_dir or tempfile.mkdtemp(prefix="prm_rl-"))
    root.mkdir(parents=True, exist_ok=True)
    prm_dir = quick_prm(root, args.cache_dir) if args.quick and not args.prm else args.prm
    notes = [f"held-out accuracy: the outcome alone, re-scored from eval_samples.jsonl; target {args.target}"]
    arms = [a for a in args.arms if a != "prm" or prm_dir]
    if "prm" in args.arms and not prm_dir:
        notes.append("arm prm skipped: no --prm directory given")
    prm = StepRewardModelReward(prm_dir, None) if prm_dir else None
    if args.quick:
        notes.append("quick: tiny random model, steps joined by ','; the PRM is a tiny one trained here; "
                     "the numbers test the plumbing only")
    runs = {arm: [] for arm in arms}
    for seed in args.seeds:                          # seed-major: every arm of a seed before the next seed
        for arm in arms:
            torch.manual_seed(seed)
            runs[arm].append({"seed": seed, **run_one(args, arm, seed, prm_dir, prm, root)})
    report = {**header("prm_rl"),
              "configuration": {"recipe": str(args.recipe), "quick": args.quick, "arms": arms, "seeds": args.seeds,
                                "steps": args.steps, "eval_every": args.eval_every, "target": args.target,
                                "step_weight": args.step_weight, "differences": args.differences, "prm": prm_dir,
                                "runs_dir": str(root)},
              "results": {arm: {"summary": summarize_arm(rs), "runs": rs} for arm, rs in runs.items()},
              "notes": notes}
    emit(report, args.out or (None if args.quick else str(RESULTS / "prm_rl.json")))
    return report


if __name__ == "__main__":
    main()
