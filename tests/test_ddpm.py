"""p2p_lab.ddpm against diffusers' DDPMScheduler, closed forms and Monte Carlo."""
import math

import pytest
import torch
from diffusers import DDPMScheduler

from p2p_lab import ddpm


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def hf():
    """diffusers' DDPM scheduler with DDPM's linear schedule and no clipping of the predicted x_0."""
    return DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", clip_sample=False)


@pytest.fixture(scope="module")
def sched(hf):
    return ddpm.Schedule.from_diffusers(hf)


# ---------------------------------------------------------------- schedules

def test_linear_schedule_matches_diffusers(hf):
    ours = ddpm.Schedule.linear()
    torch.testing.assert_close(ours.betas, hf.betas.double(), rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(ours.abar[1:], hf.alphas_cumprod.double(), rtol=1e-4, atol=1e-9)


def test_scaled_linear_schedule_matches_stable_diffusions():
    hf = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    ours = ddpm.Schedule.scaled_linear()
    torch.testing.assert_close(ours.betas, hf.betas.double(), rtol=1e-5, atol=1e-9)
    torch.testing.assert_close(ours.abar[1:], hf.alphas_cumprod.double(), rtol=1e-4, atol=1e-9)
    from p2p_lab.model import build_scheduler  # the shipped model's scheduler uses it too
    torch.testing.assert_close(ddpm.Schedule.from_diffusers(build_scheduler()).abar, ours.abar, rtol=1e-4, atol=1e-9)


def test_tables_are_indexed_by_t_with_t0_the_data():
    s = ddpm.Schedule(torch.tensor([0.1, 0.2, 0.5]))
    assert s.T == 3
    torch.testing.assert_close(s.alpha, torch.tensor([1.0, 0.9, 0.8, 0.5], dtype=torch.float64))
    torch.testing.assert_close(s.abar, torch.tensor([1.0, 0.9, 0.72, 0.36], dtype=torch.float64))
    assert math.isinf(ddpm.snr(s)[0].item()) and ddpm.snr(s)[3].item() == pytest.approx(0.36 / 0.64)
    assert ddpm.to_diffusers(1) == 0


# ---------------------------------------------------------------- Property 1 and diffusers' add_noise

def test_q_sample_equals_add_noise(hf, sched):
    gen = torch.Generator().manual_seed(0)
    x_0, eps = torch.randn(5, 3, 8, 8, generator=gen), torch.randn(5, 3, 8, 8, generator=gen)
    k = torch.tensor([0, 1, 250, 998, 999])  # diffusers' timesteps
    torch.testing.assert_close(ddpm.q_sample(x_0, k + 1, eps, sched), hf.add_noise(x_0, eps, k),
                               atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ddpm.q_sample(x_0[:1], 600, eps[:1], sched),
                               hf.add_noise(x_0[:1], eps[:1], torch.tensor([599])), atol=1e-5, rtol=1e-5)


def test_q_sample_at_t0_is_the_data(sched):
    x_0 = torch.randn(4, 2)
    assert torch.equal(ddpm.q_sample(x_0, 0, torch.randn(4, 2), sched), x_0)


def test_forward_chain_matches_the_closed_form_by_monte_carlo():
    """Run the chain t steps from one x_0 many times: mean sqrt(abar_t) x_0, variance 1 - abar_t."""
    sched = ddpm.Schedule.linear()
    n, t = 20000, 120
    x_0 = torch.tensor([1.0, -0.5, 0.2], dtype=torch.float64).expand(n, 3)  # (n, 3)
    x_t = ddpm.forward_chain(x_0, t, sched, torch.Generator().manual_seed(0))  # (n, 3)
    abar_t = sched.abar[t]
    se_mean = ((1 - abar_t) / n).sqrt()  # standard error of the sample mean
    se_var = (1 - abar_t) * math.sqrt(2 / (n - 1))  # standard error of the sample variance
    assert ((x_t.mean(0) - abar_t.sqrt() * x_0[0]).abs() < 5 * se_mean).all()
    assert ((x_t.var(0) - (1 - abar_t)).abs() < 5 * se_var).all()


def test_forward_step_is_one_step_of_the_chain(sched):
    x, eps = torch.randn(3, 4), torch.randn(3, 4)
    a = sched.alpha[7].item()
    torch.testing.assert_close(ddpm.forward_step(x, 7, eps, sched), math.sqrt(a) * x + math.sqrt(1 - a) * eps)


# ---------------------------------------------------------------- Property 2: the posterior

@pytest.mark.parametrize("t", [1, 2, 10, 500, 1000])
def test_posterior_is_gaussian_conditioning(sched, t):
    """q(x_{t-1} | x_t, x_0) by conditioning the joint Gaussian of (x_{t-1}, x_t) given x_0."""
    ab_prev, a = sched.abar[t - 1].item(), sched.alpha[t].item()
    c11 = 1 - ab_prev  # Var x_{t-1}
    c12 = math.sqrt(a) * c11  # Cov(x_{t-1}, x_t)
    c22 = a * c11 + (1 - a)  # Var x_t = 1 - abar_t
    # E[x_{t-1} | x_t] = sqrt(abar_{t-1}) x_0 + c12 / c22 (x_t - sqrt(abar_t) x_0)
    coef_xt = c12 / c22
    coef_x0 = math.sqrt(ab_prev) - coef_xt * math.sqrt(sched.abar[t].item())
    var = c11 - c12 ** 2 / c22
    got = [v.item() for v in ddpm.posterior_coefficients(t, sched)]
    assert got == pytest.approx([coef_x0, coef_xt, var], rel=1e-9, abs=1e-12)


def test_posterior_variance_equals_diffusers(hf, sched):
    # diffusers works in float32: 1 - abar_t near t = 1 loses digits (relative error ~6e-8 / 1e-4)
    for k, rel in [(1, 2e-3), (5, 1e-3), (300, 1e-4), (999, 1e-4)]:
        assert ddpm.posterior_coefficients(k + 1, sched)[2].item() == pytest.approx(hf._get_variance(k).item(), rel=rel)
    assert ddpm.posterior_coefficients(1, sched)[2].item() == 0.0  # the last step adds no noise


def test_posterior_mean_uses_both_coefficients(sched):
    x_t, x_0 = torch.randn(2, 3), torch.randn(2, 3)
    c0, ct, _ = ddpm.posterior_coefficients(40, sched)
    torch.testing.assert_close(ddpm.posterior_mean(x_t, x_0, 40, sched), (c0 * x_0 + ct * x_t).float())


# ---------------------------------------------------------------- Property 3 and diffusers' step

def test_x0_from_eps_inverts_q_sample(sched):
    x_0, eps = torch.randn(6, 5, dtype=torch.float64), torch.randn(6, 5, dtype=torch.float64)
    t = torch.tensor([1, 2, 100, 500, 900, 1000])
    torch.testing.assert_close(ddpm.x0_from_eps(ddpm.q_sample(x_0, t, eps, sched), t, eps, sched), x_0)


def test_eps_mean_equals_posterior_mean_for_the_true_noise(sched):
    x_0, eps = torch.randn(6, 5, dtype=torch.float64), torch.randn(6, 5, dtype=torch.float64)
    t = torch.tensor([1, 2, 100, 500, 900, 1000])
    x_t = ddpm.q_sample(x_0, t, eps, sched)
    torch.testing.assert_close(ddpm.mean_from_eps(x_t, t, eps, sched), ddpm.posterior_mean(x_t, x_0, t, sched))


@pytest.mark.parametrize("k", [0, 1, 17, 500, 999])
def test_reverse_step_equals_diffusers_step(hf, sched, k):
    gen = torch.Generator().manual_seed(k)
    x_t, eps_pred = torch.randn(2, 4, 8, 8, generator=gen), torch.randn(2, 4, 8, 8, generator=gen)
    out = hf.step(eps_pred, k, x_t, generator=torch.Generator().manual_seed(123))
    z = torch.randn(x_t.shape, generator=torch.Generator().manual_seed(123))  # the noise step drew
    sigma = hf._get_variance(k).sqrt() if k > 0 else torch.tensor(0.0)
    t = k + 1
    torch.testing.assert_close(ddpm.mean_from_eps(x_t, t, eps_pred, sched), out.prev_sample - sigma * z,
                               atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(ddpm.reverse_step(x_t, t, eps_pred, sched, noise=z), out.prev_sample,
                               atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(ddpm.x0_from_eps(x_t, t, eps_pred, sched), out.pred_original_sample,
                               atol=1e-4, rtol=1e-4)


def test_reverse_step_equals_diffusers_step_in_float64(sched):
    """With diffusers' tables in float64 too, the two implementations agree to rounding of float64."""
    hf64 = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", clip_sample=False)
    hf64.betas = hf64.betas.double()
    hf64.alphas = 1 - hf64.betas
    hf64.alphas_cumprod = torch.cumprod(hf64.alphas, 0)
    hf64.one = torch.tensor(1.0, dtype=torch.float64)
    gen = torch.Generator().manual_seed(2)
    for k in [0, 1, 2, 300, 999]:
        x_t, eps_pred = (torch.randn(3, 5, generator=gen, dtype=torch.float64) for _ in range(2))
        out = hf64.step(eps_pred, k, x_t, generator=torch.Generator().manual_seed(k))
        z = torch.randn(x_t.shape, generator=torch.Generator().manual_seed(k), dtype=torch.float64)
        torch.testing.assert_close(ddpm.reverse_step(x_t, k + 1, eps_pred, sched, noise=z), out.prev_sample,
                                   atol=1e-10, rtol=1e-10)


def test_sampling_with_the_exact_noise_recovers_a_single_point():
    """If the data is one point c, the best eps is (x_t - sqrt(abar_t) c) / sqrt(1 - abar_t); then x_0 = c."""
    sched = ddpm.Schedule.linear(100, 1e-3, 0.2)
    c = torch.tensor([0.7, -1.2])

    def exact_eps(x_t, t):
        abar_t = sched.abar[t].float()[:, None]  # (batch, 1)
        return (x_t - abar_t.sqrt() * c) / (1 - abar_t).sqrt()

    x_0, kept = ddpm.sample_chain(exact_eps, (8, 2), sched, torch.Generator().manual_seed(0), keep=(100, 30, 0))
    torch.testing.assert_close(x_0, c.expand(8, 2), atol=1e-5, rtol=0)
    assert sorted(kept) == [0, 30, 100] and torch.equal(kept[0], x_0)
    dist = {t: (x - c).norm(dim=1).mean().item() for t, x in kept.items()}
    assert dist[100] > dist[30] > dist[0]  # the noise shrinks on the way down


# ---------------------------------------------------------------- Algorithm 1

def test_ddpm_loss_is_mse_between_eps_and_the_prediction(hf, sched):
    gen = torch.Generator().manual_seed(1)
    x_0, eps = torch.randn(4, 2, generator=gen), torch.randn(4, 2, generator=gen)
    t = torch.tensor([1, 10, 500, 1000])
    model = lambda x, t: 0.5 * x + t[:, None] / 1000  # noqa: E731
    x_t = hf.add_noise(x_0, eps, t - 1)
    expected = ((eps - model(x_t, t)) ** 2).mean()
    torch.testing.assert_close(ddpm.ddpm_loss(model, x_0, t, eps, sched), expected, atol=1e-5, rtol=1e-5)
    perfect = lambda x, t: (x - sched.abar[t].float()[:, None].sqrt() * x_0) / (1 - sched.abar[t].float()[:, None]).sqrt()  # noqa: E731
    assert ddpm.ddpm_loss(perfect, x_0, t, eps, sched).item() < 1e-8


def test_training_loss_draws_t_from_1_to_T():
    sched = ddpm.Schedule(torch.full((5,), 0.1))
    seen = []

    def model(x, t):
        seen.append(t)
        return torch.zeros_like(x)

    for _ in range(40):
        ddpm.training_loss(model, torch.zeros(16, 2), sched)
    seen = torch.cat(seen)
    assert seen.min() == 1 and seen.max() == 5


def test_a_few_training_steps_lower_the_loss():
    torch.manual_seed(0)
    sched = ddpm.Schedule.linear(100, 1e-3, 0.2)
    model = ddpm.TinyEpsMLP(sched.T, hidden=32)
    losses = ddpm.train_eps_model(model, ddpm.toy_data_2d, sched, ddpm.ToyTrainConfig(steps=80, batch=256))
    assert sum(losses[-15:]) / 15 < 0.8 * sum(losses[:15]) / 15


# ---------------------------------------------------------------- clear errors

@pytest.mark.parametrize("betas, word", [([0.1, 1.0], "strictly between 0 and 1"),
                                         ([0.0, 0.1], "strictly between 0 and 1"),
                                         ([-0.1, 0.2], "strictly between 0 and 1"),
                                         ([float("nan")], "strictly between 0 and 1"),
                                         ([[0.1, 0.2]], "1-D"), ([], "1-D")])
def test_bad_schedules_are_refused(betas, word):
    with pytest.raises(ValueError, match=word):
        ddpm.Schedule(torch.tensor(betas))


def test_bad_T_is_refused():
    with pytest.raises(ValueError, match="positive whole number"):
        ddpm.linear_betas(0)


def test_t_out_of_range_names_the_range(sched):
    x = torch.randn(2, 3)
    with pytest.raises(ValueError, match=r"t = 1001 is out of range.*1 <= t <= T = 1000"):
        ddpm.mean_from_eps(x, 1001, x, sched)
    with pytest.raises(ValueError, match=r"t = 0 is out of range.*diffusers"):
        ddpm.posterior_coefficients(0, sched)
    with pytest.raises(ValueError, match="t = -1"):
        ddpm.q_sample(x, torch.tensor([3, -1]), x, sched)
    with pytest.raises(TypeError, match="integer"):
        ddpm.q_sample(x, 3.0, x, sched)
    with pytest.raises(TypeError, match="integer"):
        ddpm.q_sample(x, torch.tensor([0.5, 2.0]), x, sched)


def test_shapes_that_do_not_match_are_refused(sched):
    with pytest.raises(ValueError, match=r"x_0 has shape \(2, 3\) but eps has shape \(2, 4\)"):
        ddpm.q_sample(torch.randn(2, 3), 5, torch.randn(2, 4), sched)
    with pytest.raises(ValueError, match="one t per example"):
        ddpm.q_sample(torch.randn(2, 3), torch.tensor([1, 2, 3]), torch.randn(2, 3), sched)
    with pytest.raises(TypeError, match="floating-point torch tensor"):
        ddpm.x0_from_eps([[1.0]], 5, torch.randn(1, 1), sched)


def test_a_schedule_is_required(sched):
    with pytest.raises(TypeError, match="Schedule"):
        ddpm.q_sample(torch.randn(2), 5, torch.randn(2), sched.abar)


def test_the_two_formulas_written_once_match_diffusers():
    """add_noise is DDPMScheduler.add_noise at a batch of timesteps; x0_from_noise undoes it, and
    is DDPMScheduler.step's pred_original_sample (epsilon prediction, no clipping)."""
    hf = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", clip_sample=False)
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(3, 4, 5, 5, generator=g), torch.randn(3, 4, 5, 5, generator=g)
    k = torch.tensor([0, 499, 999])  # diffusers' timesteps
    abar = hf.alphas_cumprod[k].view(-1, 1, 1, 1)  # (3, 1, 1, 1)
    x_t = ddpm.add_noise(x0, eps, abar)
    assert torch.allclose(x_t, hf.add_noise(x0, eps, k), atol=1e-6)
    assert torch.allclose(ddpm.x0_from_noise(x_t, eps, abar), x0, atol=1e-4)
    hf.set_timesteps(1000)
    pred = hf.step(eps[1:2], 499, x_t[1:2]).pred_original_sample
    assert torch.allclose(ddpm.x0_from_noise(x_t[1:2], eps[1:2], abar[1:2]), pred, atol=1e-5)
