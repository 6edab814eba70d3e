"""The equations of Prompt-to-Prompt (p2p_lab.p2p.equations) against hand-written matrix algebra."""
import torch

from p2p_lab.p2p import equations as eq


def _probs(g, *shape):
    return torch.randn(*shape, generator=g, dtype=torch.float64).softmax(-1)


def test_edited_maps_by_hand():
    g = torch.Generator().manual_seed(0)
    A, A_star = _probs(g, 3, 4), _probs(g, 3, 4)  # 3 pixels, 4 tokens
    M = torch.tensor([[1., 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 1], [0, 0, 1, 0]], dtype=torch.float64)
    keep = torch.tensor([0., 0, 1, 0], dtype=torch.float64)
    w = torch.tensor([1., 2, 1, -1], dtype=torch.float64)
    alpha = torch.tensor([1., 1, 0, 1], dtype=torch.float64)
    out = eq.edited_maps(A, A_star, M, keep, w, alpha)
    for j in range(4):  # column by column, as the formula reads
        mapped = sum(A[:, i] * M[i, j] for i in range(4)) + A_star[:, j] * keep[j]
        want = alpha[j] * mapped * w[j] + (1 - alpha[j]) * A_star[:, j]
        assert torch.allclose(out[:, j], want)
    assert torch.equal(eq.edit_switch(A, A_star, 10, 20), A_star) and torch.equal(eq.edit_switch(A, A_star, 20, 20), A)


def test_the_edit_moved_onto_the_values_is_the_same_edit():
    g = torch.Generator().manual_seed(1)
    T, heads, n, L, d = 2, 3, 5, 6, 4
    q_src, k_src = torch.randn(heads, n, d, generator=g), torch.randn(heads, L, d, generator=g)
    q, k, v = torch.randn(T, heads, n, d, generator=g), torch.randn(T, heads, L, d, generator=g), torch.randn(T, heads, L, d, generator=g)
    M = torch.rand(T, L, L, generator=g)
    keep, w, alpha = (torch.rand(T, L, generator=g) for _ in range(3))
    A = torch.softmax(q_src @ k_src.transpose(-1, -2) / d ** 0.5, -1)  # (heads, n, L)
    A_star = torch.softmax(q @ k.transpose(-1, -2) / d ** 0.5, -1)  # (T, heads, n, L)
    per_token = lambda x: x[:, None, None, :]  # noqa: E731
    explicit = eq.edited_maps(A, A_star, M[:, None], per_token(keep), per_token(w), per_token(alpha)) @ v
    P, c = eq.value_maps(M, keep, w, alpha)
    fused = eq.fused_edit(q_src.expand(T, -1, -1, -1), k_src.expand(T, -1, -1, -1), q, k, v, P, c)
    assert torch.allclose(explicit, fused, atol=1e-5)
