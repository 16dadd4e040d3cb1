"""`tokrl train | eval | generate`.

Bad input (a config key, a type, a missing model or file) ends with one line on
stderr saying what is wrong and how to fix it, and exit status 2. Set
TOKRL_DEBUG=1 to see the traceback instead.

`torchrun --nproc_per_node=W -m tokrl train CONFIG` trains with W processes
(see tokrl/distributed.py): rank 0 checks, locks and writes the run directory and
prints; bad input that every process finds is printed once, by rank 0.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import sys
from pathlib import Path

# OpenMP's default busy-waiting makes a 2-thread torch process crawl (30x slower was
# measured) whenever anything else holds a core; passive waiting costs nothing on an
# idle machine. It must be set before torch loads; an explicit setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from tokrl.config import ConfigError, load_config
from tokrl.errors import TrainingError, UsageError

EXIT_BAD_INPUT = 2
EXIT_TRAINING_FAILED = 1

PLUGINS: tuple[str, ...] = ("tokrl.runs.report", "tokrl.offline.sft", "tokrl.offline.reward_model")
"""Modules that add a subcommand: each defines ``add_command(subparsers)``, which
registers a parser whose ``func`` default takes the parsed args and returns an exit code."""


def _train(args: argparse.Namespace) -> int:
    import yaml
    from tqdm import tqdm

    from tokrl.training import distributed
    from tokrl.config import to_dict
    from tokrl.runs.runlock import RunLock
    from tokrl.training.loop import train

    if args.config and "=" in args.config and not Path(args.config).is_file():
        # `tokrl train key=value ...`: no recipe, only overrides of the defaults
        args.config, args.overrides = None, [args.config, *args.overrides]
    if args.resume:
        cfg, run_dir = _resume_config(args)
    else:
        cfg = load_config(args.config, args.overrides)
        run_dir = Path(cfg.train.output_dir)
    distributed.init(cfg)             # under torchrun: check that the batch splits, join the others
    if not args.resume:
        distributed.run_on_main(lambda: _check_new_run_dir(run_dir, args.overwrite))
    lock = RunLock(run_dir)           # rank 0's alone: the others never write the run directory
    if args.resume:
        distributed.run_on_main(lock.acquire)
    bar = tqdm(total=cfg.train.max_steps, desc="train", unit="step", file=sys.stderr,
               disable=args.quiet or not distributed.is_main(), dynamic_ncols=True)

    def progress(m: dict) -> None:
        bar.update(1)
        kl = m["kl/ref_per_seq"] if m.get("kl/coef") else m.get("policy/approx_kl", 0.0)
        bar.set_postfix(reward=f"{m['reward/mean']:.3f}", entropy=f"{m['policy/entropy']:.2f}",
                        kl=f"{kl:.4f}", tok_s=f"{m['time/tokens_per_s']:.0f}")

    def on_start() -> None:
        # only once the model and task have loaded and run: bad input leaves nothing behind
        run_dir.mkdir(parents=True, exist_ok=True)
        lock.acquire()
        if args.overwrite:
            for old in run_dir.iterdir():
                if old.name != lock.path.name:
                    shutil.rmtree(old) if old.is_dir() else old.unlink()
        (run_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))

    try:
        result = train(cfg, run_dir, progress=progress, on_start=on_start, resume=bool(args.resume),
                       warn=lambda w: bar.write(f"tokrl: warning at step {w.last}: {w.describe()}", file=sys.stderr))
    finally:
        bar.close()
        lock.release()
    if distributed.is_main():
        summary = {"run_dir": str(run_dir), "steps": result["steps"], "stopped_early": result["stopped_early"],
                   "eval_before": result["eval_before"], "eval_after": result["eval_after"],
                   "held_out_change": _held_out_change(run_dir)}
        if result["warm_start"] is not None:
            summary["warm_start"] = result["warm_start"]
        print(json.dumps(summary, indent=2))
    return 0


def _held_out_change(run_dir: Path) -> dict:
    """Paired before/after comparison of the first and last evaluation in run_dir."""
    from tokrl.training.evaluate import compare

    records = [json.loads(line) for line in (run_dir / "eval_samples.jsonl").read_text().splitlines() if line]
    first, last = records[0]["step"], records[-1]["step"]
    return compare([r for r in records if r["step"] == first], [r for r in records if r["step"] == last])


def _check_new_run_dir(run_dir: Path, overwrite: bool) -> None:
    if run_dir.exists() and not run_dir.is_dir():
        raise UsageError(f"train.output_dir {run_dir} is a file; name a directory")
    ancestor = run_dir.absolute().parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise UsageError(f"train.output_dir {run_dir} cannot be created: {ancestor} is a file")
    if not os.access(ancestor, os.W_OK):
        raise UsageError(f"train.output_dir {run_dir} cannot be created: {ancestor} is not writable")
    if run_dir.exists() and any(p.name != ".lock" for p in run_dir.iterdir()):
        if not overwrite:
            raise UsageError(f"run directory {run_dir} already exists; pass --overwrite, --resume {run_dir}, "
                             "or set train.output_dir=...")
        if not (run_dir / "config.yaml").is_file():
            raise UsageError(f"{run_dir} is not empty and not a tokrl run directory; --overwrite only replaces runs")


def _resume_config(args: argparse.Namespace):
    """The config to resume ``args.resume`` with: the run's own, plus any CONFIG and
    overrides given, which must not change it unless --force."""
    from tokrl.config import to_dict

    run_dir = Path(args.resume)
    saved_path = run_dir / "config.yaml"
    if not saved_path.is_file():
        raise UsageError(f"{run_dir} is not a run directory (no config.yaml); nothing to resume")
    saved = load_config(saved_path)
    cfg = load_config(args.config or saved_path, [*args.overrides, f"train.output_dir={run_dir}"])
    saved.train.output_dir = str(run_dir)          # a moved run directory is the same run
    changed = _differences(to_dict(saved), to_dict(cfg))
    if changed and not args.force:
        raise UsageError(f"the config differs from the run's in {', '.join(changed)}; "
                         "pass --force to resume with the new values")
    return cfg, run_dir


def _differences(a: dict, b: dict, prefix: str = "") -> list[str]:
    keys = []
    for k in sorted(set(a) | set(b)):
        x, y = a.get(k), b.get(k)
        if isinstance(x, dict) and isinstance(y, dict) and k != "options":
            keys += _differences(x, y, f"{prefix}{k}.")
        elif x != y:
            keys.append(f"{prefix}{k}")
    return keys


def _eval(args: argparse.Namespace) -> int:
    from tokrl.training.evaluate import evaluate
    from tokrl.config import SamplingConfig
    from tokrl.models.load import load_policy
    from tokrl.tasks import build_task

    target = Path(args.target)
    overrides = list(args.overrides)
    if target.is_dir():       # a run directory: its config, its trained model
        if not (target / "config.yaml").is_file():
            raise UsageError(f"{target} is not a run directory (no config.yaml); pass a run directory or a YAML recipe")
        if (target / "model").is_dir():
            overrides.insert(0, f"model.name={target / 'model'}")
        target = target / "config.yaml"
    cfg = load_config(target, overrides)
    model, tokenizer = load_policy(cfg.model)
    model.eval()
    task = build_task(cfg.task.name, tokenizer, **cfg.task.options)
    if args.limit < 0:
        raise UsageError(f"--limit must be >= 0 (0 evaluates every example), got {args.limit}")
    examples = task.examples(args.split)[: args.limit or None]
    result, _ = evaluate(model, tokenizer, task, examples, SamplingConfig(cfg.sampling.max_new_tokens, temperature=0.0),
                      cfg.model.chat_template, cfg.model.dtype)
    print(json.dumps({"model": cfg.model.name, "task": cfg.task.name, "split": args.split, **result}))
    return 0


def _generate(args: argparse.Namespace) -> int:
    import torch

    from tokrl.config import Config, ModelConfig, SamplingConfig, validate
    from tokrl.models.load import load_policy
    from tokrl.generation.engine import generate
    from tokrl.generation.prompts import encode_batch

    sampling = SamplingConfig(args.max_new_tokens, args.temperature, args.top_k, args.top_p)
    validate(Config(sampling=sampling))
    model, tokenizer = load_policy(ModelConfig(name=args.model, chat_template=args.chat))
    model.eval()
    examples = [{"prompt": p} for p in args.prompts]
    ids, mask = encode_batch(tokenizer, examples, 1, args.chat)
    out = generate(model, ids, mask, sampling, tokenizer.eos_token_id, tokenizer.pad_token_id,
                   generator=torch.Generator().manual_seed(args.seed))
    for prompt, row, n in zip(args.prompts, out["tokens"], out["lengths"]):
        print(json.dumps({"prompt": prompt, "completion": tokenizer.decode(row[:n], skip_special_tokens=True)},
                         ensure_ascii=False))
    return 0


def _config(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides) if args.config or args.overrides else None
    print(annotated_yaml(cfg))
    return 0


# ------------------------------------------------------------------ documentation

def field_docs(cls: type) -> dict[str, str]:
    """The docstring written under each field of dataclass ``cls`` (read from its source)."""
    import ast
    import inspect
    import textwrap

    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body
    docs = {}
    for node, after in zip(body, body[1:]):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)):
            docs[node.target.id] = " ".join(str(after.value.value).split())
    return docs


def annotated_yaml(cfg=None) -> str:
    """``cfg`` (a Config; default: the defaults) as YAML with every field's documentation above it."""
    import dataclasses

    import yaml

    from tokrl.config import Config, to_dict

    cfg = cfg or Config()
    lines = []
    for section in dataclasses.fields(cfg):
        value = getattr(cfg, section.name)
        lines.append(f"{section.name}:")
        docs = field_docs(type(value))
        for f in dataclasses.fields(value):
            lines.append(f"  # {docs.get(f.name, '')}")
            dumped = yaml.safe_dump({f.name: to_dict(value)[f.name]}, default_flow_style=True, width=1000).strip()
            lines.append(f"  {dumped[1:-1] if dumped.startswith('{') else dumped}")
        lines.append("")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tokrl", description="Token-level reinforcement learning for language models.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a policy with a YAML recipe")
    p.add_argument("config", nargs="?", help="YAML recipe (default: the built-in defaults)")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. optim.lr=1e-5 train.max_steps=50")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue RUN_DIR from its newest complete checkpoint")
    p.add_argument("--force", action="store_true", help="with --resume: accept a changed config")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_train)

    p = sub.add_parser("eval", help="held-out mean reward of a model on a task, as JSON")
    p.add_argument("target", help="a run directory (evaluates its model/) or a YAML recipe")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. model.name=path/to/model")
    p.add_argument("--split", default="test", choices=["train", "test"], help="which examples (default test)")
    p.add_argument("--limit", type=int, default=0, help="evaluate only the first N examples (0: all)")
    p.set_defaults(func=_eval)

    p = sub.add_parser("config", help="print every option with its documentation, as YAML")
    p.add_argument("config", nargs="?", help="a YAML recipe to show (default: the built-in defaults)")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. optim.lr=1e-5")
    p.set_defaults(func=_config)

    p = sub.add_parser("generate", help="sample completions for prompts")
    p.add_argument("model", help="a model directory, a .gguf file or a built-in name")
    p.add_argument("prompts", nargs="+", help="one or more prompts")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--temperature", type=float, default=0.0, help="0 is greedy (default)")
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--chat", action="store_true", help="apply the tokenizer's chat template")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_generate)

    for module in PLUGINS:
        importlib.import_module(module).add_command(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # key=value overrides may come after options (argparse stops collecting positionals there)
    if extra and hasattr(args, "overrides") and all("=" in x and not x.startswith("-") for x in extra):
        args.overrides = [*args.overrides, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()      # tokrl draws its own progress
    try:
        return args.func(args)
    except (ConfigError, UsageError, FileNotFoundError, ValueError) as e:
        return _fail(e, EXIT_BAD_INPUT)
    except TrainingError as e:
        return _fail(e, EXIT_TRAINING_FAILED)
    finally:
        # a vLLM engine shuts down first (it has process groups of its own), then a torchrun
        # process leaves its group, also after an error
        if "tokrl.generation.vllm_engine" in sys.modules:
            sys.modules["tokrl.generation.vllm_engine"].release()
        if "tokrl.training.distributed" in sys.modules:
            sys.modules["tokrl.training.distributed"].shutdown()


def _fail(error: Exception, status: int) -> int:
    if os.environ.get("TOKRL_DEBUG"):
        raise error
    message = str(error).splitlines()[0] if str(error) else type(error).__name__
    where = ""
    distributed = sys.modules.get("tokrl.training.distributed")        # imported only by commands that train
    if distributed is not None:
        if not distributed.should_report(error):      # under torchrun: once, unless a rank failed alone
            return status
        where = "" if distributed.is_main() else f"rank {distributed.rank()}: "
    print(f"tokrl: error: {where}{message}", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
