"""The one registry of the checks: which module of ``p2p_lab.checks`` holds each notebook's checks.

``p2p_lab.checks`` exports every check of the modules named here, ``release`` records the expected
values of exactly these modules' checks for the student version, and ``tests/test_checks_registry.py``
fails when a notebook with exercises (cells tagged ``exercise``) is missing here or a module named
here does not exist. A new notebook's checks: add its row (ARCHITECTURE.md, "Add a notebook").
"""
from __future__ import annotations

import importlib
import json
from pathlib import Path

CHECKS = {  # notebook file stem -> its checks module, p2p_lab/checks/<module>.py
    "01_attention": "attention",
    "02_cross_attention": "attention",
    "03_ddpm": "ddpm",
    "04_ldm_sampling": "ldm",
    "05_prompt_to_prompt": "p2p",
    "06_real_images": "inversion",
}


def check_modules() -> list:
    """The registered checks modules, imported, each once, in the order of :data:`CHECKS`."""
    out = []
    for notebook, name in CHECKS.items():
        try:
            module = importlib.import_module(f"{__package__}.{name}")
        except ModuleNotFoundError as err:
            if err.name != f"{__package__}.{name}":
                raise
            raise ImportError(f"p2p_lab/checks/registry.py names the checks module {name!r} for notebook "
                              f"{notebook!r}, but p2p_lab/checks/{name}.py does not exist: create it or "
                              f"fix the row") from None
        if not isinstance(getattr(module, "__all__", None), (list, tuple)):
            raise ImportError(f"p2p_lab/checks/{name}.py has no __all__: list its check_* functions there")
        if module not in out:
            out.append(module)
    return out


def exercise_notebooks(notebooks_dir) -> list[str]:
    """Stems of the notebooks in ``notebooks_dir`` with exercises (a code cell tagged ``exercise``)."""
    out = []
    for path in sorted(Path(notebooks_dir).glob("*.ipynb")):
        cells = json.loads(path.read_text()).get("cells", [])
        if any("exercise" in (c.get("metadata") or {}).get("tags", []) for c in cells):
            out.append(path.stem)
    return out


def registry_problems(notebooks_dir, checks: dict | None = None, checks_dir=None) -> list[str]:
    """What is wrong between the notebooks and the registry (:data:`CHECKS` by default): a notebook
    with exercises that has no checks module, or a module named that has no file in ``checks_dir``
    (this package's folder by default). Each problem is a sentence naming the fix."""
    checks = CHECKS if checks is None else checks
    checks_dir = Path(checks_dir or Path(__file__).parent)
    problems = [f"notebook {stem} has exercises but no checks module: add its row to CHECKS in "
                f"p2p_lab/checks/registry.py (and the module, see ARCHITECTURE.md, 'Add a notebook')"
                for stem in exercise_notebooks(notebooks_dir) if stem not in checks]
    problems += [f"CHECKS names the module {name!r} for notebook {stem}, but {checks_dir / (name + '.py')} "
                 f"does not exist: create it or fix the row"
                 for stem, name in checks.items() if not (checks_dir / f"{name}.py").exists()]
    return problems
