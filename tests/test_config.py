"""Configuration: presets, overrides, validation, JSON round trip."""

import json

import pytest

from agent.config import Config, ConfigError, from_dict, make_config, parse_overrides


def test_presets_and_overrides_apply_in_order_with_types():
    config = make_config("tiny", {"model.deter": "48", "train.train_ratio": "3.5", "seed": "7"}, quantizer="gumbel")
    assert config.model.deter == 48 and config.model.hidden == 32  # override, then preset
    assert config.train.train_ratio == 3.5 and config.seed == 7 and config.quantizer == "gumbel"
    config = make_config(
        overrides={"quantizer_options.tau": "0.5", "quantizer_options.groups": "8"}, quantizer="gumbel"
    )
    assert config.quantizer_options == {"tau": 0.5, "groups": 8}
    config = make_config(overrides={"quantizer_options.levels": "8,5,5"}, quantizer="fsq")
    assert config.quantizer_options == {"levels": (8, 5, 5)}


@pytest.mark.parametrize(
    ("overrides", "top", "message"),
    [
        ({"model.dter": "1"}, {}, "unknown key 'model.dter'"),
        ({"modl.deter": "1"}, {}, "unknown key 'modl.deter'"),
        ({"model.deter": "1.5"}, {}, "model.deter: expected int"),
        ({"model.deter": "0"}, {}, "model.deter must be > 0"),
        ({"actor_critic.gamma": "1.5"}, {}, r"actor_critic.gamma must be in \[0, 1\)"),
        ({"actor_critic.actor_grad": "magic"}, {}, "actor_grad must be"),
        ({"quantizer_options.tau": "1"}, {"quantizer": "round"}, "has no option 'tau'"),
        ({"quantizer_options.tau": "0.5"}, {"quantizer": "reinmax"}, "reinmax needs tau >= 1"),
        ({}, {"quantizer": "rund"}, "unknown 'rund'"),
        ({"train.steps": "-5"}, {}, "train.steps must be > 0"),
        ({"device": "gpu"}, {}, "device must be"),
        ({"model.image_likelihood": "gaussian"}, {}, "model.image_likelihood must be one of mse, bernoulli"),
        ({"model.free_bits": "nan"}, {}, "model.free_bits must be >= 0, got nan"),
        ({"model.reward_scale": "-1"}, {}, "model.reward_scale must be >= 0"),
    ],
)
def test_bad_values_are_errors_that_name_the_key(overrides, top, message):
    with pytest.raises(ConfigError, match=message):
        make_config("default", overrides, **top)


def test_unknown_presets_and_malformed_set_items_are_errors():
    with pytest.raises(ConfigError, match="unknown preset 'huge'"):
        make_config("huge")
    with pytest.raises(ConfigError, match="expects key=value"):
        parse_overrides(["model.deter"])


def test_json_round_trip_is_exact_and_strict():
    config = make_config("tiny", {"quantizer_options.levels": "8,6,5"}, quantizer="fsq", seed=3)
    again = from_dict(json.loads(config.to_json()))
    assert again == config
    data = json.loads(config.to_json())
    data["model"]["nonsense"] = 1
    with pytest.raises(ConfigError, match=r"model\.nonsense"):
        from_dict(data)


def test_the_action_space_chooses_its_defaults_under_presets_and_overrides():
    from agent.agent import make_env_config
    from agent.config import SPACE_DEFAULTS

    discrete, continuous = make_env_config(env_id="CartPole-v1"), make_env_config(env_id="Pendulum-v1")
    assert discrete.actor_critic.gamma == SPACE_DEFAULTS["discrete"]["actor_critic.gamma"]
    assert continuous.actor_critic.gamma == SPACE_DEFAULTS["continuous"]["actor_critic.gamma"]
    assert discrete.actor_critic.gamma != continuous.actor_critic.gamma
    assert make_env_config(env_id="Pendulum-v1", overrides={"actor_critic.gamma": 0.9}).actor_critic.gamma == 0.9
    assert make_config(action_kind="continuous", env_id="Pendulum-v1") == continuous  # the spaces given by hand


def test_the_observation_kinds_choose_their_defaults_under_presets_and_overrides():
    from agent.agent import make_env_config
    from agent.config import OBS_DEFAULTS, kinds_of_observation

    shapes = [(4,), (4, 10, 10), (3, 31, 64), (3, 32, 32), (3, 64, 64)]
    kinds = [("vector",), ("small_image",), ("small_image",), ("image",), ("image",)]
    assert [kinds_of_observation(shape) for shape in shapes] == kinds
    assert kinds_of_observation((4, 10, 10), binary=True) == ("small_image", "binary_image")
    assert kinds_of_observation((1, 64, 64), binary=True) == ("image", "binary_image")  # both kinds' defaults
    with pytest.raises(ValueError, match="not of shape"):
        kinds_of_observation((10, 10))
    pixels = make_env_config(env_id="CartPole-v1", overrides={"obs": "pixels"})
    assert pixels.model.cnn_depth == OBS_DEFAULTS["image"]["model.cnn_depth"] != Config().model.cnn_depth
    assert pixels.model.image_likelihood == Config().model.image_likelihood  # rendered frames are not binary
    assert pixels.actor_critic.gamma == make_env_config(env_id="CartPole-v1").actor_critic.gamma  # discrete still
    assert make_env_config(env_id="CartPole-v1").model.cnn_depth == Config().model.cnn_depth
    assert make_config(observation_kinds=("small_image",)).model.cnn_depth == Config().model.cnn_depth
    assert make_config(observation_kinds=("image",)).model.cnn_depth == pixels.model.cnn_depth  # given by hand
    assert make_config("large", observation_kinds=("image",)).model.cnn_depth == 32  # a preset that sets it wins
    overridden = make_env_config(env_id="CartPole-v1", overrides={"obs": "pixels", "model.cnn_depth": "32"})
    assert overridden.model.cnn_depth == 32
    binary = make_config(observation_kinds=("image", "binary_image"))
    assert binary.model.cnn_depth == OBS_DEFAULTS["image"]["model.cnn_depth"]
    assert binary.model.image_likelihood == OBS_DEFAULTS["binary_image"]["model.image_likelihood"] != "mse"


def test_images_of_bool_cells_are_binary_images_and_choose_their_defaults():
    import envs
    from agent.agent import make_env_config
    from agent.config import OBS_DEFAULTS

    for env_id, binary in [("custom_envs:BoolCells-v0", True), ("custom_envs:ByteCells-v0", False),
                           ("CartPole-v1", False)]:  # fmt: skip
        for obs in ("state", "pixels") if env_id == "CartPole-v1" else ("state",):
            env = envs.make(env_id, obs=obs)
            try:
                assert envs.binary_image(env) == binary, (env_id, obs)
            finally:
                env.close()
    cells = make_env_config(env_id="custom_envs:BoolCells-v0")
    kinds = ("small_image", "binary_image")
    assert cells == make_config(observation_kinds=kinds, action_kind="discrete", env_id="custom_envs:BoolCells-v0")
    for key, value in OBS_DEFAULTS["binary_image"].items():
        section, field = key.split(".")
        assert getattr(getattr(cells, section), field) == value
    pixels = make_env_config(env_id="custom_envs:ByteCells-v0")
    assert pixels.model == make_config(observation_kinds=("small_image",)).model == Config().model
    overridden = make_env_config(env_id="custom_envs:BoolCells-v0", overrides={"model.image_likelihood": "mse"})
    assert overridden.model.image_likelihood == "mse"  # --set wins


def test_a_saved_config_keeps_its_values_when_the_env_chosen_defaults_change(tmp_path):
    """A checkpoint made before images of on/off cells had their own defaults loads with the values it was
    trained with (squared error, loss weights 1), not with today's defaults."""
    from agent.agent import Agent

    before = {"image_likelihood": "mse", "reward_scale": 1.0, "cont_scale": 1.0}
    old = Agent.create("custom_envs:BoolCells-v0", preset="tiny", model=before)
    assert Agent.create("custom_envs:BoolCells-v0", preset="tiny").config.model.image_likelihood == "bernoulli"
    old.save(tmp_path / "agent.safetensors")
    loaded = Agent.load(tmp_path / "agent.safetensors")
    assert loaded.config == old.config
    assert loaded.config.model.image_likelihood == "mse" and loaded.config.model.reward_scale == 1.0


def test_the_suite_of_the_env_id_chooses_its_defaults_under_presets_and_overrides():
    from agent.config import SUITE_DEFAULTS

    dmc = make_config(env_id="dm_control/walker-walk-v0", action_kind="continuous")
    assert dmc.action_repeat == SUITE_DEFAULTS["dm_control"]["action_repeat"] == 2
    assert dmc.train.train_ratio == SUITE_DEFAULTS["dm_control"]["train.train_ratio"]
    plain = make_config(env_id="Pendulum-v1", action_kind="continuous")
    assert (plain.action_repeat, plain.train.train_ratio) == (1, 64.0)
    assert make_config(env_id="MinAtar/Breakout-v1").action_repeat == 1  # not among MinAtar's defaults
    minatar = make_config(env_id="MinAtar/Breakout-v1").actor_critic
    assert (minatar.entropy, minatar.actor_lr, minatar.repeats) == (0.01, 3e-4, 2)
    assert make_config(env_id="Other/Breakout-v1").actor_critic == Config().actor_critic  # no suite defaults
    assert make_config("tiny", env_id="dm_control/walker-walk-v0").train.train_ratio == 8.0  # the preset wins
    overridden = make_config(env_id="dm_control/walker-walk-v0", overrides={"action_repeat": "1"})
    assert overridden.action_repeat == 1 and overridden.train.train_ratio == 128.0
