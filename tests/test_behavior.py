"""The actor-critic's pieces: the REINFORCE gradient, trajectory weights, the entropy term and its
adapted coefficient, return normalisation, the slow critic and the critic's loss on replayed sequences."""

import math

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from agent import Agent
from agent.behavior import ActorCritic, EntropyCoefficient, ReturnNorm, replay_lambda_return, trajectory_weights
from agent.config import ConfigError, make_config
from agent.nets import BoundedNormal


class Mean:
    """Stands in for a head's distribution: only its mean is read by the actor-critic's losses."""

    def __init__(self, value):
        self.value = value

    def mean(self):
        return self.value


class Bandit:
    """A stand-in world model for a one-step bandit: the reward of an imagined state is its first
    feature, and every state is terminal."""

    def reward_dist(self, feat):
        return Mean(feat[..., 0])

    def cont_dist(self, feat):
        return Mean(torch.zeros(feat.shape[:-1]))


def one_step_bandit(n=4000, seed=0):
    """Two actions; action 0 pays 1, action 1 pays 0. Returns (actor-critic, feats, actions)."""
    config = make_config("tiny", {"actor_critic.horizon": 1, "actor_critic.entropy": 0.0})
    torch.manual_seed(seed)
    ac = ActorCritic(3, 2, True, config.actor_critic, 16, 1)
    actions = torch.nn.functional.one_hot(torch.randint(2, (1, n)), 2).float()  # (H=1, N, A)
    feats = torch.zeros(2, n, 3)
    feats[1, :, 0] = actions[0, :, 0]  # the state reached: reward 1 after action 0
    return ac, feats, actions


def test_reinforce_raises_the_probability_of_the_action_that_paid():
    ac, feats, actions = one_step_bandit()
    actor_loss, _, _, _ = ac.loss(Bandit(), feats, actions, torch.ones(feats.shape[1]))
    (grad,) = torch.autograd.grad(actor_loss, ac.actor.out.bias)
    assert grad[0] < 0 < grad[1]  # descending the loss raises logit 0 and lowers logit 1
    optimizer = torch.optim.Adam(ac.actor.parameters(), lr=1e-2)
    before = ac.policy(feats[0, :1]).probs[0, 0].item()
    for _ in range(60):  # the actor starts uniform, its output layer at zero
        loss, _, _, _ = ac.loss(Bandit(), feats, actions, torch.ones(feats.shape[1]))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert ac.policy(feats[0, :1]).probs[0, 0].item() > before + 0.2


def test_trajectory_weights_are_discounted_survival_probabilities():
    cont = torch.tensor([[1.0, 0.5], [0.0, 0.5], [1.0, 0.5]])  # (H=3, N=2)
    weights = trajectory_weights(torch.tensor([1.0, 0.0]), cont, gamma=0.9)
    # trajectory 0: alive at s_0 and s_1, terminal at s_2; trajectory 1 starts from a terminal state
    assert torch.allclose(weights[:, 0], torch.tensor([1.0, 0.9, 0.0]))
    assert torch.equal(weights[:, 1], torch.zeros(3))
    half = trajectory_weights(torch.ones(1), torch.full((3, 1), 0.5), gamma=0.9)
    assert torch.allclose(half[:, 0], torch.tensor([1.0, 0.45, 0.2025]))


def test_with_nothing_to_gain_the_actor_loss_is_the_weighted_entropy_bonus():
    config = make_config("tiny", {"actor_critic.horizon": 3, "actor_critic.entropy": 0.1})
    torch.manual_seed(0)
    ac = ActorCritic(3, 2, True, config.actor_critic, 16, 1)
    feats = torch.randn(4, 5, 3)
    feats[..., 0] = 0.0  # no reward anywhere, and the critic starts at exactly 0: advantages are 0
    actions = torch.nn.functional.one_hot(torch.randint(2, (3, 5)), 2).float()

    class Running(Bandit):
        def cont_dist(self, feat):
            return Mean(torch.ones(feat.shape[:-1]))

    actor_loss, _, metrics, _ = ac.loss(Running(), feats, actions, torch.ones(5))
    entropy = ac.policy(feats[:-1]).entropy()  # (H, N)
    weights = trajectory_weights(torch.ones(5), torch.ones(3, 5), config.actor_critic.gamma)
    assert torch.allclose(actor_loss, -(weights * 0.1 * entropy).mean())
    assert torch.allclose(metrics["actor/entropy"], entropy.mean())


def test_a_fixed_entropy_coefficient_never_moves_and_is_not_state():
    coef = EntropyCoefficient(0.01, target=0.0, largest_entropy=math.log(3))
    assert coef.next(torch.tensor(0.0)).item() == pytest.approx(0.01)
    assert coef.next(torch.tensor(math.log(3))).item() == pytest.approx(0.01)
    assert "value" not in coef.state_dict()  # checkpoints of fixed-bonus runs hold what they always held


def test_the_adapted_coefficient_falls_above_the_target_entropy_rises_below_it_within_its_bounds():
    largest = math.log(4)
    coef = EntropyCoefficient(0.01, target=0.5, largest_entropy=largest)
    assert "value" in coef.state_dict()
    rate = EntropyCoefficient.RATE
    above = coef.next(torch.tensor(0.9 * largest))  # more random than the target: less bonus
    assert above.item() == pytest.approx(0.01 * math.exp(-0.4 * rate))
    below = coef.next(torch.tensor(0.1 * largest))
    assert below.item() == pytest.approx(0.01 * math.exp(0.4 * rate))
    assert coef.value.item() == pytest.approx(0.01)  # nothing stored before commit
    coef.commit(above)
    assert coef.value.item() == pytest.approx(0.01 * math.exp(-0.4 * rate))
    for _ in range(10_000):
        coef.commit(coef.next(torch.tensor(largest)))
    assert coef.value.item() == pytest.approx(EntropyCoefficient.LOWEST)
    for _ in range(20_000):
        coef.commit(coef.next(torch.tensor(0.0)))
    assert coef.value.item() == pytest.approx(EntropyCoefficient.HIGHEST)
    assert not torch.isfinite(coef.next(torch.tensor(float("nan"))))  # a bad step is caught before commit


def test_the_actor_loss_weighs_the_entropy_with_the_current_coefficient_and_offers_the_next():
    config = make_config("tiny", {"actor_critic.horizon": 3, "actor_critic.entropy": 0.1,
                                  "actor_critic.entropy_target": 0.5})  # fmt: skip
    torch.manual_seed(0)
    ac = ActorCritic(3, 2, True, config.actor_critic, 16, 1)
    ac.entropy_coef.commit(torch.tensor(0.2))
    feats = torch.randn(4, 5, 3)
    feats[..., 0] = 0.0  # no reward: the actor loss is the entropy bonus alone
    actions = torch.nn.functional.one_hot(torch.randint(2, (3, 5)), 2).float()
    actor_loss, _, metrics, pending = ac.loss(Bandit(), feats, actions, torch.ones(5))
    entropy = ac.policy(feats[:-1]).entropy()
    weights = trajectory_weights(torch.ones(5), torch.zeros(3, 5), config.actor_critic.gamma)
    assert torch.allclose(actor_loss, -(weights * 0.2 * entropy).mean())
    assert metrics["actor/entropy_coef"].item() == pytest.approx(0.2)
    # the policy starts uniform (entropy ln 2, above the target of half of it): the next value is lower
    assert pending["entropy_coef"].item() == pytest.approx(0.2 * math.exp(-0.5 * EntropyCoefficient.RATE), rel=1e-4)
    ac.commit(pending)
    assert ac.entropy_coef.value.item() == pytest.approx(pending["entropy_coef"].item())
    assert torch.equal(ac.return_norm.low, pending["return_stats"][0])


def test_the_adapted_coefficient_keeps_a_policy_near_its_target_where_one_action_pays():
    ac, feats, actions = one_step_bandit(n=1000)  # action 0 pays 1: without a bonus the policy would commit to it
    largest = math.log(2)
    ac.entropy_coef = EntropyCoefficient(0.1, target=0.5, largest_entropy=largest)
    optimizer = torch.optim.Adam(ac.actor.parameters(), lr=1e-2)
    for _ in range(1500):
        loss, _, _, pending = ac.loss(Bandit(), feats, actions, torch.ones(feats.shape[1]))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        ac.commit(pending)
    entropy = ac.policy(feats[0, :1]).entropy().item()
    assert 0.35 * largest < entropy < 0.65 * largest  # near the target, not committed
    assert ac.entropy_coef.value.item() > 0.2  # the policy fell below the target on the way: the bonus rose


def test_an_entropy_target_is_refused_for_continuous_actions_one_action_and_out_of_range():
    config = make_config("tiny", {"actor_critic.entropy_target": 0.5})
    with pytest.raises(ConfigError, match="entropy_target needs discrete actions"):
        ActorCritic(3, 2, False, config.actor_critic, 16, 1)
    with pytest.raises(ConfigError, match="entropy_target needs discrete actions"):  # before anything is built
        make_config("tiny", {"actor_critic.entropy_target": 0.5}, action_kind="continuous")
    with pytest.raises(ConfigError, match="needs at least two actions"):  # ln 1 = 0: no fraction of it
        ActorCritic(3, 1, True, config.actor_critic, 16, 1)
    for bad in ({"actor_critic.entropy_target": 1.0}, {"actor_critic.entropy_target": -0.1}):
        with pytest.raises(ConfigError, match=r"entropy_target must be in \[0, 1\)"):
            make_config("tiny", bad)
    with pytest.raises(ConfigError, match="must be > 0"):
        make_config("tiny", {"actor_critic.entropy_target": 0.5, "actor_critic.entropy": 0.0})


def test_return_norm_starts_at_the_first_batch_then_averages_and_floors_the_scale_at_one():
    norm = ReturnNorm(decay=0.9)
    first = torch.arange(101.0)  # P5 = 5, P95 = 95
    stats = norm.statistics(first)
    assert torch.allclose(stats, torch.tensor([5.0, 95.0])) and norm.scale(stats) == 90.0
    assert norm.low == 0 and not norm.started  # nothing is stored until commit
    norm.commit(stats)
    second = norm.statistics(first + 10)  # P5 = 15, P95 = 105: averaged in with weight 0.1
    assert torch.allclose(second, torch.tensor([6.0, 96.0]))
    assert norm.scale(torch.tensor([0.0, 0.3])) == 1.0  # small returns are not blown up


def test_the_magnitude_scale_is_at_least_the_size_of_the_returns():
    spread, magnitude = ReturnNorm(decay=0.9), ReturnNorm(decay=0.9, magnitude=True)
    constant_cost = torch.tensor([-66.8, -66.5])  # a cost on every step: large returns that hardly vary
    assert spread.scale(constant_cost) == 1.0 and magnitude.scale(constant_cost) == pytest.approx(66.8)
    assert magnitude.scale(torch.tensor([5.0, 95.0])) == 95.0 and magnitude.scale(torch.tensor([-30.0, 60.0])) == 90.0
    assert magnitude.scale(torch.tensor([0.0, 0.3])) == 1.0  # the floor stays


def test_return_norm_of_a_nonfinite_batch_is_nonfinite_so_the_trainer_never_commits_it():
    norm = ReturnNorm(decay=0.9)
    norm.commit(torch.tensor([1.0, 3.0]))
    stats = norm.statistics(torch.tensor([1.0, float("nan"), 2.0]))
    assert not torch.isfinite(stats).all()
    assert torch.equal(torch.stack([norm.low, norm.high]), torch.tensor([1.0, 3.0]))


def test_the_slow_critic_moves_towards_the_critic_by_one_minus_its_decay():
    config = make_config("tiny", {"actor_critic.slow_critic_decay": 0.75})
    ac = ActorCritic(3, 2, True, config.actor_critic, 16, 1)
    with torch.no_grad():
        for p in ac.critic.parameters():
            p.add_(1.0)
    slow_before = [p.clone() for p in ac.slow_critic.parameters()]
    ac.update_slow_critic()
    for slow, before, fast in zip(ac.slow_critic.parameters(), slow_before, ac.critic.parameters(), strict=True):
        assert torch.allclose(slow, 0.75 * before + 0.25 * fast)
    assert not any(p.requires_grad for p in ac.slow_critic.parameters())


def pre_activations(loc: float, std: float, dtype=torch.float32) -> torch.Tensor:
    """The actor's outputs (2,) that BoundedNormal maps to this mean and std (its tanh and sigmoid inverted)."""
    return torch.tensor([math.atanh(loc), math.log((std - 0.1) / (1.0 - std)) - 2.0], dtype=dtype)


def bounded_normal_at(loc: float, std: float, n: int) -> tuple[BoundedNormal, torch.Tensor]:
    """n copies of the bounded normal with this mean and std, and the (n, 2) pre-activations they come from
    (a leaf: the gradient of each copy's log-likelihood lands in its own row)."""
    out = pre_activations(loc, std).repeat(n, 1).requires_grad_()
    policy = BoundedNormal(out)
    assert torch.allclose(policy.loc, torch.tensor(loc)) and torch.allclose(policy.std, torch.tensor(std))
    return policy, out


def expectation_over_clipped_samples(loc: float, std: float, f, points: int = 200_001) -> torch.Tensor:
    """E[f(clip(x))] for x ~ N(loc, std), f: actions (n,) -> (n, k), by quadrature: the normal's density over the
    open box and the mass clipped onto each bound, computed with erfc (not with the class under test)."""
    inside = torch.linspace(-1.0, 1.0, points, dtype=torch.float64)[1:-1]
    density = torch.exp(-0.5 * ((inside - loc) / std) ** 2) / (std * math.sqrt(2 * math.pi))
    at_upper, at_lower = (
        0.5 * math.erfc((1 - loc) / (std * math.sqrt(2))),
        0.5 * math.erfc((1 + loc) / (std * math.sqrt(2))),
    )
    values = f(torch.cat([inside, torch.tensor([1.0, -1.0], dtype=torch.float64)])).double()  # (points, k)
    return (
        torch.trapezoid(density[:, None] * values[:-2], inside, dim=0) + at_upper * values[-2] + at_lower * values[-1]
    )


def score(loc: float, std: float, actions: torch.Tensor) -> torch.Tensor:
    """The gradient of log p(action) with respect to the policy's two pre-activations, per action: (n, 2)."""
    policy, out = bounded_normal_at(loc, std, len(actions))
    (grad,) = torch.autograd.grad(policy.log_prob(actions.float()[:, None]).sum(), out)
    return grad


# heavy clipping: the initial policy (loc 0, std 0.89: 26% of samples clipped), a mean near a bound
LOCS_STDS = [(0.0, 0.89), (0.0, 0.3), (0.9, 0.3), (-0.95, 0.12), (0.5, 0.6)]


@pytest.mark.parametrize(("loc", "std"), LOCS_STDS)
def test_the_bounded_normal_score_has_zero_mean_over_its_clipped_samples(loc, std):
    """A likelihood's score has mean zero under its own samples; with the density at a bound in place of
    the clipped mass, the std's would be about -0.4 / std here and narrow the std where advantages are positive."""
    mean_score = expectation_over_clipped_samples(loc, std, lambda a: score(loc, std, a))
    assert mean_score.abs().max() < 1e-4, mean_score


@pytest.mark.parametrize(("loc", "std"), LOCS_STDS)
def test_reinforce_of_clipped_actions_equals_the_pathwise_gradient(loc, std):
    """E[f(a) d log p(a)] (the score-function gradient) = d E[f(clip(loc + std * eps))] computed through the
    clip by autograd (the reparameterised gradient, which never calls log_prob), for an asymmetric f."""

    def f(a):
        return (a - 0.3) ** 2 + a

    reinforce = expectation_over_clipped_samples(loc, std, lambda a: f(a)[:, None] * score(loc, std, a))
    eps = torch.linspace(-12.0, 12.0, 400_001, dtype=torch.float64)
    out = pre_activations(loc, std, torch.float64).requires_grad_()
    policy = BoundedNormal(out)  # its mean and std as functions of the pre-activations
    weights = torch.exp(-0.5 * eps**2) / math.sqrt(2 * math.pi)
    expected = torch.trapezoid(weights * f((policy.loc + policy.std * eps).clamp(-1, 1)), eps)
    (pathwise,) = torch.autograd.grad(expected, out)
    assert torch.allclose(reinforce, pathwise, atol=2e-4), (reinforce, pathwise)


@pytest.mark.parametrize("discrete", [True, False])
def test_policies_sample_in_float32_under_bfloat16_autocast(discrete):
    config = make_config("tiny")
    ac = ActorCritic(3, 2, discrete, config.actor_critic, 16, 1)
    with torch.autocast("cpu", torch.bfloat16):
        policy = ac.policy(torch.randn(8, 3))
        sample = policy.sample(torch.Generator().manual_seed(0))
    assert sample.dtype == torch.float32


class MatmulDtypes(TorchDispatchMode):
    """Records the input dtype of every matrix product dispatched while it is active."""

    def __init__(self):
        super().__init__()
        self.dtypes = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket in (torch.ops.aten.mm, torch.ops.aten.addmm, torch.ops.aten.bmm):
            self.dtypes.append(args[-1].dtype)
        return func(*args, **(kwargs or {}))


def tiny_imagination_start(env_id, precision):
    """A tiny agent's world model and actor-critic, and 6 random start states to imagine from."""
    agent = Agent.create(env_id, preset="tiny", model={"precision": precision})
    start, _ = agent.world_model.initial(6)
    start.deter.normal_()
    return agent.world_model, agent.actor_critic, start


@pytest.mark.parametrize(("env_id", "precision", "expected"), [("CartPole-v1", "bfloat16", torch.bfloat16),
                                                               ("CartPole-v1", "float32", torch.float32),
                                                               ("Pendulum-v1", "bfloat16", torch.float32)])  # fmt: skip
def test_imagination_multiplies_in_bf16_only_where_no_actor_gradient_flows_through_it(env_id, precision, expected):
    """Discrete actions (REINFORCE): the rollout's products in the model's precision. Continuous actions learn
    through the rollout, whose products stay float32 (paired DMC runs scored lower with bf16 ones: docs/results.md)."""
    world_model, ac, start = tiny_imagination_start(env_id, precision)
    record = MatmulDtypes()
    with record:
        feats, actions = ac.imagine(world_model, start, torch.Generator().manual_seed(0))
    assert record.dtypes and set(record.dtypes) == {expected}
    assert feats.dtype == actions.dtype == torch.float32  # the recurrent state is carried in float32
    assert feats.shape == (ac.cfg.horizon + 1, 6, world_model.cfg.deter + world_model.quantizer.code_size)


@pytest.mark.parametrize(("env_id", "heads_get"), [("CartPole-v1", torch.bfloat16), ("Pendulum-v1", torch.float32)])
def test_the_heads_share_one_bf16_cast_unless_the_actor_learns_through_the_features(env_id, heads_get, monkeypatch):
    """REINFORCE (discrete actions): the imagined features are cast to bf16 once for the five heads. Through the
    dynamics (continuous): each head casts for itself under autocast, so the heads' gradients reach the float32
    features in float32 and are summed there, not in bf16 before they flow back through the rollout."""
    world_model, ac, start = tiny_imagination_start(env_id, "bfloat16")
    seen = []
    real_reward_dist = world_model.reward_dist
    monkeypatch.setattr(world_model, "reward_dist", lambda feat: seen.append(feat.dtype) or real_reward_dist(feat))
    feats, actions = ac.imagine(world_model, start, torch.Generator().manual_seed(0))
    actor_loss, _, _, _ = ac.loss(world_model, feats, actions, torch.ones(6))
    assert seen == [heads_get] and torch.isfinite(actor_loss)


def test_the_gradient_through_the_dynamics_is_refused_for_discrete_actions():
    config = make_config("tiny", {"actor_critic.actor_grad": "dynamics"})
    with pytest.raises(ConfigError, match="needs continuous actions"):
        ActorCritic(3, 2, True, config.actor_critic, 16, 1)
    with pytest.raises(ConfigError, match="needs continuous actions"):  # before anything is built
        make_config("tiny", {"actor_critic.actor_grad": "dynamics"}, action_kind="discrete")
    ActorCritic(3, 2, False, config.actor_critic, 16, 1)  # continuous: its default


def test_the_losses_through_the_dynamics_can_be_flop_counted():
    """benchmarks/speed.py counts an update's FLOPs with torch's FlopCounterMode, whose module hooks refuse a
    module called under no_grad on inputs that carry a graph (the slow critic's target did)."""
    from torch.utils.flop_counter import FlopCounterMode

    ac = ActorCritic(3, 2, False, make_config("tiny").actor_critic, 16, 1)  # continuous: gradient through feats
    feats = torch.randn(4, 8, 3, requires_grad=True) * 1.0  # (H + 1, N, F), a graph behind it
    counter = FlopCounterMode(display=False)
    with counter:
        actor_loss, _, _, _ = ac.loss(Bandit(), feats, torch.rand(3, 8, 2) * 2 - 1, torch.ones(8))
    assert counter.get_total_flops() > 0
    assert torch.autograd.grad(actor_loss, feats)[0].abs().sum() > 0  # the actor's gradient still reaches feats


def n_step_lambda_return(reward, last, term, value, gamma, lam, t):
    """The replayed lambda-return of step t by its definition: (1 - lam) sum_n lam^(n-1) G_n + lam^(N-1) G_N
    over the n-step returns G_n inside t's episode, N the steps to its last step or to the sequence's end."""
    end = next((e for e in range(t + 1, len(reward)) if last[e]), len(reward) - 1)

    def g(n):
        total, alive = 0.0, 1.0
        for k in range(1, n + 1):
            total += gamma ** (k - 1) * alive * reward[t + k]
            alive *= 1.0 - float(term[t + k])
        return total + gamma**n * alive * value[t + n]

    horizon = end - t
    return (1 - lam) * sum(lam ** (n - 1) * g(n) for n in range(1, horizon)) + lam ** (horizon - 1) * g(horizon)


def test_replayed_lambda_returns_equal_their_n_step_definition_and_stop_at_episode_ends():
    torch.manual_seed(0)
    steps = 12
    reward, value = torch.randn(steps, 1), torch.randn(steps, 1)
    last = torch.zeros(steps, 1, dtype=torch.bool)
    term = torch.zeros(steps, 1, dtype=torch.bool)
    last[4] = term[4] = True  # an episode ends at the goal in step 4; step 5 starts the next one
    last[9] = True  # the next one is truncated at step 9
    returns = replay_lambda_return(reward, last, term, value, 0.9, 0.8)
    assert returns.shape == (steps - 1, 1)
    for t in range(steps - 1):
        if not last[t]:  # a last step's own return is never a target
            expected = n_step_lambda_return(reward[:, 0], last[:, 0], term[:, 0], value[:, 0], 0.9, 0.8, t)
            assert returns[t, 0].item() == pytest.approx(expected.item(), abs=1e-5), t
    assert returns[3, 0].item() == pytest.approx(reward[4, 0].item())  # the terminal step bootstraps nothing
    after = reward.clone()
    after[5:] += 100.0  # what the next episode pays changes nothing before its start
    assert torch.equal(replay_lambda_return(after, last, term, value, 0.9, 0.8)[:4], returns[:4])


def test_the_replay_value_loss_pulls_the_critic_towards_a_reward_that_imagination_never_saw():
    config = make_config("tiny", {"actor_critic.slow_critic_reg": 0.0, "actor_critic.slow_critic_decay": 0.0})
    torch.manual_seed(0)
    ac = ActorCritic(4, 1, False, config.actor_critic, 16, 1)
    steps = 8
    feats = torch.eye(steps, 4)[None].expand(2, steps, 4)  # (B=2, T, F): one-hot up to the goal, then zeros
    reward = torch.zeros(2, steps)
    last = torch.zeros(2, steps, dtype=torch.bool)
    reward[:, 3], last[:, 3] = 100.0, True  # the goal: one terminal step paying 100
    term = last.clone()
    optimizer = torch.optim.Adam(ac.critic.parameters(), lr=1e-2)
    before = ac.value(feats[0, 2]).mean().item()
    for _ in range(200):
        loss = ac.replay_value_loss(feats, reward, last, term)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        ac.update_slow_critic()  # decay 0: the slow critic is the critic
    assert abs(before) < 1e-6  # the critic starts at 0 (its output layer is zero)
    assert ac.value(feats[0, 2]).mean().item() == pytest.approx(100.0, rel=0.05)  # the step before the goal
    assert ac.value(feats[0, 1]).mean().item() == pytest.approx(100.0 * config.actor_critic.gamma, rel=0.05)
