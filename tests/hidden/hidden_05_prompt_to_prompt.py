"""Hidden tests of notebook 05 (Prompt-to-Prompt): more and harder cases than the public checks.

Run by ``p2p_lab.grading`` on the executed student notebook's namespace ``ns``. The references are
the formulas of the paper written as small functions in ``p2p_lab.checks.p2p`` (and, for the
mapper, the engine's own token alignment); they are computed outside ``forbid`` and the student's
function may not call them (nor the engine's edit).
"""
import torch

from p2p_lab.checks import run_check
from p2p_lab.checks.p2p import _copy_mapper, _maps, alpha_blend, apply_mapper, edit_switch, reweight
from p2p_lab.grading import call_student, student_function

QUESTIONS = {
    "p2p_map_recorder": {"points": 3.0, "name": "MapRecorder"},
    "p2p_edit_switch": {"points": 2.0, "name": "edit_switch"},
    "p2p_build_mapper": {"points": 3.0, "name": "build_mapper"},
    "p2p_replace_mapper": {"points": 2.0, "name": "apply_mapper"},
    "p2p_alpha_blend": {"points": 2.0, "name": "alpha_blend"},
    "p2p_alignment_table": {"points": 3.0, "name": "alignment_table"},
    "p2p_reweight": {"points": 2.0, "name": "reweight_attention"},
    "p2p_blend_mask": {"points": 3.0, "name": "blend_mask"},
    "p2p_edit_processor": {"points": 5.0, "name": "EditProcessor"},
    "p2p_local_blender": {"points": 4.0, "name": "LocalBlender"},
}

from p2p_lab.checks.p2p import FORBIDDEN as PUBLIC  # noqa: E402  (the public checks block the same calls)

# the public lists, plus the checks' own references and the engine's edit
FORBID = tuple(dict.fromkeys(PUBLIC["edit_switch"] + PUBLIC["apply_mapper"] + PUBLIC["alpha_blend"]
                             + PUBLIC["reweight_attention"] + (
    "p2p_lab.checks.p2p.edit_switch", "p2p_lab.checks.p2p.apply_mapper", "p2p_lab.checks.p2p.alpha_blend",
    "p2p_lab.checks.p2p.reweight", "p2p_lab.p2p.controls.EditPlan.edit_cross", "p2p_lab.p2p.edit.edit")))
FORBID_MAPPER = PUBLIC["build_mapper"] + ("p2p_lab.p2p.edit.edit",)
FORBID_TABLE = PUBLIC["alignment_table"]
FORBID_BLEND = PUBLIC["blend_mask"]


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


def test_p2p_build_mapper(ns):
    from p2p_lab.checks.p2p import _mapper_reference, mapper_cases
    from p2p_lab.testing import sd_tokenizer

    fn = student_function(ns, "build_mapper")
    prompts = [("a red circle on a blue background", "a green circle on a blue background"),
               ("a circle and a square", "a big red triangle and a square"),
               ("a turquoise circle on a red background", "a yellow circle on a red background")]
    cases = mapper_cases(prompts)
    sd = [("A painting of a squirrel eating a burger", "A painting of a tabby cat eating a burger"),
          ("A painting of a squirrel eating a burger", "A painting of a quokka eating a burger"),
          ("a photograph of a cat sitting on a wooden table", "a photograph of a dog sitting on a wooden table")]
    cases += mapper_cases(sd, sd_tokenizer())  # 77 tokens: the long padding tail

    def student(pairs, n_source, n_target, length, variant, _prompts):
        out = call_student(fn, FORBID_MAPPER, [(list(a), list(b)) for a, b in pairs], n_source, n_target,
                           length, variant)
        return torch.as_tensor(out, dtype=torch.float64)

    _assert_passes("build_mapper", student, lambda **c: _mapper_reference(**c).double(), cases, atol=1e-6)


def test_p2p_alignment_table(ns):
    from p2p_lab.checks.p2p import _table_reference, alignment_cases

    fn = student_function(ns, "alignment_table")
    cases = alignment_cases(seed=31) + [dict(a=[], b=[1, 2], match=1.0, mismatch=-1.0, gap=-1.0),
                                        dict(a=[3, 3, 3], b=[3], match=1.0, mismatch=-2.0, gap=-0.25),
                                        dict(a=list(range(12)), b=list(range(3, 15)), match=1.0, mismatch=-1.0, gap=0.0)]

    def student(a, b, match, mismatch, gap):
        return torch.as_tensor(call_student(fn, FORBID_TABLE, list(a), list(b), match, mismatch, gap),
                               dtype=torch.float64)

    _assert_passes("alignment_table", student, _table_reference, cases, atol=1e-9)


def test_p2p_blend_mask(ns):
    from p2p_lab.checks.p2p import _blend_reference, blend_cases

    fn = student_function(ns, "blend_mask")
    g = torch.Generator().manual_seed(77)
    cases = blend_cases(seed=5) + [dict(maps=torch.rand(4, 1, 16, 16, generator=g) ** 3, dilate=3, threshold=0.6),
                                   dict(maps=torch.rand(2, 1, 64, 64, generator=g), dilate=1, threshold=0.9)]

    def student(maps, dilate, threshold):
        return torch.as_tensor(call_student(fn, FORBID_BLEND, maps.clone(), dilate, threshold)).double()

    _assert_passes("blend_mask", student, _blend_reference, cases, atol=0)


def test_p2p_map_recorder(ns):
    from p2p_lab.checks.p2p import check_map_recorder

    cls = student_function(ns, "MapRecorder")
    forbidden = PUBLIC["MapRecorder"] + ("p2p_lab.attention._LayerRecorder",)
    for prompt, steps, seed in (("a big green triangle on a yellow background", 5, 3),
                                ("a small blue square on a red background", 3, 11)):
        result = check_map_recorder(cls, prompt, steps, seed, forbidden=forbidden)
        assert result.passed, result.message


def test_p2p_edit_processor(ns):
    """Other seeded layers and batches (three targets, more heads), then a word swap of two targets
    sampled through the student's processor against the engine's edit (computed outside forbid)."""
    import numpy as np

    from p2p_lab import p2p
    from p2p_lab.checks._core import check_pipeline
    from p2p_lab.checks.p2p import _attention_module, _processor_reference, processor_cases, run_edit_processor

    cls = student_function(ns, "EditProcessor")
    forbidden = PUBLIC["EditProcessor"] + ("p2p_lab.checks.p2p._processor_reference", "p2p_lab.p2p.edit.edit")
    g = torch.Generator().manual_seed(505)
    cases = processor_cases(seed=9) + [dict(hidden=torch.randn(8, 7, 8, generator=g), context=torch.randn(8, 6, 6, generator=g),
                                            M=torch.rand(3, 6, 6, generator=g), alpha=torch.rand(3, 4, 6, generator=g),
                                            step=3, heads=4, weight_seed=41)]

    def student(hidden, context, M, alpha, step, heads, weight_seed):
        def run(M, alpha):
            proc = cls(M, alpha)
            proc.step = step
            with torch.no_grad():
                return proc(_attention_module(weight_seed, heads), hidden.clone(), encoder_hidden_states=context.clone())
        return call_student(run, forbidden, M, alpha)

    _assert_passes("edit_processor", student, _processor_reference, cases, atol=1e-5)
    pipe = check_pipeline()
    source, targets = "a green triangle on a yellow background", ["a green square on a yellow background",
                                                                   "a green triangle on a turquoise background"]
    run = dict(cross_tau=0.7, seed=12, num_inference_steps=4)
    engine = p2p.edit(pipe, source, targets, self_tau=0.0, context_tau=0.0, **run).images
    mine = call_student(run_edit_processor, forbidden, pipe, source, targets, cls, **run)
    diff = float(np.abs(np.asarray(mine) - engine).max())
    assert diff < 1e-4, f"a word swap through your EditProcessor differs from p2p.edit by {diff:.3g} (pixels in [0, 1])"


def test_p2p_local_blender(ns):
    """Runs of another seed (one again from a later start, wider dilation), then an edit of two targets through the
    student's blender against the engine's local blend (computed outside forbid)."""
    import numpy as np

    from p2p_lab import p2p
    from p2p_lab.checks._core import check_pipeline
    from p2p_lab.checks.p2p import _blender_reference, blender_cases, run_blender_case, run_local_blender

    cls = student_function(ns, "LocalBlender")
    forbidden = PUBLIC["LocalBlender"] + ("p2p_lab.checks.p2p._blender_reference", "p2p_lab.p2p.edit.edit")
    cases = blender_cases(seed=31)
    for case in cases[:1]:  # the same run from a later start, with a wider dilation
        cases.append(dict(case, start_step=2, dilate=2, threshold=0.4))

    def student(**case):
        return call_student(run_blender_case, forbidden, cls, **case)

    _assert_passes("local_blender", student, _blender_reference, cases, atol=1e-6)
    pipe = check_pipeline()
    source, targets = "a green triangle on a yellow background", ["a green square on a yellow background",
                                                                   "a green circle on a yellow background"]
    words, run = ["triangle", "square", "circle"], dict(seed=7, num_inference_steps=5)
    engine = p2p.edit(pipe, source, targets, local_blend=p2p.LocalBlend(words, threshold=0.4, start=0.4), **run).images

    class Guarded:  # the student's blender, each of its calls with the package's own blend blocked
        def __init__(self, *args):
            from p2p_lab.forbidding import forbid

            with forbid(*forbidden):
                self.inner = cls(*args)

        def add(self, probs, resolution):
            call_student(self.inner.add, forbidden, probs, resolution)

        def apply(self, step, z_src, z_tgt):
            return call_student(self.inner.apply, forbidden, step, z_src, z_tgt)

    mine = run_local_blender(pipe, source, targets, words, Guarded, threshold=0.4, start=0.4, **run)
    diff = float(np.abs(np.asarray(mine) - engine).max())
    assert diff < 1e-4, f"an edit through your LocalBlender differs from p2p.edit's local blend by {diff:.3g} (pixels in [0, 1])"
