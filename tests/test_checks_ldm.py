"""The notebook-04 checks pass the reference solutions and name each known mistake."""

import pytest
import torch

from p2p_lab import ldm
from p2p_lab.checks import ldm as checks


def test_guidance_check_passes_reference():
    assert checks.check_guidance(ldm.guidance).passed


@pytest.mark.parametrize("mistake", checks.GUIDANCE_MISTAKES, ids=lambda m: m.name)
def test_guidance_check_names_mistake(mistake):
    result = checks.check_guidance(mistake.compute)
    assert not result.passed
    assert result.mistake == mistake.name


def test_guidance_check_reports_not_implemented():
    def stub(eps_uncond, eps_cond, guidance_scale):
        raise NotImplementedError("guidance: write your solution here")

    result = checks.check_guidance(stub)
    assert not result.passed and "not implemented" in result.message


def test_sampling_step_check_passes_reference():
    assert checks.check_sampling_step(ldm.sampling_step).passed


@pytest.mark.parametrize("mistake", checks.STEP_MISTAKES, ids=lambda m: m.name)
def test_sampling_step_check_names_mistake(mistake):
    result = checks.check_sampling_step(mistake.compute)
    assert not result.passed
    assert result.mistake == mistake.name


def _hand_loop(pipe, prompt, seed, num_inference_steps, guidance_scale):
    return ldm.sample(pipe, prompt, seed, num_inference_steps, guidance_scale, progress=False).images


def test_sample_check_passes_reference():
    assert checks.check_sample(_hand_loop).passed


@pytest.mark.parametrize("mistake", checks.LOOP_MISTAKES, ids=lambda m: m.name)
def test_sample_check_names_mistake(mistake):
    result = checks.check_sample(mistake.compute)
    assert not result.passed
    assert result.mistake == mistake.name


def test_mistake_variants_without_the_mistake_match_the_reference():
    """The simulators of wrong solutions are right when no mistake is switched on."""
    case = checks.step_cases()[1]  # Euler, where every detail matters
    want = checks._step_reference(**case)
    assert torch.allclose(checks._step_variant(**case), want, atol=1e-5)
    case = checks.loop_cases()[1]
    assert torch.allclose(checks._loop_variant(**case), checks.loop_reference(**case), atol=1e-5)


def _ddim(z_t, eps, a_from, a_to, noise=lambda a: (1 - a).sqrt(), renoise=True):
    z0 = (z_t - noise(a_from) * eps) / a_from.sqrt()
    return a_to.sqrt() * z0 + (noise(a_to) * eps if renoise else 0)


DDIM_WRONG = {  # as a student would write each, from the formulas
    "returns_z0": lambda z_t, eps, abar_t, abar_prev: (z_t - (1 - abar_t).sqrt() * eps) / abar_t.sqrt(),
    "no_renoise": lambda z_t, eps, abar_t, abar_prev: _ddim(z_t, eps, abar_t, abar_prev, renoise=False),
    "abar_t_twice": lambda z_t, eps, abar_t, abar_prev: _ddim(z_t, eps, abar_t, abar_t),
    "noise_without_sqrt": lambda z_t, eps, abar_t, abar_prev: _ddim(z_t, eps, abar_t, abar_prev,
                                                                     noise=lambda a: 1 - a),
}


def test_ddim_step_check_passes_a_solution_and_names_each_mistake():
    assert checks.check_ddim_step(lambda z_t, eps, abar_t, abar_prev: _ddim(z_t, eps, abar_t, abar_prev)).passed
    assert set(DDIM_WRONG) == {m.name for m in checks.DDIM_MISTAKES}
    for name, wrong in DDIM_WRONG.items():
        result = checks.check_ddim_step(wrong)
        assert not result.passed and result.mistake == name, (name, result)
