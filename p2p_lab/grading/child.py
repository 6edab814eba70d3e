"""Grading, the child side: the code that runs inside the grading process (the student's cells,
then the hidden tests), with its entry point :func:`_child_main`; importing it does nothing."""
from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import types
import warnings
from pathlib import Path

from . import forbidding
from .bundle import _source
from .forbidding import _NAMESPACES, ForbiddenCall

_PACKAGE = __name__.rpartition(".")[0]  # p2p_lab.grading: its modules are snapshotted in full


class _Timeout(BaseException):
    pass


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
                full = (name == _PACKAGE or name.startswith(_PACKAGE + ".")
                        or name.startswith("_p2p_hidden_"))
                self.modules.append((mod, {k: v for k, v in d.items() if full or _restorable(v)}))
                for v in list(d.values()):
                    if isinstance(v, type) and getattr(v, "__module__", None) == name:
                        self.classes.append((v, {k: a for k, a in vars(v).items() if callable(a)}))
        for mod, saved in self.modules:
            if mod is sys.modules.get(forbidding.__name__):
                saved["_SNAPSHOT"] = self  # a student cannot switch off the restoring by resetting it

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

    def emit(self, **event) -> None:
        self.events.write(json.dumps(event) + "\n")
        self.events.flush()

    @contextlib.contextmanager
    def limit(self, seconds: float):
        """Raise _Timeout in this thread after ``seconds`` (and every second after, if swallowed)."""
        def on_alarm(signum, frame):
            raise _Timeout()

        signal.signal(signal.SIGALRM, on_alarm)
        signal.setitimer(signal.ITIMER_REAL, seconds, 1.0)
        try:
            yield
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)

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
        _NAMESPACES.append(shell.user_ns)
        return shell

    def run_cells(self, shell) -> None:
        import nbformat

        nb = nbformat.read(self.config["notebook"], as_version=4)
        skip = set(self.config["skip_cells"])
        for i, cell in enumerate(nb.cells):
            if cell.cell_type != "code" or i in skip:
                continue
            self.emit(cell=i)
            out = _CappedWriter(self.cap)
            error = None
            try:
                with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out), \
                        self.limit(self.config["cell_s"]):
                    result = shell.run_cell(_source(cell), store_history=False)
                error = result.error_in_exec or result.error_before_exec
            except _Timeout:
                error = _Timeout()
            except BaseException as err:  # noqa: BLE001 - whatever the cell threw, keep going
                error = err
            if isinstance(error, _Timeout):
                error = f"took longer than {self.config['cell_s']:.0f} s and was stopped"
            elif error is not None:
                error = f"raised {type(error).__name__}: {str(error)[:300]}"
            if error:
                self.emit(cell_error=f"cell {i} {error}")
            _close_figures()

    def run_question(self, hidden, ns: dict, q: str) -> dict:
        out = _CappedWriter(self.cap)
        fraction, message = 0.0, ""
        test = getattr(hidden, f"test_{q}", None)
        try:
            if test is None:
                raise LookupError(f"the hidden tests define no test_{q} (an instructor error)")
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out), \
                    self.limit(self.config["question_s"]):
                value = test(ns)
            fraction = 1.0 if value is None or value is True else float(value)
            message = "passed" if fraction >= 1 else f"partly right: {fraction:.0%} of the points"
        except _Timeout:
            message = (f"your function took longer than {self.config['question_s']:.0f} s on the "
                       f"hidden tests and was stopped (an infinite loop?)")
        except ForbiddenCall as err:
            message = f"not accepted: your function {err}"
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
        # after the hidden tests' imports, before student code
        snapshot = forbidding._SNAPSHOT = _Snapshot()
        self.run_cells(shell)
        ns = shell.user_ns
        for q in self.config["questions"]:
            snapshot.restore()
            self.emit(question=q)
            self.emit(result=self.run_question(hidden, ns, q))
        self.emit(done=True)


def _close_figures() -> None:
    plt = sys.modules.get("matplotlib.pyplot")
    if plt is not None:
        with contextlib.suppress(Exception):
            plt.close("all")


def _child_main(config_path: str) -> None:
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
        os._exit(code)
