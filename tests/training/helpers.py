"""What the training tests share: a small config of the REINFORCE recipe on the tiny
model, a copy of the trainable parameters, and a step's metrics without those that
measure the machine rather than the run."""

from tokrl.config import load_config

RECIPE = "configs/reinforce.yaml"


def small_config(tiny_model_dir, tmp_path, *overrides):
    return load_config(RECIPE, [f"model.name={tiny_model_dir}", f"train.output_dir={tmp_path / 'run'}",
                                "train.save_model=false", "train.eval_samples=8", *overrides])


def params_of(state):
    return [p.detach().clone() for p in state.learner.parameters()]


MACHINE = ("time/", "memory/")
"""metrics that measure the machine (timings, memory), not the run: no two runs share them"""


def run_metrics(metrics: dict) -> dict:
    """``metrics`` without the keys under ``MACHINE``."""
    return {k: v for k, v in metrics.items() if not k.startswith(MACHINE)}
