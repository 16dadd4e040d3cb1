"""`tokrl train | eval | generate`.

Bad input (a config key, a type, a missing model or file) ends with one line on
stderr saying what is wrong and how to fix it, and exit status 2. Set
TOKRL_DEBUG=1 to see the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import sys
from pathlib import Path

from tokrl.config import ConfigError, load_config

EXIT_BAD_INPUT = 2

PLUGINS: tuple[str, ...] = ()
"""Modules that add a subcommand: each defines ``add_command(subparsers)``, which
registers a parser whose ``func`` default takes the parsed args and returns an exit code."""


class UsageError(Exception):
    """Bad input found by the CLI itself."""


def _train(args: argparse.Namespace) -> int:
    import yaml
    from tqdm import tqdm

    from tokrl.config import to_dict
    from tokrl.trainer import train

    cfg = load_config(args.config, args.overrides)
    run_dir = Path(cfg.train.output_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise UsageError(f"train.output_dir {run_dir} is a file; name a directory")
    if run_dir.exists() and any(run_dir.iterdir()):
        if not args.overwrite:
            raise UsageError(f"run directory {run_dir} already exists; pass --overwrite or set train.output_dir=...")
        if not (run_dir / "config.yaml").is_file():
            raise UsageError(f"{run_dir} is not empty and not a tokrl run directory; --overwrite only replaces runs")
    bar = tqdm(total=cfg.train.max_steps, desc="train", unit="step", file=sys.stderr,
               disable=args.quiet, dynamic_ncols=True)

    def progress(m: dict) -> None:
        bar.update(1)
        bar.set_postfix(reward=f"{m['reward/mean']:.3f}", entropy=f"{m['policy/entropy']:.2f}",
                        kl=f"{m.get('policy/approx_kl', 0.0):.4f}", tok_s=f"{m['time/tokens_per_s']:.0f}")

    def on_start() -> None:
        # only once the model and task have loaded: bad input leaves no run directory behind
        if run_dir.exists() and args.overwrite:
            shutil.rmtree(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))

    result = train(cfg, run_dir, progress=progress, on_start=on_start)
    bar.close()
    before, after = result["eval_before"], result["eval_after"]
    summary = {"run_dir": str(run_dir), "steps": result["steps"], "stopped_early": result["stopped_early"],
               "eval_before": before, "eval_after": after}
    print(json.dumps(summary, indent=2))
    return 0


def _eval(args: argparse.Namespace) -> int:
    from tokrl.evaluate import evaluate
    from tokrl.config import SamplingConfig
    from tokrl.models import autocast, load_policy
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
    examples = task.examples(args.split)[: args.limit or None]
    result, _ = evaluate(model, tokenizer, task, examples, SamplingConfig(cfg.sampling.max_new_tokens, temperature=0.0),
                      cfg.model.chat_template, autocast(cfg.model.dtype))
    print(json.dumps({"model": cfg.model.name, "task": cfg.task.name, "split": args.split, **result}))
    return 0


def _generate(args: argparse.Namespace) -> int:
    import torch

    from tokrl.config import Config, ModelConfig, SamplingConfig, validate
    from tokrl.models import load_policy
    from tokrl.rollout import encode_batch, generate

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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tokrl", description="Token-level reinforcement learning for language models.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a policy with a YAML recipe")
    p.add_argument("config", nargs="?", help="YAML recipe (default: the built-in defaults)")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. optim.lr=1e-5 train.max_steps=50")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_train)

    p = sub.add_parser("eval", help="held-out mean reward of a model on a task, as JSON")
    p.add_argument("target", help="a run directory (evaluates its model/) or a YAML recipe")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. model.name=path/to/model")
    p.add_argument("--split", default="test", choices=["train", "test"], help="which examples (default test)")
    p.add_argument("--limit", type=int, default=0, help="evaluate only the first N examples (0: all)")
    p.set_defaults(func=_eval)

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
    args = build_parser().parse_args(argv)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()      # tokrl draws its own progress
    try:
        return args.func(args)
    except (ConfigError, UsageError, FileNotFoundError, ValueError) as e:
        if os.environ.get("TOKRL_DEBUG"):
            raise
        message = str(e).splitlines()[0] if str(e) else type(e).__name__
        print(f"tokrl: error: {message}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
