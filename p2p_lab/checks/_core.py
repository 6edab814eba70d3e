"""The machinery behind every public check: run the student's function, compare, explain.

A check runs the student's function on seeded inputs and compares the result with a trusted
reference (torch, diffusers, or the package). If they differ, it tries each *known mistake* (a
function that computes what a typical wrong solution computes) and, when one matches, prints the
hint that names that mistake. Tests prove that each named mistake is caught by its hint.

The student version holds no answer. ``release`` records, for every public check, the reference's
outputs and every known mistake's outputs on the check's seeded cases (:func:`record_expectations`)
into ``expected.safetensors`` beside this module, and strips from the student's copy of the checks
the code that computed them (the functions marked :func:`answer` and each mistake's ``compute``;
``grading.bundle.strip_answers``). A check then compares with those recorded tensors; the master
package and the autograder (whose hidden tests use other cases) compute them live. The cases
themselves are rebuilt from their seeds (inputs are no answer), and a fingerprint of each case's
inputs, recorded with it, tells a changed input from a wrong answer.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import warnings
from pathlib import Path
from typing import Callable

import torch

from ..forbidding import ForbiddenCall, forbid

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


@functools.lru_cache(maxsize=1)
def check_pipeline():
    """The shipped model on the CPU in float32, for the checks' cases that need a pipeline: weights
    read from a file are the same on every installation (weights drawn at random by the builders
    could change with a diffusers version, and recorded expectations with them)."""
    from ..model import load_pipeline

    pipe = load_pipeline(device="cpu", dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def answer(fn: Callable) -> Callable:
    """Marks code that computes a check's expected values (a reference, a known mistake): the
    student version keeps its signature and drops its body (its outputs are recorded instead)."""
    return fn


class RecordedOnly(RuntimeError):
    """Raised by code the student version dropped (see :func:`answer`)."""


EXPECTED = Path(__file__).with_name("expected.safetensors")  # only in the student version
_recording: dict | None = None  # record_expectations() fills it
_forced: list = []  # expectations given by using_expectations() (tests), innermost last


@functools.lru_cache(maxsize=1)
def _shipped_expectations() -> dict | None:
    return load_expectations(EXPECTED) if EXPECTED.exists() else None


def _expectations() -> dict | None:
    return _forced[-1] if _forced else _shipped_expectations()


@contextlib.contextmanager
def using_expectations(expected: dict):
    """Checks compare with ``expected`` (from :func:`record_expectations`) instead of computing."""
    _forced.append(expected)
    try:
        yield
    finally:
        _forced.pop()


def record_expectations() -> dict:
    """Every public check's reference and known-mistake outputs on its cases, with a fingerprint of
    each case's inputs: {check name: [{"inputs": [...], "reference": [tensors], "mistakes":
    {name: [tensors] or None (it raised on that case)}}]}."""
    global _recording
    from .registry import check_modules

    def nothing(*args, **kwargs):
        raise NotImplementedError

    from diffusers.utils import logging as diffusers_logging

    verbosity = diffusers_logging.get_verbosity()
    _recording = {}
    try:  # quietly: the known mistakes make diffusers warn (a step without scale_model_input)
        diffusers_logging.set_verbosity_error()
        with warnings.catch_warnings(), contextlib.redirect_stdout(None):
            warnings.simplefilter("ignore")
            for module in check_modules():
                for name in (n for n in module.__all__ if n.startswith("check_")):
                    getattr(module, name)(nothing)
        return _recording
    finally:
        _recording = None
        diffusers_logging.set_verbosity(verbosity)


def save_expectations(expected: dict, path) -> Path:
    """``expected`` as one safetensors file (tensors, with the structure in its metadata)."""
    from safetensors.torch import save_file

    tensors, layout = {}, {}
    for check, cases in expected.items():
        layout[check] = []
        for i, case in enumerate(cases):
            entry = {"inputs": case["inputs"], "reference": len(case["reference"]), "mistakes": {}}
            for j, t in enumerate(case["reference"]):
                tensors[f"{check}|{i}|reference|{j}"] = t.contiguous()
            for m, outs in case["mistakes"].items():
                entry["mistakes"][m] = None if outs is None else len(outs)
                for j, t in enumerate(outs or ()):
                    tensors[f"{check}|{i}|{m}|{j}"] = t.contiguous()
            layout[check].append(entry)
    save_file(tensors, str(path), metadata={"layout": json.dumps(layout)})
    return Path(path)


def load_expectations(path) -> dict:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        layout = json.loads(f.metadata()["layout"])
        out = {}
        for check, cases in layout.items():
            out[check] = [{"inputs": c["inputs"],
                           "reference": [f.get_tensor(f"{check}|{i}|reference|{j}") for j in range(c["reference"])],
                           "mistakes": {m: None if n is None else [f.get_tensor(f"{check}|{i}|{m}|{j}") for j in range(n)]
                                        for m, n in c["mistakes"].items()}}
                          for i, c in enumerate(cases)]
    return out


def _fingerprint(case: dict) -> list:
    """What a case's numeric inputs are, compactly: [name, shape, sum, sum of |x|] of each (tensors,
    numbers)."""
    out = []
    for k, v in sorted(case.items()):
        t = _as_tensor(v) if isinstance(v, (torch.Tensor, int, float, list, tuple)) else None
        if t is not None:
            t = t.double()
            out.append([k, list(t.shape), float(t.sum()) if t.numel() else 0.0,
                        float(t.abs().sum()) if t.numel() else 0.0])
    return out


def _same_inputs(a: list, b: list) -> bool:
    """Two fingerprints of the same inputs, up to float rounding: a sum may move by 1e-5 of the sum of
    magnitudes (inputs a model computes, such as text embeddings, differ that much between library
    versions: transformers 4.40 against 5.x moved one sum by 6e-6 of 1.9), far less than another
    seed or case moves it."""
    def close(x, y):
        scale = y[3] if len(y) > 3 else abs(y[2])
        return x[0] == y[0] and x[1] == y[1] and abs(x[2] - y[2]) <= 1e-5 * (1 + scale)
    return len(a) == len(b) and all(close(x, y) for x, y in zip(a, b))


def _record(name, reference, cases, mistakes) -> CheckResult:
    if name in _recording:
        raise ValueError(f"two checks are named {name!r}: recorded expectations need distinct names")
    entries = []
    for case in cases:
        outs = {}
        for m in mistakes:
            try:
                outs[m.name] = [_as_tensor(w) for w in _flatten(m.compute(**case))]
            except Exception:  # noqa: BLE001 - a mistake that does not apply to this case
                outs[m.name] = None
        ref = [_as_tensor(w) for w in _flatten(reference(**case))]
        if any(t is None for t in ref):
            raise TypeError(f"check {name!r}: a reference output is not numeric, so it cannot be recorded")
        entries.append({"inputs": _fingerprint(case), "reference": ref, "mistakes": outs})
    _recording[name] = entries
    return CheckResult(name, True, "recorded")


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
    if _recording is not None:
        return _record(name, reference, cases, mistakes)
    expected = _expectations()
    if expected is None and reference is None:
        raise RuntimeError(f"the check {name!r} has neither its reference nor the expectations recorded "
                           f"for it ({EXPECTED.name} beside p2p_lab/checks/_core.py): reinstall the course "
                           f"package from the course's repository")
    values = _Live(reference) if expected is None else _Recorded(name, expected, cases)
    result = _run(name, student, values, cases, mistakes, atol, rtol, forbidden)
    if verbose:
        print(result)
    return result


class _Live:
    """Expected values computed: the reference and each mistake on the case itself."""

    def __init__(self, reference: Callable):
        self.reference_fn = reference

    def reference(self, i: int, case: dict) -> list:
        return _flatten(self.reference_fn(**case))

    def mistake(self, m: Mistake, i: int, case: dict) -> list:
        return _flatten(m.compute(**case))


class _Recorded:
    """Expected values recorded at release for the check's own cases (see the module's docstring)."""

    def __init__(self, name: str, expected: dict, cases: list[dict]):
        self.entries = expected.get(name)
        if self.entries is None or len(self.entries) != len(cases) or not all(
                _same_inputs(_fingerprint(c), e["inputs"]) for c, e in zip(cases, self.entries)):
            raise RuntimeError(
                f"the check {name!r} has no recorded expectations for these inputs: the course package "
                f"and its checks' recordings do not match (reinstall the package from the course's "
                f"repository; an instructor runs `python -m p2p_lab release` again)")

    def reference(self, i: int, case: dict) -> list:
        return self.entries[i]["reference"]

    def mistake(self, m: Mistake, i: int, case: dict) -> list:
        outs = self.entries[i]["mistakes"].get(m.name)
        if outs is None:
            raise LookupError(f"{m.name} does not apply to case {i}")
        return outs


def _flatten(x):
    return list(x) if isinstance(x, (tuple, list)) else [x]


def _call(student, case: dict, forbidden: tuple[str, ...]):
    args = {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in case.items()}
    if not forbidden:
        return student(**args)
    with forbid(*forbidden):
        return student(**args)


def _run(name, student, values, cases, mistakes, atol, rtol, forbidden=()) -> CheckResult:
    if not callable(student):
        return CheckResult(name, False, f"expected a function, got {type(student).__name__}")
    worst = 0.0
    for i, case in enumerate(cases):
        want = values.reference(i, case)
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
                return _explain(name, values, case, got, mistakes, atol, rtol, diff, label, i)
    return CheckResult(name, True, f"matches the reference on {len(cases)} seeded case(s) "
                                   f"(max abs diff {worst:.1e})", worst)


def _explain(name, values, case, got, mistakes, atol, rtol, diff, label, i) -> CheckResult:
    for m in mistakes:
        try:
            wrong = values.mistake(m, i, case)
        except Exception:  # noqa: BLE001 - a mistake that does not apply to this case
            continue
        if len(wrong) == len(got) and all(_close(g, w, atol, rtol)[0] for g, w in zip(got, wrong)):
            return CheckResult(name, False, f"hint: {m.hint}", diff, m.name)
    return CheckResult(name, False, f"{label} differs from the reference by up to {diff:.3g} "
                                    f"(case {i}); check each step against the formula", diff)
