"""World model, actor-critic and their building blocks."""

import copy
import dataclasses
import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import agent.nets
import envs
from agent import quantize
from agent.behavior import ActorCritic, lambda_return
from agent.config import make_config
from agent.nets import ImageBernoulli, ImageMSE, TwoHot, make_codec, symexp, symlog, symlog_bins, twohot_weights
from agent.world_model import Latent, WorldModel


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def random_cartpole_batch(batch=4, steps=12, seed=0):
    """Sequences of random CartPole play in the replay layout."""
    env = envs.make("CartPole-v1", max_episode_steps=30)
    rng = np.random.default_rng(seed)
    out = {k: [] for k in ("obs", "action", "reward", "is_first", "is_last", "is_terminal")}
    for b in range(batch):
        obs, _ = env.reset(seed=seed + b)
        reward, first, last, terminal = 0.0, True, False, False
        for key in out:
            out[key].append([])
        for _ in range(steps):
            a = int(rng.integers(2))
            for key, value in zip(out, (obs, np.eye(2)[a], reward, first, last, terminal), strict=True):
                out[key][-1].append(value)
            if last:
                obs, _ = env.reset()
                reward, first, last, terminal = 0.0, True, False, False
                continue
            obs, reward, terminal, truncated, _ = env.step(a)
            first, last = False, terminal or truncated
    return {k: torch.as_tensor(np.array(v), dtype=torch.bool if k.startswith("is_") else torch.float32)
            for k, v in out.items()}  # fmt: skip


def tiny_model(quantizer="categorical"):
    config = make_config("tiny", quantizer=quantizer)
    torch.manual_seed(0)
    return WorldModel((4,), 2, config.model, quantize.make(quantizer, **config.quantizer_options)), config


# --- nets ---------------------------------------------------------------------------------------------


def test_symlog_and_symexp_invert_each_other():
    x = torch.tensor([-1e6, -3.0, -1e-3, 0.0, 0.5, 7.0, 1e5], dtype=torch.float64)
    assert torch.allclose(symexp(symlog(x)), x, rtol=1e-12)
    assert symlog(torch.tensor(math.e - 1)).item() == pytest.approx(1.0)


def twohot(x, bins):
    """The dense two-hot encoding (..., K) that twohot_weights describes."""
    lower, upper, w_upper = twohot_weights(x, bins)
    return F.one_hot(lower, len(bins)) * (1 - w_upper)[..., None] + F.one_hot(upper, len(bins)) * w_upper[..., None]


def test_twohot_round_trips_and_splits_weight_between_the_two_nearest_bins():
    bins = symlog_bins(41, 20.0)  # spacing 1
    x = torch.tensor([-19.99, -3.25, 0.0, 0.4, 12.75, 20.0])
    enc = twohot(x, bins)
    assert torch.allclose(enc.sum(-1), torch.ones(6))
    assert torch.allclose(enc @ bins, x, atol=1e-5)
    assert ((enc > 0).sum(-1) <= 2).all()
    assert enc[1, 16].item() == pytest.approx(0.25) and enc[1, 17].item() == pytest.approx(0.75)
    # a head whose logits are the log of an encoding predicts its value back (in symexp space)
    dist = TwoHot(twohot(symlog(torch.tensor([3.0, -150.0])), bins).clamp_min(1e-12).log(), bins)
    assert torch.allclose(dist.mean(), torch.tensor([3.0, -150.0]), rtol=1e-4)
    # its log-probability of a target is the cross-entropy with the target's two-hot encoding
    logits, target = torch.randn(5, 41, generator=gen(0)), torch.tensor([-300.0, -2.0, 0.0, 0.7, 1e4])
    dense = (twohot(symlog(target), bins) * logits.log_softmax(-1)).sum(-1)
    assert torch.allclose(TwoHot(logits, bins).log_prob(target), dense, atol=1e-6)


def test_bernoulli_image_likelihood_is_the_product_of_each_cells_bernoulli():
    """log p(image) by enumeration on 2 cells of 2 channels: over all 16 binary images the probabilities sum
    to 1, each is the product of sigmoid(logit) for lit cells and 1 - sigmoid(logit) for dark ones, and the
    decoder uses it when asked (its mean is each cell's probability as a 0-255 image)."""
    logits = torch.tensor([[[[0.3, -2.0]], [[1.5, 0.0]]]])  # (1, C=2, H=1, W=2)
    dist = ImageBernoulli(logits)
    cells = torch.sigmoid(logits).flatten()
    total = 0.0
    for bits in itertools.product([0, 1], repeat=4):
        image = (torch.tensor(bits, dtype=torch.uint8) * 255).view(1, 2, 1, 2)
        expected = torch.prod(torch.where(torch.tensor(bits).bool(), cells, 1 - cells))
        assert torch.allclose(dist.log_prob(image).exp(), expected, atol=1e-6)
        total += float(expected)
    assert abs(total - 1.0) < 1e-6
    sure = ImageBernoulli(torch.tensor([[[[-20.0, 0.0, 20.0]]]])).mean().flatten().tolist()
    assert sure == [0, 128, 255]  # the mean image: each cell's probability of being lit, as 0-255
    _, decoder = make_codec((4, 10, 10), 24, 16, 1, 8, image_likelihood="bernoulli")
    assert isinstance(decoder(torch.randn(3, 24)), ImageBernoulli)
    assert isinstance(make_codec((4, 10, 10), 24, 16, 1, 8)[1](torch.randn(3, 24)), ImageMSE)


@pytest.mark.parametrize("obs_shape", [(4, 10, 10), (3, 16, 16)])
def test_image_codec_runs_channels_last_with_the_values_and_gradients_of_the_default_layout(obs_shape, monkeypatch):
    torch.manual_seed(0)
    encoder, decoder = make_codec(obs_shape, 24, 16, 1, 8)
    layers = [*encoder.modules(), *decoder.modules()]
    convs = [m for m in layers if isinstance(m, torch.nn.Conv2d | torch.nn.ConvTranspose2d)]
    assert len(convs) >= 3 and all(m.weight.is_contiguous(memory_format=torch.channels_last) for m in convs)
    assert not all(m.weight.is_contiguous() for m in convs)
    plain = [copy.deepcopy(m).to(memory_format=torch.contiguous_format) for m in (encoder, decoder)]
    obs = torch.randint(0, 256, (2, 3, *obs_shape), dtype=torch.uint8)
    feat = torch.randn(2, 3, 24)
    results = []
    for enc, dec in ((encoder, decoder), plain):
        if enc is plain[0]:  # the reference: default-layout weights and inputs
            monkeypatch.setattr(agent.nets, "channels_last", lambda x: x)
        embed, image = enc(obs), dec(feat)
        loss = embed.square().sum() - image.log_prob(obs).sum()
        results.append([embed, image.pred, *torch.autograd.grad(loss, [*enc.parameters(), *dec.parameters()])])
    monkeypatch.undo()
    assert results[0][0].shape == (2, 3, encoder.out_dim) and results[0][1].shape == (2, 3, *obs_shape)
    for ours, reference in zip(*results, strict=True):
        assert torch.allclose(ours, reference, rtol=1e-4, atol=1e-5)
    # weights saved in the default layout (checkpoints store contiguous tensors) load into channels-last ones
    fresh, _ = make_codec(obs_shape, 24, 16, 1, 8)
    fresh.load_state_dict(plain[0].state_dict())
    assert fresh.convs[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(fresh(obs), plain[0](obs), rtol=1e-4, atol=1e-5)


# --- lambda-returns -----------------------------------------------------------------------------------


def test_lambda_returns_match_a_hand_computed_example_with_a_terminal_and_a_truncation():
    gamma, lam = 0.9, 0.5
    # trajectory 0 terminates on its second step; trajectory 1 runs to the end of the horizon,
    # where (as at a time limit) it bootstraps from the last value.
    reward = torch.tensor([[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]])
    cont = torch.tensor([[1.0, 1.0], [0.0, 1.0], [1.0, 1.0]])
    value = torch.tensor([[0.5, 0.5], [4.0, 4.0], [5.0, 5.0], [6.0, 6.0]])
    R = lambda_return(reward, cont, value, gamma, lam)
    # trajectory 1: R2 = 3 + 0.9 * 6 = 8.4; R1 = 2 + 0.9 (0.5 * 5 + 0.5 * 8.4) = 8.03;
    # R0 = 1 + 0.9 (0.5 * 4 + 0.5 * 8.03) = 6.4135
    assert torch.allclose(R[:, 1], torch.tensor([6.4135, 8.03, 8.4]))
    # trajectory 0: R1 = 2 + 0 (terminal: nothing after it counts); R0 = 1 + 0.9 (0.5 * 4 + 0.5 * 2) = 3.7
    assert torch.allclose(R[:2, 0], torch.tensor([3.7, 2.0]))


def test_lambda_one_is_the_discounted_sum_and_lambda_zero_is_one_step_td():
    reward, cont = torch.rand(5, 3, generator=gen(0)), torch.ones(5, 3)
    value = torch.rand(6, 3, generator=gen(1))
    mc = lambda_return(reward, cont, value, 0.9, 1.0)[0]
    want = sum(0.9**t * reward[t] for t in range(5)) + 0.9**5 * value[5]
    assert torch.allclose(mc, want)
    td = lambda_return(reward, cont, value, 0.9, 0.0)
    assert torch.allclose(td, reward + 0.9 * value[1:])


# --- the world model, with every quantizer ------------------------------------------------------------


def alphabet_table(q) -> torch.Tensor:
    """Every code each unit can take: (K, U, code values per unit), row k = the code of index k."""
    k = max(q.alphabet)
    return q.codes(torch.arange(k)[:, None].expand(k, q.units)).reshape(k, q.units, -1)


@pytest.mark.parametrize("name", list(quantize.QUANTIZERS))
def test_world_model_loss_and_imagination_work_with_every_quantizer(name):
    wm, config = tiny_model(name)
    batch = random_cartpole_batch()
    loss, terms, post = wm.loss(batch, gen(0))
    assert set(terms) >= {"decoder", "reward", "cont", "dyn", "rep", "quantizer"}
    latent = post.latent
    assert latent.deter.shape == (4, 12, config.model.deter) and latent.code.shape == (4, 12, wm.quantizer.code_size)
    assert post.index.shape == (4, 12, wm.quantizer.units) and post.inputs.shape == (4, 12, wm.quantizer.code_size)
    loss.backward()
    grads = [p.grad for p in wm.parameters() if p.requires_grad and p.grad is not None]
    assert torch.isfinite(loss) and all(torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in (wm.encoder.mlp.out.weight.grad, wm.post_out.weight.grad))
    # imagined codes are exact codes of each unit's alphabet: sampled ones are members of it, and the most
    # likely ones are the codes of the prior's argmax
    start = Latent(latent.deter.detach().flatten(0, 1), latent.code.detach().flatten(0, 1))
    action = torch.eye(2)[torch.zeros(48, dtype=torch.long)]
    table = alphabet_table(wm.quantizer)  # (K, U, V)
    valid = torch.arange(len(table))[:, None] < torch.tensor(wm.quantizer.alphabet)  # (K, U)
    with torch.no_grad():
        sampled = wm.imagine_step(start, action, gen(1)).code.view(48, wm.quantizer.units, -1)  # (N, U, V)
        member = (sampled[:, None] == table[None]).all(-1) & valid  # (N, K, U)
        assert member.any(1).all()
        likely = wm.imagine_step(start, action, deterministic=True)
        index = wm.prior_log_probs(likely.deter).argmax(-1)
        assert torch.equal(likely.code, wm.quantizer.codes(index).flatten(1))


def test_observe_starts_afresh_at_is_first():
    wm, _ = tiny_model("round")  # a deterministic posterior: the states can be compared exactly
    batch = random_cartpole_batch(batch=3, steps=10, seed=4)
    first = torch.zeros(3, 10, dtype=torch.bool)
    first[:, 0] = first[:, 6] = True
    with torch.no_grad():
        whole = wm.observe(batch["obs"], batch["action"], first).latent
        tail = wm.observe(batch["obs"][:, 6:], batch["action"][:, 6:], first[:, 6:]).latent
        unreset = wm.observe(batch["obs"], batch["action"], torch.zeros_like(first).index_fill(1, torch.tensor(0), 1))
    assert torch.allclose(whole.deter[:, 6:], tail.deter, atol=1e-6)
    assert torch.equal(whole.code[:, 6:], tail.code)
    assert not torch.allclose(whole.deter[:, 6:], unreset.latent.deter[:, 6:])  # the reset is what made them equal


def test_kl_terms_equal_torch_distributions_and_point_masses_use_the_prior_cross_entropy():
    post_logits, prior_logits = torch.randn(2, 3, 4, 5, generator=gen(0)), torch.randn(2, 3, 4, 5, generator=gen(1))
    post_logp, prior_logp = post_logits.log_softmax(-1), prior_logits.log_softmax(-1)
    index = torch.randint(5, (2, 3, 4), generator=gen(2))
    dyn, rep = WorldModel.kl_terms(post_logp, index, prior_logp)
    want = torch.distributions.kl_divergence(
        torch.distributions.Categorical(logits=post_logits), torch.distributions.Categorical(logits=prior_logits)
    ).sum(-1)
    assert torch.allclose(dyn, want, atol=1e-6) and torch.allclose(rep, want, atol=1e-6)
    dyn, rep = WorldModel.kl_terms(None, index, prior_logp)
    cross_entropy = -torch.distributions.Categorical(logits=prior_logits).log_prob(index).sum(-1)
    assert torch.allclose(dyn, cross_entropy, atol=1e-6) and torch.equal(rep, torch.zeros_like(rep))


def test_world_model_losses_decrease_on_a_fixed_dataset():
    wm, _ = tiny_model()
    batch = random_cartpole_batch(batch=8, steps=16)
    opt = torch.optim.Adam(wm.parameters(), lr=3e-3)
    history = []
    for step in range(60):
        loss, terms, _ = wm.loss(batch, gen(step))
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append({k: float(v.detach()) for k, v in terms.items()})
    first, last = history[0], history[-1]
    assert last["decoder"] < 0.5 * first["decoder"]
    assert last["reward"] < 0.5 * first["reward"]
    assert last["cont"] < first["cont"]


def test_prior_gives_padding_classes_of_uneven_alphabets_no_mass_and_finite_gradients():
    wm, _ = tiny_model("fsq")  # default levels (8, 5, 5, 5) x 4: dims with 5 levels pad to 8
    deter = torch.randn(3, wm.cfg.deter, requires_grad=True)
    probs = wm.prior_probs(deter)
    assert torch.allclose(probs.sum(-1), torch.ones(3, wm.quantizer.units))
    assert (probs[:, ~wm.valid] == 0).all()
    assert torch.allclose(wm.prior_log_probs(deter)[:, wm.valid], probs[:, wm.valid].log())
    code, _ = wm.quantizer.sample_codes(probs, generator=gen(0))
    code.sum().backward()
    assert torch.isfinite(deter.grad).all()


# --- imagination and the actor-critic ------------------------------------------------------------------


def test_imagination_has_the_right_shapes_and_states_after_a_terminal_carry_no_weight():
    wm, config = tiny_model()
    ac = ActorCritic(config.model.deter + wm.quantizer.code_size, 2, True, config.actor_critic, 32, 1)
    with torch.no_grad():  # a policy with preferences, as after training (the actor starts uniform)
        ac.actor.out.weight.normal_(generator=gen(6))
    horizon, n = config.actor_critic.horizon, 10
    start = Latent(
        torch.randn(n, config.model.deter, generator=gen(3)),
        wm.quantizer.codes(torch.zeros(n, wm.quantizer.units, dtype=torch.long)).flatten(1),
    )
    feats, actions = ac.imagine(wm, start, gen(0))
    assert feats.shape == (horizon + 1, n, config.model.deter + wm.quantizer.code_size)
    assert actions.shape == (horizon, n, 2) and torch.equal(actions.sum(-1), torch.ones(horizon, n))
    # a model certain that every imagined state is terminal: only the first reward counts ...
    with torch.no_grad():
        wm.cont.out.bias.fill_(-1e4)
        wm.reward.out.bias.normal_(generator=gen(4))
    reward = wm.reward_dist(feats[1:]).mean()
    returns = lambda_return(reward, wm.cont_dist(feats[1:]).mean(), ac.value(feats).mean(), 0.985, 0.95)
    assert torch.allclose(returns, reward, atol=1e-5)
    # ... and the states after the first carry no weight: changing them changes neither loss
    actor_loss, critic_loss, _, _ = ac.loss(wm, feats, actions, torch.ones(n))
    later = feats.clone()
    later[2:] += torch.randn(later[2:].shape, generator=gen(5))
    other_actions = actions.clone()
    other_actions[1:] = other_actions[1:].flip(-1)
    actor_again, critic_again, _, _ = ac.loss(wm, later, other_actions, torch.ones(n))
    assert torch.equal(actor_loss, actor_again) and torch.equal(critic_loss, critic_again)
    changed, _, _, _ = ac.loss(wm, feats, actions.flip(-1), torch.ones(n))  # the first action does count
    assert not torch.equal(changed, actor_loss)


def test_dynamics_backprop_actor_gets_gradients_through_the_straight_through_codes():
    config = make_config("tiny", quantizer="round", overrides={"actor_critic.actor_grad": "dynamics"})
    wm = WorldModel((3,), 1, config.model, quantize.make("round"))
    ac = ActorCritic(config.model.deter + wm.quantizer.code_size, 1, False, config.actor_critic, 32, 1)
    start = Latent(torch.randn(6, config.model.deter), torch.zeros(6, wm.quantizer.code_size))
    feats, actions = ac.imagine(wm, start, gen(0))
    assert feats.requires_grad
    actor_loss, _, _, _ = ac.loss(wm, feats, actions, torch.ones(6))
    grads = torch.autograd.grad(actor_loss, list(ac.actor.parameters()))
    assert all(torch.isfinite(g).all() for g in grads) and sum(g.abs().sum() for g in grads) > 0
    # the gradient reaches the actor through the prior's straight-through code samples, too
    prior_grad = torch.autograd.grad(ac.loss(wm, *ac.imagine(wm, start, gen(0)), torch.ones(6))[0],
                                     wm.prior.out.weight, allow_unused=True)[0]  # fmt: skip
    assert prior_grad is not None and prior_grad.abs().sum() > 0


def test_a_dynamics_actor_moves_its_mean_through_the_model_and_its_std_by_the_score_function_alone():
    config = make_config("tiny", quantizer="round", overrides={"actor_critic.actor_grad": "dynamics"})
    wm = WorldModel((3,), 1, config.model, quantize.make("round"))
    ac = ActorCritic(config.model.deter + wm.quantizer.code_size, 1, False, config.actor_critic, 32, 1)
    with torch.no_grad():  # a policy, rewards and values that depend on the state, as after training
        for head in (ac.actor.out, wm.reward.out, ac.critic.out):
            head.weight.normal_(generator=gen(7))
    start = Latent(torch.randn(6, config.model.deter), torch.zeros(6, wm.quantizer.code_size))
    feats, actions = ac.imagine(wm, start, gen(0))
    out = ac.actor.out  # rows: the mean's, then the std's (one action dim)

    def grads(feats, actions):
        loss = ac.loss(wm, feats, actions, torch.ones(6))[0]
        weight, bias = torch.autograd.grad(loss, [out.weight, out.bias])
        return weight, bias

    through_model = grads(feats, actions)
    values_only = grads(feats.detach(), actions.detach())  # the same states and actions, no rollout graph
    # the std's gradient is the same without the rollout's graph: none of it came through the model
    assert torch.allclose(through_model[0][1], values_only[0][1]) and torch.allclose(through_model[1][1],
                                                                                      values_only[1][1])  # fmt: skip
    assert values_only[1][1] != 0  # (REINFORCE's term and the entropy bonus)
    # while the mean's gradient does come through the model
    assert not torch.allclose(through_model[0][0], values_only[0][0])


def test_the_world_model_loss_weighs_each_term_by_its_scale():
    wm, _ = tiny_model("round")  # deterministic posterior: both losses see the same codes
    batch = random_cartpole_batch()
    loss, terms, _ = wm.loss(batch, gen(0))
    wm.cfg = dataclasses.replace(wm.cfg, reward_scale=3.0, cont_scale=0.0)
    scaled, same, _ = wm.loss(batch, gen(0))
    assert torch.allclose(same["reward"], terms["reward"]) and torch.allclose(same["cont"], terms["cont"])
    expected = loss + 2.0 * terms["reward"] - terms["cont"]
    assert torch.allclose(scaled, expected, rtol=1e-5, atol=1e-5)
