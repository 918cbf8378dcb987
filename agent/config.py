"""Configuration: one dataclass per component, nested in `Config`; named presets; strict overrides.

Every default lives here. A preset is a dict of overrides applied to the defaults; `--set key=value`
overrides are applied on top (keys are `section.field`, e.g. `model.deter=256`, or a top-level
field such as `seed=3`; quantizer options are `quantizer_options.<name>`). Unknown keys, wrong types
and out-of-range values are errors that name the key.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import re
import typing
from dataclasses import dataclass, field
from typing import Any

import torch

from agent import nets, quantize


class ConfigError(ValueError):
    """A configuration value that cannot be used; the message names the key."""


@dataclass
class ModelConfig:
    """The world model: recurrent state h (deter), discrete code c, heads, losses."""

    deter: int = 128  # size of the recurrent state h
    hidden: int = 128  # width of every MLP layer
    layers: int = 1  # hidden layers in the encoder, decoder and heads
    cnn_depth: int = 32  # channels of the first convolution (images), doubled at each stage; 32+ px: OBS_DEFAULTS
    # the decoder's likelihood of an image (vectors always use symlog squared error): mse (squared error in
    # [-0.5, 0.5], DreamerV3's) or bernoulli (a Bernoulli per pixel, for binary cells such as MinAtar's: the
    # default for images of on/off cells, OBS_DEFAULTS)
    image_likelihood: str = "mse"
    reward_bins: int = 63  # two-hot bins of the reward head (symlog space, [-20, 20])
    free_bits: float = 1.0  # nats of KL below which the dynamics/representation losses stop pulling
    dyn_scale: float = 0.5  # weight of the dynamics loss (trains the prior)
    rep_scale: float = 0.1  # weight of the representation loss (pulls the posterior to the prior)
    # weights of the reward and continuation losses (DreamerV3: 1 each, as the decoder's); their gradients are
    # what shapes the representation towards rare events the decoder's cells say little about (docs/results.md: MinAtar;
    # 10 each for images of on/off cells, OBS_DEFAULTS)
    reward_scale: float = 1.0
    cont_scale: float = 1.0  # weight of the continuation loss (see reward_scale)
    unimix: float = 0.01  # uniform mixture of the prior (and of categorical posteriors)
    lr: float = 3e-4  # Adam learning rate
    eps: float = 1e-8  # Adam epsilon
    grad_clip: float = 1000.0  # global gradient-norm clip
    # bfloat16 products in the batched parts (encoder, decoder, heads, imagined rollouts of REINFORCE actors),
    # the replayed posterior loop and the recurrent state in float32;
    # auto: where the hardware multiplies bfloat16 natively (CPUs with AMX or AVX512-BF16, most GPUs)
    precision: str = "auto"  # auto | float32 | bfloat16


@dataclass
class ActorCriticConfig:
    """Behaviour learned on imagined rollouts."""

    horizon: int = 15  # imagined steps from every start state
    gamma: float = 0.985  # discount (the action space chooses it: SPACE_DEFAULTS)
    lam: float = 0.95  # lambda of the lambda-returns
    entropy: float = 3e-4  # entropy bonus, against normalised returns (MinAtar: 0.01, SUITE_DEFAULTS)
    # 0: the bonus stays at `entropy`. In (0, 1), discrete actions only: the bonus starts at `entropy` and
    # adapts so that the policy's entropy stays near this fraction of its largest, ln(actions) (SAC's
    # temperature): it falls while the policy is more random than that and rises while it is less
    entropy_target: float = 0.0
    # reinforce | dynamics (continuous only: the mean through the model, the std by REINFORCE) | auto
    # (reinforce for discrete actions, dynamics for continuous)
    actor_grad: str = "auto"
    starts: int = 256  # imagination start states per update, drawn from the replayed ones (0: all)
    # actor-critic gradient steps per update, each from its own draw of starts in the same replayed batch:
    # more policy improvement per world-model step, for about a third more time each (MinAtar: 2,
    # SUITE_DEFAULTS; docs/results.md: MinAtar)
    repeats: int = 1
    critic_bins: int = 63  # two-hot bins of the critic
    slow_critic_decay: float = 0.98  # EMA decay of the slow critic
    slow_critic_reg: float = 1.0  # weight of the pull towards the slow critic
    # weight of the critic's loss on replayed sequences (lambda-returns of the real rewards; DreamerV3's
    # repval, 0.3): rare rewards reach the critic before the reward head predicts them; 0: off
    replay_value: float = 0.3
    return_norm_decay: float = 0.99  # EMA decay of the return percentiles
    # magnitude: advantages / max(1, P95 - P5, |P5|, |P95|), so that model errors, which grow with the size
    # of what it predicts, do not outweigh the entropy bonus when the returns hardly vary
    # (docs/results.md: Exploration); spread: / max(1, P95 - P5), DreamerV3's
    return_scale: str = "magnitude"  # magnitude | spread
    actor_lr: float = 1e-4  # Adam learning rate of the actor (MinAtar: 3e-4, SUITE_DEFAULTS)
    critic_lr: float = 3e-4  # a faster critic than DreamerV3's: with few updates it otherwise lags far behind
    eps: float = 1e-5  # Adam epsilon of the actor and the critic
    grad_clip: float = 100.0  # gradient-norm clip of the actor and of the critic


@dataclass
class TrainConfig:
    """Collection, replay and the schedule of updates."""

    steps: int = 15_000  # env steps to train for
    batch: int = 16  # sequences per update
    seq_len: int = 32  # steps per sequence
    train_ratio: float = 64.0  # replayed steps per stored (agent) step: updates = agent steps * ratio / (B * T)
    prefill: int = 1000  # env steps of random actions before training starts
    # pink (Eberhard et al. 2023): the best default across tasks; finds MountainCarContinuous's goal
    noise_color: float = 1.0  # colored noise of sampled continuous actions along each episode: 0 white, 1 pink, 2 red
    # the same for discrete actions, as Gumbel-max samples of the policy from the colored noise (runs of one
    # action while the policy is unsure). Off (0: the categorical sampled directly): pink found less reward
    # than uniform actions on 4 of 5 MinAtar games, did not raise Freeway's score and reached CartPole's
    # 475 on 2 seeds of 3 against 3 (docs/results.md: MinAtar)
    discrete_noise_color: float = 0.0  # the same for discrete actions (Gumbel-max): 0 off, 1 pink, 2 red
    envs: int = 1  # environments stepped together; acting is batched across them
    vector: str = "sync"  # sync: all in this process (cheap envs); async: a process each (expensive envs)
    replay_capacity: int = 1_000_000  # env steps kept in the replay buffer
    recency: float = 0.0  # replay sampling weight (age + 1) ** -recency; 0 is uniform
    eval_every: int = 1000  # env steps between evaluations (0: never)
    eval_episodes: int = 10  # episodes per evaluation
    confirm_episodes: int = 20  # extra episodes that confirm a new best policy before it is kept (0: none)
    log_every: int = 250  # env steps between metric lines
    checkpoint_every: int = 1000  # env steps between checkpoints of the whole training state (0: only at the end)
    max_nonfinite: int = 10  # updates in a row with non-finite losses or gradients before training stops
    tensorboard: bool = False  # also write the metric lines to <run>/tb as TensorBoard scalars (extra: tb)


@dataclass
class Config:
    """A run's whole configuration: top-level fields and one section per component."""

    env_id: str = "CartPole-v1"  # a Gymnasium id, or module:EnvId for a custom env the module registers
    obs: str = "state"  # state: the env's own observations (vectors or images); pixels: its rendered frames
    image_size: int = 64  # side of the frames with obs=pixels
    action_repeat: int = 1  # env steps per agent step (the action held, rewards summed; DMC: 2); counts env steps
    quantizer: str = "categorical"  # one of agent.quantize.QUANTIZERS
    quantizer_options: dict[str, Any] = field(default_factory=dict)  # e.g. {"groups": 32}
    seed: int = 0  # seeds weights, actions, replay sampling and environments: runs repeat exactly on the CPU
    device: str = "cpu"  # cpu, cuda, cuda:N or mps
    threads: int = 1  # torch's intra-op threads (0: torch's default, one per core); see README, Threads
    model: ModelConfig = field(default_factory=ModelConfig)
    actor_critic: ActorCriticConfig = field(default_factory=ActorCriticConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def env_options(self) -> dict[str, Any]:
        """What envs.make needs besides the id."""
        return {"obs": self.obs, "size": self.image_size, "action_repeat": self.action_repeat}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


# What a resumed run may change: its length, how often it evaluates, logs and saves, its evaluation
# episodes, TensorBoard output and threads (the device is an argument of resume, not config).
RESUMABLE = (
    "train.steps", "train.eval_every", "train.eval_episodes", "train.confirm_episodes", "train.log_every",
    "train.checkpoint_every", "train.tensorboard", "threads",
)  # fmt: skip

SECTIONS = {"model": ModelConfig, "actor_critic": ActorCriticConfig, "train": TrainConfig}

PRESETS: dict[str, dict[str, Any]] = {
    # The CPU default: the dataclass defaults above.
    "default": {},
    # Seconds, for tests and smoke runs.
    "tiny": {
        "model.deter": 32,
        "model.hidden": 32,
        "actor_critic.horizon": 5,
        "actor_critic.critic_bins": 31,
        "model.reward_bins": 31,
        "train.batch": 4,
        "train.seq_len": 8,
        "train.train_ratio": 8.0,
        "actor_critic.starts": 0,
        "train.prefill": 100,
        "train.steps": 500,
        "train.eval_every": 250,
        "train.eval_episodes": 2,
        "train.log_every": 50,
    },
    # sheeprl's DreamerV3-XS layout, for speed comparisons (with quantizer_options groups=classes=32).
    # Its large matrix products gain from every core (threads 0), unlike the CPU default's small ones.
    "xs": {
        "threads": 0,
        "model.deter": 256,
        "model.hidden": 256,
        "model.cnn_depth": 24,  # DreamerV3's XS
        "model.reward_bins": 255,
        "actor_critic.critic_bins": 255,
        "actor_critic.starts": 0,
        "train.batch": 16,
        "train.seq_len": 64,
    },
    # Wider networks for a GPU (or many cores: threads 0 is torch's default, one per core).
    "large": {
        "threads": 0,
        "model.deter": 512,
        "model.hidden": 512,
        "model.layers": 2,
        "model.cnn_depth": 32,  # DreamerV3's S (deter 512): a GPU affords it on any image
        "model.reward_bins": 255,
        "actor_critic.critic_bins": 255,
        "train.batch": 16,
        "train.seq_len": 64,
        "actor_critic.starts": 0,
    },
}


# Defaults that the kinds of observation choose (agent.make_env_config reads the spaces; kinds_of_observation
# names them: a size, then binary_image where the cells are on or off): applied over the dataclass defaults,
# under those of the action space, a suite, a preset and --set. The cut between small images and images is
# at 32 pixels a side: MinAtar's 10x10 below, rendered frames (64x64 by default) above.
OBS_DEFAULTS: dict[str, dict[str, Any]] = {
    "vector": {},
    # MinAtar's 10x10 frames: two small convolutions; an update costs about what a vector task's does
    # (Breakout 221 ms, CartPole 154 ms; docs/results.md: Speed), so the defaults hold
    "small_image": {},
    # 64x64 frames: four stride-2 stages from 32 channels made an update 1.4 s, 96% of it the world model's,
    # mostly its encoder and decoder; from 16, 0.66 s (1.7M parameters; docs/results.md: Speed). DreamerV3 scales its
    # CNN with the model: its XS (deter 256, twice this default's) uses 24 channels.
    "image": {"model.cnn_depth": 16},
    # MinAtar's frames (one cell per object): under squared error the decoder lit a third of Asterix's player
    # cells and its model caught 2-7% of the rewards; a Bernoulli per cell brings the cells back (92-98%), and
    # reward and continuation weighted 10 (the decoder's gradient comes from every cell, theirs from a few
    # hundred events) made Asterix's model catch 84% of the rewards and 92% of the deaths (docs/results.md: MinAtar)
    "binary_image": {"model.image_likelihood": "bernoulli", "model.reward_scale": 10.0, "model.cont_scale": 10.0},
}

# Defaults that the environment's action space chooses (agent.make_env_config reads the spaces): applied
# over those of the observation kind, under a suite's, a named preset and --set. Measured with 3 seeds each
# (docs/results.md: Exploration).
SPACE_DEFAULTS: dict[str, dict[str, Any]] = {
    # CartPole-v1 first evaluated >= 475 within 10k env steps on 3/3 seeds at 0.985, on 1/3 at 0.997
    "discrete": {"actor_critic.gamma": 0.985},
    # MountainCarContinuous-v0's goal, 100+ steps of pushing away, was reached (>= 90 within 50k) on 3/3 seeds
    # at 0.997 and on 2/3 at 0.985: a reward 100 steps ahead keeps 74% of its value, not 22%. DreamerV3
    # uses 0.997 (its horizon of 333) for continuous control too.
    "continuous": {"actor_critic.gamma": 0.997},
}

# Defaults of a suite of environments (the namespace of the env id), applied over those of the action space.
SUITE_DEFAULTS: dict[str, dict[str, Any]] = {
    # DreamerV3's action repeat for DMC (its scores count env steps, as ours do). The train ratio counts
    # stored steps, so it doubles with the repeat: 64 replayed steps per env step as everywhere else, i.e.
    # 12,500 updates in 100k env steps: 31 minutes for a run alone on 2 cores, 47-50 with two runs at a time
    # (docs/results.md: Standard suites). The scores look limited by updates (DreamerV3 uses 512).
    "dm_control": {"action_repeat": 2, "train.train_ratio": 128.0},
    # Breakout's policy committed by 10k env steps (entropy 0.14 of ln 3) with the paddle parked in the middle,
    # and a near-deterministic policy never samples the runs of moves that reach a far ball: a 33x entropy
    # bonus with a 3x faster actor, and two actor-critic steps per world-model step, kept it exploring.
    # Breakout over 3 seeds: 6.0 before, 8.8 with these, 10.8 with these and the binary-image defaults
    # (docs/results.md: MinAtar). Their cost: about 1.3x the update time (the actor-critic's share doubles).
    "MinAtar": {"actor_critic.entropy": 0.01, "actor_critic.actor_lr": 3e-4, "actor_critic.repeats": 2},
}


def _field_types(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _convert(key: str, value: Any, kind: Any) -> Any:
    """Convert a value (a string from the command line, or a JSON value) to the field's type."""
    text = value.strip() if isinstance(value, str) else None
    try:
        if kind is bool:
            if isinstance(value, bool):
                return value
            if text is not None and text.lower() in ("true", "1", "yes", "on"):
                return True
            if text is not None and text.lower() in ("false", "0", "no", "off"):
                return False
            raise ValueError
        if kind is int:
            number = value
            if text is not None:  # "15000", "15_000", and integral floats such as "1e4" or "2.0"
                digits = text.replace("_", "")
                number = int(digits) if digits.lstrip("+-").isdigit() else float(digits)
            if isinstance(number, bool) or (isinstance(number, float) and not number.is_integer()):
                raise ValueError
            return int(number)
        if kind is float:
            if isinstance(value, bool):
                raise ValueError
            return float(text.replace("_", "")) if text is not None else float(value)
        if kind is str:
            if not isinstance(value, str):
                raise ValueError
            return value
        if kind is tuple:
            items = text.strip("()[]").split(",") if text is not None else list(value)
            return tuple(int(str(item).strip()) for item in items if str(item).strip())
    except (ValueError, TypeError, AttributeError):
        pass
    name = getattr(kind, "__name__", str(kind))
    raise ConfigError(f"{key}: expected {name}, got {value!r}")


def _quantizer_option_type(name: str, option: str) -> Any:
    default = quantize.options_of(name)[option]
    if isinstance(default, bool):
        return bool
    if isinstance(default, (int, float, str, tuple)):
        return type(default)
    return float  # options whose default is None (e.g. gumbel's tau_final) are numbers


def set_value(config: Config, key: str, value: Any) -> None:
    """Set `section.field` (or a top-level field) from a string or JSON value, with type checks."""
    head, _, rest = key.partition(".")
    if key == "quantizer" and (not isinstance(value, str) or value not in quantize.QUANTIZERS):
        raise ConfigError(f"quantizer: unknown {value!r}; choose one of: {', '.join(quantize.QUANTIZERS)}")
    if head == "quantizer_options" and rest:
        options = quantize.options_of(config.quantizer)
        if rest not in options:
            raise ConfigError(
                f"{key}: quantizer {config.quantizer!r} has no option {rest!r}; options: {', '.join(options)}"
            )
        config.quantizer_options[rest] = _convert(key, value, _quantizer_option_type(config.quantizer, rest))
        return
    if head in SECTIONS:
        section = getattr(config, head)
        types = _field_types(SECTIONS[head])
        if rest not in types:
            raise ConfigError(f"unknown key {key!r}; {head} has: {', '.join(types)}")
        setattr(section, rest, _convert(key, value, types[rest]))
        return
    types = {k: v for k, v in _field_types(Config).items() if k not in SECTIONS and k != "quantizer_options"}
    if rest or head not in types:
        known = [*types, *(f"{s}.<field>" for s in SECTIONS), "quantizer_options.<option>"]
        raise ConfigError(f"unknown key {key!r}; known keys: {', '.join(known)}")
    setattr(config, head, _convert(key, value, types[head]))


def field_docs(cls: type) -> dict[str, str]:
    """Each field's doc: the comment on its line, then the comment lines just above it (if any)."""
    docs, above = {}, []
    try:
        source = inspect.getsource(cls)
    except OSError:  # installed without its .py sources
        return docs
    for line in source.splitlines():
        comment = re.match(r"\s+#\s*(.*)$", line)
        field = re.match(r"\s+(\w+): [^#]*(?:#\s*(.*))?$", line)
        if comment:
            above.append(comment.group(1))
        elif field:
            docs[field.group(1)] = "; ".join(part for part in (field.group(2), " ".join(above)) if part)
            above = []
        else:
            above = []
    return docs


def describe(config: Config) -> list[tuple[str, Any, str]]:
    """(key, value, doc) of every field, under the names that --set takes."""
    rows = []
    top = field_docs(Config)
    for name, value in config.to_dict().items():
        if name in SECTIONS:
            docs = field_docs(SECTIONS[name])
            rows += [(f"{name}.{key}", item, docs.get(key, "")) for key, item in value.items()]
        elif name == "quantizer_options":
            options = {**quantize.options_of(config.quantizer), **value}
            rows += [(f"{name}.{key}", item, f"an option of {config.quantizer}") for key, item in options.items()]
        else:
            rows.append((name, value, top.get(name, "")))
    return rows


def parse_overrides(items: list[str]) -> dict[str, str]:
    """["a.b=1", "c=x"] -> {"a.b": "1", "c": "x"}; an item without '=' is an error."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects key=value, got {item!r}")
        out[key.strip()] = value
    return out


def kinds_of_observation(shape: tuple[int, ...], binary: bool = False) -> tuple[str, ...]:
    """The keys of OBS_DEFAULTS for an observation, applied in this order: its size (vector; small_image:
    channels, height, width, under 32 pixels a side, such as MinAtar's 10x10; image: 32 or more), then
    binary_image for images whose cells are only on or off (`binary`, as envs.binary_image says)."""
    if len(shape) == 1:
        return ("vector",)
    if len(shape) != 3:
        raise ValueError(f"observations are vectors or (channels, height, width) images, not of shape {shape}")
    size = "small_image" if min(shape[-2:]) < 32 else "image"
    return (size, "binary_image") if binary else (size,)


def make_config(
    preset: str = "default",
    overrides: dict[str, Any] | None = None,
    action_kind: str | None = None,
    observation_kinds: tuple[str, ...] = (),
    **top: Any,
) -> Config:
    """The defaults, then those of the observation's kinds (OBS_DEFAULTS), of the action kind (discrete or
    continuous: SPACE_DEFAULTS) and of the env's suite (SUITE_DEFAULTS), then the preset, then `top`
    (top-level fields such as env_id, quantizer, seed), then `overrides` ({"section.field": value}); validated."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; choose one of: {', '.join(PRESETS)}")
    config = Config()
    observation = {key: value for kind in observation_kinds for key, value in OBS_DEFAULTS[kind].items()}
    space = SPACE_DEFAULTS[action_kind] if action_kind is not None else {}
    env_id = str((overrides or {}).get("env_id", top.get("env_id", config.env_id)))
    suite = SUITE_DEFAULTS.get(env_id.split("/")[0], {}) if "/" in env_id else {}
    for key, value in {**observation, **space, **suite, **PRESETS[preset], **top, **(overrides or {})}.items():
        set_value(config, key, value)
    validate(config)
    if action_kind is not None:
        check_action_kind(config.actor_critic, discrete=action_kind == "discrete")
    return config


def check_action_kind(a: ActorCriticConfig, discrete: bool) -> None:
    """The actor-critic settings that one kind of action space rules out; ConfigError naming the key."""
    if discrete and a.actor_grad == "dynamics":
        raise ConfigError(
            "actor_critic.actor_grad=dynamics needs continuous actions (discrete ones are sampled without a "
            "gradient); use reinforce or auto"
        )
    if not discrete and a.entropy_target > 0:
        raise ConfigError(
            "actor_critic.entropy_target needs discrete actions (a continuous policy's entropy has no largest "
            "value to take a fraction of); set it to 0"
        )


def flatten(nested: dict[str, Any]) -> dict[str, Any]:
    """{"model": {"deter": 64}, "seed": 1} -> {"model.deter": 64, "seed": 1}."""
    flat: dict[str, Any] = {}
    for key, value in nested.items():
        if key in SECTIONS or key == "quantizer_options":
            if not isinstance(value, dict):
                raise ConfigError(f"{key}: expected an object of fields, got {value!r}")
            flat.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            flat[key] = value
    return flat


def from_dict(data: dict[str, Any]) -> Config:
    """The inverse of Config.to_dict; unknown keys and wrong types are errors."""
    if not isinstance(data, dict):
        raise ConfigError("a config must be a JSON object")
    config = Config()
    flat = flatten(data)
    # the quantizer's name decides which options exist, so it is set first
    if "quantizer" in flat:
        set_value(config, "quantizer", flat.pop("quantizer"))
    for key, value in flat.items():
        set_value(config, key, value)
    validate(config)
    return config


def validate(config: Config) -> None:
    """Ranges and cross-field invariants; the message names the key and the value."""
    if config.quantizer not in quantize.QUANTIZERS:
        raise ConfigError(f"quantizer: unknown {config.quantizer!r}; choose one of: {', '.join(quantize.QUANTIZERS)}")
    try:
        with torch.random.fork_rng(devices=[]):  # building one (VQ's codebook) draws random numbers
            quantizer = quantize.make(config.quantizer, **config.quantizer_options)
    except ValueError as error:
        raise ConfigError(f"quantizer_options: {error}") from None
    prior_size = quantizer.units * max(quantizer.alphabet)
    if prior_size > quantize.MAX_SIZE:
        raise ConfigError(
            f"quantizer_options: the prior would predict {prior_size:,} probabilities per step (units x alphabet); "
            f"at most {quantize.MAX_SIZE:,}"
        )
    m, a, t = config.model, config.actor_critic, config.train
    positive = {
        "model.deter": m.deter, "model.hidden": m.hidden, "model.layers": m.layers, "model.lr": m.lr,
        "model.cnn_depth": m.cnn_depth, "image_size": config.image_size, "action_repeat": config.action_repeat,
        "model.grad_clip": m.grad_clip, "actor_critic.horizon": a.horizon, "actor_critic.actor_lr": a.actor_lr,
        "actor_critic.critic_lr": a.critic_lr, "actor_critic.grad_clip": a.grad_clip,
        "actor_critic.repeats": a.repeats, "train.steps": t.steps, "train.batch": t.batch, "train.seq_len": t.seq_len,
        "train.train_ratio": t.train_ratio, "train.envs": t.envs, "train.replay_capacity": t.replay_capacity,
        "train.eval_episodes": t.eval_episodes, "train.log_every": t.log_every,
        "train.max_nonfinite": t.max_nonfinite,
    }  # fmt: skip
    for key, value in positive.items():
        if not value > 0:
            raise ConfigError(f"{key} must be > 0, got {value}")
    non_negative = {
        "model.free_bits": m.free_bits, "model.dyn_scale": m.dyn_scale, "model.rep_scale": m.rep_scale,
        "model.reward_scale": m.reward_scale, "model.cont_scale": m.cont_scale,
        "actor_critic.entropy": a.entropy, "actor_critic.replay_value": a.replay_value,
        "actor_critic.starts": a.starts, "train.prefill": t.prefill,
        "train.recency": t.recency, "train.eval_every": t.eval_every, "seed": config.seed,
        "train.checkpoint_every": t.checkpoint_every, "train.confirm_episodes": t.confirm_episodes,
        "threads": config.threads,
    }  # fmt: skip
    for key, value in non_negative.items():
        if not value >= 0:  # NaN too
            raise ConfigError(f"{key} must be >= 0, got {value}")
    unit = {
        "model.unimix": m.unimix, "actor_critic.gamma": a.gamma, "actor_critic.lam": a.lam,
        "actor_critic.slow_critic_decay": a.slow_critic_decay, "actor_critic.return_norm_decay": a.return_norm_decay,
    }  # fmt: skip
    for key, value in unit.items():
        if not 0 <= value < 1 and not (key == "actor_critic.lam" and value == 1):
            raise ConfigError(f"{key} must be in [0, 1), got {value}")
    for key in ("noise_color", "discrete_noise_color"):
        if not 0 <= getattr(t, key) <= 2:
            raise ConfigError(f"train.{key} must be in [0, 2] (0 white, 1 pink, 2 red), got {getattr(t, key)}")
    for key, bins in {"model.reward_bins": m.reward_bins, "actor_critic.critic_bins": a.critic_bins}.items():
        if bins < 3:
            raise ConfigError(f"{key} must be >= 3, got {bins}")
    if m.image_likelihood not in nets.IMAGE_LIKELIHOODS:
        raise ConfigError(
            f"model.image_likelihood must be one of {', '.join(nets.IMAGE_LIKELIHOODS)}, got {m.image_likelihood!r}"
        )
    if m.precision not in ("auto", "float32", "bfloat16"):
        raise ConfigError(f"model.precision must be auto, float32 or bfloat16, got {m.precision!r}")
    if t.vector not in ("sync", "async"):
        raise ConfigError(f"train.vector must be sync or async, got {t.vector!r}")
    if config.obs not in ("state", "pixels"):
        raise ConfigError(f"obs must be state or pixels, got {config.obs!r}")
    if not 0 <= a.entropy_target < 1:
        raise ConfigError(f"actor_critic.entropy_target must be in [0, 1), got {a.entropy_target}")
    if a.entropy_target > 0 and not a.entropy > 0:
        raise ConfigError("actor_critic.entropy_target adapts the bonus from actor_critic.entropy, which must be > 0")
    if a.return_scale not in ("spread", "magnitude"):
        raise ConfigError(f"actor_critic.return_scale must be spread or magnitude, got {a.return_scale!r}")
    if a.actor_grad not in ("auto", "reinforce", "dynamics"):
        raise ConfigError(f"actor_critic.actor_grad must be auto, reinforce or dynamics, got {a.actor_grad!r}")
    if t.steps <= t.prefill:
        raise ConfigError(
            f"train.steps ({t.steps:,}) must be above train.prefill ({t.prefill:,}), the random steps before the "
            "first update: no update would run; give more steps or set train.prefill lower"
        )
    if t.replay_capacity < t.envs * t.seq_len:
        raise ConfigError(
            f"train.replay_capacity ({t.replay_capacity}) must hold a sequence per env "
            f"(envs * seq_len = {t.envs * t.seq_len})"
        )
    parse_device(config.device)


def parse_device(name: str) -> torch.device:
    """The torch device `name` names; ConfigError unless it is one this agent runs on (cpu, cuda[:N], mps)."""
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):  # torch's own message lists two dozen backends; ours names the three
        device = None
    if device is None or device.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"device must be cpu, cuda, cuda:N or mps, got {name!r}")
    return device
