"""One full RL step (rollout, reward, update): tokrl vs TRL's GRPOTrainer, matched settings.

    .venv-bench/bin/python benchmarks/step.py            # full run, ~5 min on 2 quiet cores
    .venv-bench/bin/python benchmarks/step.py --quick    # 2 rounds of 2 short steps

Needs TRL: run it with the benchmark virtualenv (.venv-bench, see benchmarks/README.md).

Setting (both): SmolLM2-135M-Instruct, chat-template prompts, 4 prompts x 4 samples,
64 new tokens (EOS allowed, the prompts ask for long answers), temperature 1.0, no
top-k/top-p, beta 0 (no reference model), GRPO group-normalised advantages
((r - mean) / (std + eps) per group), PPO-clip 0.2 with one update per rollout batch,
token-mean loss (TRL's default loss_type "dapo"), no entropy bonus, AdamW with the same
constant learning rate, no weight decay, grad-norm clip 1.0, float32 master weights and
bfloat16 autocast. TRL additionally runs with its default gradient checkpointing unless
--trl-grad-ckpt off. The reward is the same deterministic function for both: the share of
letters in the completion that are 'e'.

Each framework runs in its OWN child process (so that peak RSS is its own), alternated
A B A B over --rounds rounds. A child loads the model, runs one warm-up step, then
--steps timed steps (round 1 runs --curve-steps steps, whose per-step rewards are the
reward curve). The parent reads each child's peak RSS from os.wait4 and prints JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import (DEFAULT_CACHE, RESULTS, emit, header, log, paired_ratios, ratio,  # noqa: E402
                     set_threads, summarize)

MODEL = "smollm2-135m-instruct"
SUBJECTS = ["a lighthouse keeper", "a retired astronaut", "a clever fox", "two rival bakers", "a lost robot",
            "a young beekeeper", "an old ship captain", "a city pigeon", "a shy dragon", "a night-shift nurse"]
PLOTS = ["finds a map in an attic", "learns to play the violin", "has to cross a frozen lake",
         "opens a tiny bookshop", "wins a strange contest", "gets stuck in an elevator",
         "plants a garden on a roof", "befriends a stray cat", "loses a precious key", "starts a new job"]


def prompts() -> list[str]:
    """100 deterministic prompts that ask for answers longer than 64 tokens."""
    return [f"Write a detailed short story about {s} who {p}. Use vivid descriptions."
            for p in PLOTS for s in SUBJECTS]


def letter_reward(text: str) -> float:
    """Share of the completion's letters that are 'e' (deterministic, length-independent)."""
    letters = [c for c in text.lower() if c.isalpha()]
    return sum(c == "e" for c in letters) / max(1, len(letters))


def letter_task(items: list[str]):
    """A tokrl Task whose examples are ``items`` and whose reward is ``letter_reward``."""
    from tokrl.tasks import Task

    class LetterTask(Task):
        name = "letter_e"

        def __init__(self):
            self.items = [{"prompt": p} for p in items]

        def examples(self, split):
            return self.items

        def sequence_rewards(self, examples, completions):
            return [letter_reward(t) for t in completions]

    return LetterTask()


# ----------------------------------------------------------------------- children

def child_tokrl(args) -> dict:
    from tokrl.config import Config, validate
    from tokrl.models.pretrained import resolve_model
    from tokrl.tasks import PromptSampler
    from tokrl.training.loop import train_step
    from tokrl.training.state import build_state

    cfg = Config()
    cfg.model.name = str(resolve_model(MODEL, cache_dir=args.cache_dir))
    cfg.model.dtype = "bfloat16"
    cfg.model.chat_template = True
    cfg.sampling.max_new_tokens = args.new_tokens
    cfg.sampling.temperature, cfg.sampling.top_k, cfg.sampling.top_p = 1.0, 0, 1.0
    a = cfg.algo
    a.estimator, a.policy_loss, a.clip_low, a.clip_high = "grpo", "ppo", 0.2, 0.2
    a.entropy_coef, a.aggregation, a.whiten, a.epochs = 0.0, "token-mean", False, 1
    cfg.kl.coef = 0.0
    cfg.optim.lr, cfg.optim.weight_decay, cfg.optim.max_grad_norm = args.lr, 0.0, 1.0
    cfg.train.prompts_per_step, cfg.train.group_size, cfg.train.seed = args.prompts, args.group, args.seed
    cfg.train.minibatch_size, cfg.train.microbatch_size = 0, args.microbatch
    validate(cfg)
    t_load = time.perf_counter()
    state = build_state(cfg)
    state.task = letter_task(prompts())
    state.sampler = PromptSampler(state.task.examples("train"), args.seed)
    load_s = time.perf_counter() - t_load
    steps = []
    for i in range(args.steps + 1):
        t0 = time.perf_counter()
        metrics, _ = train_step(state, cfg)
        dt = time.perf_counter() - t0
        steps.append({"step": i, "seconds": dt, "tokens": metrics["completion/tokens"],
                      "reward_mean": metrics["reward/mean"], "completion_length": metrics["completion/length"],
                      "rollout_s": metrics.get("time/rollout_s"), "update_s": metrics.get("time/update_s")})
        log(f"  tokrl step {i}: {dt:.2f}s reward {metrics['reward/mean']:.4f} tokens {metrics['completion/tokens']:.0f}")
    return {"load_s": load_s, "steps": steps}


def child_trl(args) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from tokrl.models.pretrained import resolve_model

    directory = resolve_model(MODEL, cache_dir=args.cache_dir)
    record: dict = {"calls": []}

    def reward_e(completions, completion_ids=None, **kwargs):
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        r = [letter_reward(t) for t in texts]
        record["calls"].append({"reward_mean": sum(r) / len(r),
                                "tokens": sum(len(x) for x in completion_ids) if completion_ids else None})
        return r

    class Timer(TrainerCallback):
        def __init__(self):
            self.t0, self.times = None, []

        def on_step_begin(self, a, s, c, **kw):
            self.t0 = time.perf_counter()

        def on_step_end(self, a, s, c, **kw):
            self.times.append(time.perf_counter() - self.t0)
            log(f"  trl step {len(self.times) - 1}: {self.times[-1]:.2f}s reward {record['calls'][-1]['reward_mean']:.4f}")

    t_load = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(directory)
    model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32)
    ds = Dataset.from_list([{"prompt": [{"role": "user", "content": p}]} for p in prompts()])
    out_dir = tempfile.mkdtemp(prefix="trl-bench-")
    config = GRPOConfig(
        output_dir=out_dir, use_cpu=True, bf16=True, gradient_checkpointing=args.trl_grad_ckpt == "on",
        per_device_train_batch_size=args.prompts * args.group, num_generations=args.group,
        gradient_accumulation_steps=1, max_completion_length=args.new_tokens, max_steps=args.steps + 1,
        learning_rate=args.lr, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0,
        beta=0.0, epsilon=0.2, loss_type="dapo", scale_rewards="group", num_iterations=1,
        temperature=1.0, top_k=0, top_p=1.0, seed=args.seed, logging_steps=1, save_strategy="no",
        report_to="none", disable_tqdm=True, dataloader_num_workers=0,
    )
    timer = Timer()
    trainer = GRPOTrainer(model=model, reward_funcs=reward_e, args=config, train_dataset=ds,
                          processing_class=tokenizer, callbacks=[timer])
    load_s = time.perf_counter() - t_load
    trainer.train()
    logs = [h for h in trainer.state.log_history if "reward" in h]
    steps = []
    for i, dt in enumerate(timer.times):
        call = record["calls"][i] if i < len(record["calls"]) else {}
        lg = logs[i] if i < len(logs) else {}
        tokens = call.get("tokens")
        if tokens is None and "completions/mean_length" in lg:
            tokens = lg["completions/mean_length"] * args.prompts * args.group
        steps.append({"step": i, "seconds": dt, "tokens": tokens, "reward_mean": call.get("reward_mean"),
                      "completion_length": lg.get("completions/mean_length")})
    return {"load_s": load_s, "steps": steps, "config": {"gradient_checkpointing": config.gradient_checkpointing,
                                                          "bf16": config.bf16, "loss_type": config.loss_type}}


def run_child(args) -> None:
    set_threads(args.threads)
    result = (child_tokrl if args.child == "tokrl" else child_trl)(args)
    import resource

    result["self_maxrss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    Path(args.result).write_text(json.dumps(result))


# ------------------------------------------------------------------------- parent

def spawn(framework: str, steps: int, args, workdir: Path, tag: str) -> dict:
    """Run one child to completion; its result plus its own peak RSS (os.wait4)."""
    result = workdir / f"{tag}.json"
    cmd = [sys.executable, __file__, "--child", framework, "--result", str(result), "--steps", str(steps),
           "--threads", str(args.threads), "--cache-dir", args.cache_dir, "--lr", str(args.lr),
           "--new-tokens", str(args.new_tokens), "--prompts", str(args.prompts), "--group", str(args.group),
           "--seed", str(args.seed), "--trl-grad-ckpt", args.trl_grad_ckpt, "--microbatch", str(args.microbatch)]
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS=str(args.threads),
               TRANSFORMERS_VERBOSITY="error", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    log(f"[step] {tag}: {framework}, {steps} timed steps + 1 warm-up")
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=sys.stderr)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{framework} child failed with exit code {proc.returncode}")
    out = json.loads(result.read_text())
    out["wall_s"] = time.perf_counter() - t0
    out["peak_rss_mib"] = usage.ru_maxrss / 1024          # Linux: KiB
    return out


def main(argv: list[str] | None = None) -> dict | None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=None, help="A B rounds (default 2; quick 2)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per child after round 1 (default 2; quick 1)")
    p.add_argument("--curve-steps", type=int, default=None,
                   help="timed steps of round 1's children, whose rewards are the curve (default 5; quick 2)")
    p.add_argument("--new-tokens", type=int, default=None, help="max new tokens (default 64; quick 16)")
    p.add_argument("--prompts", type=int, default=4)
    p.add_argument("--group", type=int, default=4)
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--microbatch", type=int, default=0,
                   help="tokrl's train.microbatch_size: rows per forward/backward pass (default 0: all 16 at once)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--trl-grad-ckpt", default="on", choices=["on", "off"],
                   help="TRL's gradient checkpointing (its default: on)")
    p.add_argument("--frameworks", default="tokrl,trl")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--cache-dir", default=DEFAULT_CACHE)
    p.add_argument("--out", default=None, help="default benchmarks/results/step.json; '-' for stdout only")
    p.add_argument("--child", choices=["tokrl", "trl"], help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        run_child(args)
        return None
    q = args.quick
    args.rounds = args.rounds or 2
    args.steps = args.steps or (1 if q else 2)
    args.curve_steps = args.curve_steps or (2 if q else 5)
    args.new_tokens = args.new_tokens or (16 if q else 64)
    frameworks = args.frameworks.split(",")
    set_threads(args.threads)
    report = header("step", with_trl=True)
    report["configuration"] = {
        "model": MODEL, "prompts_per_step": args.prompts, "samples_per_prompt": args.group,
        "max_new_tokens": args.new_tokens, "lr": args.lr, "lr_schedule": "constant", "beta": 0.0,
        "reward": "share of letters that are 'e' (letter_reward in benchmarks/step.py)",
        "tokrl": "model.dtype=bfloat16 (fp32 weights, bf16 autocast), grpo + ppo clip 0.2, token-mean, "
                 "entropy_coef 0, one minibatch",
        "trl": f"GRPOTrainer bf16=True (fp32 weights, bf16 autocast), gradient_checkpointing={args.trl_grad_ckpt}, "
               "loss_type dapo, scale_rewards group, num_iterations 1",
        "rounds": args.rounds, "timed_steps_per_child": args.steps, "curve_steps": args.curve_steps,
        "warmup_steps_per_child": 1, "threads": args.threads, "order": "A B, B A, ... one child process each",
    }
    runs: dict[str, list[dict]] = {f: [] for f in frameworks}
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="step-bench-") as tmp:
        for r in range(args.rounds):
            order = frameworks if r % 2 == 0 else frameworks[::-1]
            for f in order:
                steps = args.curve_steps if r == 0 else args.steps
                runs[f].append(spawn(f, steps, args, Path(tmp), f"{f}-round{r + 1}"))
    results, per_round = {}, {}
    for f, children in runs.items():
        timed = [s for c in children for s in c["steps"][1:]]          # drop each child's warm-up step
        secs = [s["seconds"] for s in timed]
        tps = [s["tokens"] / s["seconds"] for s in timed if s.get("tokens")]
        per_round[f] = [summarize([s["seconds"] for s in c["steps"][1:]])["median"] for c in children]
        results[f] = {
            "seconds_per_step": summarize(secs),
            "generated_tokens_per_s": summarize(tps),
            "tokens_per_step": summarize([s["tokens"] for s in timed if s.get("tokens")]),
            "peak_rss_mib": summarize([c["peak_rss_mib"] for c in children]),
            "load_s": summarize([c["load_s"] for c in children]),
            "reward_curve": [s["reward_mean"] for s in children[0]["steps"]],
            "reward_curves_all_rounds": [[s["reward_mean"] for s in c["steps"]] for c in children],
            "completion_length_curve": [s.get("completion_length") for s in children[0]["steps"]],
            "children": [{"wall_s": c["wall_s"], "peak_rss_mib": c["peak_rss_mib"], "load_s": c["load_s"],
                          "self_maxrss_mib": c["self_maxrss_mib"], "steps": c["steps"],
                          **({"config": c["config"]} if "config" in c else {})} for c in children],
        }
        if f == "tokrl":
            results[f]["rollout_s"] = summarize([s["rollout_s"] for s in timed if s.get("rollout_s") is not None])
            results[f]["update_s"] = summarize([s["update_s"] for s in timed if s.get("update_s") is not None])
    ratios = {}
    if "tokrl" in results and "trl" in results:
        t, h = results["tokrl"], results["trl"]
        ratios = {
            "trl_over_tokrl_seconds_per_step": ratio(h["seconds_per_step"], t["seconds_per_step"]),
            "trl_over_tokrl_seconds_per_step_per_round": paired_ratios(per_round["trl"], per_round["tokrl"]),
            "tokrl_over_trl_tokens_per_s": ratio(t["generated_tokens_per_s"], h["generated_tokens_per_s"]),
            "trl_over_tokrl_peak_rss": ratio(h["peak_rss_mib"], t["peak_rss_mib"]),
            "curve_mean_reward": {f: sum(results[f]["reward_curve"]) / len(results[f]["reward_curve"])
                                  for f in ("tokrl", "trl")},
        }
    report["results"] = results
    report["ratios"] = ratios
    report["wall_s"] = round(time.perf_counter() - t_start, 1)
    report["notes"] = [
        "speed-up = trl_over_tokrl_seconds_per_step (> 1: tokrl's step is faster); per_round pairs the medians "
        "of children run back to back",
        "peak RSS is each child's own ru_maxrss (os.wait4), model load and Python included",
        "reward curves: mean reward per step (step 0 = the warm-up step) of round 1's child, "
        f"{args.prompts * args.group} samples per step; both start from the same weights with different sampling RNG",
        "other processes share this 2-core machine: absolute seconds are noisy, the ratios are the claim",
    ]
    out = args.out if args.out is not None else str(RESULTS / ("step-quick.json" if q else "step.json"))
    emit(report, None if out == "-" else out)
    return report


if __name__ == "__main__":
    main()
