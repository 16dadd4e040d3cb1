"""Model-FLOPs utilisation of tokrl's update phase against this CPU's measured matmul peaks.

    python benchmarks/efficiency.py            # SmolLM2, 4 prompts x 4 samples x 64 tokens, ~2 min
    python benchmarks/efficiency.py --dtype float32 --compile     # + the compiled update, ~8 min
    python benchmarks/efficiency.py --quick    # tiny model, seconds

One process: build tokrl's train state (SmolLM2-135M-Instruct, model.dtype=bfloat16, i.e.
float32 weights under bf16 autocast), collect one rollout batch with tokrl's own
``collect``, then alternate A B A B:

  A  tokrl.training.update.update on that batch (forward + backward + AdamW step, one minibatch)
  B  torch.matmul of two bf16 2048x2048 matrices (the machine's large-square bf16 peak)
  C  the practical peak: every matrix product of that update (its own shapes, forward
     and backward, in the update's compute dtype) timed alone (``gemm_peak.py``)

and with --compile the same update with its forward compiled (``train.compile``), with
--bf16-weights a prototype of bf16 compute weights (``bf16_weights_update``).

Model FLOPs of one update (S = P + T positions per sequence, N sequences):

  simple   = 6 * params * N * S                          (the usual 6ND)
  detailed = 6 * params_non_embedding * N * S            (every position through the trunk)
           + 6 * hidden * vocab * N * (T + 1)            (LM head: tokrl keeps T+1 positions)
           + 12 * layers * hidden * N * S^2              (attention scores and values, fwd + bwd,
                                                          full S x S as in PaLM's formula)

utilisation = (FLOPs / update seconds) / (bf16 matmul FLOP/s). Padding positions are
counted (they are computed); useful tokens are reported beside them. Against the
practical peak: (seconds its products take alone) / (update seconds), per round: the
share of the update's time that the hardware's best at these shapes would need.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import DEFAULT_CACHE, RESULTS, Clock, emit, header, interleave, log, set_threads, summarize  # noqa: E402
from gemm_peak import practical_peak, update_gemms  # noqa: E402
from step import letter_task, prompts  # noqa: E402


def build(args):
    from tokrl.config import Config, validate
    from tokrl.models.pretrained import resolve_model
    from tokrl.tasks import PromptSampler
    from tokrl.training.state import build_state

    cfg = Config()
    cfg.model.name = str(resolve_model(args.model, cache_dir=args.cache_dir))
    cfg.model.dtype = args.dtype
    cfg.model.chat_template = args.model != "tiny-random"
    cfg.sampling.max_new_tokens = args.new_tokens
    a = cfg.algo
    a.estimator, a.policy_loss, a.entropy_coef, a.aggregation = "grpo", "ppo", 0.0, "token-mean"
    cfg.kl.coef = 0.0
    cfg.optim.lr = 1e-5
    cfg.train.prompts_per_step, cfg.train.group_size = args.prompts, args.group
    validate(cfg)
    state = build_state(cfg)
    state.task = letter_task(prompts() if args.model != "tiny-random" else ["abcd=", "hello =", "12+34=", "xyz ="])
    state.sampler = PromptSampler(state.task.examples("train"), 0)
    return state, cfg


def model_flops(model, batch) -> dict:
    c = model.config
    params = sum(p.numel() for p in model.parameters())
    emb = model.get_input_embeddings().weight.numel()
    tied = getattr(c, "tie_word_embeddings", False)
    lm_head = c.hidden_size * c.vocab_size
    non_emb = params - emb - (0 if tied else lm_head)
    N, P = batch.prompt_ids.shape
    T = batch.tokens.shape[1]
    S = P + T
    simple = 6 * params * N * S
    detailed = (6 * non_emb * N * S + 6 * lm_head * N * (T + 1)
                + 12 * c.num_hidden_layers * c.hidden_size * N * S * S)
    useful = int(batch.attention_mask().sum())
    return {"params": params, "params_non_embedding": non_emb, "tied_embeddings": tied, "sequences": N,
            "prompt_positions": P, "completion_positions": T, "positions": N * S, "useful_tokens": useful,
            "flops_simple": simple, "flops_detailed": detailed}


def bf16_weights_update(state, cfg, flops):
    """A prototype of bfloat16 compute weights (not in tokrl; measured here to decide): forward
    and backward run on a bf16 copy of the model without autocast, the bf16 gradients are
    copied into the float32 master weights' gradients, AdamW steps the masters, and the copy
    is refreshed from them once per optimizer step."""
    import copy

    import torch

    from tokrl.training.update import Learner, accumulate

    learner = state.learner
    copy_model = copy.deepcopy(learner.model).to(torch.bfloat16)
    masters = [p for p in learner.model.parameters() if p.requires_grad]
    copies = [p for p in copy_model.parameters() if p.requires_grad]
    on_copy = Learner(copy_model, None, learner.optimizer)
    fp32 = replace_dtype(cfg, "float32")         # no autocast: the weights already are bf16

    def run():
        with Clock() as c:
            for mb in state.buffer.minibatches(cfg.train.minibatch_size, state.shuffle_generator, 1, 0):
                learner.optimizer.zero_grad(set_to_none=True)
                accumulate(on_copy, mb, state.recipe, fp32, 0.0)
                for m, b in zip(masters, copies):
                    m.grad, b.grad = b.grad.float(), None
                torch.nn.utils.clip_grad_norm_(masters, cfg.optim.max_grad_norm)
                learner.optimizer.step()
                with torch.no_grad():
                    for m, b in zip(masters, copies):
                        b.copy_(m)
        return {"seconds": c.wall, "cpu_seconds": c.cpu, "flops_per_s_simple": flops["flops_simple"] / c.wall,
                "flops_per_s_detailed": flops["flops_detailed"] / c.wall}
    return run


def replace_dtype(cfg, dtype: str):
    """A copy of ``cfg`` with model.dtype = ``dtype``."""
    import copy

    out = copy.deepcopy(cfg)
    out.model.dtype = dtype
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="default smollm2-135m-instruct; quick tiny-random")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    p.add_argument("--prompts", type=int, default=4)
    p.add_argument("--group", type=int, default=4)
    p.add_argument("--new-tokens", type=int, default=None, help="default 64; quick 8")
    p.add_argument("--repeats", type=int, default=None, help="A B rounds after a warm-up (default 4; quick 2)")
    p.add_argument("--matmul-size", type=int, default=2048)
    p.add_argument("--matmul-iters", type=int, default=None, help="matmuls per B sample (default 20; quick 3)")
    p.add_argument("--compile", action="store_true",
                   help="also time the update with its forward compiled (train.compile), interleaved")
    p.add_argument("--bf16-weights", action="store_true",
                   help="also time a prototype of bf16 compute weights (fp32 masters in AdamW), interleaved")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--cache-dir", default=DEFAULT_CACHE)
    p.add_argument("--out", default=None, help="default benchmarks/results/efficiency.json; '-' for stdout only")
    args = p.parse_args(argv)
    q = args.quick
    args.model = args.model or ("tiny-random" if q else "smollm2-135m-instruct")
    args.new_tokens = args.new_tokens or (8 if q else 64)
    args.repeats = args.repeats or (2 if q else 4)
    args.matmul_iters = args.matmul_iters or (3 if q else 20)
    set_threads(args.threads)
    import torch

    from tokrl.training.loop import collect_step
    from tokrl.training.update import update

    report = header("efficiency")
    t_start = time.perf_counter()
    state, cfg = build(args)
    collected = collect_step(state, cfg)
    batch, metrics = collected.batch, collected.metrics
    flops = model_flops(state.learner.model, batch)
    log(f"[efficiency] batch {tuple(batch.prompt_ids.shape)} prompt + {batch.tokens.shape[1]} completion, "
        f"{flops['flops_detailed'] / 1e12:.2f} TFLOP per update (detailed)")

    n = args.matmul_size
    a = torch.randn(n, n).to(torch.bfloat16)
    b = torch.randn(n, n).to(torch.bfloat16)
    a32, b32 = a.float(), b.float()

    def run_update(learner):
        def run():
            with Clock() as c:
                update(learner, state.buffer, state.recipe, cfg, state.kl_coef.value,
                       state.shuffle_generator, state.bad_steps)
            return {"seconds": c.wall, "cpu_seconds": c.cpu,
                    "flops_per_s_simple": flops["flops_simple"] / c.wall,
                    "flops_per_s_detailed": flops["flops_detailed"] / c.wall}
        return run

    variants = {"update": run_update(state.learner)}
    compile_s = None
    if args.compile:      # the same model and optimizer, its forward compiled as train.compile does
        from dataclasses import replace

        from tokrl.training.state import compiled

        variants["update_compiled"] = run_update(replace(state.learner, wrapped_model=compiled(state.learner.model)))
        with Clock() as c:
            variants["update_compiled"]()
        compile_s = c.wall
        log(f"[efficiency] compile + first compiled update: {compile_s:.1f} s")

    def run_matmul(x, y):
        def run():
            with Clock() as c:
                for _ in range(args.matmul_iters):
                    torch.matmul(x, y)
            return {"seconds": c.wall / args.matmul_iters,
                    "flops_per_s": 2 * n ** 3 * args.matmul_iters / c.wall}
        return run

    gemms = update_gemms(state.learner.model, batch.prompt_ids.shape[0], batch.prompt_ids.shape[1]
                         + batch.tokens.shape[1], batch.tokens.shape[1], trainable=cfg.model.lora_rank == 0)
    compute_dtype = torch.bfloat16 if args.dtype == "bfloat16" else torch.float32
    peaks = []

    def run_practical():
        peaks.append(practical_peak(gemms, compute_dtype))
        return {"seconds": peaks[-1]["gemm_seconds"], "flops_per_s": peaks[-1]["flops_per_s"]}

    if args.bf16_weights:
        variants["update_bf16_weights"] = bf16_weights_update(state, cfg, flops)
    samples = interleave({**variants, "matmul_bf16": run_matmul(a, b), "matmul_fp32": run_matmul(a32, b32),
                          "practical": run_practical}, args.repeats, warmup=1, log=log)
    square = f"matmul_{'bf16' if args.dtype == 'bfloat16' else 'fp32'}"       # the update's compute dtype

    def per_round(a, b):
        """median over rounds of a[i] / b[i]"""
        return summarize([x / y for x, y in zip(a, b)])

    # utilisation per round: the update against the matmul measured right beside it
    util = {kind: per_round(samples["update"][f"flops_per_s_{kind}"], samples["matmul_bf16"]["flops_per_s"])
            for kind in ("simple", "detailed")}
    results = {name: {k: summarize(v) for k, v in samples[name].items()} for name in variants}
    results.update({
        "practical_peak": {k: summarize(v) for k, v in samples["practical"].items()},
        "practical_peak_products": peaks[-1]["products"],
        "compile_and_first_update_s": compile_s,
        "matmul_bf16": {k: summarize(v) for k, v in samples["matmul_bf16"].items()},
        "matmul_fp32": {k: summarize(v) for k, v in samples["matmul_fp32"].items()},
        "model_flops": flops,
        "rollout_metrics": {k: metrics[k] for k in ("completion/tokens", "completion/length", "time/rollout_s")},
    })
    ratios = {f"{name}_vs_practical_peak": per_round(samples["practical"]["seconds"], samples[name]["seconds"])["median"]
              for name in variants}
    for name in variants:                 # the compiled update and bf16 weights over today's update
        if name != "update":
            ratios[f"{name}_speedup"] = per_round(samples["update"]["seconds"], samples[name]["seconds"])["median"]
    ratios.update({
        "update_mfu_vs_same_dtype_square_matmul": per_round(samples["update"]["flops_per_s_detailed"],
                                                            samples[square]["flops_per_s"])["median"],
        "practical_peak_vs_square_matmul": per_round(samples["practical"]["flops_per_s"],
                                                     samples[square]["flops_per_s"])["median"],
        "practical_gemm_flops_over_detailed_formula": peaks[-1]["gemm_flops"] / flops["flops_detailed"],
        "update_mfu_vs_bf16_matmul_detailed": util["detailed"]["median"],
        "update_mfu_vs_bf16_matmul_simple": util["simple"]["median"],
        "update_mfu_per_round": util,
        "bf16_over_fp32_matmul": per_round(samples["matmul_bf16"]["flops_per_s"], samples["matmul_fp32"]["flops_per_s"])["median"],
    })
    report["configuration"] = {
        "model": args.model, "dtype": f"{args.dtype} (tokrl model.dtype; bfloat16: fp32 weights under autocast)",
        "prompts": args.prompts, "group": args.group, "max_new_tokens": args.new_tokens,
        "update": "tokrl.training.update.update: GRPO advantages, PPO-clip, token-mean, one minibatch, AdamW lr 1e-5",
        "matmul": f"torch.matmul {n}x{n} bf16 (and fp32), {args.matmul_iters} per sample",
        "practical_peak": f"every product of the update ({len(gemms)} shapes, forward and backward) alone in "
                          f"{args.dtype}; update_vs_practical_peak = their seconds / the update's, per round",
        "repeats": args.repeats, "threads": args.threads,
        "flops_formula": {
            "simple": "6 * params * N * (P + T)",
            "detailed": "6 * params_non_embedding * N * (P + T) + 6 * hidden * vocab * N * (T + 1) "
                        "+ 12 * layers * hidden * N * (P + T)^2",
        },
    }
    report["results"] = results
    report["ratios"] = ratios
    report["wall_s"] = round(time.perf_counter() - t_start, 1)
    report["notes"] = [
        "utilisation is per round (update FLOP/s over the bf16 matmul FLOP/s measured right after or before it), "
        "median over rounds",
        "other processes share this 2-core machine; both halves of each ratio see the same load only approximately",
    ]
    out = args.out if args.out is not None else str(RESULTS / ("efficiency-quick.json" if q else "efficiency.json"))
    emit(report, None if out == "-" else out)
    return report


if __name__ == "__main__":
    main()
