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
