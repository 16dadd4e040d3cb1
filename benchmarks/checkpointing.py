"""Activation checkpointing (``train.activation_checkpointing``): the memory it saves and
the update time it costs.

    python benchmarks/checkpointing.py            # SmolLM2, 4 prompts x 4 samples x 64 tokens, ~5 min
    python benchmarks/checkpointing.py --quick    # tiny model, under a minute

The setting is efficiency.py's: tokrl's train state on SmolLM2-135M-Instruct (float32
weights, bf16 autocast), GRPO advantages, PPO-clip, token-mean, AdamW lr 1e-5, one
rollout batch collected with tokrl's ``collect_step``, all rows in one forward and
backward pass. Two measurements:

1. Update time, in one process: ``tokrl.training.update.update`` on that batch with
   checkpointing off (``plain``) and on (``checkpointed``), interleaved A B, B A over
   --repeats rounds after a warm-up of each. Ratio per round, median.
2. Peak memory, each variant in its own child process (load, collect, --child-updates
   updates), alternated A B, B A over --rounds rounds, before the parent loads anything
   (Linux counts the parent's RSS at fork into a child's ru_maxrss). ``peak_rss_mib`` is the child's
   ru_maxrss over its whole life (``os.wait4``; model load included), the figure the
   issue's target is stated in. ``update_peak_over_start_mib`` is the highest RSS during
   the updates (VmHWM, reset through /proc/self/clear_refs just before them) minus the RSS
   right before them: the update's own transient memory, activations and gradients.
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

from _common import (DEFAULT_CACHE, RESULTS, Clock, emit, header, interleave, log, paired_ratios,  # noqa: E402
                     ratio, set_threads, summarize)
from efficiency import build  # noqa: E402

VARIANTS = {"plain": False, "checkpointed": True}
"""variant name -> train.activation_checkpointing"""
MIB = 2 ** 20


def vm_kib(field: str) -> int:
    """A field of /proc/self/status in KiB (VmRSS: now, VmHWM: the peak since the last reset)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def reset_peak() -> bool:
    """Reset this process's peak RSS (VmHWM) to its current RSS; False where Linux refuses."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def run_update(state, cfg) -> float:
    """One ``update`` on the state's buffer; returns its wall seconds."""
    from tokrl.training.update import update

    with Clock() as c:
        update(state.learner, state.buffer, state.recipe, cfg, state.kl_coef.value, state.shuffle_generator,
               state.bad_steps)
    return c.wall


# -------------------------------------------------------------------------- child

def run_child(args) -> None:
    """One variant in this fresh process: load, collect, updates; its memory figures as JSON."""
    import resource

    from tokrl.training.loop import collect_step

    set_threads(args.threads)
    state, cfg = build(args)
    cfg.train.activation_checkpointing = VARIANTS[args.child]
    collect_step(state, cfg)
    before = vm_kib("VmRSS")
    resettable = reset_peak()
    seconds = [run_update(state, cfg) for _ in range(args.child_updates)]
    out = {"variant": args.child, "update_s": seconds, "rss_before_update_mib": before / 1024,
           "update_peak_mib": vm_kib("VmHWM") / 1024 if resettable else None,
           "self_maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}   # Linux: KiB
    if resettable:
        out["update_peak_over_start_mib"] = out["update_peak_mib"] - out["rss_before_update_mib"]
    Path(args.result).write_text(json.dumps(out))


def spawn(variant: str, args, workdir: Path, tag: str) -> dict:
    """Run one child to completion: its result plus its whole-life peak RSS (os.wait4)."""
    result = workdir / f"{tag}.json"
    cmd = [sys.executable, __file__, "--child", variant, "--result", str(result), "--threads", str(args.threads),
           "--cache-dir", args.cache_dir, "--model", args.model, "--new-tokens", str(args.new_tokens),
           "--prompts", str(args.prompts), "--group", str(args.group), "--dtype", args.dtype,
           "--child-updates", str(args.child_updates)]
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS=str(args.threads),
               TRANSFORMERS_VERBOSITY="error", HF_HUB_OFFLINE="1")
    log(f"[checkpointing] {tag}: {variant} in a child, {args.child_updates} updates")
    proc = subprocess.Popen(cmd, env=env, stdout=sys.stderr)
    _, status, usage = os.wait4(proc.pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise RuntimeError(f"the {variant} child failed with exit code {code}")
    out = json.loads(result.read_text())
    out["peak_rss_mib"] = usage.ru_maxrss / 1024                 # Linux: KiB
    out["parent_rss_mib"] = vm_kib("VmRSS") / 1024               # a floor of the above (see main)
    return out


# ------------------------------------------------------------------------- parent

def time_updates(args) -> dict[str, dict[str, list[float]]]:
    """Interleaved update timings of both variants in this process, on one collected batch."""
    from tokrl.training.loop import collect_step

    state, cfg = build(args)
    collect_step(state, cfg)

    def variant(on: bool):
        def run() -> dict[str, float]:
            cfg.train.activation_checkpointing = on
            return {"update_s": run_update(state, cfg)}
        return run

    return interleave({name: variant(on) for name, on in VARIANTS.items()}, args.repeats, warmup=1, log=log)


def measure_memory(args) -> dict[str, list[dict]]:
    """Each variant in its own child process, A B then B A, over args.rounds rounds."""
    children: dict[str, list[dict]] = {name: [] for name in VARIANTS}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            order = list(VARIANTS) if r % 2 == 0 else list(VARIANTS)[::-1]
            for name in order:
                children[name].append(spawn(name, args, Path(tmp), f"round{r + 1}-{name}"))
    return children


def summarize_children(children: dict[str, list[dict]]) -> dict[str, dict]:
    keys = ("peak_rss_mib", "update_peak_over_start_mib", "rss_before_update_mib")
    return {name: {k: summarize([c[k] for c in runs if c.get(k) is not None]) for k in keys}
            for name, runs in children.items()}


def ratios_of(timings: dict, children: dict, memory: dict) -> dict:
    plain, ckpt = children["plain"], children["checkpointed"]
    pairs = [(a, b) for a, b in zip(plain, ckpt)]
    out = {
        "checkpointed_over_plain_update_s": paired_ratios(timings["checkpointed"]["update_s"],
                                                          timings["plain"]["update_s"])["median"],
        "checkpointed_over_plain_update_s_detail": ratio(summarize(timings["checkpointed"]["update_s"]),
                                                         summarize(timings["plain"]["update_s"])),
        "plain_over_checkpointed_peak_rss": paired_ratios([a["peak_rss_mib"] for a, _ in pairs],
                                                          [b["peak_rss_mib"] for _, b in pairs])["median"],
        "peak_rss_saved_mib": memory["plain"]["peak_rss_mib"]["median"]
        - memory["checkpointed"]["peak_rss_mib"]["median"],
    }
    if all(c.get("update_peak_over_start_mib") is not None for c in plain + ckpt):
        out["plain_over_checkpointed_update_peak_over_start"] = paired_ratios(
            [a["update_peak_over_start_mib"] for a, _ in pairs],
            [b["update_peak_over_start_mib"] for _, b in pairs])["median"]
    return out


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="default smollm2-135m-instruct; quick tiny-random")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    p.add_argument("--prompts", type=int, default=4)
    p.add_argument("--group", type=int, default=4)
    p.add_argument("--new-tokens", type=int, default=None, help="default 64; quick 8")
    p.add_argument("--repeats", type=int, default=None, help="timed A B rounds after a warm-up (default 4; quick 2)")
    p.add_argument("--rounds", type=int, default=None, help="child-process A B rounds for memory (default 2; quick 1)")
    p.add_argument("--child-updates", type=int, default=2, help="updates per memory child")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--cache-dir", default=DEFAULT_CACHE)
    p.add_argument("--out", default=None, help="default benchmarks/results/checkpointing.json; '-' for stdout only")
    p.add_argument("--child", choices=list(VARIANTS), help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.model = args.model or ("tiny-random" if args.quick else "smollm2-135m-instruct")
    args.new_tokens = args.new_tokens or (8 if args.quick else 64)
    args.repeats = args.repeats or (2 if args.quick else 4)
    args.rounds = args.rounds or (1 if args.quick else 2)
    return args


def main(argv: list[str] | None = None) -> dict | None:
    args = parse(argv)
    if args.child:
        run_child(args)
        return None
    set_threads(args.threads)
    report = header("checkpointing")
    t_start = time.perf_counter()
    # children first: Linux counts the RSS of the parent at fork into a child's ru_maxrss,
    # and the timing half leaves this process holding a model and its optimizer
    children = measure_memory(args)
    timings = time_updates(args)
    memory = summarize_children(children)
    report["configuration"] = {
        "model": args.model, "dtype": f"{args.dtype} (tokrl model.dtype: fp32 weights, autocast)",
        "prompts": args.prompts, "group": args.group, "max_new_tokens": args.new_tokens,
        "update": "tokrl.training.update.update: GRPO advantages, PPO-clip, token-mean, one minibatch "
                  "(all rows in one forward/backward), AdamW lr 1e-5",
        "variants": {name: f"train.activation_checkpointing={str(on).lower()}" for name, on in VARIANTS.items()},
        "repeats": args.repeats, "rounds": args.rounds, "child_updates": args.child_updates,
        "threads": args.threads, "quick": args.quick,
    }
    report["results"] = {"update_s": {name: summarize(t["update_s"]) for name, t in timings.items()},
                         "memory": memory, "children": children}
    report["ratios"] = ratios_of(timings, children, memory)
    report["wall_s"] = round(time.perf_counter() - t_start, 1)
    report["notes"] = [
        "update_s: one process, the variants interleaved on the same collected batch; the ratio is the median "
        "of per-round ratios (> 1: checkpointing is slower)",
        "peak_rss_mib: each child's ru_maxrss over its whole life (load, rollout, updates); it is never below "
        "the parent's RSS when the child started (parent_rss_mib), which Linux counts in: the children run "
        "before the parent loads anything; "
        "update_peak_over_start_mib: the peak during the updates minus the RSS just before them",
        "memory freed before the updates may stay in the allocator and be reused by them, so the update's "
        "own figure is a lower bound of what it allocates",
        "other processes share this 2-core machine; only the ratios are claims",
    ]
    out = args.out if args.out is not None else str(RESULTS / ("checkpointing-quick.json" if args.quick
                                                               else "checkpointing.json"))
    emit(report, None if out == "-" else out)
    return report


if __name__ == "__main__":
    main()
