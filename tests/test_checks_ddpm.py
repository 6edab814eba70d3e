"""The public checks of notebook 03: a right solution passes, each typical mistake gets its hint.

The solutions below are written the way a student would write them (indexing the schedule's
tables), independently of the package's reference functions.
"""
import pytest
import torch.nn.functional as F

from p2p_lab.checks import ddpm as checks


def _b(v, x):
    """A schedule value (0-d, or (batch,) for a batch of t) shaped to broadcast against x."""
    return v.to(x.dtype).view(-1, *([1] * (x.dim() - 1))) if v.dim() == 1 else v.to(x.dtype)


# ---------------------------------------------------------------- q_sample

def q_right(x_0, t, eps, sched):
    abar_t = _b(sched.abar[t], x_0)
    return abar_t.sqrt() * x_0 + (1 - abar_t).sqrt() * eps


Q_WRONG = {
    "slides_noise_without_sqrt": lambda x_0, t, eps, sched: sched.abar[t].sqrt() * x_0 + (1 - sched.abar[t]) * eps,
    "signal_without_sqrt": lambda x_0, t, eps, sched: sched.abar[t] * x_0 + (1 - sched.abar[t]).sqrt() * eps,
    "alpha_for_abar": lambda x_0, t, eps, sched: sched.alpha[t].sqrt() * x_0 + (1 - sched.alpha[t]).sqrt() * eps,
    "t_minus_one": lambda x_0, t, eps, sched: q_right(x_0, t - 1, eps, sched),
    "t_plus_one": lambda x_0, t, eps, sched: q_right(x_0, t + 1, eps, sched),
    "minus_noise": lambda x_0, t, eps, sched: q_right(x_0, t, -eps, sched),
    "coefficients_swapped": lambda x_0, t, eps, sched: (1 - sched.abar[t]).sqrt() * x_0 + sched.abar[t].sqrt() * eps,
}


def test_q_sample_check_passes_a_right_solution():
    assert checks.check_q_sample(q_right).passed


@pytest.mark.parametrize("name", list(Q_WRONG))
def test_q_sample_check_names_each_mistake(name):
    result = checks.check_q_sample(Q_WRONG[name])
    assert not result.passed and result.mistake == name, result.message
    assert "hint" in result.message


def test_every_q_sample_mistake_is_tested():
    assert {m.name for m in checks.Q_SAMPLE_MISTAKES} == set(Q_WRONG)


# ---------------------------------------------------------------- posterior

def post_right(t, sched):
    a, ab, ab_prev = sched.alpha[t], sched.abar[t], sched.abar[t - 1]
    return (ab_prev.sqrt() * (1 - a) / (1 - ab), a.sqrt() * (1 - ab_prev) / (1 - ab),
            (1 - ab_prev) * (1 - a) / (1 - ab))


def _post(t, sched, c0=None, ct=None, var=None):
    right = post_right(t, sched)
    return (c0 if c0 is not None else right[0], ct if ct is not None else right[1],
            var if var is not None else right[2])


def _slides(t, sched):
    a, ab = sched.alpha[t], sched.abar[t]
    return _post(t, sched, c0=ab.sqrt() * (1 - a) / (1 - ab))


def _abar_in_xt(t, sched):
    ab, ab_prev = sched.abar[t], sched.abar[t - 1]
    return _post(t, sched, ct=ab.sqrt() * (1 - ab_prev) / (1 - ab))


def _no_roots(t, sched):
    a, ab, ab_prev = sched.alpha[t], sched.abar[t], sched.abar[t - 1]
    return _post(t, sched, c0=ab_prev * (1 - a) / (1 - ab), ct=a * (1 - ab_prev) / (1 - ab))


def _alpha_everywhere(t, sched):
    a, a_prev = sched.alpha[t], sched.alpha[t - 1]
    return (a_prev.sqrt() * (1 - a) / (1 - a), a.sqrt() * (1 - a_prev) / (1 - a), (1 - a_prev) * (1 - a) / (1 - a))


POST_WRONG = {
    "slides_abar_t_in_x0_coef": _slides,
    "abar_for_alpha_in_xt_coef": _abar_in_xt,
    "variance_is_beta": lambda t, sched: _post(t, sched, var=sched.beta[t]),
    "std_for_variance": lambda t, sched: _post(t, sched, var=post_right(t, sched)[2].sqrt()),
    "coefficients_swapped": lambda t, sched: (post_right(t, sched)[1], post_right(t, sched)[0], post_right(t, sched)[2]),
    "no_square_roots": _no_roots,
    "t_plus_one": lambda t, sched: post_right(t + 1, sched),
    "alpha_for_abar_everywhere": _alpha_everywhere,
}


def test_posterior_check_passes_a_right_solution():
    assert checks.check_posterior_coefficients(post_right).passed


@pytest.mark.parametrize("name", list(POST_WRONG))
def test_posterior_check_names_each_mistake(name):
    result = checks.check_posterior_coefficients(POST_WRONG[name])
    assert not result.passed and result.mistake == name, result.message


def test_every_posterior_mistake_is_tested():
    assert {m.name for m in checks.POSTERIOR_MISTAKES} == set(POST_WRONG)


def test_posterior_check_reports_a_wrong_number_of_outputs():
    result = checks.check_posterior_coefficients(lambda t, sched: post_right(t, sched)[:2])
    assert not result.passed and "expected 3 output" in result.message


# ---------------------------------------------------------------- x0_from_eps

def x0_right(x_t, t, eps, sched):
    return (x_t - (1 - sched.abar[t]).sqrt() * eps) / sched.abar[t].sqrt()


X0_WRONG = {
    "slides_formula": lambda x_t, t, eps, sched: (x_t + (1 - sched.abar[t]) * eps) / sched.abar[t].sqrt(),
    "plus_noise": lambda x_t, t, eps, sched: x0_right(x_t, t, -eps, sched),
    "noise_without_sqrt": lambda x_t, t, eps, sched: (x_t - (1 - sched.abar[t]) * eps) / sched.abar[t].sqrt(),
    "divide_without_sqrt": lambda x_t, t, eps, sched: (x_t - (1 - sched.abar[t]).sqrt() * eps) / sched.abar[t],
    "alpha_for_abar": lambda x_t, t, eps, sched: (x_t - (1 - sched.alpha[t]).sqrt() * eps) / sched.alpha[t].sqrt(),
    "t_minus_one": lambda x_t, t, eps, sched: x0_right(x_t, t - 1, eps, sched),
}


def test_x0_check_passes_a_right_solution():
    assert checks.check_x0_from_eps(x0_right).passed


@pytest.mark.parametrize("name", list(X0_WRONG))
def test_x0_check_names_each_mistake(name):
    result = checks.check_x0_from_eps(X0_WRONG[name])
    assert not result.passed and result.mistake == name, result.message


def test_every_x0_mistake_is_tested():
    assert {m.name for m in checks.X0_MISTAKES} == set(X0_WRONG)


# ---------------------------------------------------------------- mean_from_eps

def mean_right(x_t, t, eps, sched, sign=-1.0):
    a, ab = sched.alpha[t], sched.abar[t]
    return (x_t + sign * (1 - a) / (1 - ab).sqrt() * eps) / a.sqrt()


MEAN_WRONG = {
    "plus_noise": lambda x_t, t, eps, sched: mean_right(x_t, t, eps, sched, sign=1.0),
    "noise_without_sqrt": lambda x_t, t, eps, sched: (x_t - (1 - sched.alpha[t]) / (1 - sched.abar[t]) * eps) / sched.alpha[t].sqrt(),
    "abar_for_alpha_outside": lambda x_t, t, eps, sched: (x_t - (1 - sched.alpha[t]) / (1 - sched.abar[t]).sqrt() * eps) / sched.abar[t].sqrt(),
    "alpha_for_abar_in_noise": lambda x_t, t, eps, sched: (x_t - (1 - sched.alpha[t]).sqrt() * eps) / sched.alpha[t].sqrt(),
    "abar_for_alpha_in_noise": lambda x_t, t, eps, sched: (x_t - (1 - sched.abar[t]).sqrt() * eps) / sched.alpha[t].sqrt(),
    "no_outer_division": lambda x_t, t, eps, sched: x_t - (1 - sched.alpha[t]) / (1 - sched.abar[t]).sqrt() * eps,
    "returns_x0": x0_right,
    "t_minus_one": lambda x_t, t, eps, sched: mean_right(x_t, t - 1, eps, sched),
}


def test_mean_check_passes_a_right_solution():
    assert checks.check_mean_from_eps(mean_right).passed


@pytest.mark.parametrize("name", list(MEAN_WRONG))
def test_mean_check_names_each_mistake(name):
    result = checks.check_mean_from_eps(MEAN_WRONG[name])
    assert not result.passed and result.mistake == name, result.message


def test_every_mean_mistake_is_tested():
    assert {m.name for m in checks.MEAN_MISTAKES} == set(MEAN_WRONG)


# ---------------------------------------------------------------- ddpm_loss

def loss_right(eps_model, x_0, t, eps, sched, target="eps", feed="x_t", noise_root=True, shift=0, reduce="mean"):
    abar_t = _b(sched.abar[t + shift], x_0)
    x_t = abar_t.sqrt() * x_0 + ((1 - abar_t).sqrt() if noise_root else (1 - abar_t)) * eps
    pred = eps_model(x_t if feed == "x_t" else x_0, t)
    want = eps if target == "eps" else x_0
    if reduce == "sum":
        return ((want - pred) ** 2).sum()
    if reduce == "abs":
        return F.l1_loss(pred, want)
    return F.mse_loss(pred, want)


LOSS_WRONG = {
    "sum_not_mean": dict(reduce="sum"),
    "target_x0": dict(target="x0"),
    "model_sees_x0": dict(feed="x_0"),
    "noise_without_sqrt": dict(noise_root=False),
    "absolute_error": dict(reduce="abs"),
    "t_minus_one": dict(shift=-1),
}


def test_loss_check_passes_a_right_solution():
    assert checks.check_ddpm_loss(loss_right).passed


@pytest.mark.parametrize("name", list(LOSS_WRONG))
def test_loss_check_names_each_mistake(name):
    result = checks.check_ddpm_loss(lambda **case: loss_right(**case, **LOSS_WRONG[name]))
    assert not result.passed and result.mistake == name, result.message


def test_every_loss_mistake_is_tested():
    assert {m.name for m in checks.LOSS_MISTAKES} == set(LOSS_WRONG)


# ---------------------------------------------------------------- unimplemented and crashing solutions

def test_a_stub_is_reported_as_not_implemented():
    def stub(x_0, t, eps, sched):
        raise NotImplementedError("q_sample: write your solution here")
    result = checks.check_q_sample(stub)
    assert not result.passed and "not implemented" in result.message


def test_a_crash_is_reported_with_its_message():
    result = checks.check_q_sample(lambda x_0, t, eps, sched: x_0 + eps[None, :2])  # shapes clash
    assert not result.passed and "raised RuntimeError" in result.message


# ---------------------------------------------------------------- the hidden tests grade these solutions right

def _hidden():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).parent / "hidden" / "hidden_03_ddpm.py"
    spec = importlib.util.spec_from_file_location("hidden_03_ddpm", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def reverse_right(x_t, t, eps_pred, sched, z, variance="posterior"):
    var = (1 - sched.abar[t - 1]) / (1 - sched.abar[t]) * sched.beta[t] if variance == "posterior" else sched.beta[t]
    return mean_right(x_t, t, eps_pred, sched) + var.sqrt() * z


def test_reverse_step_check_passes_a_right_solution_and_names_mistakes():
    assert checks.check_reverse_step(reverse_right).passed
    beta = checks.check_reverse_step(lambda **c: reverse_right(**c, variance="beta"))
    assert not beta.passed and beta.mistake == "beta_variance", beta.message
    plain = checks.check_reverse_step(lambda x_t, t, eps_pred, sched, z: mean_right(x_t, t, eps_pred, sched))
    assert plain.mistake == "no_noise", plain.message


RIGHT = {"q_sample": q_right, "posterior_coefficients": post_right, "x0_from_eps": x0_right,
         "mean_from_eps": mean_right, "ddpm_reverse_step": reverse_right, "ddpm_loss": loss_right}


@pytest.mark.hidden_tests
@pytest.mark.forbidding  # the hidden tests build their blocked lists from the public checks' lists
def test_hidden_tests_pass_right_solutions():
    hidden = _hidden()
    assert set(hidden.QUESTIONS) == set(RIGHT)
    ns = {spec["name"]: RIGHT[q] for q, spec in hidden.QUESTIONS.items()}  # the notebook's names
    for question in hidden.QUESTIONS:
        getattr(hidden, f"test_{question}")(ns)


@pytest.mark.hidden_tests
@pytest.mark.forbidding
def test_hidden_tests_fail_wrong_and_borrowed_solutions():
    from p2p_lab import ddpm
    from p2p_lab.grading import ForbiddenCall

    hidden = _hidden()
    wrong = {"q_sample": Q_WRONG["slides_noise_without_sqrt"], "posterior_coefficients": _slides,
             "x0_from_eps": X0_WRONG["slides_formula"], "mean_from_eps": MEAN_WRONG["abar_for_alpha_outside"],
             "ddpm_reverse_step": lambda **c: reverse_right(**c, variance="beta"),
             "ddpm_loss": lambda **c: loss_right(**c, reduce="sum")}
    borrowed = {"q_sample": ddpm.q_sample, "posterior_coefficients": ddpm.posterior_coefficients,
                "x0_from_eps": ddpm.x0_from_eps, "mean_from_eps": ddpm.mean_from_eps,
                "ddpm_reverse_step": lambda x_t, t, eps_pred, sched, z: ddpm.reverse_step(x_t, t, eps_pred, sched, noise=z),
                "ddpm_loss": ddpm.ddpm_loss}
    for question in hidden.QUESTIONS:
        test = getattr(hidden, f"test_{question}")
        name = hidden.QUESTIONS[question]["name"]
        with pytest.raises(AssertionError):
            test({name: wrong[question]})
        with pytest.raises((AssertionError, ForbiddenCall)):
            test({name: borrowed[question]})
    with pytest.raises(AssertionError, match="does not define"):
        hidden.test_q_sample({})


@pytest.mark.forbidding
def test_the_package_formula_helpers_are_blocked_in_the_exercises():
    """ddpm.add_noise and ddpm.x0_from_noise are the package's own Property 1 / Option C: a q_sample or
    x0_from_eps that only calls them borrows the answer, and the check says so."""
    from p2p_lab import ddpm
    from p2p_lab.checks import check_q_sample, check_x0_from_eps
    def q_borrowed(x_0, t, eps, sched):
        return ddpm.add_noise(x_0, eps, ddpm.gather(sched.abar, t, x_0))

    def x0_borrowed(x_t, t, eps, sched):
        return ddpm.x0_from_noise(x_t, eps, ddpm.gather(sched.abar, t, x_t))

    for check, fn, name in ((check_q_sample, q_borrowed, "add_noise"), (check_x0_from_eps, x0_borrowed, "x0_from_noise")):
        res = check(fn)
        assert not res.passed and name in res.message and "blocks that call" in res.message, res.message
