"""Training: the state a run carries, the loop, collection, the update, checkpoints,
evaluation and the helpers of torchrun.

- ``state``: ``TrainState`` and ``build_state``
- ``loop``: ``train`` and ``train_step``, the loop that calls every stage
- ``collect``: prompts -> rollout -> extra passes -> KL -> advantages
- ``buffer``: ``ExperienceBuffer``, which deals the update's minibatches
- ``update``: ``Learner`` and ``update``, epochs of minibatch AdamW steps
- ``checkpoint``: save and resume bit for bit
- ``evaluate``: held-out greedy evaluation and the paired before/after comparison
- ``distributed``: data-parallel and sharded training under torchrun

This package's ``__init__`` imports nothing, so that ``tokrl.training.distributed``
can be used by generation without loading the loop.
"""
