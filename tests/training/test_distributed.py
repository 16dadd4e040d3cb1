"""Data-parallel and sharded training with torch.distributed (gloo on CPU).

Two processes with the same global batch and seed make the same update as one
process (DDP and FSDP2, REINFORCE / PPO / GRPO, LoRA, GRPO with activation
checkpointing, GRPO with dynamic sampling), a two-process run resumes from its checkpoint
as if never stopped, and `torchrun -m tokrl train` works end to end (with
tokrl's engine, and with a vLLM engine in each process). The multi-process
runs start real processes: tests/training/distributed_worker.py joined through the
torchrun environment variables, and torchrun itself for the CLI.

The model here has a three-symbol vocabulary ("ab=" plus specials): its random
completions match the target often, so rewards carry signal from the first step. With
the usual ~49-token tiny model almost every first reward is 0, and PPO's whitened
advantages are then float noise blown up to unit size (the KL penalty between the
rollout's and the reference's log-probs, ~1e-7), which no two runs can agree on.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tokrl.training import distributed
from tokrl.cli import main
from tokrl.config import ConfigError, load_config
from tokrl.models.tiny import make_tiny_model
from tokrl.training.buffer import minibatch_rows

ROOT = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).resolve().parent / "distributed_worker.py"
TASK = ["task.options.alphabet=ab", "task.options.num_train=12", "task.options.num_test=4"]
QUIET = ["train.eval_samples=4", "train.target_reward=null", "log.report=false", "log.tensorboard=false"]
RECIPES = {"reinforce": ["train.prompts_per_step=4"],
           "ppo": ["train.prompts_per_step=4", "train.minibatch_size=2"],      # 2 minibatches x 4 epochs
           "grpo": ["train.prompts_per_step=4", "train.microbatch_size=3"]}    # 16 rows: DDP accumulates
STEPS = 2
# at temperature 0.3 the ab model's samples of a prompt often agree: refills are drawn, and with
# one refill allowed a step can come up short (its filler group is left out of the loss)
DYNAMIC = ["train.prompts_per_step=4", "train.dynamic_sampling=true", "train.max_resample=1", "sampling.temperature=0.3"]
# Metrics that subtract nearly equal numbers magnify the float differences that one
# step's 8 PPO optimizer steps leave in the weights (they agree within 1e-5): ppo at
# step 1, DDP and FSDP alike, was seen 5.5e-5 apart in explained variance (1 - Var[R - V]
# / Var[R]), 1.1e-4 in the KL to the reference summed over a sequence (-0.27149 vs
# -0.27139) and 1.4e-5 in approx_kl (0.035884 vs 0.035870): each a difference of log-probs
ABS_TOLERANCE = {"critic/explained_variance": 1e-3, "kl/ref_per_seq": 1e-3, "policy/approx_kl": 1e-4}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ab_model(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("ab") / "tiny-ab", chars="ab=")


def overrides(model: Path, *extra: str) -> list[str]:
    return [f"model.name={model}", *TASK, *QUIET, "train.save_model=false", *extra]


def scenarios(model: Path, runs: Path) -> list[dict]:
    out = []
    for strategy in ("ddp", "fsdp"):
        for name, extra in RECIPES.items():
            out.append({"name": f"{name}-{strategy}", "recipe": f"configs/{name}.yaml", "steps": STEPS,
                        "overrides": overrides(model, *extra, f"dist.strategy={strategy}")})
        out.append({"name": f"lora-{strategy}", "recipe": "configs/reinforce.yaml", "steps": STEPS,
                    "overrides": overrides(model, "train.prompts_per_step=4", "model.lora_rank=2",
                                           f"dist.strategy={strategy}")})
        out.append({"name": f"ckpt-{strategy}", "recipe": "configs/grpo.yaml", "steps": STEPS,
                    "overrides": overrides(model, *RECIPES["grpo"], "train.activation_checkpointing=true",
                                           f"dist.strategy={strategy}")})
        out.append({"name": f"dynamic-{strategy}", "recipe": "configs/grpo.yaml", "steps": STEPS,
                    "overrides": overrides(model, *DYNAMIC, f"dist.strategy={strategy}")})
        out.append({"name": f"resume-{strategy}", "recipe": "configs/ppo.yaml", "resume": [1, 3],
                    "overrides": [*overrides(model, *RECIPES["ppo"], f"dist.strategy={strategy}",
                                             "train.checkpoint_every=1", f"train.output_dir={runs / strategy}"),
                                  "train.save_model=true"]})
    # multi-turn episodes (guess_number needs digits: the usual tiny model); RLOO, so a group of
    # equal rewards gives exactly zero advantages rather than whitened noise
    tiny = runs.parent / "tiny"
    if not tiny.exists():
        make_tiny_model(tiny)
    out.append({"name": "multiturn-ddp", "recipe": "configs/guess_number.yaml", "steps": STEPS,
                "overrides": [f"model.name={tiny}", *QUIET, "train.save_model=false", "train.prompts_per_step=4"]})
    return out


@pytest.fixture(scope="module")
def two_processes(ab_model, tmp_path_factory) -> dict[str, dict]:
    """Every scenario run once by two processes (one launch: starting them is the slow part)."""
    work = tmp_path_factory.mktemp("two-processes")
    specs = scenarios(ab_model, work / "runs")
    (work / "spec.json").write_text(json.dumps(specs))
    env = {**os.environ, "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()),
           "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, str(WORKER), str(work / "spec.json"), str(work)], cwd=ROOT,
                              env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for r in range(2)]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    for p, out in zip(procs, outputs):
        assert p.returncode == 0, out[-3000:]
    return {s["name"]: {**s, "result": torch.load(work / f"{s['name']}.pt"), "runs": work / "runs"} for s in specs}


def one_process(scenario: dict) -> dict:
    from .distributed_worker import steps

    return steps(load_config(scenario["recipe"], scenario["overrides"]), scenario["steps"])


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float = 1e-5) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.allclose(a[name], b[name], rtol=0, atol=atol), (name, float((a[name] - b[name]).abs().max()))


# ------------------------------------------------------ two processes = one process

@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
@pytest.mark.parametrize("recipe", [*RECIPES, "lora", "ckpt"])
def test_two_processes_make_the_one_process_update(two_processes, recipe, strategy):
    scenario = two_processes[f"{recipe}-{strategy}"]
    two, one = scenario["result"], one_process(scenario)
    for step in range(STEPS):
        assert torch.equal(two["tokens"][step], one["tokens"][step])      # the same samples, row for row
        apart = {key: (two["metrics"][step][key], value) for key, value in one["metrics"][step].items()
                 if two["metrics"][step][key] != pytest.approx(value, rel=1e-4, abs=ABS_TOLERANCE.get(key, 1e-5))}
        assert not apart, (step, apart)                                     # reduced over the processes
    # ppo's 8 Adam steps a step turn summation-order noise in near-zero gradients into
    # steps of a visible size (Adam divides by the gradient's own scale): seen 1.08e-5 apart
    assert_same_weights(two["weights"], one["weights"], atol=2e-5 if recipe == "ppo" else 1e-5)
    # FSDP shards the policy and the KL reference (with LoRA the reference is the policy)
    sharded = strategy == "fsdp"
    assert two["sharded"] == {"policy": sharded, "reference": sharded and recipe in ("ppo", "grpo", "ckpt")}
    if recipe != "lora":
        assert any(k.startswith("value_head.") for k in one["weights"]) == (recipe not in ("grpo", "ckpt"))


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_processes_draw_and_choose_the_one_process_dynamic_batch(two_processes, strategy):
    scenario = two_processes[f"dynamic-{strategy}"]
    two, one = scenario["result"], one_process(scenario)
    # refills were drawn and chosen over both processes' rows, and a step came up short
    assert max(m["dynamic_sampling/rounds"] for m in one["metrics"]) == 2.0
    assert min(m["groups/informative"] for m in one["metrics"]) < 4.0
    for step in range(STEPS):
        assert torch.equal(two["tokens"][step], one["tokens"][step])      # the same chosen rows, in order
        for key, value in one["metrics"][step].items():
            tolerance = ABS_TOLERANCE.get(key, 1e-5)
            assert two["metrics"][step][key] == pytest.approx(value, rel=1e-4, abs=tolerance), (step, key)
    assert_same_weights(two["weights"], one["weights"])


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_a_two_process_run_resumes_from_its_checkpoint(two_processes, strategy):
    scenario = two_processes[f"resume-{strategy}"]
    result = scenario["result"]
    # stopped after step 1, resumed to 3: bit for bit the uninterrupted two-process run
    for name, value in result["straight"].items():
        assert torch.equal(result["resumed"][name], value), name
    run = scenario["runs"] / strategy / "resumed"
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]
    # rank 0 wrote one set of files; FSDP gathered whole tensors for the checkpoint and the model
    state = torch.load(run / "checkpoints" / "step-00000003" / "state.pt", weights_only=True)
    assert len(state["rng_ranks"]) == 2
    exported = load_file(run / "model" / "model.safetensors")
    for name, value in result["resumed"].items():
        if not name.startswith("value_head."):
            assert torch.equal(exported[name], value), name


# ------------------------------------------------------------------------- torchrun

@pytest.mark.slow
def test_two_processes_make_the_one_process_multi_turn_update(two_processes):
    """Each process runs its prompts' episodes (environments seeded by the prompt's number in
    the step, not in the process's share): the same episodes and update as one process."""
    scenario = two_processes["multiturn-ddp"]
    two, one = scenario["result"], one_process(scenario)
    for step in range(STEPS):
        assert torch.equal(two["tokens"][step], one["tokens"][step])
        assert one["metrics"][step]["episode/turns"] > 1
        assert two["metrics"][step]["reward/mean"] == pytest.approx(one["metrics"][step]["reward/mean"], abs=1e-6)
    assert_same_weights(two["weights"], one["weights"])


def torchrun(args: list[str], env_extra: dict | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={free_port()}", "-m", "tokrl", *args]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600,
                          env={**os.environ, "PYTHONUNBUFFERED": "1", **(env_extra or {})})


@pytest.mark.slow
def test_torchrun_train_killed_then_resumed_ends_where_one_process_ends(ab_model, tmp_path, capsys):
    common = ["train", "configs/grpo.yaml", *overrides(ab_model, "train.prompts_per_step=4", "train.max_steps=3",
                                                       "train.checkpoint_every=1"), "train.save_model=true", "--quiet"]
    run = tmp_path / "two"
    killed = torchrun([*common, f"train.output_dir={run}"], {"TOKRL_KILL_AT": "update:2"})   # inside step 3
    assert killed.returncode != 0
    assert [p.name for p in sorted((run / "checkpoints").iterdir())] == ["step-00000001", "step-00000002"]
    assert not (run / "model").exists()
    resumed = torchrun(["train", "--resume", str(run), "--quiet"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    summary = json.loads(resumed.stdout)                                  # rank 0 alone prints
    assert summary["steps"] == 3
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]                                             # rank 0 alone logs

    assert main([*common, f"train.output_dir={tmp_path / 'one'}"]) == 0
    capsys.readouterr()
    assert_same_weights(load_file(run / "model" / "model.safetensors"),
                        load_file(tmp_path / "one" / "model" / "model.safetensors"))
    one = [json.loads(line) for line in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    two = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["reward/mean"] for m in two] == pytest.approx([m["reward/mean"] for m in one], abs=1e-6)


# --------------------------------------------------------------- no processes needed

@pytest.mark.parametrize("size", [0, 1, 2, 3, 4, 5, 8, 16])
def test_minibatches_are_the_same_rows_for_any_number_of_processes(size):
    n = 16
    rows = minibatch_rows(n, size, torch.Generator().manual_seed(0))
    assert len(rows) == (-(-n // size) if size else 1)
    assert sorted(torch.cat(rows).tolist()) == list(range(n))             # every row once
    assert max(map(len, rows)) - min(map(len, rows)) <= 1
    for world in (2, 4):                                                  # where the shards split evenly
        shard = n // world
        if shard % len(rows):
            continue
        for r in range(world):                                            # each shard: an equal share of each
            counts = {int(((mb >= r * shard) & (mb < (r + 1) * shard)).sum()) for mb in rows}
            assert counts == {shard // len(rows)}


def test_the_batch_must_split_over_the_processes(tiny_model_dir):
    def cfg(*extra):
        return load_config("configs/grpo.yaml", [f"model.name={tiny_model_dir}", *extra])

    distributed.check(cfg("train.prompts_per_step=4"), 2)
    distributed.check(cfg("train.prompts_per_step=4", "train.minibatch_size=8"), 2)
    with pytest.raises(ConfigError, match=r"train.prompts_per_step=3 does not split over 2 processes"):
        distributed.check(cfg("train.prompts_per_step=3"), 2)
    # 16 rows in ceil(16 / 6) = 3 minibatches cannot give each of 2 processes equal shares
    with pytest.raises(ConfigError, match=r"train.minibatch_size=6: .* use a multiple of 2 that divides 16"):
        distributed.check(cfg("train.prompts_per_step=4", "train.minibatch_size=6"), 2)
    with pytest.raises(ConfigError, match="dist.strategy"):
        cfg("dist.strategy=zero3")
    with pytest.raises(ConfigError, match=r"train.compile runs in one process only \(this run has 2\)"):
        distributed.check(cfg("train.prompts_per_step=4", "train.compile=true"), 2)


@pytest.mark.parametrize("rank", ["0", "1"])
def test_bad_split_under_torchrun_is_one_line_from_rank_0(tiny_model_dir, tmp_path, capsys, monkeypatch, rank):
    # every process finds it before they join: rank 0 says it, the others exit quietly
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", rank)
    argv = ["train", "configs/grpo.yaml", f"model.name={tiny_model_dir}", "train.prompts_per_step=3",
            f"train.output_dir={tmp_path / 'run'}", "--quiet"]
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == ""
    expected = ["tokrl: error: train.prompts_per_step=3 does not split over 2 processes (each rolls out "
                "prompts_per_step / 2 prompts with all their samples); use a multiple of 2"]
    assert err.splitlines() == (expected if rank == "0" else [])
    assert not (tmp_path / "run").exists() and not torch.distributed.is_initialized()


def test_one_process_never_joins_a_process_group(tiny_model_dir, tmp_path):
    from tokrl.training.loop import build_state, train_step

    cfg = load_config("configs/ppo.yaml", [f"model.name={tiny_model_dir}", "train.prompts_per_step=4",
                                           "dist.strategy=fsdp"])     # ignored by one process
    state = build_state(cfg)
    train_step(state, cfg)
    assert not torch.distributed.is_initialized()
    assert state.learner.wrapped_model is None and state.learner.wrapped_head is None
    assert distributed.world_size() == 1 and distributed.is_main()


@pytest.mark.slow
def test_torchrun_with_the_vllm_engine_runs_an_engine_in_each_process(tiny_model_dir, tmp_path):
    # each process samples its share of the prompts with its own colocated engine; rank 0 logs
    run = tmp_path / "run"
    done = torchrun(["train", "configs/grpo.yaml", f"model.name={tiny_model_dir}", "rollout.engine=vllm",
                     "rollout.vllm_memory=0.05", "train.prompts_per_step=4", "train.max_steps=2",
                     "train.eval_samples=4", "train.save_model=false", f"train.output_dir={run}", "--quiet"])
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == [1, 2]
    assert all(m["rollout/mismatch_kl"] < 1e-3 for m in lines)     # the engines follow the pushed weights
