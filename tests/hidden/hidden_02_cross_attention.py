"""Hidden tests of notebook 02 (cross-attention): more and harder cases than the public checks.

Run by ``p2p_lab.grading`` on the executed student notebook's namespace ``ns``.
"""
import torch

from p2p_lab.attention import token_maps as _token_maps_reference
from p2p_lab.checks import run_check
from p2p_lab.checks.attention import (CROSS_ATTENTION_MISTAKES, TOKEN_MAPS_MISTAKES,
                                      cross_attention_cases, cross_attention_reference,
                                      token_maps_cases)
from p2p_lab.grading import call_student, student_function

QUESTIONS = {
    "cross_attention": {"points": 2.0, "name": "cross_attention"},
    "token_maps": {"points": 2.0, "name": "token_maps"},
}

from p2p_lab.checks.attention import FORBIDDEN  # noqa: E402  (the public checks block the same calls)


def _passes(name, fn, reference, cases, mistakes, atol=1e-5):
    def student(**case):
        return call_student(fn, FORBIDDEN, **case)

    result = run_check(name, student, reference, cases, mistakes=mistakes, atol=atol, rtol=1e-4,
                       verbose=False)
    assert result.passed, result.message


def test_cross_attention(ns):
    fn = student_function(ns, "cross_attention")
    # the translation example's sizes (n=4 target, m=3 source) first: swapped queries and keys
    # give (3, 4) weights instead of (4, 3)
    probe = cross_attention_cases(seed=11, shapes=((4, 3, 6, 6, 5, 2),))[0]
    out = call_student(fn, FORBIDDEN, **probe)
    assert isinstance(out, (tuple, list)) and len(out) == 2, "return (output, weights)"
    assert tuple(out[1].shape) != (3, 4), (
        "your weights are m x n (3 x 4): the queries come from Y (n = 4 target tokens), the keys "
        "and values from X (m = 3 source tokens), so A is n x m")
    shapes = ((5, 5, 7, 7, 4, 3), (1, 6, 3, 5, 4, 4), (6, 1, 5, 3, 2, 7), (3, 4, 9, 6, 8, 16, 5),
              (2, 2, 3, 5, 4, 4, 6, 2))
    cases = cross_attention_cases(seed=2024, shapes=shapes)
    _passes("cross_attention", fn, cross_attention_reference, cases, CROSS_ATTENTION_MISTAKES)


def test_token_maps(ns):
    fn = student_function(ns, "token_maps")
    shapes = ((3, 5, 5, 7), (2, 3, 5, 4), (8, 4, 8, 16), (1, 1, 6, 3), (4, 8, 8, 77))
    _passes("token_maps", fn, _token_maps_reference, token_maps_cases(seed=77, shapes=shapes),
            TOKEN_MAPS_MISTAKES)
