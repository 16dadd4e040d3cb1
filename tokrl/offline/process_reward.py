"""Process reward models: `tokrl reward-model train DATA --level step` scores every step.

Each row is one solution in TRL's stepwise-supervision format: ``prompt``,
``completions`` (a list of steps, or one text whose steps are joined by the step
separator) and ``labels`` (one bool per step: is this step right). The model is a
reward model (``tokrl.rewards.model``) whose head is read at the last token of every
step (``tokrl.rewards.steps``) and trained with binary cross-entropy:

    p_k = σ(r(x, y≤k)),   loss = −mean_k [ l_k log p_k + (1 − l_k) log(1 − p_k) ]

Held out (by question: solutions that share a prompt stay together) it reports the
step accuracy (p_k > ½ agrees with l_k) beside the majority-class rate (always
answering the training steps' more common label), and per solution whether the
first wrong step is found: the first step with p_k ≤ ½ is the first step labelled
false (or there is neither). The saved directory records ``level: step``.

    tokrl reward-model steps-data data/steps
    tokrl reward-model train data/steps/train.jsonl --test-data data/steps/test.jsonl --level step
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from tokrl.offline.fit import FitConfig, record, run_epochs

Solution = tuple[str, list[str], list[bool]]
"""(prompt, steps, labels)"""


# ------------------------------------------------------------------------ data

def parse_solution(row: dict, columns: tuple[str, str, str], separator: str, where: str) -> Solution:
    """A row as (prompt, steps, labels); ValueError names ``where`` (file and row) at fault."""
    prompt_col, steps_col, labels_col = columns
    steps, labels = row[steps_col], row[labels_col]
    if isinstance(steps, str):                     # one text: its steps joined by the separator
        steps = steps.split(separator)
    if not isinstance(steps, (list, tuple)) or not all(isinstance(s, str) for s in steps):
        raise ValueError(f"{where}: {steps_col!r} must be a list of step texts or one text")
    if not isinstance(labels, (list, tuple)) or not all(isinstance(x, bool) or x in (0, 1) for x in labels):
        raise ValueError(f"{where}: {labels_col!r} must be a list of booleans, one per step")
    if len(labels) != len(steps):
        raise ValueError(f"{where}: {len(steps)} steps in {steps_col!r} but {len(labels)} labels in "
                         f"{labels_col!r}; give one label per step")
    if not steps or any(not s for s in steps):
        raise ValueError(f"{where}: a solution needs at least one step and no step may be empty")
    return str(row[prompt_col]), list(steps), [bool(x) for x in labels]


def split_by_prompt(solutions: list[Solution], test_fraction: float, seed: int
                    ) -> tuple[list[Solution], list[Solution]]:
    """(train, test), a seeded share of the distinct prompts held out with all their solutions."""
    from tokrl.tasks.data import split_rows

    prompts = list(dict.fromkeys(s[0] for s in solutions))
    _, test_prompts = split_rows([{"p": p} for p in prompts], test_fraction, seed)
    held = {r["p"] for r in test_prompts}
    return [s for s in solutions if s[0] not in held], [s for s in solutions if s[0] in held]


def read_solutions(path: str | Path, columns: tuple[str, str, str], separator: str) -> list[Solution]:
    from tokrl.tasks.data import read_rows, require_columns

    rows = read_rows(path)
    require_columns(rows, list(columns), path, "--prompt-column / --completions-column / --labels-column")
    return [parse_solution(r, columns, separator, f"{path}: row {i + 1}") for i, r in enumerate(rows)]


# ------------------------------------------------------------------------ the math

def step_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Binary cross-entropy, mean over steps.  logits (S,), labels (S,) of 0/1.  returns: scalar."""
    return F.binary_cross_entropy_with_logits(logits, labels.float())


def first_wrong(right: list[bool]) -> int | None:
    """Index of the first False, or None: first_wrong([True, False, False]) == 1."""
    return next((k for k, ok in enumerate(right) if not ok), None)


def step_metrics(logits: list[list[float]], labels: list[list[bool]], majority: bool) -> dict[str, Any]:
    """Held-out numbers from per-solution step logits and labels (see the module docstring).

    ``majority``: the more common label among the training steps.
    """
    flat = [(x > 0, y) for xs, ys in zip(logits, labels) for x, y in zip(xs, ys)]
    found = [first_wrong([x > 0 for x in xs]) == first_wrong(ys) for xs, ys in zip(logits, labels)]
    wrong = [f for f, ys in zip(found, labels) if not all(ys)]
    right = [f for f, ys in zip(found, labels) if all(ys)]

    def share(xs: list[bool]) -> float | None:
        return sum(xs) / len(xs) if xs else None
    return {"step_accuracy": share([p == y for p, y in flat]), "majority_label": majority,
            "majority_rate": share([y == majority for _, y in flat]), "n_steps": len(flat),
            "first_error_found": share(found), "first_error_found_when_wrong": share(wrong),
            "all_right_when_right": share(right), "n_solutions": len(found), "n_solutions_wrong": len(wrong)}


# ------------------------------------------------------------------------ training

@dataclass
class ProcessRewardConfig(FitConfig):
    output_dir: str = "runs/prm"
    """where the trained process reward model is saved (Hugging Face format)"""
    head: str = "classifier"
    """classifier or scalar_head, as for a sequence-level reward model"""
    prompt_column: str = "prompt"
    """the column that holds the prompt"""
    completions_column: str = "completions"
    """the column that holds the steps: a list of texts, or one text joined by step_separator"""
    labels_column: str = "labels"
    """the column that holds one boolean per step (true: the step is right)"""
    step_separator: str = "\n"
    """joins the steps into the text the model reads (and splits a one-text solution)"""

    def checks(self) -> list[tuple[bool, str]]:
        from tokrl.rewards.model import KINDS

        return [(self.head in KINDS, f"head {self.head!r} is not one of {', '.join(KINDS)}"),
                (self.step_separator != "", "the step separator must not be empty"), *super().checks()]


@dataclass
class ProcessRewardRun:
    """Everything loaded before any step: bad input has failed by now."""

    cfg: ProcessRewardConfig
    model: Any
    tokenizer: Any
    train: list[Solution]
    test: list[Solution]
    records: list[dict] = field(default_factory=list)
    """after fit: one record per held-out solution (scores, first wrong step, the one predicted)"""


def prepare(cfg: ProcessRewardConfig) -> ProcessRewardRun:
    """Read and check every solution, split by prompt, load the model with a new head."""
    from tokrl.rewards.model import init_reward_model
    from tokrl.rewards.steps import check_separator

    cfg.validate()
    columns = (cfg.prompt_column, cfg.completions_column, cfg.labels_column)
    solutions = read_solutions(cfg.data, columns, cfg.step_separator)
    if cfg.test_path is None:
        train, test = split_by_prompt(solutions, cfg.test_fraction, cfg.seed)
    else:
        train, test = solutions, read_solutions(cfg.test_path, columns, cfg.step_separator)
    torch.manual_seed(cfg.seed)          # the new head's initialisation
    model, tokenizer = init_reward_model(cfg.model, cfg.head, cfg.cache_dir, level="step")
    check_separator(tokenizer, cfg.step_separator)
    return ProcessRewardRun(cfg, model, tokenizer, train, test)


def batch_logits(run: ProcessRewardRun, batch: list[Solution]) -> tuple[Tensor, Tensor]:
    """(logits (S,), labels (S,) float) of every step of ``batch`` that fits in the context."""
    from tokrl.rewards.steps import step_logits

    logits, positions = step_logits(run.model, run.tokenizer, [s[0] for s in batch], [s[1] for s in batch],
                                    run.cfg.step_separator, run.cfg.dtype)
    labels = [y for (_, _, ys), ps in zip(batch, positions) for y, p in zip(ys, ps) if p >= 0]
    return logits, torch.tensor(labels, dtype=torch.float32)


@torch.no_grad()
def evaluate_steps(run: ProcessRewardRun, solutions: list[Solution], majority: bool
                   ) -> tuple[dict[str, Any] | None, list[dict]]:
    """(step_metrics plus the mean step loss, one record per solution); (None, []) without solutions."""
    from tokrl.rewards.steps import step_logits

    if not solutions:
        return None, []
    was_training = run.model.training
    run.model.eval()
    logits, labels = [], []
    for start in range(0, len(solutions), run.cfg.batch_size):
        batch = solutions[start:start + run.cfg.batch_size]
        flat, positions = step_logits(run.model, run.tokenizer, [s[0] for s in batch], [s[1] for s in batch],
                                      run.cfg.step_separator, run.cfg.dtype)
        values = iter(flat.tolist())
        for (_, _, ys), ps in zip(batch, positions):
            kept = [(next(values), y) for y, p in zip(ys, ps) if p >= 0]      # steps cut off are not scored
            logits.append([x for x, _ in kept])
            labels.append([y for _, y in kept])
    run.model.train(was_training)
    loss = step_loss(torch.tensor([x for xs in logits for x in xs]), torch.tensor([y for ys in labels for y in ys]))
    records = [{"prompt": s[0], "labels": ys, "scores": torch.sigmoid(torch.tensor(xs)).tolist(),
                "first_wrong": first_wrong(ys), "predicted_first_wrong": first_wrong([x > 0 for x in xs])}
               for s, xs, ys in zip(solutions, logits, labels)]
    for r in records:
        r["found"] = r["first_wrong"] == r["predicted_first_wrong"]
    return {**step_metrics(logits, labels, majority), "loss": float(loss)}, records


def fit(run: ProcessRewardRun, progress: Callable[[dict[str, float]], None] | None = None) -> dict[str, Any]:
    """Train ``run.model`` in place; returns the summary (held-out numbers before and after)."""
    cfg = run.cfg
    train_labels = [y for _, _, ys in run.train for y in ys]
    majority = sum(train_labels) * 2 >= len(train_labels)
    before, _ = evaluate_steps(run, run.test, majority)

    def batch_loss(batch: list[Solution]) -> tuple[Tensor, dict[str, float]]:
        logits, labels = batch_logits(run, batch)
        accuracy = float(((logits.detach() > 0).float() == labels).float().mean())
        return step_loss(logits, labels), {"accuracy": accuracy}

    steps, last = run_epochs(run.model, run.train, batch_loss, cfg, progress)
    after, run.records = evaluate_steps(run, run.test, majority)
    return {"level": "step", "head": cfg.head, "step_separator": cfg.step_separator,
            "train_solutions": len(run.train), "test_solutions": len(run.test), "train_step_labels": len(train_labels),
            "steps": steps, "train_loss_last": last, "test_before": before, "test_after": after}


HELDOUT_FILE = "heldout_steps.jsonl"
"""per held-out solution: labels, step scores, the first wrong step and the one predicted"""


def save(run: ProcessRewardRun, directory, summary: dict[str, Any]) -> None:
    run.model.save_pretrained(directory, run.tokenizer, record(run.cfg, summary))
    with open(Path(directory) / HELDOUT_FILE, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in run.records)


# ------------------------------------------------------------------------ CLI (wired in reward_model.py)

def add_step_arguments(p) -> None:
    """The stepwise-data options of `reward-model train` and `reward-model eval`."""
    p.add_argument("--completions-column", default="completions",
                   help="with --level step: the steps, a list of texts or one text joined by --step-separator")
    p.add_argument("--labels-column", default="labels", help="with --level step: one boolean per step")
    p.add_argument("--step-separator", default=None,
                   help="with --level step: joins the steps (train: default newline; eval: default the one "
                        "the model was trained with)")


def train_cli(args, fields: dict[str, Any]) -> int:
    from tokrl.offline.fit import run_command

    cfg = ProcessRewardConfig(**fields, head=args.head, prompt_column=args.prompt_column,
                              completions_column=args.completions_column, labels_column=args.labels_column,
                              step_separator="\n" if args.step_separator is None else args.step_separator)
    return run_command(cfg, args, prepare, fit, save, lambda run: len(run.train), "process-reward-model",
                       lambda m: {"epoch": m["epoch"], "loss": f"{m['loss']:.3f}", "acc": f"{m['accuracy']:.2f}"})


def eval_cli(args) -> int:
    """Held-out step numbers of a saved PRM on stepwise data (majority label: the data's own)."""
    from tokrl.rewards.model import INFO_FILE, load_reward_model
    from tokrl.rewards.steps import check_separator

    model, tokenizer = load_reward_model(args.model, level="step")
    separator = args.step_separator
    if separator is None:
        separator = json.loads((Path(args.model) / INFO_FILE).read_text()).get("step_separator", "\n")
    check_separator(tokenizer, separator)
    columns = (args.prompt_column, args.completions_column, args.labels_column)
    solutions = read_solutions(args.data, columns, separator)
    cfg = ProcessRewardConfig(data=args.data, batch_size=args.batch_size, step_separator=separator)
    labels = [y for _, _, ys in solutions for y in ys]
    result, _ = evaluate_steps(ProcessRewardRun(cfg, model, tokenizer, [], solutions), solutions,
                               sum(labels) * 2 >= len(labels))
    print(json.dumps({"model": args.model, "data": args.data, **result}))
    return 0


def add_steps_data_command(sub) -> None:
    from tokrl.tasks.stepwise import StepsDataConfig

    d = StepsDataConfig()
    p = sub.add_parser("steps-data", help="write stepwise multi-step arithmetic data (train.jsonl, test.jsonl)")
    p.add_argument("output", help="a directory for train.jsonl and test.jsonl")
    p.add_argument("--questions", type=int, default=d.questions, help=f"distinct questions (default {d.questions})")
    p.add_argument("--solutions", type=int, default=d.solutions, help=f"solutions per question (default {d.solutions})")
    p.add_argument("--error-rate", type=float, default=d.error_rate,
                   help=f"chance a solution has a planted wrong step (default {d.error_rate})")
    p.add_argument("--min-ops", type=int, default=d.min_ops, help=f"fewest steps (default {d.min_ops})")
    p.add_argument("--max-ops", type=int, default=d.max_ops, help=f"most steps (default {d.max_ops})")
    p.add_argument("--ops", default=",".join(d.kinds),
                   help=f"the kinds of operation, comma-separated (default {','.join(d.kinds)})")
    p.add_argument("--max-start", type=int, default=d.max_start,
                   help=f"start values are drawn from 1..this (default {d.max_start})")
    p.add_argument("--max-operand", type=int, default=d.max_operand,
                   help=f"what is added or subtracted is drawn from 1..this (default {d.max_operand})")
    p.add_argument("--test-fraction", type=float, default=d.test_fraction,
                   help=f"share of questions held out, with all their solutions (default {d.test_fraction})")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--overwrite", action="store_true", help="replace train.jsonl and test.jsonl already there")
    p.set_defaults(func=steps_data_cli)


def steps_data_cli(args) -> int:
    from tokrl.tasks.data import write_jsonl
    from tokrl.tasks.stepwise import StepsDataConfig, generate

    cfg = StepsDataConfig(min_ops=args.min_ops, max_ops=args.max_ops, kinds=tuple(args.ops.split(",")),
                          max_start=args.max_start, max_operand=args.max_operand, questions=args.questions,
                          solutions=args.solutions, error_rate=args.error_rate, test_fraction=args.test_fraction,
                          seed=args.seed)
    out = Path(args.output)
    if out.exists() and not out.is_dir():
        raise ValueError(f"output {out} is a file; name a directory")
    if not args.overwrite and any((out / f).exists() for f in ("train.jsonl", "test.jsonl")):
        raise ValueError(f"{out} already holds train.jsonl or test.jsonl; pass --overwrite or choose another")
    train, test = generate(cfg)                         # bad options fail here, before anything is written
    out.mkdir(parents=True, exist_ok=True)
    write_jsonl(out / "train.jsonl", train)
    write_jsonl(out / "test.jsonl", test)
    labels = [y for r in train + test for y in r["labels"]]
    print(json.dumps({"train": str(out / "train.jsonl"), "test": str(out / "test.jsonl"),
                      "train_solutions": len(train), "test_solutions": len(test),
                      "test_questions": len({r["prompt"] for r in test}), "step_labels": len(labels),
                      "steps_right": sum(labels) / len(labels)}, indent=2))
    return 0
