"""Hidden tests of notebook 06 (editing a real image): more and harder cases than the public checks.

Run by ``p2p_lab.grading`` on the executed student notebook's namespace ``ns``. References are the
package's functions (held against diffusers' DDIM step and its exact inverse by the tests),
computed outside ``forbid``; the student's call runs with the package's own implementations blocked.
"""
import torch

from p2p_lab.checks import run_check
from p2p_lab.checks.inversion import (FORBIDDEN, INVERSE_MISTAKES, NULL_MISTAKES, _inverse_reference,
                                      _null_reference, inversion_cases, null_cases)
from p2p_lab.grading import call_student, student_function

QUESTIONS = {
    "inv_ddim_inverse_step": {"points": 2.0, "name": "ddim_inverse_step"},
    "inv_null_text_loss": {"points": 3.0, "name": "null_text_loss"},
    "inv_optimise_null": {"points": 4.0, "name": "optimise_null"},
}


def test_inv_ddim_inverse_step(ns):
    from p2p_lab import ldm

    fn = student_function(ns, "ddim_inverse_step")
    cases = inversion_cases(seed=606, steps=(5, 40, 999), shapes=((3, 4, 8, 8), (1, 4, 64, 64), (2, 4, 2, 2)))

    def student(z_prev, eps, abar_t, abar_prev, _scheduler, _t):
        return call_student(fn, FORBIDDEN["ddim_inverse_step"], z_prev, eps, abar_t, abar_prev)

    result = run_check("ddim_inverse_step", student, _inverse_reference, cases, INVERSE_MISTAKES, atol=1e-4,
                       verbose=False)
    assert result.passed, result.message
    c = cases[4]  # the DDIM step undoes it exactly, for the same eps
    z_t = call_student(fn, FORBIDDEN["ddim_inverse_step"], c["z_prev"], c["eps"], c["abar_t"], c["abar_prev"])
    back = ldm.ddim_step(c["_scheduler"], torch.as_tensor(z_t), c["eps"], c["_t"])
    assert torch.allclose(back, c["z_prev"], atol=1e-4), "ddim_step(ddim_inverse_step(z)) should give z back"


def test_inv_null_text_loss(ns):
    fn = student_function(ns, "null_text_loss")
    cases = null_cases(seed=607)

    def loss_and_grad(z_t, eps_uncond, eps_cond, guidance_scale, abar_t, abar_prev, z_target):
        u = eps_uncond.clone().requires_grad_(True)
        with torch.enable_grad():
            loss = fn(z_t, u, eps_cond, guidance_scale, abar_t, abar_prev, z_target)
            assert isinstance(loss, torch.Tensor) and loss.dim() == 0 and loss.requires_grad, (
                "null_text_loss must return a 0-d tensor that carries gradients back to eps_uncond")
            (grad,) = torch.autograd.grad(loss, u)
        return loss.detach(), grad

    def student(z_t, eps_uncond, eps_cond, guidance_scale, abar_t, abar_prev, z_target, _scheduler, _t):
        return call_student(loss_and_grad, FORBIDDEN["null_text_loss"], z_t, eps_uncond, eps_cond,
                            guidance_scale, abar_t, abar_prev, z_target)

    result = run_check("null_text_loss", student, _null_reference, cases, NULL_MISTAKES, atol=1e-5, verbose=False)
    assert result.passed, result.message


def test_inv_optimise_null(ns):
    """Other seeded timesteps on the toy predictor, then a null-text inversion of a scene the public
    check never used, with the student's inner loop at every timestep, against p2p.invert's."""
    import numpy as np

    from p2p_lab import metrics, p2p, shapes
    from p2p_lab.checks._core import check_pipeline
    from p2p_lab.checks.inversion import (OPTIMISE_MISTAKES, _optimise_reference, _student_inputs, optimise_cases,
                                          run_null_text)

    fn = student_function(ns, "optimise_null")
    forbidden = FORBIDDEN["optimise_null"] + ("p2p_lab.checks.inversion._optimise_reference",)

    def student(null, cond, z_t, z_target, W, guidance_scale, lr, num_inner_steps, threshold, _scheduler, _t):
        eps_of, eps_c, abar_t, abar_prev = _student_inputs(null, cond, z_t, z_target, W, guidance_scale, lr,
                                                           num_inner_steps, threshold, _scheduler, _t)
        u, steps = call_student(fn, forbidden, eps_of, null, z_t, eps_c, guidance_scale, abar_t, abar_prev,
                                z_target, lr, num_inner_steps, threshold)
        return torch.as_tensor(u).detach(), torch.tensor(float(steps))

    result = run_check("optimise_null", student, _optimise_reference, optimise_cases(seed=608), OPTIMISE_MISTAKES,
                       atol=1e-5, verbose=False)
    assert result.passed, result.message
    pipe = check_pipeline()
    scene = shapes.sample_scene(np.random.default_rng(21))
    image = p2p.inversion.load_image(shapes.render(scene)[0], p2p.inversion.image_size(pipe))
    prompt = shapes.caption(scene)
    inv = p2p.invert(pipe, image, prompt, "null-text", num_inference_steps=6, guidance_scale=5.0)
    path = p2p.invert(pipe, image, prompt, "ddim", num_inference_steps=6, guidance_scale=5.0).latents
    nulls, recon = call_student(run_null_text, forbidden, pipe, image, prompt, fn, num_inference_steps=6,
                                guidance_scale=5.0, trajectory=path)
    diff = float((torch.as_tensor(nulls) - inv.null_embeddings).abs().max())
    assert diff < 1e-4, f"your null embeddings differ from null-text inversion's by {diff:.3g}"
    gap = abs(metrics.psnr(image, np.asarray(recon)) - metrics.psnr(image, inv.reconstruction(pipe)))
    assert gap < 0.05, f"your inversion's reconstruction is {gap:.2f} dB off null-text inversion's"
