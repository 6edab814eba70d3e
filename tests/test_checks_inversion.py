"""The notebook-06 checks pass a hand-written solution and name each known mistake (each written
here as a student would write it, from the formulas)."""
import pytest
import torch

from p2p_lab.checks import inversion as checks


def _step(z, eps, a_from, a_to, noise=lambda a: (1 - a).sqrt(), renoise=True):
    z0 = (z - noise(a_from) * eps) / a_from.sqrt()
    return a_to.sqrt() * z0 + (noise(a_to) * eps if renoise else 0)


def inverse(z_prev, eps, abar_t, abar_prev):
    return _step(z_prev, eps, abar_prev, abar_t)


INVERSE_WRONG = {
    "forward_step": lambda z_prev, eps, abar_t, abar_prev: _step(z_prev, eps, abar_t, abar_prev),
    "returns_z0": lambda z_prev, eps, abar_t, abar_prev: _step(z_prev, eps, abar_prev, abar_t, renoise=False),
    "noise_without_sqrt": lambda z_prev, eps, abar_t, abar_prev: _step(z_prev, eps, abar_prev, abar_t,
                                                                        noise=lambda a: 1 - a),
}


def null_loss(z_t, eps_uncond, eps_cond, w, abar_t, abar_prev, z_target, guide=None, target=None, reduce="mean"):
    eps = (guide or (lambda u, c, w: u + w * (c - u)))(eps_uncond, eps_cond, w)
    err = _step(z_t, eps, abar_t, abar_prev) - (z_t if target == "z_t" else z_target)
    return (err ** 2).mean() if reduce == "mean" else (err ** 2).sum()


NULL_WRONG = {
    "guidance_swapped": lambda *a: null_loss(*a, guide=lambda u, c, w: c + w * (u - c)),
    "no_guidance": lambda *a: null_loss(*a, guide=lambda u, c, w: c),
    "compares_with_z_t": lambda *a: null_loss(*a, target="z_t"),
    "sum_not_mean": lambda *a: null_loss(*a, reduce="sum"),
}


EXERCISES = {"ddim_inverse_step": (checks.check_ddim_inverse_step, inverse, INVERSE_WRONG),
             "null_text_loss": (checks.check_null_text_loss, null_loss, NULL_WRONG)}


@pytest.mark.parametrize("exercise", EXERCISES)
def test_check_passes_a_solution(exercise):
    check, solution, _ = EXERCISES[exercise]
    assert check(solution).passed


@pytest.mark.parametrize("exercise, name", [(e, n) for e, (_, _, wrong) in EXERCISES.items() for n in wrong])
def test_check_names_mistake(exercise, name):
    check, _, wrong = EXERCISES[exercise]
    result = check(wrong[name])
    assert not result.passed and result.mistake == name, result


def test_null_text_loss_check_wants_a_gradient():
    result = checks.check_null_text_loss(lambda *a: null_loss(*a).detach())
    assert not result.passed and "carries no gradient" in result.message


def test_every_mistake_is_tested():
    assert set(INVERSE_WRONG) == {m.name for m in checks.INVERSE_MISTAKES}
    assert set(NULL_WRONG) == {m.name for m in checks.NULL_MISTAKES}


def test_stubs_report_not_implemented():
    def stub(*args):
        raise NotImplementedError("write your solution here")

    for check in (checks.check_ddim_inverse_step, checks.check_null_text_loss):
        result = check(stub)
        assert not result.passed and "not implemented" in result.message
