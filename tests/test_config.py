"""Config: defaults, the YAML form, dotted overrides, and errors that name the key."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from tokrl.config import Config, ConfigError, apply_override, from_dict, load_config, to_dict, validate

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / "configs").glob("*.yaml"))


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def error_of(*args) -> str:
    """The ConfigError message of load_config(*args); it must be one line."""
    with pytest.raises(ConfigError) as info:
        load_config(*args)
    message = str(info.value)
    assert "\n" not in message, message
    return message


# ---------------------------------------------------------------- defaults and the YAML form

def test_defaults_load_and_validate():
    cfg = load_config()
    assert cfg == Config()
    validate(cfg)
    assert cfg.model.name == "tiny-random" and cfg.task.name == "target_match"
    assert cfg.optim.betas == (0.9, 0.999) and isinstance(cfg.optim.betas, tuple)
    assert cfg.algo.value_clip is None and cfg.task.options == {}


def test_to_dict_is_plain_data():
    data = to_dict(Config())
    assert data["optim"]["betas"] == [0.9, 0.999]  # tuples become lists for YAML
    assert set(data) == {f.name for f in dataclasses.fields(Config)}
    assert yaml.safe_load(yaml.safe_dump(data)) == data


def test_from_dict_inverts_to_dict():
    cfg = load_config(None, ["optim.lr=1e-5", "algo.value_clip=0.5", "task.options.length=3"])
    assert from_dict(Config, to_dict(cfg)) == cfg


def test_yaml_round_trip_gives_an_equal_config(tmp_path):
    cfg = load_config(None, ["optim.lr=3e-5", "optim.betas=[0.8,0.95]", "algo.value_clip=0.2",
                             "algo.dual_clip=3", "train.target_reward=0.9", "model.dtype=bfloat16",
                             "task.options.alphabet=xyz", "task.options.length=5", "train.max_steps=7"])
    path = write(tmp_path / "cfg.yaml", yaml.safe_dump(to_dict(cfg), sort_keys=False))
    assert load_config(path) == cfg


@settings(max_examples=40, deadline=None)
@given(lr=st.floats(min_value=1e-12, max_value=1e6, allow_nan=False, allow_infinity=False))
def test_any_learning_rate_survives_override_and_yaml(lr):
    # repr(1e-05) == "1e-05", which YAML 1.1 alone would read as a string
    cfg = load_config(None, [f"optim.lr={lr!r}"])
    assert cfg.optim.lr == lr and type(cfg.optim.lr) is float
    assert from_dict(Config, yaml.safe_load(yaml.safe_dump(to_dict(cfg)))) == cfg


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_every_recipe_loads(recipe):
    cfg = load_config(recipe)
    validate(cfg)
    assert cfg != Config()  # a recipe says something


def test_there_are_recipes():
    assert ROOT / "configs" / "reinforce.yaml" in RECIPES


def test_recipe_values_reach_the_config():
    cfg = load_config(ROOT / "configs" / "reinforce.yaml")
    assert cfg.task.options == {"alphabet": "abcd", "length": 4, "transform": "copy"}
    assert cfg.train.target_reward == 0.95 and cfg.train.prompts_per_step == 32
    assert cfg.optim.betas == (0.9, 0.999)  # not in the recipe: the default stays


def test_empty_yaml_file_is_the_defaults(tmp_path):
    assert load_config(write(tmp_path / "empty.yaml", "")) == Config()


# ---------------------------------------------------------------- dotted overrides

@pytest.mark.parametrize("override, get, expected", [
    ("optim.lr=1e-5", lambda c: c.optim.lr, 1e-05),
    ("optim.lr=1", lambda c: c.optim.lr, 1.0),                  # an int is a fine float
    ("train.max_steps=5", lambda c: c.train.max_steps, 5),
    ("algo.value_clip=null", lambda c: c.algo.value_clip, None),
    ("algo.value_clip=0.5", lambda c: c.algo.value_clip, 0.5),
    ("optim.betas=[0.8,0.9]", lambda c: c.optim.betas, (0.8, 0.9)),
    ("algo.whiten=true", lambda c: c.algo.whiten, True),
    ("model.name=some/dir.v2", lambda c: c.model.name, "some/dir.v2"),  # a '.' does not make a float
    ("train.output_dir=runs/x=y", lambda c: c.train.output_dir, "runs/x=y"),  # split at the first '='
])
def test_override_values_are_typed(override, get, expected):
    value = get(load_config(None, [override]))
    assert value == expected and type(value) is type(expected)


def test_option_override_reaches_the_options_dict():
    cfg = load_config(ROOT / "configs" / "reinforce.yaml", ["task.options.length=3"])
    # merged into the recipe's options, not replacing them
    assert cfg.task.options == {"alphabet": "abcd", "length": 3, "transform": "copy"}
    assert type(cfg.task.options["length"]) is int


def test_later_overrides_win():
    assert load_config(None, ["train.max_steps=5", "train.max_steps=6"]).train.max_steps == 6


def test_apply_override_edits_plain_data_in_place():
    data = {"optim": {"lr": 1.0}}
    apply_override(data, "optim.lr=2e-3")
    assert data == {"optim": {"lr": 2e-3}}


def test_override_without_equals_sign_is_an_error():
    assert "key=value" in error_of(None, ["optim.lr"])


# ---------------------------------------------------------------- unknown keys

def test_unknown_top_level_key_in_yaml(tmp_path):
    message = error_of(write(tmp_path / "c.yaml", "modle:\n  name: x\n"))
    assert "'modle'" in message and "model" in message  # names the key and the valid ones


def test_unknown_nested_key_in_yaml(tmp_path):
    assert "'optim.lrr'" in error_of(write(tmp_path / "c.yaml", "optim:\n  lrr: 0.1\n"))


@pytest.mark.parametrize("override, key", [
    ("optim.lrr=0.1", "'optim.lrr'"),
    ("optimizer.lr=0.1", "'optimizer.lr'"),
    ("optim.lr.x=1", "'optim.lr.x'"),          # lr is a leaf, not a section
    ("bogus=1", "'bogus'"),
])
def test_unknown_key_via_override(override, key):
    assert key in error_of(None, [override])


# ---------------------------------------------------------------- wrong types

@pytest.mark.parametrize("override, key", [
    ("train.max_steps=many", "train.max_steps"),   # string for int
    ("train.max_steps=true", "train.max_steps"),   # bool for int (bool is an int in Python)
    ("train.max_steps=5.0", "train.max_steps"),    # float for int
    ("train.max_steps=5.5", "train.max_steps"),
    ("model.name=[a,b]", "model.name"),            # list for str
    ("optim.lr=fast", "optim.lr"),                 # string for float
    ("optim.lr=true", "optim.lr"),                 # bool for float
    ("algo.whiten=1", "algo.whiten"),              # int for bool
    ("algo.value_clip=big", "algo.value_clip"),    # string for float | None
    ("optim.betas=[0.9]", "optim.betas"),          # wrong tuple length
    ("optim.betas=[0.9,x]", "optim.betas[1]"),
    ("task.options=3", "task.options"),            # not a mapping
    ("optim=3", "optim"),                          # a section replaced by a scalar
])
def test_wrong_type_names_the_key(override, key):
    assert error_of(None, [override]).startswith(key)


def test_wrong_type_in_yaml_names_the_key(tmp_path):
    assert error_of(write(tmp_path / "c.yaml", "train:\n  max_steps: ten\n")).startswith("train.max_steps")


def test_exponent_float_in_a_yaml_file(tmp_path):
    assert load_config(write(tmp_path / "c.yaml", "optim:\n  lr: 1e-5\n")).optim.lr == 1e-5


def test_exponent_float_inside_an_override_list():
    assert load_config(None, ["optim.betas=[1e-1,0.9]"]).optim.betas == (0.1, 0.9)


# ---------------------------------------------------------------- cross-field validation

@pytest.mark.parametrize("override, key", [
    ("algo.estimator=ppo", "algo.estimator"),
    ("algo.baseline=median", "algo.baseline"),
    ("algo.policy_loss=dpo", "algo.policy_loss"),
    ("algo.aggregation=mean", "algo.aggregation"),
    ("sampling.top_p=0", "sampling.top_p"),
    ("sampling.top_p=1.5", "sampling.top_p"),
    ("model.dtype=float16", "model.dtype"),
    ("sampling.temperature=-0.5", "sampling.temperature"),
    ("sampling.max_new_tokens=0", "sampling.max_new_tokens"),
    ("sampling.top_k=-1", "sampling.top_k"),
    ("algo.gamma=1.5", "algo.gamma"),
    ("algo.lam=-0.1", "algo.lam"),
    ("algo.epochs=0", "algo.epochs"),
    ("algo.dual_clip=1.0", "algo.dual_clip"),
    ("train.group_size=0", "train.group_size"),
    ("train.prompts_per_step=0", "train.prompts_per_step"),
    ("train.max_steps=-1", "train.max_steps"),
    ("optim.lr=0", "optim.lr"),
    ("rollout.engine=sglang", "rollout.engine"),
    ("rollout.vllm_memory=0", "rollout.vllm_memory"),
    ("rollout.is_cap=0.5", "rollout.is_cap"),
    ("model.device=tpu", "model.device"),
])
def test_invalid_values_name_the_key(override, key):
    assert error_of(None, [override]).startswith(key)


def test_error_lists_the_valid_choices():
    message = error_of(None, ["algo.estimator=ppo"])
    assert "reinforce" in message and "gae" in message


def test_float16_error_says_why():
    assert "CPU" in error_of(None, ["model.dtype=float16"])


def test_compile_and_activation_checkpointing_are_refused_together():
    message = error_of(None, ["train.compile=true", "train.activation_checkpointing=true"])
    assert "cannot be combined" in message


def test_boundary_values_are_valid():
    cfg = load_config(None, ["sampling.top_p=1", "sampling.temperature=0", "algo.gamma=0", "algo.lam=1",
                             "train.max_steps=0", "algo.dual_clip=1.5"])
    assert cfg.sampling.top_p == 1.0 and cfg.sampling.temperature == 0.0


def test_empty_output_dir_is_rejected():
    error_of(None, ["train.output_dir="])


# ---------------------------------------------------------------- files that are not recipes

def test_missing_file(tmp_path):
    message = error_of(tmp_path / "nope.yaml")
    assert "nope.yaml" in message and "not found" in message


def test_directory_is_not_a_config_file(tmp_path):
    assert "not found" in error_of(tmp_path)


def test_invalid_yaml(tmp_path):
    message = error_of(write(tmp_path / "bad.yaml", "optim:\n  lr: [1, 2\ntrain: {\n"))
    assert "bad.yaml" in message and "not valid YAML" in message


@pytest.mark.parametrize("text", ["- model\n- task\n", "42\n", "just a string\n"])
def test_yaml_that_is_not_a_mapping(tmp_path, text):
    message = error_of(write(tmp_path / "list.yaml", text))
    assert "list.yaml" in message and "mapping" in message


def test_config_error_is_a_value_error():
    assert issubclass(ConfigError, ValueError)  # the CLI reports both as bad input



def test_every_option_is_documented():
    import dataclasses

    from tokrl.cli import field_docs
    from tokrl.config import Config

    for section in dataclasses.fields(Config):
        cls = section.default_factory().__class__
        docs = field_docs(cls)
        for f in dataclasses.fields(cls):
            assert docs.get(f.name, "").strip(), f"{section.name}.{f.name} has no docstring"


def test_annotated_yaml_round_trips_and_tokrl_config_prints_it(capsys):
    from tokrl.cli import annotated_yaml, main
    from tokrl.config import Config, from_dict, parse_yaml

    assert from_dict(Config, parse_yaml(annotated_yaml())) == Config()
    assert main(["config", str(ROOT / "configs" / "ppo.yaml")]) == 0
    out = capsys.readouterr().out
    assert "kl:\n" in out and "  coef: 0.01" in out
    assert "estimator: gae" in out and "# PPO: the ratio is kept >= 1 - clip_low" in out
