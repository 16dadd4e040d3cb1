"""Offline (supervised) training: the SFT warm start and reward models from preferences.

- ``fit``: the one fitting loop, config fields and command-line shape they share
- ``sft``: ``tokrl sft``, the supervised warm start on prompt/completion pairs
- ``reward_model``: ``tokrl reward-model train | eval``, Bradley-Terry on preference pairs
- ``process_reward``: ``--level step``, a process reward model on stepwise data, and
  ``tokrl reward-model steps-data`` (the generated arithmetic data of ``tasks.stepwise``)
- ``output``: an output directory written whole or not at all
"""
