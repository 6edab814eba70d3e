"""Hidden tests of notebook 05 (Prompt-to-Prompt): more and harder cases than the public checks.

Run by ``p2p_lab.grading`` on the executed student notebook's namespace ``ns``. The references are
the formulas of the paper written as small functions in ``p2p_lab.checks.p2p`` (and, for the
mapper, the engine's own token alignment); they are computed outside ``forbid`` and the student's
function may not call them (nor the engine's edit).
"""
import torch

from p2p_lab.checks._core import run_check
from p2p_lab.checks.p2p import _copy_mapper, _maps, alpha_blend, apply_mapper, edit_switch, reweight
from p2p_lab.grading import call_student, student_function

QUESTIONS = {
    "p2p_edit_switch": {"points": 2.0, "name": "edit_switch"},
    "p2p_replace_mapper": {"points": 2.0, "name": "apply_mapper"},
    "p2p_alpha_blend": {"points": 2.0, "name": "alpha_blend"},
    "p2p_reweight": {"points": 2.0, "name": "reweight_attention"},
}

FORBID = ("p2p_lab.checks.p2p.edit_switch", "p2p_lab.checks.p2p.apply_mapper",
          "p2p_lab.checks.p2p.alpha_blend", "p2p_lab.checks.p2p.reweight",
          "p2p_lab.p2p.controls.EditPlan.edit_cross", "p2p_lab.p2p.edit.edit")


def _assert_passes(name, student, reference, cases, atol=1e-6):
    result = run_check(name, student, reference, cases, atol=atol, rtol=1e-5, verbose=False)
    assert result.passed, f"{name}: {result.message}"


def test_p2p_edit_switch(ns):
    fn = student_function(ns, "edit_switch")
    g = torch.Generator().manual_seed(2024)
    cases = []
    for n_steps, tau, shape in ((50, 501, (8, 64, 77)), (10, 1000, (2, 16, 16)), (25, 1, (4, 4, 16)),
                                (7, 430, (1, 2, 8, 8)), (30, 0, (3, 9, 5))):
        ts = torch.linspace(999, 0, n_steps).round().long()  # t counts down
        cases.append(dict(A_t=_maps(g, *shape), A_star_t=_maps(g, *shape), timesteps=ts, tau=tau))
    cases.append(dict(A_t=_maps(g, 2, 8, 16), A_star_t=_maps(g, 2, 8, 16),
                      timesteps=torch.tensor([900, 700, 700, 300]), tau=700))

    def student(A_t, A_star_t, timesteps, tau):
        outs = [call_student(fn, FORBID, A_t, A_star_t, int(t), int(tau)) for t in timesteps]
        for t, out in zip(timesteps, outs):
            assert isinstance(out, torch.Tensor), f"edit_switch returned {type(out).__name__} at t={int(t)}"
        return torch.stack(outs)

    def reference(A_t, A_star_t, timesteps, tau):
        return torch.stack([edit_switch(A_t, A_star_t, int(t), int(tau)) for t in timesteps])

    _assert_passes("edit_switch", student, reference, cases)


def _engine_mapper(source, target, variant):
    from transformers import CLIPTokenizer

    from p2p_lab.model import SHIPPED_MODEL
    from p2p_lab.p2p import replace_mapper

    tok = CLIPTokenizer.from_pretrained(str(SHIPPED_MODEL / "tokenizer"))

    return replace_mapper(tok, source, target, variant).double()


def test_p2p_replace_mapper(ns):
    fn = student_function(ns, "apply_mapper")
    g = torch.Generator().manual_seed(99)
    n = 16
    cases = [dict(A=_maps(g, 4, 64, n), M=_copy_mapper(n, {4: [4, 5, 6]})),
             dict(A=_maps(g, 2, 8, 16, n), M=_copy_mapper(n, {2: [2], 3: [3, 4]})),
             dict(A=_maps(g, 16, n), M=torch.rand(n, n, generator=g, dtype=torch.float64)),
             dict(A=_maps(g, 3, 5, 7, 4, n).float(), M=_copy_mapper(n, {1: [2, 3]}).float())]
    try:  # the engine's own alignment of a one-token word becoming two tokens (turquoise)
        M = _engine_mapper("a red circle on a blue background", "a turquoise circle on a blue background", "average")
        cases.append(dict(A=_maps(g, 4, 16, n), M=M))
    except Exception:  # noqa: BLE001 - the engine or model may be absent in a stripped bundle
        pass
    _assert_passes("apply_mapper", lambda A, M: call_student(fn, FORBID, A, M), apply_mapper, cases,
                   atol=1e-5)


def test_p2p_alpha_blend(ns):
    fn = student_function(ns, "alpha_blend")
    g = torch.Generator().manual_seed(7)
    cases = [dict(A_hat=_maps(g, 8, 16, 16), A_star=_maps(g, 8, 16, 16),
                  alpha=(torch.rand(16, generator=g) > 0.5).double()),
             dict(A_hat=_maps(g, 2, 4, 64, 77), A_star=_maps(g, 2, 4, 64, 77),
                  alpha=torch.rand(77, generator=g, dtype=torch.float64)),
             dict(A_hat=_maps(g, 64, 16), A_star=_maps(g, 64, 16), alpha=torch.zeros(16, dtype=torch.float64)),
             dict(A_hat=_maps(g, 64, 16), A_star=_maps(g, 64, 16), alpha=torch.ones(16, dtype=torch.float64))]
    _assert_passes("alpha_blend", lambda A_hat, A_star, alpha: call_student(fn, FORBID, A_hat, A_star, alpha),
                   alpha_blend, cases)


def test_p2p_reweight(ns):
    fn = student_function(ns, "reweight_attention")
    g = torch.Generator().manual_seed(11)
    cases = [dict(A=_maps(g, 8, 16, 16), token_indices=[2, 3], scale=2.0),
             dict(A=_maps(g, 2, 4, 64, 77), token_indices=[5], scale=-1.5),
             dict(A=_maps(g, 64, 16), token_indices=[1, 7, 9], scale=0.0),
             dict(A=_maps(g, 4, 16, 16), token_indices=[], scale=5.0),
             dict(A=_maps(g, 4, 16, 16).float(), token_indices=[15], scale=0.5)]
    _assert_passes("reweight_attention",
                   lambda A, token_indices, scale: call_student(fn, FORBID, A, list(token_indices), scale),
                   reweight, cases)
