"""The update on a real tiny Llama: microbatching does not change it."""

import copy

import pytest
import torch

from tokrl.training.loop import collect_step, train_step
from tokrl.training.state import build_state
from tokrl.training.update import update

from .helpers import params_of, run_metrics, small_config


@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"])
def test_microbatches_give_the_one_big_batch_update(tiny_model_dir, tmp_path, mode):
    cfg = small_config(tiny_model_dir, tmp_path, f"algo.aggregation={mode}", "train.prompts_per_step=6",
                       "train.group_size=2")
    state = build_state(cfg)
    train_step(state, cfg)                                  # fills the buffer with one scored batch
    # plain SGD with lr 1: the weight change is the (clipped) gradient itself, so the
    # comparison is not blurred by Adam dividing tiny gradients by their own size
    state.learner.optimizer = torch.optim.SGD(state.learner.parameters(), lr=1.0)
    snapshot = (copy.deepcopy(state.learner.model.state_dict()), copy.deepcopy(state.learner.value_head.state_dict()))

    def one_update(micro: int):
        state.learner.model.load_state_dict(snapshot[0])
        state.learner.value_head.load_state_dict(snapshot[1])
        cfg.train.microbatch_size = micro
        state.shuffle_generator.manual_seed(123)
        stats = update(state.learner, state.buffer, state.recipe, cfg, state.kl_coef.value,
                           state.shuffle_generator, state.bad_steps)[0]
        return params_of(state), stats

    whole, stats_whole = one_update(0)
    split, stats_split = one_update(5)                      # 12 rows -> 5 + 5 + 2
    for a, b in zip(whole, split):
        assert torch.allclose(a, b, atol=1e-6)
    assert stats_whole["loss/policy"] == pytest.approx(stats_split["loss/policy"], abs=1e-5)


def test_importance_weights_scale_each_tokens_policy_loss(tiny_model_dir, tmp_path):
    # pg loss, token-mean, no entropy bonus: weights of 2 on every token double the loss exactly,
    # and a weight of 0 on a row removes that row's part
    import dataclasses

    from tokrl.training.update import microbatch_loss

    cfg = small_config(tiny_model_dir, tmp_path, "algo.entropy_coef=0", "algo.baseline=none",
                       "train.prompts_per_step=4")
    state = build_state(cfg)
    collect_step(state, cfg)
    batch = state.buffer.stored()
    counts = (batch.mask.sum(), (batch.mask.sum(dim=1) > 0).sum().float())

    def loss(weights):
        mb = dataclasses.replace(batch, is_weights=weights)
        return float(microbatch_loss(state.learner, mb, state.recipe, cfg, 0.0, *counts)[0].detach())

    plain = loss(None)
    assert loss(2.0 * batch.mask) == pytest.approx(2.0 * plain, rel=1e-6)
    keep_first = batch.mask.clone()
    keep_first[1:] = 0.0
    first_only = dataclasses.replace(batch, mask=batch.mask * keep_first)
    expected = float(microbatch_loss(state.learner, first_only, state.recipe, cfg, 0.0, *counts)[0].detach())
    assert loss(keep_first) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("recipe, overrides", [
    ("configs/reinforce.yaml", []),                                          # full fine-tune, value head
    ("configs/reinforce.yaml", ["model.dtype=bfloat16", "train.microbatch_size=3"]),
    ("configs/ppo.yaml", []),                                                # GAE critic, PPO-clip, epochs
    ("configs/grpo.yaml", ["model.lora_rank=4", "model.dtype=bfloat16", "train.group_size=2", "kl.coef=0.1"]),
])
def test_activation_checkpointing_gives_bitwise_the_same_training(tiny_model_dir, tmp_path, recipe, overrides):
    from tokrl.config import load_config
    from tokrl.models.checkpointing import decoder_layers

    runs = []
    for checkpointing in (False, True):
        cfg = load_config(recipe, [f"model.name={tiny_model_dir}", f"train.output_dir={tmp_path / 'run'}",
                                   "train.save_model=false", "train.prompts_per_step=4",
                                   f"train.activation_checkpointing={checkpointing}", *overrides])
        state = build_state(cfg)
        calls = [0]
        for layer in decoder_layers(state.learner.model):
            layer.self_attn.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
        metrics = [train_step(state, cfg)[0] for _ in range(2)]     # two rollouts, two or more optimizer steps
        runs.append((params_of(state), metrics, calls[0]))
    (plain, plain_metrics, plain_calls), (ckpt, ckpt_metrics, ckpt_calls) = runs
    assert ckpt_calls > plain_calls                 # the layers really ran again in backward
    for a, b in zip(plain, ckpt):
        assert torch.equal(a, b)                    # measured: bitwise, fp32 and bf16 autocast alike
    for a, b in zip(plain_metrics, ckpt_metrics):
        assert run_metrics(a) == run_metrics(b)


def test_contributing_rows_are_those_whose_loss_can_move_the_weights():
    import dataclasses

    from tokrl.algorithms import AlgoConfig, KLConfig, resolve
    from tokrl.training.update import contributing_rows
    from tokrl.types import Rollout

    mask = torch.tensor([[1., 1., 0.], [1., 0., 0.], [0., 0., 0.], [1., 1., 1.]])
    adv = torch.tensor([[0., 0., 5.],      # non-zero only on padding: no gradient
                        [0., 0., 0.],
                        [1., 1., 1.],      # all padding
                        [0., 0., -1.]])    # one token with signal
    batch = Rollout(prompt_ids=torch.zeros(4, 1, dtype=torch.long), prompt_mask=torch.ones(4, 1, dtype=torch.long),
                    tokens=torch.zeros(4, 3, dtype=torch.long), lengths=mask.sum(1).long(), mask=mask,
                    logprobs=torch.zeros(4, 3), entropy=torch.zeros(4, 3), rewards=torch.zeros(4, 3),
                    advantages=adv)
    pg = resolve(AlgoConfig(estimator="rloo", policy_loss="pg", entropy_coef=0.0), KLConfig(coef=0.0), 2)
    assert contributing_rows(batch, pg).tolist() == [False, False, False, True]
    # an entropy bonus or a critic reaches every row with a token, whatever its advantage
    bonus = resolve(AlgoConfig(estimator="rloo", policy_loss="pg", entropy_coef=0.01), KLConfig(coef=0.0), 2)
    assert contributing_rows(batch, bonus).tolist() == [True, True, False, True]
    per_row = dataclasses.replace(batch, advantages=torch.tensor([0., 2., 2., 0.]))     # (N,) advantages
    assert contributing_rows(per_row, pg).tolist() == [False, True, False, False]


@pytest.mark.parametrize("micro", [0, 3])
def test_skipping_rows_without_signal_gives_the_update_of_every_row(tiny_model_dir, tmp_path, micro):
    import dataclasses

    from tokrl.training.update import microbatch_loss

    cfg = small_config(tiny_model_dir, tmp_path, "algo.estimator=rloo", "algo.entropy_coef=0", "algo.baseline=none",
                       "train.prompts_per_step=4", "train.group_size=2", "optim.max_grad_norm=0",
                       f"train.microbatch_size={micro}")
    state = build_state(cfg)
    collect_step(state, cfg)
    batch = state.buffer.stored()
    keep = torch.tensor([1., 0., 1., 0., 0., 1., 0., 0.])                 # 3 of 8 rows carry signal
    state.buffer.clear()
    state.buffer.add(dataclasses.replace(batch, advantages=(batch.advantages + 0.5) * keep[:, None]))
    batch = state.buffer.stored()
    state.learner.optimizer = torch.optim.SGD(state.learner.parameters(), lr=1.0)
    start = copy.deepcopy(state.learner.model.state_dict())

    rows_seen = []
    hook = state.learner.model.register_forward_hook(lambda m, args, kwargs, out: rows_seen.append(
        kwargs["input_ids"].shape[0]), with_kwargs=True)
    stats = update(state.learner, state.buffer, state.recipe, cfg, 0.0, state.shuffle_generator, 0)[0]
    hook.remove()
    skipped = params_of(state)
    assert sum(rows_seen) == 3 and stats["update/skipped_rows_frac"] == pytest.approx(5 / 8)

    # every row through one pass: the same weights
    state.learner.model.load_state_dict(start)
    state.learner.optimizer.zero_grad(set_to_none=True)
    counts = (batch.mask.sum(), (batch.mask.sum(dim=1) > 0).sum().float())
    microbatch_loss(state.learner, batch, state.recipe, cfg, 0.0, *counts)[0].backward()
    state.learner.optimizer.step()
    for a, b in zip(skipped, params_of(state)):
        assert torch.allclose(a, b, atol=1e-6)


def test_a_compiled_update_trains_as_eager_does_and_compiles_once(tiny_model_dir, tmp_path):
    from torch._dynamo.utils import counters

    runs = []
    for compiled in (False, True):
        torch._dynamo.reset()
        counters.clear()
        # 8 rows in microbatches of 3: passes of 3, 3 and 2 rows, two shapes per update
        cfg = small_config(tiny_model_dir, tmp_path, f"train.compile={compiled}", "train.prompts_per_step=4",
                           "train.group_size=2", "algo.entropy_coef=0", "train.microbatch_size=3")
        state = build_state(cfg)
        metrics = [train_step(state, cfg)[0] for _ in range(3)][-1]
        runs.append((params_of(state), metrics, counters["stats"]["unique_graphs"]))
    (eager, eager_metrics, _), (comp, comp_metrics, graphs) = runs
    assert graphs == 1                              # every shape reused the one dynamic-shape graph
    for a, b in zip(eager, comp):
        assert torch.allclose(a, b, atol=1e-5)      # the last bits differ, not the training
    assert comp_metrics["loss/policy"] == pytest.approx(eager_metrics["loss/policy"], abs=1e-4)
