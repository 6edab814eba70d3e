"""Hidden tests of notebook 01 (attention): more and harder cases than the public checks.

Run by ``p2p_lab.grading`` on the executed student notebook's namespace ``ns``.
"""
import torch

from p2p_lab.checks import run_check
from p2p_lab.checks.attention import (ATTENTION_MISTAKES, MULTI_HEAD_MISTAKES, attention_cases,
                                      attention_reference, multi_head_cases, multi_head_reference)
from p2p_lab.grading import call_student, student_function

QUESTIONS = {
    "attention": {"points": 2.0, "name": "attention"},
    "multi_head_attention": {"points": 2.0, "name": "multi_head_attention"},
}

from p2p_lab.checks.attention import FORBIDDEN  # noqa: E402  (the public checks block the same calls)


def _passes(name, fn, reference, cases, mistakes, forbidden, atol=1e-5):
    def student(**case):
        return call_student(fn, forbidden, **case)

    result = run_check(name, student, reference, cases, mistakes=mistakes, atol=atol, rtol=1e-4,
                       verbose=False)
    assert result.passed, result.message


def test_attention(ns):
    fn = student_function(ns, "attention")
    # square first (so mistakes are recognised), then: one query, one key, d_v != d_k, 4-D batches
    shapes = ((6, 6, 6, 6), (1, 5, 3, 2), (7, 1, 4, 9), (3, 2, 9, 5, 16, 3), (2, 4, 3, 8, 8, 4, 4))
    cases = attention_cases(seed=1234, shapes=shapes)
    cases.append({k: v.double() for k, v in attention_cases(seed=99, shapes=((4, 6, 5, 3),))[0].items()})
    _passes("attention", fn, attention_reference, cases, ATTENTION_MISTAKES, FORBIDDEN)
    # large scores: a softmax written as exp(s) / sum(exp(s)) overflows to NaN
    gen = torch.Generator().manual_seed(7)
    big = dict(Q=30 * torch.randn(5, 16, generator=gen), K=30 * torch.randn(4, 16, generator=gen),
               V=torch.randn(4, 3, generator=gen))
    out = call_student(fn, FORBIDDEN, **big)
    assert all(torch.isfinite(t).all() for t in out), (
        "with large scores (around 1e3) your function returns NaN or inf: subtract each row's "
        "maximum score before exp, or use torch.softmax")
    _passes("attention", fn, attention_reference, [big], ATTENTION_MISTAKES, FORBIDDEN, atol=1e-4)


def test_multi_head_attention(ns):
    fn = student_function(ns, "multi_head_attention")
    shapes = ((6, 12, 3), (1, 8, 4), (2, 5, 16, 8), (3, 7, 6, 1), (2, 3, 4, 20, 5))
    _passes("multi_head_attention", fn, multi_head_reference, multi_head_cases(seed=4321, shapes=shapes),
            MULTI_HEAD_MISTAKES, FORBIDDEN)
    # an output projection to another width
    gen = torch.Generator().manual_seed(5)
    d, heads = 8, 2
    case = dict(X=torch.randn(2, 5, d, generator=gen), W_q=torch.randn(d, d, generator=gen) / 3,
                W_k=torch.randn(d, d, generator=gen) / 3, W_v=torch.randn(d, d, generator=gen) / 3,
                W_o=torch.randn(d, 3, generator=gen), heads=heads)
    _passes("multi_head_attention", fn, multi_head_reference, [case], (), FORBIDDEN)
