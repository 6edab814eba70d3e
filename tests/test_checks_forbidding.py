"""A public check tells a student at once who calls the package's own implementation of the very
thing the exercise asks (the grader's hidden tests block the same calls and score them 0)."""
import pytest

from p2p_lab import attention, ddpm, ldm
from p2p_lab.p2p import equations

pytestmark = pytest.mark.forbidding


@pytest.mark.parametrize("check, borrowed, name", [
    ("check_attention", lambda Q, K, V: attention.scaled_dot_product_attention(Q, K, V), "scaled_dot_product_attention"),
    ("check_token_maps", lambda probs, height, width: attention.token_maps(probs, height, width), "token_maps"),
    ("check_q_sample", lambda x_0, t, eps, sched: ddpm.q_sample(x_0, t, eps, sched), "ddpm.q_sample"),
    ("check_reverse_step", lambda x_t, t, eps_pred, sched, z: ddpm.reverse_step(x_t, t, eps_pred, sched, noise=z),
     "ddpm.reverse_step"),
    ("check_guidance", lambda eps_uncond, eps_cond, guidance_scale: ldm.guidance(eps_uncond, eps_cond, guidance_scale),
     "ldm.guidance"),
    ("check_edit_switch", lambda A_t, A_star_t, t, tau: equations.edit_switch(A_t, A_star_t, t, tau), "edit_switch"),
    ("check_alpha_blend", lambda A_hat, A_star, alpha: equations.alpha_blend(A_hat, A_star, alpha), "alpha_blend"),
])
def test_borrowing_the_package_fails_the_public_check_and_says_so(check, borrowed, name):
    from p2p_lab import checks

    result = getattr(checks, check)(borrowed)
    assert not result.passed
    assert name in result.message and "own implementation" in result.message


def test_the_ddim_step_check_blocks_diffusers_and_the_package(shipped_pipe):
    from p2p_lab.checks import check_ddim_step

    def borrowed(z_t, eps, abar_t, abar_prev):
        sch = ldm.fresh_scheduler(shipped_pipe, 10)
        return ldm.ddim_step(sch, z_t, eps, sch.timesteps[0])

    result = check_ddim_step(borrowed)
    assert not result.passed and "ldm.ddim_step" in result.message


def test_forbidding_registration_misuse_names_the_fix():
    """p2p_lab.forbidding (below the checks and grading): wrong arguments are refused with the fix."""
    from p2p_lab import forbidding

    with pytest.raises(TypeError, match="register_namespace needs the namespace dict, got list"):
        forbidding.register_namespace([])
    with pytest.raises(TypeError, match="an object with a restore\\(\\) method"):
        forbidding.restore_after_calls(object())
    ns = {"f": len}
    forbidding.register_namespace(ns)
    try:
        with pytest.raises(forbidding.ForbiddenCall, match="called builtins.len"):
            with forbidding.forbid("builtins.len"):
                ns["f"]([])  # replaced in the registered namespace too
    finally:
        forbidding.unregister_namespace(ns)
    assert ns["f"] is len
