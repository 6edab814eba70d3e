"""Forbidden calls: while :func:`forbid` is open, calling the package's (or a library's) own
implementation of what an exercise asks raises :class:`ForbiddenCall`. The public checks
(:mod:`p2p_lab.checks`) and the grader's hidden tests (:mod:`p2p_lab.grading`, through
:func:`call_student` and :func:`student_function`) both block calls with it, so it sits below both
and imports nothing of the package."""
from __future__ import annotations

import contextlib
import sys
import types
import warnings


class ForbiddenCall(BaseException):
    """The graded code called a function it was asked to write itself (see :func:`forbid`).

    A ``BaseException`` so that a student's ``except Exception`` cannot swallow it; :func:`forbid`
    re-raises it on exit even if it was swallowed by a bare ``except``.
    """


_ACTIVE: list["forbid"] = []  # the forbid contexts now open, innermost last
_NAMESPACES: list[dict] = []  # executed student namespaces (register_namespace)
_SNAPSHOT = None  # the grader's snapshot of trusted modules, restored after every student call
SNAPSHOT_GLOBAL = "_SNAPSHOT"  # its global's name: a snapshot of this module keeps itself there


def register_namespace(ns: dict) -> None:
    """A student's executed namespace: :func:`forbid` replaces forbidden functions there too."""
    if not isinstance(ns, dict):
        raise TypeError(f"register_namespace needs the namespace dict, got {type(ns).__name__}")
    _NAMESPACES.append(ns)


def unregister_namespace(ns: dict) -> None:
    """Undo :func:`register_namespace` (a namespace not registered is ignored)."""
    if any(n is ns for n in _NAMESPACES):
        _NAMESPACES[:] = [n for n in _NAMESPACES if n is not ns]


def restore_after_calls(snapshot) -> None:
    """After every forbidden block closes, call ``snapshot.restore()`` (the grader's snapshot of
    trusted modules, undoing whatever a student's call patched); ``None`` stops it."""
    if snapshot is not None and not callable(getattr(snapshot, "restore", None)):
        raise TypeError("restore_after_calls needs an object with a restore() method (the grader's "
                        "snapshot), or None")
    global _SNAPSHOT
    _SNAPSHOT = snapshot


def _resolve(dotted: str):
    """``"torch.nn.functional.softmax"`` -> (owner object, attribute name, current value)."""
    import importlib

    parts = dotted.split(".")
    for i in range(len(parts) - 1, 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        try:
            for p in parts[i:-1]:
                obj = getattr(obj, p)
            return obj, parts[-1], getattr(obj, parts[-1])
        except AttributeError:
            return None
    return None


def forbidden_hit(name: str) -> ForbiddenCall:
    """Called by a forbidden function's stand-in: records the call, returns the exception to raise."""
    for ctx in _ACTIVE:
        if name in ctx.names:
            ctx.calls.append(name)
    return ForbiddenCall(f"called {name}, the package's own implementation of what this exercise "
                         f"asks you to write; write it yourself from the formula")


def _stand_in(name: str):
    def forbidden(*args, **kwargs):
        raise forbidden_hit(name)

    forbidden.__name__ = forbidden.__qualname__ = name.rsplit(".", 1)[-1]
    return forbidden


def _raising_code(name: str) -> types.CodeType:
    """Code for a function body that raises ForbiddenCall, runnable with any function's globals."""
    src = (f"def _forbidden(*args, **kwargs):\n    import {__name__} as _g\n"
           f"    raise _g.forbidden_hit({name!r})\n")
    scope: dict = {}
    exec(compile(src, f"<forbidden {name}>", "exec"), scope)
    return scope["_forbidden"].__code__


class forbid:
    """Context manager: while open, calling any of the named functions raises :class:`ForbiddenCall`.

    ``with forbid("p2p_lab.attention.scaled_dot_product_attention",
    "torch.nn.functional.scaled_dot_product_attention"): out = student_fn(...)``.
    Each name is replaced on its owner (module or class), in every loaded module and registered
    student namespace that holds it under any name, and, for Python functions, in its code object,
    so aliases (``from p2p_lab.attention import scaled_dot_product_attention as f``) are caught
    too. Everything is restored on exit. If a forbidden function was called and the exception was
    swallowed, ``ForbiddenCall`` is raised on exit anyway. Compute references OUTSIDE the block.
    Names that cannot be imported are ignored (so optional modules may be listed).
    """

    def __init__(self, *names: str):
        self.names = names
        self.calls: list[str] = []
        self._undo: list = []

    def __enter__(self):
        _ACTIVE.append(self)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            replaced = {}  # id(original) -> stand-in
            for name in self.names:
                found = _resolve(name)
                if found is None:
                    continue
                owner, attr, original = found
                replaced[id(original)] = stand_in = _stand_in(name)
                self._set(owner, attr, stand_in)
                func = getattr(original, "__func__", original)
                if isinstance(func, types.FunctionType) and not func.__code__.co_freevars:
                    old = func.__code__
                    func.__code__ = _raising_code(name)
                    self._undo.append(lambda f=func, c=old: setattr(f, "__code__", c))
            if replaced:
                for d in _holders():  # one pass over every module and namespace for all names
                    for key, value in list(d.items()):
                        if id(value) in replaced:
                            self._set_item(d, key, replaced[id(value)])
        return self

    def _set(self, owner, attr, value) -> None:
        try:
            old = owner.__dict__[attr] if attr in getattr(owner, "__dict__", {}) else getattr(owner, attr)
            setattr(owner, attr, value)
        except (AttributeError, TypeError):
            return
        self._undo.append(lambda: setattr(owner, attr, old))

    def _set_item(self, d: dict, key, value) -> None:
        old = d[key]
        d[key] = value
        self._undo.append(lambda: d.__setitem__(key, old))

    def __exit__(self, exc_type, exc, tb):
        for undo in reversed(self._undo):
            with contextlib.suppress(Exception):
                undo()
        self._undo.clear()
        if self in _ACTIVE:
            _ACTIVE.remove(self)
        if not _ACTIVE and _SNAPSHOT is not None:
            _SNAPSHOT.restore()  # undo whatever the student's call patched
        if self.calls and exc_type is None:
            raise forbidden_hit(self.calls[0])
        return False


def _holders():
    """Every dict a forbidden function might be referenced from: module globals, student namespaces."""
    for mod in list(sys.modules.values()):
        d = getattr(mod, "__dict__", None) if isinstance(mod, types.ModuleType) else None
        if isinstance(d, dict):
            yield d
    yield from _NAMESPACES


# === helpers for hidden tests ===================================================================

def student_function(ns: dict, name: str):
    """The student's function ``name`` from the executed namespace, or an AssertionError saying why not."""
    if name not in ns:
        raise AssertionError(f"your notebook does not define `{name}`: keep the exercise cell's "
                             f"function name, run the cell, and do not delete it later")
    fn = ns[name]
    if not callable(fn):
        raise AssertionError(f"`{name}` is a {type(fn).__name__}, not a function: a later cell "
                             f"overwrote it; rename that variable")
    return fn


def _sanitize(value, path="the result"):
    """Plain copies of what a student returned; anything else (e.g. tensor subclasses that could
    fake comparisons) is refused. Imports nothing: a tensor can only exist if torch is loaded."""
    torch, np = sys.modules.get("torch"), sys.modules.get("numpy")
    if torch is not None and type(value) is torch.Tensor:
        return value.detach().clone()
    if np is not None and type(value) is np.ndarray and value.dtype != object:
        return value.copy()
    if np is not None and isinstance(value, np.generic):
        return value.item()
    if type(value) in (int, float, bool, str, type(None)):
        return value
    if type(value) in (tuple, list):
        return type(value)(_sanitize(v, f"{path}[{i}]") for i, v in enumerate(value))
    raise AssertionError(f"{path} is a {type(value).__name__}; return plain torch.Tensor values "
                         f"(or tuples of them)")


def call_student(fn, forbidden=(), /, *args, **kwargs):
    """Run ``fn(*args, **kwargs)`` with ``forbidden`` names blocked; return sanitized copies.

    Inputs are cloned first, so a function that edits its inputs in place cannot spoil the
    reference computed from them.
    """
    def copy_(x):
        return x.clone() if hasattr(x, "clone") and type(x).__module__.startswith("torch") else x

    args = [copy_(a) for a in args]
    kwargs = {k: copy_(v) for k, v in kwargs.items()}
    with forbid(*forbidden):
        out = fn(*args, **kwargs)
    return _sanitize(out)
