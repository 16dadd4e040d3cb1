"""Where tokrl's time goes: torch.profiler over the rollout and the update on SmolLM2.

    python benchmarks/hotspots.py --rollout-batch-1   # ~5 min on 2 cores
    python benchmarks/hotspots.py --quick    # tiny model, seconds

Profiles, each after one unprofiled warm-up:

  rollout/trainer   tokrl.rollout.generate exactly as the trainer calls it: float32
                    weights, tokrl.models.autocast("bfloat16") passed in (generate
                    enters it once, so each weight is cast once per rollout)
  rollout/bf16      the same call on a bfloat16-weight copy of the model, no autocast
  update            tokrl.training.update.update on one collected batch (bf16 autocast)

For each: wall seconds, the top operators by self CPU time with their share of the
profiled total, and a breakdown by phase (model forward vs sampling/bookkeeping) from
record_function labels. Prints JSON (benchmarks/results/hotspots.json).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import DEFAULT_CACHE, RESULTS, Clock, emit, header, log, set_threads  # noqa: E402


def top_ops(prof, n: int) -> dict:
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events) or 1
    rows = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:n]
    return {"profiled_self_cpu_s": total / 1e6,
            "top": [{"op": e.key, "calls": e.count, "self_cpu_s": round(e.self_cpu_time_total / 1e6, 4),
                     "share": round(e.self_cpu_time_total / total, 4)} for e in rows]}


def labelled(prof, labels: list[str]) -> dict:
    """Total CPU time (children included) of record_function labels, and their shares."""
    events = {e.key: e for e in prof.key_averages()}
    return {k: round(events[k].cpu_time_total / 1e6, 4) for k in labels if k in events}


def experiments(args, state, cfg, torch) -> dict:
    """Interleaved A/B timings of the changes the profile suggests, without editing tokrl:

    sampler   torch.multinomial (what generate uses: one exponential per vocab entry per row)
              vs inverse-CDF sampling (cumsum + one uniform per row + searchsorted), on
              (N, V) float32 probabilities at N = 16 and 64
    optimizer AdamW.step over the policy's parameters: torch's default (per-tensor loop on
              CPU) vs foreach=True vs fused=True (what tokrl uses)
    attention the whole update with tokrl's attention vs transformers' SDPA and eager
    """
    from _common import interleave, paired_ratios, summarize

    from tokrl.training.update import update

    reps = args.exp_repeats or (1 if args.quick else 3)
    out: dict = {}
    V = state.learner.model.config.vocab_size
    for n in (16, 64):
        probs = torch.softmax(torch.randn(n, V) * 3, dim=-1)
        gen = torch.Generator().manual_seed(0)

        def multinomial():
            with Clock() as c:
                for _ in range(20):
                    torch.multinomial(probs, 1, generator=gen)
            return {"ms_per_call": c.wall / 20 * 1e3}

        def inverse_cdf():
            with Clock() as c:
                for _ in range(20):
                    cdf = probs.cumsum(dim=-1)
                    u = torch.rand(n, 1, generator=gen) * cdf[:, -1:]
                    torch.searchsorted(cdf, u).clamp_(max=V - 1)
            return {"ms_per_call": c.wall / 20 * 1e3}

        S = interleave({"multinomial": multinomial, "inverse_cdf": inverse_cdf}, reps + 2, warmup=1)
        out[f"sampler/rows{n}"] = {k: summarize(v["ms_per_call"]) for k, v in S.items()}
        out[f"sampler/rows{n}"]["multinomial_over_inverse_cdf"] = paired_ratios(
            S["multinomial"]["ms_per_call"], S["inverse_cdf"]["ms_per_call"])["median"]
        log(f"[experiment] sampler rows {n}: {out[f'sampler/rows{n}']['multinomial_over_inverse_cdf']:.2f}x")

    params = state.learner.parameters()
    for p_ in params:                     # gradients as after a backward pass
        p_.grad = torch.randn_like(p_) * 1e-3
    opts = {"default": torch.optim.AdamW(params, lr=1e-9),
            "foreach": torch.optim.AdamW(params, lr=1e-9, foreach=True),
            "fused": torch.optim.AdamW(params, lr=1e-9, fused=True)}

    def stepper(o):
        def run():
            with Clock() as c:
                o.step()
            return {"seconds": c.wall}
        return run

    S = interleave({k: stepper(o) for k, o in opts.items()}, reps + 2, warmup=1)
    out["optimizer_step"] = {k: summarize(v["seconds"]) for k, v in S.items()}
    for k in ("foreach", "fused"):
        out["optimizer_step"][f"default_over_{k}"] = paired_ratios(S["default"]["seconds"], S[k]["seconds"])["median"]
    log(f"[experiment] AdamW step: {out['optimizer_step']['default']['median']:.3f}s default, "
        f"{out['optimizer_step']['fused']['median']:.3f}s fused")
    for p_ in params:
        p_.grad = None
    del opts

    model = state.learner.model

    def updater(impl):
        def run():
            model.set_attn_implementation(impl)
            with Clock() as c:
                update(state.learner, state.buffer, state.recipe, cfg, state.kl_coef.value,
                   state.shuffle_generator, state.bad_steps)
            return {"seconds": c.wall}
        return run

    S = interleave({k: updater(k) for k in ("tokrl", "sdpa", "eager")}, reps, warmup=1, log=log)
    model.set_attn_implementation("tokrl")
    out["update_attention"] = {k: summarize(v["seconds"]) for k, v in S.items()}
    for k in ("sdpa", "eager"):
        out["update_attention"][f"{k}_over_tokrl_seconds"] = paired_ratios(S[k]["seconds"],
                                                                          S["tokrl"]["seconds"])["median"]
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="default smollm2-135m-instruct; quick tiny-random")
    p.add_argument("--batch", type=int, default=16, help="rollout rows (default 16 = 4 prompts x 4 samples)")
    p.add_argument("--rollout-batch-1", action="store_true", help="also profile the rollout at batch 1")
    p.add_argument("--new-tokens", type=int, default=None, help="default 32; quick 8")
    p.add_argument("--top", type=int, default=15)
    p.add_argument("--no-experiments", action="store_true", help="skip the A/B experiments")
    p.add_argument("--exp-repeats", type=int, default=None, help="rounds of each A/B experiment (default 3; quick 1)")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--cache-dir", default=DEFAULT_CACHE)
    p.add_argument("--out", default=None, help="default benchmarks/results/hotspots.json; '-' for stdout only")
    args = p.parse_args(argv)
    q = args.quick
    args.model = args.model or ("tiny-random" if q else "smollm2-135m-instruct")
    args.new_tokens = args.new_tokens or (8 if q else 32)
    set_threads(args.threads)
    import copy

    import torch
    from torch.profiler import ProfilerActivity, profile, record_function

    import tokrl.generation.engine as tr
    from tokrl.generation.prompts import encode_batch
    from tokrl.config import SamplingConfig
    from tokrl.models.forward import autocast
    from tokrl.training.loop import collect_step
    from tokrl.training.update import update

    from efficiency import build

    class _Args:
        model, dtype, cache_dir = args.model, "bfloat16", args.cache_dir
        prompts, group, new_tokens = max(1, args.batch // 4), 4, args.new_tokens

    report = header("hotspots")
    t_start = time.perf_counter()
    state, cfg = build(_Args)
    model, tokenizer = state.learner.model, state.tokenizer
    model_bf16 = copy.deepcopy(model).to(torch.bfloat16).eval()
    sampling = SamplingConfig(max_new_tokens=args.new_tokens, temperature=1.0)
    chat = cfg.model.chat_template

    # label the phases of generate without touching tokrl: wrap the functions it looks up
    orig_process = tr.process_logits
    orig_entropy = tr.full_entropy

    def process_logits(*a, **k):
        with record_function("phase/process_logits"):
            return orig_process(*a, **k)

    def entropy(*a, **k):
        with record_function("phase/entropy"):
            return orig_entropy(*a, **k)

    class Labelled(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner
            self.config = inner.config

        def forward(self, **kw):
            with record_function("phase/model_forward"):
                return self.inner(**kw)

    results = {}

    def profile_rollout(name, m, batch, per_step):
        examples = state.task.examples("train")[: max(1, batch // 4)]
        ids, mask = encode_batch(tokenizer, examples, batch // len(examples) or 1, chat)
        gen = torch.Generator().manual_seed(0)

        def call():
            return tr.generate(Labelled(m), ids, mask, sampling, -1, tokenizer.pad_token_id, generator=gen,
                               autocast=per_step() if per_step else None)

        call()  # warm-up
        tr.process_logits, tr.full_entropy = process_logits, entropy
        try:
            with Clock() as c, profile(activities=[ProfilerActivity.CPU]) as prof:
                with record_function("phase/generate"):
                    out = call()
        finally:
            tr.process_logits, tr.full_entropy = orig_process, orig_entropy
        n = int(out["lengths"].sum())
        phases = labelled(prof, ["phase/generate", "phase/model_forward", "phase/process_logits", "phase/entropy"])
        total = phases.get("phase/generate") or 1
        results[name] = {"rows": int(ids.shape[0]), "prompt_tokens": int(ids.shape[1]), "new_tokens": args.new_tokens,
                         "wall_s": c.wall, "tokens_per_s": n / c.wall, "phases_cpu_s": phases,
                         "phase_shares": {k: round(v / total, 4) for k, v in phases.items()},
                         **top_ops(prof, args.top)}
        log(f"[profile] {name}: {c.wall:.2f}s, {n / c.wall:.1f} tok/s, phases {results[name]['phase_shares']}")

    batches = [args.batch] + ([1] if args.rollout_batch_1 else [])
    for b in batches:
        sfx = f"/batch{b}"
        profile_rollout("rollout/trainer" + sfx, model, b, lambda: autocast("bfloat16"))
        profile_rollout("rollout/bf16" + sfx, model_bf16, b, None)

    # the update, on a batch collected the trainer's way
    batch = collect_step(state, cfg).batch
    update(state.learner, state.buffer, state.recipe, cfg, state.kl_coef.value,
                   state.shuffle_generator, state.bad_steps)            # warm-up
    with Clock() as c, profile(activities=[ProfilerActivity.CPU]) as prof:
        update(state.learner, state.buffer, state.recipe, cfg, state.kl_coef.value,
                   state.shuffle_generator, state.bad_steps)
    results["update"] = {"rows": batch.num_sequences, "positions": int(batch.input_ids().numel()),
                         "completion_tokens": int(batch.mask.sum()), "wall_s": c.wall, **top_ops(prof, args.top)}
    ev = {e.key: e for e in prof.key_averages()}
    results["update"]["labelled_cpu_s"] = {k: round(ev[k].cpu_time_total / 1e6, 4) for k in ev
                                           if k.startswith("Optimizer.step") or k.startswith("autograd::engine")
                                           and "evaluate_function" not in k}
    log(f"[profile] update: {c.wall:.2f}s")
    if not args.no_experiments:
        results["experiments"] = experiments(args, state, cfg, torch)
    report["configuration"] = {"model": args.model, "batch": args.batch, "new_tokens": args.new_tokens,
                               "threads": args.threads, "profiler": "torch.profiler, CPU activities",
                               "note": "profiler overhead inflates small ops; read shares, not absolute times"}
    report["results"] = results
    report["ratios"] = {
        f"rollout_{k}_over_trainer_tokens_per_s/batch{b}": results[f"rollout/{k}/batch{b}"]["tokens_per_s"]
        / results[f"rollout/trainer/batch{b}"]["tokens_per_s"] for b in batches for k in ("bf16",)}
    report["wall_s"] = round(time.perf_counter() - t_start, 1)
    out = args.out if args.out is not None else str(RESULTS / ("hotspots-quick.json" if q else "hotspots.json"))
    emit(report, None if out == "-" else out)
    return report


if __name__ == "__main__":
    main()
