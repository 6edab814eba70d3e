"""The machinery behind every public check: run the student's function, compare, explain.

A check runs the student's function on seeded inputs and compares the result with a trusted
reference (torch, diffusers, or the package). If they differ, it tries each *known mistake* (a
function that computes what a typical wrong solution computes) and, when one matches, prints the
hint that names that mistake. Tests prove that each named mistake is caught by its hint.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import torch

PASS, FAIL = "PASSED", "FAILED"


@dataclasses.dataclass
class CheckResult:
    name: str
    passed: bool
    message: str
    max_abs_diff: float | None = None
    mistake: str | None = None  # the name of the known mistake that matched, if any

    def __str__(self) -> str:
        return f"{self.name}: {PASS if self.passed else FAIL}: {self.message}"

    def __bool__(self) -> bool:
        return self.passed


@dataclasses.dataclass
class Mistake:
    """A typical wrong solution: ``compute(**case)`` gives what it returns; ``hint`` names it."""

    name: str
    compute: Callable
    hint: str


def _as_tensor(x):
    if isinstance(x, torch.Tensor):
        return x.detach().to(torch.float64).cpu()
    try:
        return torch.as_tensor(x, dtype=torch.float64)
    except Exception:  # noqa: BLE001 - anything not numeric is reported by the caller
        return None


def _close(a, b, atol: float, rtol: float) -> tuple[bool, float]:
    a, b = _as_tensor(a), _as_tensor(b)
    if a is None or b is None or a.shape != b.shape:
        return False, float("inf")
    if not torch.isfinite(a).all():
        return False, float("inf")
    diff = (a - b).abs().max().item() if a.numel() else 0.0
    return bool(torch.allclose(a, b, atol=atol, rtol=rtol)), diff


def run_check(name: str, student: Callable, reference: Callable, cases: list[dict],
              mistakes: tuple[Mistake, ...] = (), atol: float = 1e-5, rtol: float = 1e-4,
              verbose: bool = True, forbidden: tuple[str, ...] = ()) -> CheckResult:
    """Compare ``student(**case)`` with ``reference(**case)`` on every case; explain a mismatch.

    Unpacks tuple outputs: the student must return the same structure as the reference.
    ``forbidden``: dotted names of the package's (or a library's) own implementation of what the
    exercise asks; the student's function runs with them blocked, and a call fails the check at
    once with a message that says so (the grader's hidden tests block the same functions).
    """
    result = _run(name, student, reference, cases, mistakes, atol, rtol, forbidden)
    if verbose:
        print(result)
    return result


def _flatten(x):
    return list(x) if isinstance(x, (tuple, list)) else [x]


def _call(student, case: dict, forbidden: tuple[str, ...]):
    args = {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in case.items()}
    if not forbidden:
        return student(**args)
    from ..grading import forbid

    with forbid(*forbidden):
        return student(**args)


def _run(name, student, reference, cases, mistakes, atol, rtol, forbidden=()) -> CheckResult:
    from ..grading import ForbiddenCall

    if not callable(student):
        return CheckResult(name, False, f"expected a function, got {type(student).__name__}")
    worst = 0.0
    for i, case in enumerate(cases):
        want = _flatten(reference(**case))
        try:
            got = _call(student, case, forbidden)
        except ForbiddenCall as err:
            return CheckResult(name, False, f"your function {err} (the graded version blocks that call)")
        except NotImplementedError:
            return CheckResult(name, False, "not implemented yet: replace the `raise NotImplementedError` "
                                            "with your solution and run the cell again")
        except Exception as err:  # noqa: BLE001 - the student's error is the message
            return CheckResult(name, False, f"your function raised {type(err).__name__}: {err}")
        got = _flatten(got)
        if len(got) != len(want):
            return CheckResult(name, False, f"expected {len(want)} output(s), got {len(got)}")
        for j, (g, w) in enumerate(zip(got, want)):
            gt, wt = _as_tensor(g), _as_tensor(w)
            label = f"output {j}" if len(want) > 1 else "the output"
            if gt is None:
                return CheckResult(name, False, f"{label} is a {type(g).__name__}, expected a tensor")
            if gt.shape != wt.shape:
                return CheckResult(name, False, f"{label} has shape {tuple(gt.shape)}, expected "
                                                f"{tuple(wt.shape)} (case {i})")
            ok, diff = _close(gt, wt, atol, rtol)
            worst = max(worst, diff)
            if not ok:
                return _explain(name, case, got, mistakes, atol, rtol, diff, label, i)
    return CheckResult(name, True, f"matches the reference on {len(cases)} seeded case(s) "
                                   f"(max abs diff {worst:.1e})", worst)


def _explain(name, case, got, mistakes, atol, rtol, diff, label, i) -> CheckResult:
    for m in mistakes:
        try:
            wrong = _flatten(m.compute(**case))
        except Exception:  # noqa: BLE001 - a mistake that does not apply to this case
            continue
        if len(wrong) == len(got) and all(_close(g, w, atol, rtol)[0] for g, w in zip(got, wrong)):
            return CheckResult(name, False, f"hint: {m.hint}", diff, m.name)
    return CheckResult(name, False, f"{label} differs from the reference by up to {diff:.3g} "
                                    f"(case {i}); check each step against the formula", diff)
