"""Words, tokens, mappers, alignment and tau schedules, against hand-worked examples (issue 6)."""
import pytest
import torch

from p2p_lab.p2p import (alpha_schedule, global_alignment, refine_mapper, replace_mapper,
                         step_window, tau_to_timestep, timestep_to_tau, token_indices)
from p2p_lab.p2p.align import refine_matrix
from p2p_lab.tokenizer import build_tokenizer


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return build_tokenizer(tmp_path_factory.mktemp("bpe"))  # 16 tokens, "turquoise" = 2 tokens


def test_token_indices(tok):
    p = "a big turquoise circle on a red background"
    assert token_indices(tok, p, "big") == [2]
    assert token_indices(tok, p, "turquoise") == [3, 4]
    assert token_indices(tok, p, "circle") == [5]
    assert token_indices(tok, p, "a") == [1, 7]  # every occurrence
    assert token_indices(tok, p, "red background") == [8, 9]
    assert token_indices(tok, p, 2) == [3, 4]
    with pytest.raises(ValueError, match="'square' is not in the prompt"):
        token_indices(tok, p, "square")


def _pairs(M):
    return sorted((int(i), int(j), round(float(M[i, j]), 4)) for i, j in zip(*torch.nonzero(M, as_tuple=True)))


def test_replace_mapper_same_token_count(tok):
    M = replace_mapper(tok, "a red circle", "a blue circle")
    assert torch.equal(M, torch.eye(16))  # every word one token: identity


def test_replace_mapper_one_token_to_two(tok):
    # "red" (1 token, position 2) -> "turquoise" (2 tokens, positions 2, 3); the rest shifts by one
    L = tok.model_max_length
    for variant, w in (("copy", 1.0), ("average", 0.5)):
        M = replace_mapper(tok, "a red circle", "a turquoise circle", variant)
        assert M.shape == (L, L)
        want = {(0, 0, 1.0), (1, 1, 1.0), (2, 2, w), (2, 3, w), (3, 4, 1.0)}
        want |= {(min(j - 1, L - 1), j, 1.0) for j in range(5, L)}  # end token and pads, in order
        assert set(_pairs(M)) == want
        A = torch.rand(10, L)  # (pixels, tokens): A_hat = A M keeps the circle's map on the circle
        assert torch.allclose((A @ M)[:, 4], A[:, 3])


def test_replace_mapper_two_tokens_to_one_and_word_to_words(tok):
    M = replace_mapper(tok, "a turquoise circle", "a red circle")  # mean of the two maps
    assert M[2, 2] == 0.5 and M[3, 2] == 0.5 and M[4, 3] == 1.0
    # one word -> several words ("orange" -> "big tabby" on the slides)
    M = replace_mapper(tok, "a red circle", "a big blue circle", "average")
    assert M[2, 2] == 0.5 and M[2, 3] == 0.5 and M[3, 4] == 1.0 and M[1, 1] == 1.0


def test_replace_mapper_errors(tok):
    with pytest.raises(ValueError, match="refine"):
        replace_mapper(tok, "a circle", "a red circle")  # an insertion, not a swap
    with pytest.raises(ValueError, match="cannot be mapped"):
        replace_mapper(tok, "a red big circle", "a blue small green circle")
    with pytest.raises(ValueError, match="'copy' or 'average'"):
        replace_mapper(tok, "a red circle", "a blue circle", "mean")
    with pytest.raises(ValueError, match="tokens"):
        replace_mapper(tok, "a red circle", " ".join(["a big red circle"] * 4))  # > 16 tokens


def test_global_alignment_hand_worked():
    # a circle / a red circle: 'red' is a gap in the source
    assert global_alignment(list("ac"), list("arc")) == [(0, 0), (None, 1), (1, 2)]
    assert global_alignment([1, 2, 3], [1, 3]) == [(0, 0), (1, None), (2, 1)]


def test_refine_mapper_insertion(tok):
    index, alphas = refine_mapper(tok, "a circle on a blue background", "a red circle on a blue background")
    assert alphas[2] == 0  # 'red' is new: the target keeps its own map
    assert index[3] == 2 and alphas[3] == 1  # 'circle' takes the source's 'circle'
    assert index[1] == 1 and index[7] == 6 and index[0] == 0
    assert index[9] == 8 and alphas[9] == 1  # end token to end token
    M = refine_matrix(index, alphas)
    A = torch.rand(5, 16)
    assert torch.allclose((A @ M)[:, 3], A[:, 2]) and torch.all((A @ M)[:, 2] == 0)


def test_step_window_and_alpha_schedule(tok):
    assert step_window(0.8, 10).tolist() == [True] * 8 + [False] * 2
    assert step_window((0.2, 0.6), 5).tolist() == [False, True, True, False, False]
    assert step_window(0.57, 100).sum() == 57  # no floating-point off-by-one
    a = alpha_schedule(tok, "a turquoise circle", {"turquoise": (0.0, 0.5), "default_": 1.0}, 4)
    assert a.shape == (4, 16)
    assert a[:, [2, 3]].T.tolist() == [[1, 1, 0, 0]] * 2 and a[:, 4].tolist() == [1, 1, 1, 1]
    for bad in (1.5, -0.1, (0.6, 0.2), {"default_": 2.0}):
        with pytest.raises(ValueError, match=r"outside \[0, 1\]|starts after"):
            alpha_schedule(tok, "a red circle", bad, 4)
    with pytest.raises(ValueError, match="not in the prompt"):
        alpha_schedule(tok, "a red circle", {"blue": 0.5}, 4)


def test_tau_timestep_conversion():
    from diffusers import DDIMScheduler

    sch = DDIMScheduler(num_train_timesteps=1000, steps_offset=1)
    ts = sch.__class__.from_config(sch.config)
    ts.set_timesteps(10)
    t = tau_to_timestep(sch, 0.8, 10)  # 8 steps use the source: t >= tau exactly on those
    assert (ts.timesteps >= t).sum() == 8 and t == int(ts.timesteps[7])
    assert timestep_to_tau(sch, t, 10) == 0.8
    assert tau_to_timestep(sch, 0.0, 10) == 1000 and timestep_to_tau(sch, 1000, 10) == 0.0
