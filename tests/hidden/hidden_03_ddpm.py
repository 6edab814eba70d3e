"""Hidden tests of notebook 03 (DDPM): more and harder cases than the public checks.

Run by ``p2p_lab.grading`` on the executed student notebook's namespace ``ns``. The references
are p2p_lab.ddpm's functions (held against diffusers and closed forms by tests/test_ddpm.py),
computed outside the ``forbid`` block; the student's call runs with the package's own
implementations (and diffusers' equivalents) blocked.
"""
import torch

from p2p_lab import ddpm
from p2p_lab.checks import run_check
from p2p_lab.checks.ddpm import FORBIDDEN as PUBLIC
from p2p_lab.checks.ddpm import (LOSS_MISTAKES, MEAN_MISTAKES, POSTERIOR_MISTAKES, Q_SAMPLE_MISTAKES,
                                 REVERSE_MISTAKES, X0_MISTAKES, _ToyEpsModel, loss_reference,
                                 mean_reference, posterior_reference, q_sample_reference,
                                 reverse_cases, reverse_reference, x0_reference)
from p2p_lab.grading import call_student, forbid, student_function

QUESTIONS = {
    "q_sample": {"points": 2.0, "name": "q_sample"},
    "posterior_coefficients": {"points": 2.0, "name": "posterior_coefficients"},
    "x0_from_eps": {"points": 2.0, "name": "x0_from_eps"},
    "mean_from_eps": {"points": 2.0, "name": "mean_from_eps"},
    "ddpm_reverse_step": {"points": 2.0, "name": "reverse_step"},
    "ddpm_loss": {"points": 2.0, "name": "ddpm_loss"},
}

_CHECKS = "p2p_lab.checks.ddpm."
# what the public checks block, plus the checks' own references
FORBIDDEN = {q: PUBLIC[name] + (_CHECKS + ref,) for q, name, ref in (
    ("q_sample", "q_sample", "q_sample_reference"),
    ("posterior_coefficients", "posterior_coefficients", "posterior_reference"),
    ("x0_from_eps", "x0_from_eps", "x0_reference"),
    ("mean_from_eps", "mean_from_eps", "mean_reference"),
    ("ddpm_reverse_step", "reverse_step", "reverse_reference"),
    ("ddpm_loss", "ddpm_loss", "loss_reference"))}


def _schedules():
    """Schedules unlike the public check's: SD's scaled-linear, a 300-step linear one, a short coarse one."""
    return {"scaled": ddpm.Schedule.scaled_linear(), "linear300": ddpm.Schedule.linear(300, 1e-4, 0.05),
            "short": ddpm.Schedule(torch.tensor([0.02, 0.15, 0.3, 0.45, 0.6, 0.75, 0.9]))}


def _passes(question, fn, reference, cases, mistakes, atol=1e-5):
    def student(**case):
        return call_student(fn, FORBIDDEN[question], **case)

    result = run_check(question, student, reference, cases, mistakes=mistakes, atol=atol, rtol=1e-4,
                       verbose=False)
    assert result.passed, result.message


def _tensor_cases(name, seed):
    """(shape, schedule, t, dtype) combinations: t = 1 and t = T edges, odd shapes, float64."""
    gen = torch.Generator().manual_seed(seed)
    s = _schedules()
    plan = [((4, 3, 5, 5), "short", 4, torch.float32), ((2, 7), "scaled", 731, torch.float32),
            ((3, 4, 8, 8), "linear300", 150, torch.float64), ((5,), "short", 1, torch.float32),
            ((1, 1, 2, 3), "scaled", 1000, torch.float64), ((6, 2), "short", 7, torch.float64),
            ((2, 4, 6, 6), "linear300", 2, torch.float32)]
    return [{name: torch.randn(shape, generator=gen, dtype=dtype), "t": t,
             "eps": torch.randn(shape, generator=gen, dtype=dtype), "sched": s[which]}
            for shape, which, t, dtype in plan]


def test_q_sample(ns):
    fn = student_function(ns, "q_sample")
    _passes("q_sample", fn, q_sample_reference, _tensor_cases("x_0", 301), Q_SAMPLE_MISTAKES)
    # Monte Carlo: many eps give x_t with mean sqrt(abar_t) x_0 and variance 1 - abar_t
    sched, t, n = _schedules()["scaled"], 400, 40000
    x_0 = torch.full((n, 2), 0.8, dtype=torch.float64)
    eps = torch.randn(n, 2, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    x_t = call_student(fn, FORBIDDEN["q_sample"], x_0, t, eps, sched)
    abar = sched.abar[t]
    assert abs(x_t.var().item() - (1 - abar).item()) < 0.03, (
        f"x_t should have variance 1 - abar_t = {(1 - abar).item():.3f}, yours has {x_t.var().item():.3f}")


def test_posterior_coefficients(ns):
    fn = student_function(ns, "posterior_coefficients")
    s = _schedules()
    cases = [{"t": t, "sched": s[which]} for t, which in
             [(3, "short"), (731, "scaled"), (2, "linear300"), (7, "short"), (1000, "scaled"), (1, "short"),
              (1, "scaled")]]
    _passes("posterior_coefficients", fn, posterior_reference, cases, POSTERIOR_MISTAKES, atol=1e-7)
    # at t = 1 the posterior is exact: x_0 itself, no variance
    c0, ct, var = call_student(fn, FORBIDDEN["posterior_coefficients"], 1, s["short"])
    assert abs(float(c0) - 1) < 1e-9 and abs(float(ct)) < 1e-9 and abs(float(var)) < 1e-12, (
        "at t = 1 (abar_0 = 1) the posterior is N(x_0, 0): coef_x0 = 1, coef_xt = 0, var = 0")


def test_x0_from_eps(ns):
    fn = student_function(ns, "x0_from_eps")
    _passes("x0_from_eps", fn, x0_reference, _tensor_cases("x_t", 303), X0_MISTAKES, atol=1e-4)
    # it inverts the closed form exactly
    sched = _schedules()["linear300"]
    gen = torch.Generator().manual_seed(8)
    x_0, eps = torch.randn(3, 3, 4, 4, generator=gen, dtype=torch.float64), torch.randn(3, 3, 4, 4, generator=gen, dtype=torch.float64)
    x_t = ddpm.q_sample(x_0, 250, eps, sched)
    got = call_student(fn, FORBIDDEN["x0_from_eps"], x_t, 250, eps, sched)
    assert torch.allclose(torch.as_tensor(got, dtype=torch.float64), x_0, atol=1e-8), (
        "x0_from_eps(q_sample(x_0, t, eps), t, eps) should give x_0 back")


def test_mean_from_eps(ns):
    fn = student_function(ns, "mean_from_eps")
    _passes("mean_from_eps", fn, mean_reference, _tensor_cases("x_t", 304), MEAN_MISTAKES, atol=1e-4)
    # with the true noise it is the posterior mean (Property 3)
    sched = _schedules()["scaled"]
    gen = torch.Generator().manual_seed(9)
    x_0, eps = torch.randn(2, 4, 6, 6, generator=gen, dtype=torch.float64), torch.randn(2, 4, 6, 6, generator=gen, dtype=torch.float64)
    for t in (1, 2, 500, 1000):
        x_t = ddpm.q_sample(x_0, t, eps, sched)
        want = ddpm.posterior_mean(x_t, x_0, t, sched)
        got = call_student(fn, FORBIDDEN["mean_from_eps"], x_t, t, eps, sched)
        assert torch.allclose(torch.as_tensor(got, dtype=torch.float64), want, atol=1e-7), (
            f"with the true noise, the eps-parameterised mean must equal the posterior mean (t = {t})")


def test_ddpm_reverse_step(ns):
    fn = student_function(ns, "reverse_step")
    s = _schedules()
    cases = [{**c, "sched": s[name]} for c, name in zip(reverse_cases(306, ts=(1, 2, 3, 150, 999)),
                                                       ("short", "short", "short", "linear300", "scaled"))]
    _passes("ddpm_reverse_step", fn, reverse_reference, cases, REVERSE_MISTAKES, atol=1e-4)
    # at t = 1 the last step adds no noise: x_0 = mu_theta(x_1, 1), whatever z is
    c = {**cases[0], "z": 100 * torch.ones_like(cases[0]["z"])}
    got = call_student(fn, FORBIDDEN["ddpm_reverse_step"], **c)
    want = ddpm.mean_from_eps(c["x_t"], 1, c["eps_pred"], c["sched"])
    assert torch.allclose(torch.as_tensor(got, dtype=torch.float64), want.double(), atol=1e-5), (
        "at t = 1, sigma_1 = 0: the last reverse step adds no noise")


def test_ddpm_loss(ns):
    fn = student_function(ns, "ddpm_loss")
    gen = torch.Generator().manual_seed(305)
    s = _schedules()
    cases = []
    for shape, which in [((8, 2), "scaled"), ((3, 4, 6, 6), "short"), ((5, 3, 4, 4), "linear300"), ((1, 2), "short")]:
        sched = s[which]
        t = torch.randint(1, sched.T + 1, (shape[0],), generator=gen)  # (batch,)
        cases.append({"eps_model": _ToyEpsModel(sched.T), "x_0": torch.randn(shape, generator=gen), "t": t,
                      "eps": torch.randn(shape, generator=gen), "sched": sched})
    cases.append(dict(cases[0], t=torch.tensor([1, 1000, 1, 1000, 500, 2, 999, 3])))  # the edges
    _passes("ddpm_loss", fn, loss_reference, cases, LOSS_MISTAKES, atol=1e-5)
    # a model that knows the noise has zero loss, and the loss gives a gradient to the model
    case = cases[1]
    weight = torch.tensor(0.5, requires_grad=True)
    model = lambda x_t, t: weight * case["eps"]  # noqa: E731
    with forbid(*FORBIDDEN["ddpm_loss"]):
        loss = fn(model, case["x_0"].clone(), case["t"].clone(), case["eps"].clone(), case["sched"])
    assert type(loss) is torch.Tensor and loss.dim() == 0, "return the loss as a 0-d tensor (a scalar)"
    loss.backward()
    assert weight.grad is not None and abs(weight.grad.item() + 1.0 * case["eps"].pow(2).mean().item()) < 1e-4, (
        "the loss must stay differentiable: compute it with torch operations, no .item() or numpy")
