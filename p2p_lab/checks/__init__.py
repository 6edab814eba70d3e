"""Public checks for the notebooks' exercises: ``check_<exercise>(student_function)``.

Each prints one line, PASSED or FAILED with a hint naming the likely mistake, and returns a
:class:`CheckResult` (truthy when passed). One module per notebook, registered once in
:mod:`.registry`; every name in a registered module's ``__all__`` is importable from here.
"""
from ._core import (EXPECTED, CheckResult, Mistake, load_expectations, record_expectations,  # noqa: F401
                    run_check, save_expectations, using_expectations)
from .registry import CHECKS, check_modules


def _export(modules) -> dict:
    """{name: object} of the modules' ``__all__``; two modules exporting one name is an error."""
    found, owner = {}, {}
    for module in modules:
        for name in module.__all__:
            if name in found and found[name] is not getattr(module, name):
                raise ImportError(f"p2p_lab.checks.{owner[name]} and {module.__name__} both export "
                                  f"{name!r}: rename one (the notebooks import checks from p2p_lab.checks)")
            found[name], owner[name] = getattr(module, name), module.__name__.rpartition(".")[2]
    return found


globals().update(_export(check_modules()))
__all__ = ["CHECKS", "CheckResult", "Mistake", "run_check", *_export(check_modules())]
