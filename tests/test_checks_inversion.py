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


# ---------------------------------------------------------------- null-text's inner loop (Exercise 3)

def _optimise(mistake=None):
    """The inner loop written apart from the check (torch's Adam, the loss by hand), or
    with one of the mistakes students make."""
    def fn(eps_uncond_of, null, z_t, eps_cond, w, abar_t, abar_prev, z_target, lr, n_inner, threshold):
        u = torch.nn.Parameter(null.clone())
        opt = torch.optim.Adam([u], lr=lr)
        k = 0
        while k < n_inner:
            k += 1
            eps_u = eps_uncond_of(u)
            eps = (1 - w) * eps_u + w * eps_cond
            x0 = (z_t - torch.sqrt(1 - abar_t) * eps) / torch.sqrt(abar_t)
            loss = torch.mean((torch.sqrt(abar_prev) * x0 + torch.sqrt(1 - abar_prev) * eps - z_target) ** 2)
            if mistake != "no_zero_grad":
                opt.zero_grad()
            loss.backward()
            opt.step()
            if mistake != "no_early_stop" and loss.item() < threshold:
                break
        return u.detach(), k
    return fn


def test_optimise_null_check_passes_an_independent_solution():
    assert checks.check_optimise_null(_optimise()).passed


@pytest.mark.parametrize("mistake", ["no_zero_grad", "no_early_stop"])
def test_optimise_null_check_names_a_written_mistake(mistake):
    result = checks.check_optimise_null(_optimise(mistake))
    assert not result.passed and result.mistake == mistake, result.message


def test_optimise_null_check_reports_a_stub_and_a_wrong_return():
    def stub(*args):
        raise NotImplementedError
    assert "not implemented" in checks.check_optimise_null(stub).message
    assert "(null, steps)" in checks.check_optimise_null(lambda *args: args[1]).message


def test_run_null_text_with_an_independent_loop_equals_the_package():
    """Null-text inversion with the inner loop above = p2p.invert(..., "null-text"): embeddings and reconstruction."""
    import numpy as np

    from p2p_lab import p2p, shapes
    from p2p_lab.checks._core import check_pipeline

    pipe = check_pipeline()
    scene = shapes.sample_scene(np.random.default_rng(3))
    image = p2p.inversion.load_image(shapes.render(scene)[0], p2p.inversion.image_size(pipe))
    prompt = shapes.caption(scene)
    inv = p2p.invert(pipe, image, prompt, "null-text", num_inference_steps=5, guidance_scale=4.0)
    nulls, recon = checks.run_null_text(pipe, image, prompt, _optimise(), num_inference_steps=5, guidance_scale=4.0)
    assert (nulls - inv.null_embeddings).abs().max() < 1e-4
    assert np.abs(recon - inv.reconstruction(pipe)).max() < 1e-3
    first, none = checks.run_null_text(pipe, image, prompt, _optimise(), num_inference_steps=5, guidance_scale=4.0, first=2)
    assert none is None and (first - inv.null_embeddings[:2]).abs().max() < 1e-4
