"""What the loop and update tests share: a small config of the REINFORCE recipe on the
tiny model, and a copy of the trainable parameters."""

from tokrl.config import load_config

RECIPE = "configs/reinforce.yaml"


def small_config(tiny_model_dir, tmp_path, *overrides):
    return load_config(RECIPE, [f"model.name={tiny_model_dir}", f"train.output_dir={tmp_path / 'run'}",
                                "train.save_model=false", "train.eval_samples=8", *overrides])


def params_of(state):
    return [p.detach().clone() for p in state.learner.parameters()]
