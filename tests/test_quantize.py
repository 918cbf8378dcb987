"""Forward values, surrogate gradients, shapes and edge cases of every quantizer."""

import math

import pytest
import torch
import torch.nn.functional as F

from agent import quantize as Q

ALL = list(Q.QUANTIZERS)
CATEGORICAL_FAMILY = ["categorical", "gumbel", "reinmax", "gumbel_rao"]


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def inputs(q, batch=(5, 3), scale=1.0, seed=0, dtype=torch.float32):
    return (torch.randn(*batch, *q.input_shape, generator=gen(seed)) * scale).to(dtype).requires_grad_()


# --------------------------------------------------------------------------------------------------
# The interface, for every quantizer


@pytest.mark.parametrize("name", ALL)
def test_shapes_dtypes_and_index_round_trip(name):
    q = Q.make(name)
    x = inputs(q)
    out = q(x, generator=gen(1))
    assert out.code.shape == x.shape and out.code.dtype == x.dtype
    assert out.index.shape == (5, 3, q.units) and out.index.dtype == torch.int64
    assert out.alphabet == q.alphabet and len(q.alphabet) == q.units
    assert (out.index >= 0).all() and (out.index < torch.tensor(q.alphabet)).all()
    assert torch.equal(q.codes(out.index), out.code.detach())
    assert out.loss.shape == ()
    stats = Q.code_usage(out.index, out.alphabet)
    assert 0 < stats["usage"] <= 1 and stats["perplexity"] >= 1


@pytest.mark.parametrize("name", ALL)
def test_same_seed_same_code_and_no_nan_at_extreme_inputs(name):
    q = Q.make(name)
    a = q(inputs(q, seed=3), generator=gen(7))
    b = q(inputs(q, seed=3), generator=gen(7))
    assert torch.equal(a.code, b.code)
    x = inputs(q, scale=1e4)
    out = q(x, generator=gen(2))
    (out.code * torch.randn_like(out.code)).sum().add(out.loss).backward()
    assert torch.isfinite(out.code).all() and torch.isfinite(x.grad).all()


@pytest.mark.parametrize("name", ALL)
def test_sample_codes_is_exact_with_the_gradient_of_the_expected_code(name):
    q = Q.make(name)
    logits = torch.randn(6, q.units, max(q.alphabet), generator=gen(4), requires_grad=True)
    code, index = q.sample_codes(logits.softmax(-1), generator=gen(5))
    assert torch.equal(code.detach(), q.codes(index))
    w = torch.randn(code.shape, generator=gen(6))
    (grad,) = torch.autograd.grad((code * w).sum(), logits)
    (expected,) = torch.autograd.grad((q.expected_code(logits.softmax(-1)) * w).sum(), logits)
    assert torch.allclose(grad, expected, atol=1e-6)
    with torch.no_grad():  # without autograd: the same code, no surrogate
        assert torch.equal(q.sample_codes(logits.softmax(-1), generator=gen(5))[0], code.detach())
    # a one-hot distribution's expected code is that symbol's code
    onehot = F.one_hot(index, max(q.alphabet)).float()
    assert torch.allclose(q.expected_code(onehot), q.codes(index))


def test_make_rejects_unknown_names_and_options():
    with pytest.raises(ValueError, match=r"unknown quantizer 'rund'.*round"):
        Q.make("rund")
    with pytest.raises(ValueError, match=r"no option tau.*bound"):
        Q.make("round", tau=1.0)
    with pytest.raises(ValueError, match="levels must all be >= 2"):
        Q.make("fsq", levels=(8, 1))
    with pytest.raises(ValueError, match="reinmax needs tau >= 1"):
        Q.make("reinmax", tau=0.5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", ALL)
def test_runs_on_cuda(name):
    q = Q.make(name).cuda()
    x = inputs(q).detach().cuda().requires_grad_()
    out = q(x, generator=torch.Generator("cuda").manual_seed(0))
    out.code.sum().backward()
    assert out.code.device.type == "cuda" and torch.equal(q.codes(out.index), out.code.detach())


# --------------------------------------------------------------------------------------------------
# round: straight-through rounding, y = x + sg(round(x) - x)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_round_forward_equals_torch_round_inside_the_range(dtype):
    q = Q.make("round", dims=1000, bound=4)
    x = (torch.rand(7, 1000, generator=gen(0)) * 8 - 4).to(dtype)
    assert torch.equal(q(x).code, torch.round(x))


def test_round_halves_go_to_even_as_torch_round():
    q = Q.make("round", dims=8, bound=4)
    x = torch.tensor([-3.5, -2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 3.5])
    assert q(x).code.tolist() == [-4, -2, -2, 0, 0, 2, 2, 4]


def test_round_gradient_is_exactly_the_upstream_gradient_inside_and_zero_outside():
    q = Q.make("round", dims=6, bound=2)
    x = torch.tensor([-3.0, -2.0, -0.7, 0.4, 2.0, 9.0], requires_grad=True)
    upstream = torch.randn(6, generator=gen(1))
    out = q(x)
    out.code.backward(upstream)
    inside = x.detach().abs() <= 2
    assert torch.equal(x.grad[inside], upstream[inside])
    assert torch.equal(x.grad[~inside], torch.zeros(2))
    assert out.code.tolist() == [-2, -2, -1, 0, 2, 2] and out.index.tolist() == [0, 0, 1, 2, 4, 4]


def test_round_equals_the_literal_formula_in_value_and_gradient():
    q = Q.make("round", dims=500, bound=3)
    x = (torch.rand(500, generator=gen(2)) * 6 - 3).requires_grad_()
    literal = x + (torch.round(x) - x).detach()
    upstream = torch.randn(500, generator=gen(3))
    (g_literal,) = torch.autograd.grad(literal, x, upstream)
    out = q(x)
    (g_ours,) = torch.autograd.grad(out.code, x, upstream)
    assert torch.equal(out.code, literal) and torch.equal(g_ours, g_literal)


# --------------------------------------------------------------------------------------------------
# fsq


def test_fsq_codes_lie_on_the_level_grid():
    q = Q.make("fsq", levels=(8, 6, 5, 2))
    code = q(inputs(q, batch=(4000,), scale=3)).code.detach()
    half = torch.tensor([4.0, 3.0, 2.0, 1.0])
    scaled = code * half
    assert torch.equal(scaled, torch.round(scaled))
    assert (scaled >= -half).all() and (scaled <= torch.tensor([3.0, 2.0, 2.0, 0.0])).all()


@pytest.mark.parametrize(("levels", "size"), [((8, 6, 5), 240), ((8, 5, 5, 5), 1000)])
def test_fsq_codebook_size_and_index_code_index_round_trip(levels, size):
    q = Q.make("fsq", levels=levels)
    assert q.codebook_size == size
    flat = torch.arange(size)
    per_dim = q.unflat_index(flat)
    codes = q.codes(per_dim)
    assert torch.equal(q.flat_index(q.indices(codes)), flat)
    assert len(torch.unique(codes, dim=0)) == size
    # the forward pass reaches every code: at inputs whose bounded value is each level's centre ...
    preimages = [
        torch.atanh((torch.arange(n) - n // 2 + q.offset[d]) / q.half_l[d]) - q.shift[d] for d, n in enumerate(levels)
    ]
    reached = torch.unique(q(torch.cartesian_prod(*preimages)).code, dim=0)
    assert torch.equal(reached, torch.unique(codes, dim=0))
    # ... and never leaves that set, whatever the input
    random_codes = q(torch.randn(100_000, len(levels), generator=gen(0)) * 3).code
    assert len(torch.unique(torch.cat([reached, random_codes]), dim=0)) == size


def test_fsq_samples_only_its_levels_when_a_unit_cdf_ends_short_of_one():
    """A prior's float32 probabilities may sum to a few ulp below 1; the mass missing here is exaggerated
    (0.4) so that draws fall past the last level often: they must land on that level, not on padding."""
    q = Q.make("fsq", levels=(8, 5))
    probs = torch.zeros(20_000, 2, 8)
    probs[:, 0] = 1 / 8
    probs[:, 1, :5] = 0.6 / 5  # the 5-level unit: classes 5-7 are padding with zero mass
    with torch.no_grad():
        code, index = q.sample_codes(probs, generator=gen(0))
    assert index[:, 1].max() == 4 and (index[:, 1] == 4).float().mean() > 0.4  # its own top level took the rest
    assert index[:, 0].max() == 7 and torch.equal(q.indices(code), index)


def test_fsq_even_levels_use_atanh_so_zero_maps_to_zero():
    q = Q.make("fsq", levels=(8, 6, 4, 2, 5))
    assert (q.bound(torch.zeros(5)).abs() < 5e-7).all()
    assert torch.equal(q(torch.zeros(5)).code, torch.zeros(5))
    # without the shift, even levels would move z = 0 off zero by the half-level offset
    with torch.no_grad():
        q.shift.zero_()
    assert torch.equal(q.bound(torch.zeros(5))[:4], torch.full((4,), -0.5))


def test_fsq_with_two_levels_has_no_nan_and_two_codes():
    q = Q.make("fsq", levels=(2, 2, 3))
    x = inputs(q, batch=(1000,), scale=100)
    out = q(x)
    out.code.sum().backward()
    assert torch.isfinite(out.code).all() and torch.isfinite(x.grad).all()
    assert set(out.code[:, 0].tolist()) == {-1.0, 0.0}


def test_fsq_gradient_is_the_straight_through_gradient_of_the_bounded_value():
    q = Q.make("fsq", levels=(8, 5, 5, 5))
    x = inputs(q)
    upstream = torch.randn(x.shape, generator=gen(5))
    (g,) = torch.autograd.grad(q(x).code, x, upstream)
    (want,) = torch.autograd.grad(q.bound(x) / q.half_width, x, upstream)
    assert torch.equal(g, want)


# --------------------------------------------------------------------------------------------------
# binary


def test_binary_is_plus_or_minus_one_with_plus_one_at_exactly_zero():
    q = Q.make("binary", dims=5)
    x = torch.tensor([-2.0, -0.0, 0.0, 1e-30, 3.0])
    out = q(x)
    assert out.code.tolist() == [-1, 1, 1, 1, 1] and out.index.tolist() == [0, 1, 1, 1, 1]


def test_binary_plain_gradient_passes_unchanged_and_clipped_zeroes_outside_unit_interval():
    x = torch.tensor([-3.0, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5], requires_grad=True)
    upstream = torch.arange(1.0, 8.0)
    (plain,) = torch.autograd.grad(Q.make("binary", dims=7)(x).code, x, upstream)
    assert torch.equal(plain, upstream)
    (clipped,) = torch.autograd.grad(Q.make("binary", dims=7, clip=True)(x).code, x, upstream)
    assert clipped.tolist() == [0, 2, 3, 4, 5, 6, 0]


# --------------------------------------------------------------------------------------------------
# categorical family


@pytest.mark.parametrize("name", CATEGORICAL_FAMILY)
def test_categorical_family_codes_are_exact_one_hots(name):
    q = Q.make(name, groups=4, classes=6)
    out = q(inputs(q, scale=3), generator=gen(0))
    assert torch.equal(out.code, F.one_hot(out.index, 6).float())
    det = q(inputs(q, scale=3), deterministic=True)
    assert torch.equal(det.index, det.log_probs.argmax(-1))


@pytest.mark.parametrize("unimix", [0.0, 0.01, 0.3])
def test_categorical_gradient_is_the_gradient_of_the_unimix_probabilities(unimix):
    q = Q.make("categorical", groups=3, classes=5, unimix=unimix)
    x = inputs(q)
    upstream = torch.randn(x.shape, generator=gen(1))
    (g,) = torch.autograd.grad(q(x, generator=gen(2)).code, x, upstream)
    probs = (1 - unimix) * x.softmax(-1) + unimix / 5
    (want,) = torch.autograd.grad(probs, x, upstream)
    assert torch.allclose(g, want, atol=1e-7)


def test_categorical_samples_follow_the_unimix_probabilities():
    q = Q.make("categorical", groups=1, classes=4, unimix=0.1)
    logits = torch.tensor([[2.0, 0.0, -1.0, 1.0]]).expand(40000, 1, 4)
    counts = torch.bincount(q(logits, generator=gen(3)).index.reshape(-1), minlength=4).float()
    probs = 0.9 * logits[0, 0].softmax(-1) + 0.025
    stderr = (probs * (1 - probs) / 40000).sqrt()
    assert ((counts / 40000 - probs).abs() < 5 * stderr).all()


def test_gumbel_gradient_equals_autograd_through_the_relaxation_with_the_same_noise():
    q = Q.make("gumbel", groups=4, classes=6, unimix=0.0, tau=0.5)
    x = inputs(q)
    upstream = torch.randn(x.shape, generator=gen(1))
    out = q(x, generator=gen(9))
    noise = Q.gumbel_noise(x.shape, gen(9))
    assert torch.equal(out.index, (x + noise).argmax(-1))
    (g,) = torch.autograd.grad(out.code, x, upstream)
    (want,) = torch.autograd.grad(((x + noise) / 0.5).softmax(-1), x, upstream)
    assert torch.allclose(g, want, atol=1e-6)


def test_gumbel_temperature_anneals_from_tau_to_tau_final():
    q = Q.make("gumbel", tau=1.0, tau_final=0.25)
    q.anneal(0.0)
    assert q.tau == 1.0
    q.anneal(0.5)
    assert math.isclose(q.tau, 0.5)
    q.anneal(1.0)
    assert math.isclose(q.tau, 0.25)


def test_gumbel_at_low_temperature_and_huge_logits_stays_finite():
    q = Q.make("gumbel", tau=0.1, unimix=0.0)
    x = inputs(q, scale=1e4)
    out = q(x, generator=gen(0))
    out.code.sum().backward()
    assert torch.isfinite(x.grad).all()


def softmax_jacobian(p):
    return torch.diag(p) - torch.outer(p, p)


def test_reinmax_gradient_matches_its_published_formula_on_a_hand_checked_case():
    theta = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64, requires_grad=True)
    g = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    index, tau = torch.tensor(1), 2.0
    (grad,) = torch.autograd.grad(Q.reinmax_st(theta, index, tau), theta, g)
    d = torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64)
    p0 = theta.detach().softmax(-1)
    p1 = (d + (theta.detach() / tau).softmax(-1)) / 2
    want = 2 * softmax_jacobian(p1) @ g - 0.5 * softmax_jacobian(p0) @ g
    assert torch.allclose(grad, want, atol=1e-12)


def test_conditional_gumbel_has_the_given_argmax_and_the_gumbel_marginal():
    logits = torch.tensor([1.0, 0.0, -0.5, 2.0]).log_softmax(-1).expand(20000, 4)
    index = Q.sample_index(logits.exp(), gen(0))
    perturbed = Q.conditional_gumbel(logits, index, samples=3, generator=gen(1))
    assert perturbed.shape == (3, 20000, 4)
    assert (perturbed.argmax(-1) == index).all()
    # with index ~ p, logits + conditional noise is distributed as logits + Gumbel(0, 1):
    # mean Euler's gamma (0.5772), variance pi^2 / 6.
    noise = perturbed[0] - logits
    assert ((noise.mean(0) - 0.5772).abs() < 0.05).all()
    assert ((noise.var(0) - math.pi**2 / 6).abs() < 0.1).all()


def test_gumbel_rao_with_one_sample_is_straight_through_gumbel_with_that_noise():
    logits = torch.randn(6, 5, generator=gen(0)).log_softmax(-1).requires_grad_()
    index = Q.sample_index(logits.exp(), gen(1))
    perturbed = Q.conditional_gumbel(logits, index, samples=1, generator=gen(2))
    upstream = torch.randn(6, 5, generator=gen(3))
    (g_rao,) = torch.autograd.grad(Q.gumbel_rao_st(logits, index, perturbed, 0.7), logits, upstream)
    code, st_index = Q.gumbel_st(logits, (perturbed[0] - logits).detach(), 0.7)
    (g_st,) = torch.autograd.grad(code, logits, upstream)
    assert torch.equal(st_index, index) and torch.allclose(g_rao, g_st, atol=1e-7)


# --------------------------------------------------------------------------------------------------
# vq


def test_vq_returns_exactly_the_nearest_codebook_rows():
    q = Q.make("vq", groups=4, dims=8, codebook_size=32)
    q.eval()
    e = inputs(q, batch=(200,))
    out = q(e)
    dist = torch.cdist(e.detach().double().reshape(-1, 8), q.codebook.detach().double())
    nearest = dist.argmin(-1).reshape(200, 4)
    assert torch.equal(out.index, nearest)
    assert torch.equal(out.code, q.codebook.detach()[nearest])


def test_vq_straight_through_gradient_goes_to_the_input_and_losses_to_the_codebook():
    q = Q.make("vq", groups=2, dims=4, codebook_size=8, beta=0.25)
    q.eval()
    e = inputs(q)
    upstream = torch.randn(e.shape, generator=gen(1))
    out = q(e)
    out.code.backward(upstream)
    assert torch.equal(e.grad, upstream) and q.codebook.grad is None
    e.grad = None
    out = q(e)
    out.loss.backward()
    qv = q.codebook.detach()[out.index]
    n = e.numel()
    assert torch.allclose(e.grad, 0.25 * 2 * (e.detach() - qv) / n, atol=1e-7)
    assert q.codebook.grad.abs().sum() > 0


def test_vq_rotation_trick_is_exact_forward_keeps_the_angle_and_scales_by_the_norm_ratio():
    q = Q.make("vq", groups=3, dims=6, codebook_size=16, rotation=True)
    q.eval()
    e = inputs(q, batch=(50,), dtype=torch.float32)
    out = q(e)
    codes = q.codebook.detach()[out.index]
    assert torch.equal(out.code, codes)
    g = torch.randn(out.code.shape, generator=gen(2))
    (grad_e,) = torch.autograd.grad(out.code, e, g)

    def cos(a, b):
        return (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1))

    assert torch.allclose(cos(grad_e, e.detach()), cos(g, codes), atol=1e-5)
    ratio = codes.norm(dim=-1) / e.detach().norm(dim=-1)
    assert torch.allclose(grad_e.norm(dim=-1), ratio * g.norm(dim=-1), rtol=1e-5)


def test_vq_ema_moves_the_codebook_to_assigned_means_and_restarts_dead_codes():
    q = Q.make("vq", groups=1, dims=2, codebook_size=4, ema=True, decay=0.5, dead_threshold=0.05)
    with torch.no_grad():
        q.codebook.copy_(torch.tensor([[0.0, 0.0], [10.0, 10.0], [-10.0, 10.0], [100.0, 100.0]]))
        q.ema_sum.copy_(q.codebook)
    cluster = torch.tensor([[1.0, 1.0], [11.0, 9.0], [-9.0, 11.0]])
    data = cluster.repeat(100, 1).unsqueeze(1)  # (300, 1, 2): entry 3 is never used
    for step in range(30):
        x = data + 0.01 * torch.randn(data.shape, generator=gen(step))
        q.update(x, q(x).index, generator=gen(1))  # once per gradient step, as the trainer does
    assert torch.allclose(q.codebook[:3], cluster, atol=0.05)
    # entry 3 was restarted at one of the inputs rather than left at (100, 100)
    assert q.codebook[3].norm() < 20
    assert q.dead_codes() <= 1


def test_vq_forward_changes_no_state_and_one_update_moves_the_averages_once():
    q = Q.make("vq", groups=2, dims=3, codebook_size=8, ema=True, decay=0.9)
    before = {k: v.clone() for k, v in q.state_dict().items()}
    x = inputs(q, batch=(64,))
    for _ in range(5):  # forward passes alone (e.g. T time steps of a sequence) change nothing
        out = q(x, generator=gen(0))
    assert all(torch.equal(before[k], v) for k, v in q.state_dict().items())
    q.update(x, out.index, generator=gen(1))
    counts = torch.bincount(out.index.reshape(-1), minlength=8).float()
    assert torch.allclose(q.usage, 0.9 * before["usage"] + 0.1 * counts / counts.sum())
    assert torch.allclose(q.ema_count, 0.9 * before["ema_count"] + 0.1 * counts)


@pytest.mark.parametrize("name", CATEGORICAL_FAMILY)
def test_codes_are_sampled_at_their_probabilities_under_bfloat16_autocast(name):
    q = Q.make(name, groups=1, classes=16)
    logits = torch.full((100_000, 1, 16), -30.0)
    logits[..., 0] = 30.0  # every other class sits at the unimix floor, 0.01 / 16 = 0.000625
    with torch.autocast("cpu", torch.bfloat16):
        out = q(logits.bfloat16(), generator=gen(0))
    assert out.log_probs.dtype == torch.float32
    floor = (out.index != 0).float().mean().item() / 15
    assert floor == pytest.approx(0.000625, rel=0.15)  # 1,500 samples: 2.6% standard error
