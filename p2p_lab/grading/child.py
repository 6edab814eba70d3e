"""Grading, the child side: the code that runs inside the grading process (the student's cells,
then the hidden tests), with its entry point :func:`child_main`; importing it does nothing.

A broken function is paid for once. Every cell and every hidden test runs under an alarm: at half
its limit the alarm notes which student functions are running (their frames), at the limit it
raises :class:`_Timeout` in the running code. A student function whose *same call* was running at
both moments (it ran at least half a limit in one call: an infinite loop, not a fast function
called many times by a slow cell) is stopped for good: its code is replaced, so every later call,
from a later cell, a check or a hidden test, raises :class:`FunctionStopped` at once (an
``Exception``, so the notebook's checks report it and its demos go on as after any raising
function) instead of each waiting for its own limit. A student function that calls ``os._exit``
is reported the same way before the process ends, so the rerun the parent makes stops it at once.
Each such function is announced by a ``stopped`` event (a stable key: cell file name, qualified
name and first line), which the parent hands to every rerun (config ``stopped``).
"""
from __future__ import annotations

import contextlib
import gc
import json
import os
import signal
import sys
import textwrap
import time
import types
import warnings
from pathlib import Path

from .. import forbidding
from ..forbidding import ForbiddenCall
from .notebooks import cell_key, cell_source

_PACKAGE = __name__.rpartition(".")[0]  # p2p_lab.grading: its modules are snapshotted in full


_REAL_EXIT = os._exit  # the grading process's own way out (student calls go through _Child.exit)


class _Timeout(BaseException):
    pass


class FunctionStopped(Exception):
    """Raised by a student function the grader stopped for good: it ran past a time limit in one
    call, or ended the grading process, once already; a later call fails at once instead."""


def _key(code) -> tuple:
    """Names a student function's code across grading processes (the same notebook, the same key)."""
    return (code.co_filename, getattr(code, "co_qualname", code.co_name), code.co_firstlineno)


def _stopped_code(message: str, freevars: tuple) -> types.CodeType:
    """Code that raises FunctionStopped(message), with ``freevars`` free variables (a function's
    ``__code__`` may only be swapped for code with as many)."""
    body = (f"def _stopped(*args, **kwargs):\n"
            + (f"    ({', '.join(freevars)},)\n" if freevars else "")
            + f"    import {__name__} as _child\n    raise _child.FunctionStopped({message!r})\n")
    if freevars:
        body = ("def _outer():\n" + "".join(f"    {v} = None\n" for v in freevars)
                + textwrap.indent(body, "    ") + "    return _stopped\n")
    scope: dict = {}
    exec(compile(body, "<stopped by the grader>", "exec"), scope)
    fn = scope["_outer"]() if freevars else scope["_stopped"]
    return fn.__code__


class _CappedWriter:
    """A text stream that keeps the first ``cap`` characters and drops the rest."""

    def __init__(self, cap: int):
        self.cap, self.parts, self.size, self.dropped = cap, [], 0, 0

    def write(self, s) -> int:
        s = str(s)
        room = self.cap - self.size
        if room > 0:
            self.parts.append(s[:room])
        self.size += min(len(s), max(room, 0))
        self.dropped += max(0, len(s) - max(room, 0))
        return len(s)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False

    encoding = "utf-8"

    def text(self) -> str:
        extra = f"\n[... {self.dropped} more characters of output dropped]" if self.dropped else ""
        return "".join(self.parts) + extra


class _Snapshot:
    """Callables, classes and modules of trusted libraries, restorable after student code ran."""

    PREFIXES = ("torch", "numpy", "p2p_lab", "diffusers", "transformers", "scipy", "math",
                "builtins", "_p2p_hidden_")

    def __init__(self):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.sys_modules = {n: m for n, m in list(sys.modules.items()) if self._trusted(n) and m}
            self.modules, self.classes = [], []
            for name, mod in self.sys_modules.items():
                d = getattr(mod, "__dict__", None)
                if not isinstance(d, dict):
                    continue
                full = (name == _PACKAGE or name.startswith(_PACKAGE + ".") or name == forbidding.__name__
                        or name.startswith("_p2p_hidden_"))  # (forbid's own state too: its lists)
                self.modules.append((mod, {k: v for k, v in d.items() if full or _restorable(v)}))
                for v in list(d.values()):
                    if isinstance(v, type) and getattr(v, "__module__", None) == name:
                        self.classes.append((v, {k: a for k, a in vars(v).items() if callable(a)}))
        for mod, saved in self.modules:
            if mod is sys.modules.get(forbidding.__name__):
                saved[forbidding.SNAPSHOT_GLOBAL] = self  # a student cannot switch off the restoring by resetting it

    def _trusted(self, name: str) -> bool:
        return name.split(".")[0] in self.PREFIXES or name.startswith("_p2p_hidden_")

    def restore(self) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for name, mod in self.sys_modules.items():
                if sys.modules.get(name) is not mod:
                    sys.modules[name] = mod
            for mod, saved in self.modules:
                d = mod.__dict__
                for k, v in saved.items():
                    if d.get(k, _restore) is not v:
                        d[k] = v
            for cls, saved in self.classes:
                d = vars(cls)
                for k in [k for k, a in d.items() if k not in saved and callable(a)]:
                    with contextlib.suppress(Exception):
                        delattr(cls, k)
                for k, v in saved.items():
                    if d.get(k, _restore) is not v:
                        with contextlib.suppress(Exception):
                            setattr(cls, k, v)


def _restorable(v) -> bool:
    return isinstance(v, types.ModuleType) or callable(v)


def _restore():  # a sentinel (never equal to a saved value)
    pass


class _Child:
    """Executes a notebook's code cells in an IPython shell, then runs the hidden tests."""

    def __init__(self, config: dict):
        self.config = config
        self.events = open(config["events"], "a", buffering=1)
        self.cap = int(config["output_chars"])
        self.pid = os.getpid()
        self.ns: dict | None = None  # the student's namespace, once the shell exists
        self.phase = "start-up"  # where student code runs now, for messages ("cell 12")
        # functions stopped for good: key -> message (from earlier processes, then from this one)
        self.stopped = {tuple(s["key"]): s["message"] for s in config.get("stopped", [])}

    def emit(self, **event) -> None:
        self.events.write(json.dumps(event) + "\n")
        self.events.flush()

    @contextlib.contextmanager
    def limit(self, seconds: float):
        """Raise _Timeout in this thread after ``seconds`` (and every second after, if swallowed).

        At half the time the running student frames are noted; those still running at the limit
        (the same calls) are stopped for good (:meth:`stop`)."""
        seconds = max(float(seconds), 0.01)
        alarms: list = []  # the student frames running at half time, then a marker per alarm

        def on_alarm(signum, frame):
            if not alarms:  # half time: note who runs, and wait for the rest
                alarms.append(self.student_frames(frame))
                signal.setitimer(signal.ITIMER_REAL, seconds - seconds / 2, 1.0)
                return
            if len(alarms) == 1:  # the limit: stop the calls that ran all along, then interrupt
                alarms.append(None)
                signal.setitimer(signal.ITIMER_REAL, 0)  # no alarm while stopping
                try:
                    now = self.student_frames(frame)
                    self.stop([f for f in now if any(f is g for g in alarms[0])],
                              f"ran for more than {seconds / 2:.0f} s in one call and was stopped at "
                              f"the {seconds:.0f} s limit of {self.phase} (an infinite loop?)")
                finally:
                    signal.setitimer(signal.ITIMER_REAL, 1.0, 1.0)
            raise _Timeout()

        signal.signal(signal.SIGALRM, on_alarm)
        signal.setitimer(signal.ITIMER_REAL, seconds / 2)
        try:
            yield
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            alarms.clear()

    def student_frames(self, frame) -> list:
        """The frames of student functions (code of the student's namespace) on the stack."""
        found = []
        while frame is not None:
            if self.ns is not None and frame.f_globals is self.ns and frame.f_code.co_name != "<module>":
                found.append(frame)
            frame = frame.f_back
        return found

    def stop(self, frames, why: str, disable: bool = True) -> None:
        """Stop the functions of ``frames`` for good: announce each (an event the parent hands to
        reruns) and, with ``disable``, swap their code for code raising FunctionStopped."""
        codes = []
        for frame in frames:
            code, key = frame.f_code, _key(frame.f_code)
            if any(code is c for c in codes):
                continue
            codes.append(code)
            if key not in self.stopped:  # (one stopped by an earlier process is known already)
                self.stopped[key] = (f"`{key[1]}` {why}; the grader does not run it again, so "
                                     f"calling it now fails at once")
                self.emit(stopped={"key": list(key), "name": key[1], "message": self.stopped[key]})
        if disable and codes:
            for obj in gc.get_referrers(*codes):
                if isinstance(obj, types.FunctionType) and any(obj.__code__ is c for c in codes):
                    self.disable(obj)
            self.disable_stopped()

    def disable(self, fn) -> None:
        message = self.stopped.get(_key(fn.__code__))
        if message is None:
            return
        with contextlib.suppress(Exception):
            fn.__code__ = _stopped_code(message, fn.__code__.co_freevars)
            return
        for name, value in list((self.ns or {}).items()):  # a code that cannot be swapped
            if value is fn:
                self.ns[name] = types.FunctionType(_stopped_code(message, ()), {}, fn.__name__)

    def disable_stopped(self) -> None:
        """Disable the stopped functions the student's namespace holds (after every cell: a rerun
        stops a function as soon as the cell defining it ran)."""
        if self.stopped and self.ns is not None:
            for value in list(self.ns.values()):
                # the student's functions, and the methods of the student's classes (a processor class)
                members = list(vars(value).values()) if isinstance(value, type) and \
                    getattr(value, "__module__", None) == self.ns.get("__name__") else [value]
                for fn in members:
                    fn = getattr(fn, "__func__", fn)  # staticmethod / classmethod
                    if isinstance(fn, types.FunctionType) and _key(fn.__code__) in self.stopped:
                        self.disable(fn)

    def exit(self, status=0):
        """``os._exit`` for student code: announce the student functions calling it, then exit.
        (Only in the grading process itself: a process forked by student code, such as a
        multiprocessing worker, ends with os._exit as usual.)"""
        if os.getpid() == self.pid:
            with contextlib.suppress(BaseException):
                self.stop(self.student_frames(sys._getframe(1)),
                          f"ended the grading process (os._exit) in {self.phase}", disable=False)
        _REAL_EXIT(status)

    def load_hidden(self):
        import importlib.util

        path = Path(self.config["hidden"])
        name = "_p2p_hidden_" + path.stem
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        return module

    def shell(self):
        from IPython.core.interactiveshell import InteractiveShell
        from traitlets.config import Config

        cfg = Config()
        cfg.HistoryManager.enabled = False
        module = types.ModuleType("__p2p_submission__")
        sys.modules[module.__name__] = module
        shell = InteractiveShell.instance(config=cfg, user_module=module)
        shell.register_magic_function(lambda line="": None, "line", "matplotlib")
        forbidding.register_namespace(shell.user_ns)
        self.ns = shell.user_ns
        return shell

    def run_cells(self, shell) -> None:
        import nbformat

        nb = nbformat.read(self.config["notebook"], as_version=4)
        skip = set(self.config["skip_cells"])
        for i, cell in enumerate(nb.cells):
            if cell.cell_type != "code" or i in skip:
                continue
            source = cell_source(cell)
            key = cell_key(source)
            seconds = float(self.config.get("cell_limits", {}).get(key, self.config["cell_s"]))
            self.emit(cell=i, limit=seconds)
            self.phase = f"cell {i}"
            out = _CappedWriter(self.cap)
            error = None
            started = time.monotonic()
            try:
                with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out), \
                        self.limit(seconds):
                    result = shell.run_cell(source, store_history=False)
                error = result.error_in_exec or result.error_before_exec
            except _Timeout:
                error = _Timeout()
            except BaseException as err:  # noqa: BLE001 - whatever the cell threw, keep going
                error = err
            if error is None:
                self.emit(cell_time=[key, round(time.monotonic() - started, 2)])
            if isinstance(error, _Timeout):
                error = f"took longer than {seconds:.0f} s and was stopped" + (
                    " (the limit of this cell: ten times what the course's own solution takes here, "
                    "at least half a minute)" if key in self.config.get("cell_limits", {}) else "")
            elif error is not None:
                error = f"raised {type(error).__name__}: {str(error)[:300]}"
            if error:
                self.emit(cell_error=f"cell {i} {error}")
            _close_figures()
            self.disable_stopped()

    def run_question(self, hidden, ns: dict, q: str, seconds: float) -> dict:
        out = _CappedWriter(self.cap)
        fraction, message = 0.0, ""
        test = getattr(hidden, f"test_{q}", None)
        try:
            if test is None:
                raise LookupError(f"the hidden tests define no test_{q} (an instructor error)")
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out), \
                    self.limit(seconds):
                started = time.monotonic()
                value = test(ns)
                self.emit(question_time=[q, round(time.monotonic() - started, 2)])
            fraction = 1.0 if value is None or value is True else float(value)
            message = "passed" if fraction >= 1 else f"partly right: {fraction:.0%} of the points"
        except _Timeout:
            message = (f"your function took longer than {seconds:.0f} s on the "
                       f"hidden tests and was stopped (an infinite loop?)")
        except ForbiddenCall as err:
            message = f"not accepted: your function {err}"
        except FunctionStopped as err:
            message = f"failed: {err}"
        except NotImplementedError:
            message = "not attempted: the function still raises NotImplementedError"
        except AssertionError as err:
            message = f"failed: {err}"
        except BaseException as err:  # noqa: BLE001 - a broken question costs only that question
            message = f"failed: the test raised {type(err).__name__}: {str(err)[:500]}"
        printed = out.text().strip()
        if printed:
            message += "\n--- printed during the test ---\n" + printed
        return {"id": q, "fraction": fraction, "output": message[: self.cap]}

    def main(self) -> None:
        if self.config.get("memory_gb"):
            import resource

            limit = int(self.config["memory_gb"] * 2 ** 30)
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        hidden = self.load_hidden()
        shell = self.shell()
        os._exit = self.exit  # a student's os._exit names its function before the process ends
        with contextlib.suppress(ImportError):
            import posix

            posix._exit = self.exit
        # after the hidden tests' imports, before student code
        snapshot = _Snapshot()
        forbidding.restore_after_calls(snapshot)
        self.run_cells(shell)
        ns = shell.user_ns
        for q in self.config["questions"]:
            snapshot.restore()
            seconds = float(self.config.get("question_limits", {}).get(q, self.config["question_s"]))
            self.emit(question=q, limit=seconds)
            self.phase = f"the hidden test of question {q}"
            self.emit(result=self.run_question(hidden, ns, q, seconds))
        self.emit(done=True)


def _close_figures() -> None:
    plt = sys.modules.get("matplotlib.pyplot")
    if plt is not None:
        with contextlib.suppress(Exception):
            plt.close("all")


def child_main(config_path: str) -> None:
    """Entry point of the grading process (``python -c``): never returns normally."""
    config = json.loads(Path(config_path).read_text())
    code = 0
    try:
        _Child(config).main()
    except BaseException as err:  # noqa: BLE001 - report, then leave without running student atexit
        print(f"grading process failed: {type(err).__name__}: {err}", file=sys.__stdout__, flush=True)
        code = 1
    finally:
        with contextlib.suppress(Exception):
            sys.__stdout__.flush()
        _REAL_EXIT(code)
