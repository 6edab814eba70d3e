"""Hidden tests of notebook 04 (latent diffusion sampling): more and harder cases than the public checks.

Run by ``p2p_lab.grading`` on the executed student notebook's namespace ``ns``. References are
diffusers itself (``scheduler.step``, ``pipe(...)``) and the package, computed outside ``forbid``.
"""
import torch

from p2p_lab.checks import run_check
from p2p_lab.checks.ldm import (GUIDANCE_MISTAKES, LOOP_MISTAKES, STEP_MISTAKES, _guidance_cases,
                                _step_reference, check_pipeline, fresh_scheduler_state, loop_cases, loop_reference,
                                step_cases)
from p2p_lab.grading import call_student, student_function

QUESTIONS = {
    "ldm_guidance": {"points": 1.0, "name": "guidance"},
    "ldm_sampling_step": {"points": 2.0, "name": "sampling_step"},
    "ldm_ddim_step": {"points": 2.0, "name": "ddim_step"},
    "ldm_sample": {"points": 3.0, "name": "sample_by_hand"},
}

from p2p_lab.checks.ldm import FORBIDDEN  # noqa: E402  (the public checks block the same calls)

FORBID_GUIDANCE, FORBID_STEP, FORBID_LOOP = FORBIDDEN["guidance"], FORBIDDEN["sampling_step"], FORBIDDEN["sample"]


def _passes(name, fn, reference, cases, mistakes, forbidden, atol):
    def student(**case):
        return call_student(fn, forbidden, **case)

    result = run_check(name, student, reference, cases, mistakes=mistakes, atol=atol, rtol=1e-4,
                       verbose=False)
    assert result.passed, result.message


def test_ldm_guidance(ns):
    from p2p_lab.ldm import guidance

    fn = student_function(ns, "guidance")
    cases = _guidance_cases(seed=2024)
    g = torch.Generator().manual_seed(5)
    for shape, w in (((2, 4, 64, 64), 12.0), ((1, 4, 8, 8), -1.5), ((5, 3), 0.5)):
        cases.append({"eps_uncond": torch.randn(shape, generator=g),
                      "eps_cond": torch.randn(shape, generator=g), "guidance_scale": w})
    cases.append({k: (v.double() if isinstance(v, torch.Tensor) else v) for k, v in cases[0].items()})
    _passes("guidance", fn, guidance, cases, GUIDANCE_MISTAKES, FORBID_GUIDANCE, atol=1e-5)
    out = call_student(fn, FORBID_GUIDANCE, **cases[-1])
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float64, (
        "guidance should keep the inputs' dtype (float64 in, float64 out): combine the tensors "
        "with arithmetic, without converting them")


def test_ldm_sampling_step(ns):
    fn = student_function(ns, "sampling_step")
    cases = step_cases(seed=77, kinds=("ddim", "euler", "dpm"), steps=20, at=7,
                       guidance_scales=(9.0, 2.5, 6.0), batch=2)
    cases += step_cases(seed=3, kinds=("ddim", "euler"), steps=8, at=0, guidance_scales=(1.5,))
    _passes("sampling_step", fn, _step_reference, cases, STEP_MISTAKES, FORBID_STEP, atol=1e-4)


def test_ldm_sample(ns):
    fn = fresh_scheduler_state(student_function(ns, "sample_by_hand"))  # no state left by a run before
    pipe = check_pipeline()
    cases = loop_cases(pipe, seeds=(11, 12, 13), steps=(6, 4, 3), guidance_scales=(8.0, 5.0, 2.0),
                       kinds=("ddim", "euler", "dpm"),
                       prompts=("a small purple triangle on a yellow background",
                                "a big turquoise circle", "a green square on a red background"))
    # a batch of two prompts drawn from one generator, as diffusers draws it
    batch = dict(cases[0], prompt=["a red circle", "a blue square on a green background"], seed=4)
    _passes("sample_by_hand", fn, loop_reference, cases + [batch], LOOP_MISTAKES, FORBID_LOOP,
            atol=1e-4)
    # SD v1's topology: 77-token prompts, factor-8 autoencoder, 4 resolutions
    from p2p_lab.testing import sd_like_pipeline

    sd = loop_cases(sd_like_pipeline(seed=1, latent_size=8), seeds=(21,), steps=(2,),
                    guidance_scales=(7.5,), kinds=("ddim",))
    _passes("sample_by_hand", fn, loop_reference, sd, LOOP_MISTAKES, FORBID_LOOP, atol=1e-4)


def test_ldm_ddim_step(ns):
    from p2p_lab.checks.ldm import DDIM_MISTAKES, ddim_cases, ddim_reference
    from p2p_lab.ldm import abar_pair

    fn = student_function(ns, "ddim_step")
    cases = ddim_cases(seed=404, steps=(7, 30, 999), shapes=((3, 4, 8, 8), (1, 4, 64, 64), (2, 4, 2, 2)))
    forbidden = FORBIDDEN["ddim_step"]

    def student(z_t, eps, t, scheduler):
        abar_t, abar_prev = abar_pair(scheduler, t)
        return call_student(fn, forbidden, z_t, eps, abar_t, abar_prev)

    result = run_check("ddim_step", student, ddim_reference, cases, mistakes=DDIM_MISTAKES, atol=1e-4,
                       rtol=1e-4, verbose=False)
    assert result.passed, result.message
