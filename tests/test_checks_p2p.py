"""The notebook-05 checks pass the reference solutions and name each known mistake."""
import pytest
import torch

from p2p_lab.checks import p2p as C


# ---------------------------------------------------------------- hand-worked references

def test_edit_switch_follows_algorithm_1():
    A, A_star = torch.zeros(2, 3), torch.ones(2, 3)
    assert C.edit_switch(A, A_star, t=900, tau=500) is A  # early (large t): source maps
    assert C.edit_switch(A, A_star, t=500, tau=500) is A  # t == tau is not yet t < tau
    assert C.edit_switch(A, A_star, t=499, tau=500) is A_star


def test_apply_mapper_copies_one_column_to_two_tokens():
    # 'a circle' -> 'a big triangle': source token 2 feeds target tokens 2 and 3.
    A = torch.tensor([[0.1, 0.2, 0.7, 0.0]])  # (1 pixel, 4 tokens)
    M = torch.tensor([[1., 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 1], [0, 0, 0, 0]])
    assert torch.equal(C.apply_mapper(A, M), torch.tensor([[0.1, 0.2, 0.7, 0.7]]))


def test_alpha_blend_and_reweight_by_hand():
    A_hat, A_star = torch.tensor([[1., 1.]]), torch.tensor([[0., 0.]])
    assert torch.equal(C.alpha_blend(A_hat, A_star, torch.tensor([1., 0.25])), torch.tensor([[1., 0.25]]))
    A = torch.tensor([[0.5, 0.25, 0.25]])
    assert torch.equal(C.reweight(A, [1], 2.0), torch.tensor([[0.5, 0.5, 0.25]]))


# ---------------------------------------------------------------- the checks

def _solutions():
    return {
        C.check_edit_switch: lambda A_t, A_star_t, t, tau: A_star_t if t < tau else A_t,
        C.check_replace_mapper: lambda A, M: torch.einsum("...pi,ij->...pj", A, M),
        C.check_alpha_blend: lambda A_hat, A_star, alpha: A_star + alpha * (A_hat - A_star),
        C.check_reweight: _reweight_solution,
    }


def _reweight_solution(A, token_indices, scale):
    out = A.clone()
    for j in token_indices:
        out[..., j] = out[..., j] * scale
    return out


@pytest.mark.parametrize("check", list(_solutions()), ids=lambda c: c.__name__)
def test_check_passes_an_independent_solution(check):
    assert check(_solutions()[check]).passed


MISTAKES = [
    (C.check_edit_switch, "inverted", lambda A_t, A_star_t, t, tau: A_t if t < tau else A_star_t),
    (C.check_edit_switch, "boundary", lambda A_t, A_star_t, t, tau: A_star_t if t <= tau else A_t),
    (C.check_edit_switch, "always_target", lambda A_t, A_star_t, t, tau: A_star_t),
    (C.check_edit_switch, "always_source", lambda A_t, A_star_t, t, tau: A_t),
    (C.check_replace_mapper, "transposed", lambda A, M: torch.einsum("...pi,ji->...pj", A, M)),
    (C.check_replace_mapper, "renormalised", lambda A, M: torch.nn.functional.normalize(A @ M, p=1, dim=-1)),
    (C.check_replace_mapper, "elementwise", lambda A, M: A * M.diagonal()),
    (C.check_alpha_blend, "swapped", lambda A_hat, A_star, alpha: alpha * A_star + (1 - alpha) * A_hat),
    (C.check_alpha_blend, "wrong_axis",
     lambda A_hat, A_star, alpha: alpha.unsqueeze(-1) * A_hat + (1 - alpha.unsqueeze(-1)) * A_star),
    (C.check_alpha_blend, "renormalised",
     lambda A_hat, A_star, alpha: (lambda B: B / B.sum(-1, keepdim=True))(alpha * A_hat + (1 - alpha) * A_star)),
    (C.check_reweight, "renormalised",
     lambda A, token_indices, scale: (lambda B: B / B.sum(-1, keepdim=True))(_reweight_solution(A, token_indices, scale))),
    (C.check_reweight, "rows", lambda A, token_indices, scale: _rows(A, token_indices, scale)),
    (C.check_reweight, "shifted", lambda A, token_indices, scale: _reweight_solution(A, [j - 1 for j in token_indices], scale)),
    (C.check_reweight, "shifted_right", lambda A, token_indices, scale: _reweight_solution(A, [j + 1 for j in token_indices], scale)),
    (C.check_reweight, "others", lambda A, token_indices, scale: _reweight_solution(
        A, [j for j in range(A.shape[-1]) if j not in token_indices], 1 / scale)),
    (C.check_reweight, "every_column", lambda A, token_indices, scale: A * scale),
]


def _rows(A, token_indices, scale):
    out = A.clone()
    out[..., token_indices, :] *= scale
    return out


@pytest.mark.parametrize("check, name, wrong", MISTAKES, ids=[f"{c.__name__}-{n}" for c, n, _ in MISTAKES])
def test_check_names_the_mistake(check, name, wrong, capsys):
    result = check(wrong)
    assert not result.passed
    assert result.mistake == name, result.message
    assert "hint:" in capsys.readouterr().out


@pytest.mark.parametrize("check", list(_solutions()), ids=lambda c: c.__name__)
def test_check_reports_a_stub_and_a_crash(check, capsys):
    def stub(*args, **kwargs):
        raise NotImplementedError("q: write your solution here")
    assert "not implemented yet" in check(stub).message

    def crash(*args, **kwargs):
        raise IndexError("boom")
    assert "IndexError" in check(crash).message


def test_edit_switch_rejects_a_non_tensor():
    result = C.check_edit_switch(lambda A_t, A_star_t, t, tau: "A_t")
    assert not result.passed and "one of the two attention tensors" in result.message


# ---------------------------------------------------------------- the editing processor (notebook 05)

class _Processor:
    """An editing processor written apart from the check's reference (per head, with einsum);
    ``mistake`` makes it wrong in one of the ways students are."""

    mistake = None

    def __init__(self, M, alpha):
        self.M, self.alpha, self.step = M, alpha, 0

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None):
        ctx = encoder_hidden_states
        q, k, v = (attn.head_to_batch_dim(f(x)) for f, x in ((attn.to_q, hidden_states), (attn.to_k, ctx), (attn.to_v, ctx)))
        b, h = hidden_states.shape[0], attn.heads
        probs = torch.einsum("bpd,btd->bpt", q, k).mul(attn.scale).softmax(-1)
        A = (probs.reshape(h, b, *probs.shape[1:]).transpose(0, 1) if self.mistake == "head_major"
             else probs.reshape(b, h, *probs.shape[1:])).clone()
        start = 1 if self.mistake == "uncond_edited" else b // 2 + 1
        for row in range(start, b):
            if row == b // 2:
                continue
            src = A[0] if row < b // 2 else A[b // 2]
            t = (row - 1) if row < b // 2 else row - b // 2 - 1
            a = self.alpha[t, self.step]
            A[row] = a * torch.einsum("hpi,ij->hpj", src, self.M[t]) + (1 - a) * A[row]
        A = A.transpose(0, 1).reshape(probs.shape) if self.mistake == "head_major" else A.reshape(probs.shape)
        return attn.to_out[1](attn.to_out[0](attn.batch_to_head_dim(A @ v)))


def test_edit_processor_check_passes_an_independent_solution():
    assert C.check_edit_processor(_Processor).passed


@pytest.mark.parametrize("mistake", ["uncond_edited", "head_major"])
def test_edit_processor_check_names_a_written_mistake(mistake, capsys):
    wrong = type("Wrong", (_Processor,), {"mistake": mistake})
    result = C.check_edit_processor(wrong)
    assert not result.passed and result.mistake == mistake, result.message
    assert "hint" in capsys.readouterr().out


def test_edit_processor_check_reports_a_stub():
    class Stub(_Processor):
        def __call__(self, *args, **kwargs):
            raise NotImplementedError
    result = C.check_edit_processor(Stub)
    assert not result.passed and "not implemented" in result.message


def test_a_word_swap_through_the_processor_equals_the_engine():
    """Algorithm 1 with M and alpha in the student's processor = p2p.edit with self-attention and
    the kept context off (two targets: a one-token swap and a two-token word, batched)."""
    import numpy as np

    from p2p_lab import p2p
    from p2p_lab.checks._core import check_pipeline

    pipe = check_pipeline()
    src, targets = "a red circle on a blue background", ["a red square on a blue background",
                                                         "a turquoise circle on a blue background"]
    mine = C.run_edit_processor(pipe, src, targets, _Processor, cross_tau=0.6, seed=3, num_inference_steps=4)
    engine = p2p.edit(pipe, src, targets, cross_tau=0.6, self_tau=0.0, context_tau=0.0, seed=3, num_inference_steps=4)
    assert np.abs(mine - engine.images).max() < 1e-4


def test_run_edit_processor_refuses_an_insertion():
    from p2p_lab.checks._core import check_pipeline

    with pytest.raises(ValueError, match="word swaps"):
        C.run_edit_processor(check_pipeline(), "a red circle on a blue background",
                             "a big red circle on a blue background", _Processor, num_inference_steps=2)


# ---------------------------------------------------------------- the local blend across steps (notebook 05)

class _Blender:
    """A local blend written apart from the engine (per row, with einsum and an explicit union);
    ``mistake`` makes it wrong in one of the ways students are."""

    mistake = None

    def __init__(self, tokens, latent_hw, start_step, dilate, threshold):
        self.tokens, self.hw, self.start = tokens, latent_hw, start_step
        self.dilate, self.threshold = dilate, threshold
        self.maps = []

    def add(self, probs, resolution):
        m = torch.einsum("rhpl,rl->rp", probs, self.tokens) / probs.shape[1]
        mode = dict(mode="nearest") if self.mistake == "nearest" else dict(mode="bilinear", align_corners=False)
        self.maps.append(torch.nn.functional.interpolate(m.reshape(len(m), 1, *resolution), size=self.hw, **mode))

    def apply(self, step, z_src, z_tgt):
        maps = self.maps
        if self.mistake != "stale_maps":
            self.maps = []
        if step < self.start or not maps:
            return z_tgt
        m = torch.stack(maps).mean(0)
        k = self.dilate
        if k:
            m = torch.nn.functional.max_pool2d(m, 2 * k + 1, stride=1, padding=k)
        keep = [mi / mi.max() > self.threshold for mi in m]
        mask = torch.stack([keep[0] | keep[r] for r in range(1, len(keep))]).float()
        return mask * z_tgt + (1 - mask) * z_src


def test_local_blender_check_passes_an_independent_solution():
    assert C.check_local_blender(_Blender).passed


@pytest.mark.parametrize("mistake", ["stale_maps", "nearest"])
def test_local_blender_check_names_a_written_mistake(mistake, capsys):
    wrong = type("Wrong", (_Blender,), {"mistake": mistake})
    result = C.check_local_blender(wrong)
    assert not result.passed and result.mistake == mistake, result.message
    assert "hint" in capsys.readouterr().out


def test_local_blender_check_reports_a_stub():
    class Stub(_Blender):
        def add(self, probs, resolution):
            raise NotImplementedError
    result = C.check_local_blender(Stub)
    assert not result.passed and "not implemented" in result.message


def test_an_edit_through_the_blender_equals_the_engines_local_blend():
    """The student's blender in the sampling loop = p2p.edit with the same LocalBlend (two targets)."""
    import numpy as np

    from p2p_lab import p2p
    from p2p_lab.checks._core import check_pipeline

    pipe = check_pipeline()
    src, targets = "a red circle on a blue background", ["a red square on a blue background",
                                                         "a red triangle on a blue background"]
    words = ["circle", "square", "triangle"]
    mine = C.run_local_blender(pipe, src, targets, words, _Blender, start=0.25, seed=3, num_inference_steps=4)
    engine = p2p.edit(pipe, src, targets, local_blend=p2p.LocalBlend(words, start=0.25), seed=3, num_inference_steps=4)
    plain = p2p.edit(pipe, src, targets, seed=3, num_inference_steps=4)
    assert np.abs(mine - engine.images).max() < 1e-4
    assert np.abs(plain.images - engine.images).max() > 1e-3  # the blend changed the picture


@pytest.mark.parametrize("flag", ["stale", "early", "nearest", "inverted", "last_layer", "heads_sum"])
def test_each_blender_mistake_is_told_apart(flag):
    """Every named mistake changes the output on the check's cases, and no two give the same one
    (so the hint the check prints is the mistake made)."""
    flags = ["stale", "early", "nearest", "inverted", "last_layer", "heads_sum"]
    outs = {f: torch.cat([C._blender_wrong(**{f: True})(**c).flatten() for c in C.blender_cases()]) for f in flags}
    ref = torch.cat([C._blender_reference(**c).flatten() for c in C.blender_cases()])
    assert not torch.allclose(outs[flag], ref, atol=1e-6)
    assert all(not torch.allclose(outs[flag], outs[f], atol=1e-6) for f in flags if f != flag)
