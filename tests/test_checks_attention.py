"""Each public check of notebooks 01-02 passes the reference and names each mistake it knows."""
import pytest
import torch

from p2p_lab import attention as att
from p2p_lab.checks import attention as C

CHECKS = [
    (C.check_attention, C.attention_reference, C.ATTENTION_MISTAKES),
    (C.check_multi_head_attention, C.multi_head_reference, C.MULTI_HEAD_MISTAKES),
    (C.check_cross_attention, C.cross_attention_reference, C.CROSS_ATTENTION_MISTAKES),
    (C.check_token_maps, att.token_maps, C.TOKEN_MAPS_MISTAKES),
]
MISTAKES = [(check, m) for check, _, mistakes in CHECKS for m in mistakes]


def _torch_attention(Q, K, V):  # an independent correct solution
    out = torch.nn.functional.scaled_dot_product_attention(Q, K, V)
    w = torch.softmax(Q @ K.transpose(-2, -1) / Q.shape[-1] ** 0.5, -1)
    return out, w


@pytest.mark.parametrize("check, reference, _", CHECKS)
def test_reference_passes(check, reference, _):
    assert check(reference).passed


def test_independent_solution_passes():
    assert C.check_attention(_torch_attention).passed


@pytest.mark.parametrize("check, mistake", MISTAKES, ids=[m.name for _, m in MISTAKES])
def test_each_mistake_is_named(check, mistake):
    result = check(mistake.compute)
    assert not result.passed
    assert result.mistake == mistake.name
    assert mistake.hint in result.message


def test_hand_written_mistakes_are_recognised():
    def no_sqrt(Q, K, V):
        w = torch.softmax(Q @ K.transpose(-2, -1), dim=-1)
        return w @ V, w

    def swapped(Y, X, W_q, W_k, W_v):
        q, k, v = X @ W_q, Y @ W_k, Y @ W_v
        w = torch.softmax(q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5, dim=-1)
        return w @ v, w

    assert C.check_attention(no_sqrt).mistake == "no_scaling"
    assert C.check_cross_attention(swapped).mistake == "queries_keys_swapped"


def test_unfinished_and_broken_functions():
    def stub(Q, K, V):
        raise NotImplementedError("attention: write your solution here")

    assert "not implemented yet" in C.check_attention(stub).message
    assert "raised ZeroDivisionError" in C.check_attention(lambda Q, K, V: 1 / 0).message
    assert "shape" in C.check_token_maps(lambda probs, height, width: probs).message
    assert not C.check_attention(None).passed
