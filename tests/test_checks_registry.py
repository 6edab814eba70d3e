"""The checks registry (p2p_lab/checks/registry.py) against the notebooks: every notebook with
exercises has a checks module registered, every registered module exists, and p2p_lab.checks
exports exactly the registered modules' checks."""
import json
from pathlib import Path

import pytest

from p2p_lab import checks
from p2p_lab.checks import registry

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


def _nb(path, tagged: bool) -> None:
    cell = {"cell_type": "code", "source": "x = 1", "metadata": {"tags": ["exercise"] if tagged else []},
            "outputs": [], "execution_count": None}
    path.write_text(json.dumps({"cells": [cell], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))


def test_every_notebook_with_exercises_has_a_registered_checks_module():
    assert registry.registry_problems(NOTEBOOKS) == []
    stems = {p.stem for p in NOTEBOOKS.glob("*.ipynb")}
    stale = sorted(set(registry.CHECKS) - stems)
    assert not stale, f"CHECKS names notebooks that do not exist: {stale}; remove their rows"


def test_problems_on_a_hand_made_course(tmp_path):
    (tmp_path / "nb").mkdir()
    (tmp_path / "checks").mkdir()
    _nb(tmp_path / "nb" / "01_a.ipynb", tagged=True)
    _nb(tmp_path / "nb" / "02_b.ipynb", tagged=False)  # no exercise: needs no checks
    _nb(tmp_path / "nb" / "03_c.ipynb", tagged=True)
    (tmp_path / "checks" / "a.py").write_text("__all__ = []\n")
    assert registry.exercise_notebooks(tmp_path / "nb") == ["01_a", "03_c"]
    problems = registry.registry_problems(tmp_path / "nb", {"01_a": "a", "04_d": "d"}, tmp_path / "checks")
    assert len(problems) == 2
    assert problems[0].startswith("notebook 03_c has exercises but no checks module: add its row to CHECKS")
    assert problems[1].startswith("CHECKS names the module 'd' for notebook 04_d, but ")
    assert "d.py does not exist" in problems[1]
    assert registry.registry_problems(tmp_path / "nb", {"01_a": "a", "03_c": "a"}, tmp_path / "checks") == []


def test_a_missing_module_fails_on_import_with_its_row_named(monkeypatch):
    monkeypatch.setitem(registry.CHECKS, "07_new", "no_such_checks")
    with pytest.raises(ImportError, match="names the checks module 'no_such_checks' for notebook '07_new'"):
        registry.check_modules()


def test_checks_exports_the_registered_modules_checks():
    exported = {n for n in checks.__all__ if n.startswith("check_")}
    expected = {n for m in registry.check_modules() for n in m.__all__ if n.startswith("check_")}
    assert exported == expected
    # one check of each notebook, named by hand (01 and 02 share a module)
    assert {"check_attention", "check_cross_attention", "check_q_sample", "check_guidance",
            "check_edit_switch", "check_ddim_inverse_step"} <= exported


def test_release_refuses_a_notebook_with_exercises_but_no_checks(tmp_path):
    from p2p_lab.grading import release

    (tmp_path / "nb").mkdir()
    _nb(tmp_path / "nb" / "07_new.ipynb", tagged=True)
    with pytest.raises(ValueError, match="notebook 07_new has exercises but no checks module"):
        release(tmp_path / "out", tmp_path / "nb", timings=False)
    assert not (tmp_path / "out").exists()


def test_recorded_inputs_match_up_to_rounding_but_not_another_case():
    """The student version finds its recorded expectations by the inputs' fingerprints: the same text
    embeddings computed by another transformers version (rounding) still match; other inputs do not."""
    import torch

    from p2p_lab.checks._core import _fingerprint, _same_inputs

    g = torch.Generator().manual_seed(0)
    emb = torch.randn(2, 16, 64, generator=g)
    recorded = _fingerprint({"emb": emb, "t": 5})
    rounded = emb + 1e-7 * torch.randn(emb.shape, generator=g)  # float32 reordering noise, many elements
    assert _same_inputs(_fingerprint({"emb": rounded, "t": 5}), recorded)
    assert not _same_inputs(_fingerprint({"emb": torch.randn(2, 16, 64, generator=g), "t": 5}), recorded)
    assert not _same_inputs(_fingerprint({"emb": emb, "t": 6}), recorded)
    assert not _same_inputs(_fingerprint({"emb": emb[:1], "t": 5}), recorded)
