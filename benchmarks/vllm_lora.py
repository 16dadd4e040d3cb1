"""LoRA under the vLLM engine: push the merged weights (what tokrl does) or hand vLLM the
adapter (its own LoRA support), measured as one RL step's engine work.

    .venv/bin/python benchmarks/vllm_lora.py            # 3 rounds x 3 steps, ~5 min
    .venv/bin/python benchmarks/vllm_lora.py --quick    # 1 round x 1 step

Setting: SmolLM2-135M-Instruct, bf16 weights in vLLM (eager), LoRA rank 16 on all linear
layers (the demo's adapters), the adapters' B matrices drawn at random so that they change
the model, and each step: the adapters change a little (as after an optimizer step), then

- ``merged``: tokrl's push, ``VLLMEngine.sync``: W + scale * B A for every adapted layer,
  streamed into vLLM's weights in place (``reload_weights``), then the prefix cache reset;
- ``lora``: vLLM built with ``enable_lora``; the adapter is saved (peft's safetensors) and
  given to ``generate`` as a new ``LoRARequest`` (vLLM loads it; its kernels add B A x at
  every adapted layer of every token).

then generates the demo's batch: 8 chat prompts x 8 samples x 16 new tokens, temperature 1,
no stop, one seed per row. Each variant runs in its own child process (its own engine),
alternated A B, B A over the rounds; a child times ``--steps`` steps after one warm-up.
Ratios are lora over merged (above 1: merged is faster).
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

from _common import (DEFAULT_CACHE, RESULTS, Clock, emit, header, log, paired_ratios,  # noqa: E402
                     set_threads, summarize)

VARIANTS = ("merged", "lora")


def build(args):
    """(policy under LoRA, its config, the prompt ids as lists, the vLLM SamplingParams of each row)."""
    import torch
    from vllm import SamplingParams

    from tokrl.config import load_config
    from tokrl.generation.prompts import encode_batch
    from tokrl.models.load import load_policy
    from tokrl.tasks import build_task

    cfg = load_config(str(Path(__file__).resolve().parent.parent / "configs/smollm2_arithmetic.yaml"),
                      ["rollout.engine=vllm", f"rollout.vllm_memory={args.vllm_memory}"])
    os.environ.setdefault("TOKRL_CACHE", args.cache_dir)
    model, tokenizer = load_policy(cfg.model)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    task = build_task(cfg.task.name, tokenizer, **cfg.task.options)
    ids, mask = encode_batch(tokenizer, task.examples("train")[:args.prompts], args.group, chat_template=True)
    prompts = [row[m.bool()].tolist() for row, m in zip(ids, mask)]
    params = [SamplingParams(n=1, temperature=1.0, max_tokens=args.new_tokens, seed=i, logprobs=0, ignore_eos=True,
                             detokenize=False) for i in range(len(prompts))]
    return model, cfg, prompts, params


def child(args) -> dict:
    import torch

    from tokrl.generation.vllm_engine import VLLMEngine, engine_options, import_vllm, run_context
    from tokrl.models.pretrained import resolve_model

    import_vllm()                                     # tokrl's environment for vLLM: in this process, quiet
    from vllm import LLM
    from vllm.inputs import TokensPrompt
    from vllm.lora.request import LoRARequest

    set_threads(args.threads)
    model, cfg, prompts, params = build(args)
    directory = resolve_model(cfg.model.name)
    with Clock() as start:
        if args.child == "merged":
            engine = VLLMEngine(directory, cfg, rows=len(prompts), prompt_tokens=max(map(len, prompts)))
            llm = engine.llm
        else:
            # the options VLLMEngine builds with, plus vLLM's LoRA support
            context = run_context(directory, cfg, max(map(len, prompts)))
            llm = LLM(**engine_options(directory, cfg, context), enable_lora=True,
                      max_lora_rank=cfg.model.lora_rank, max_loras=1)
    set_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="vllm-lora-") as tmp:       # the adapters saved each step
        work = Path(tmp)
        lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
        g = torch.Generator().manual_seed(1)
        push, gen = [], []
        for step in range(args.steps + 1):                       # step 0 is the warm-up
            with torch.no_grad():                                # an optimizer step's worth of change
                for p in lora_b:
                    p.add_(torch.randn(p.shape, generator=g) * 1e-3)
            with Clock() as c_push:
                if args.child == "merged":
                    engine.sync(model)
                    request = None
                else:
                    model.save_pretrained(work / f"step{step}")
                    request = LoRARequest(f"step{step}", step + 1, str(work / f"step{step}"))
            with Clock() as c_gen:
                outs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False,
                                    lora_request=request)
            tokens = sum(len(o.outputs[0].token_ids) for o in outs)
            if step:
                push.append(c_push.wall)
                gen.append(c_gen.wall)
            log(f"  {args.child} step {step}: push {c_push.wall:.3f} s, generate {c_gen.wall:.3f} s ({tokens} tokens)")
    return {"startup_s": start.wall, "push_s": push, "generate_s": gen,
            "step_s": [a + b for a, b in zip(push, gen)], "tokens": tokens}


def spawn(variant: str, args, workdir: Path, tag: str) -> dict:
    result = workdir / f"{tag}.json"
    cmd = [sys.executable, __file__, "--child", variant, "--result", str(result), "--steps", str(args.steps),
           "--threads", str(args.threads), "--cache-dir", args.cache_dir, "--vllm-memory", str(args.vllm_memory),
           "--prompts", str(args.prompts), "--group", str(args.group), "--new-tokens", str(args.new_tokens)]
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS=str(args.threads),
               TRANSFORMERS_VERBOSITY="error", HF_HUB_OFFLINE="1")
    log(f"[vllm_lora] {tag}: {variant}, {args.steps} timed steps + 1 warm-up")
    subprocess.run(cmd, env=env, stdout=sys.stderr, check=True)
    return json.loads(result.read_text())


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=None, help="A B rounds (default 3; quick 1)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per child (default 3; quick 1)")
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--group", type=int, default=8)
    p.add_argument("--new-tokens", type=int, default=16)
    p.add_argument("--vllm-memory", type=float, default=1.0)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--cache-dir", default=DEFAULT_CACHE)
    p.add_argument("--out", default=None, help="default benchmarks/results/vllm_lora.json ('-': stdout only)")
    p.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.steps = args.steps or (1 if args.quick else 3)
    if args.child:
        Path(args.result).write_text(json.dumps(child(args)))
        return {}
    report = header("vllm_lora")
    report["configuration"] = {"model": "SmolLM2-135M-Instruct, bf16 in vLLM (eager), LoRA rank 16 all-linear",
                               "batch": f"{args.prompts} prompts x {args.group} samples x {args.new_tokens} tokens",
                               "rounds": args.rounds, "steps": args.steps, "threads": args.threads,
                               "vllm_memory_gib": args.vllm_memory, "quick": args.quick}
    runs: dict[str, list[dict]] = {v: [] for v in VARIANTS}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for v in (VARIANTS if r % 2 == 0 else VARIANTS[::-1]):
                runs[v].append(spawn(v, args, Path(tmp), f"r{r}-{v}"))
    per = {v: {k: [x for run in runs[v] for x in run[k]] for k in ("push_s", "generate_s", "step_s")}
           for v in VARIANTS}
    report["results"] = {v: {k: summarize(per[v][k]) for k in per[v]} | {"startup_s": summarize(
        [run["startup_s"] for run in runs[v]])} for v in VARIANTS}
    report["ratios"] = {f"lora_over_merged_{k}": paired_ratios(per["lora"][k], per["merged"][k])["median"]
                        for k in ("push_s", "generate_s", "step_s")}
    report["notes"] = ["ratios: median of per-step ratios, step i of the lora child over step i of the merged "
                       "child of the same round", f"finished {time.strftime('%Y-%m-%dT%H:%M:%S%z')}"]
    emit(report, None if args.out == "-" else (args.out or str(RESULTS / "vllm_lora.json")))
    return report


if __name__ == "__main__":
    main()
