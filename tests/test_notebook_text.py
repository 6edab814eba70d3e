"""The notebooks speak to the student: short openings and cells, no build talk, predictions, further reading.

Reading time is counted at 200 words a minute, so 4,000 words of markdown is about 20 minutes.
"""
import re
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))

OPENING_WORDS = 200
CELL_WORDS = 350
NOTEBOOK_WORDS = 4000
MIN_PREDICT = 3

# How the course was built and measured belongs in benchmarks/README.md, not in what students read.
BUILD_TALK = [
    "benchmark", "stand-in", "ablation", "the course's tests", "the tests check", "cache budget",
    "CACHE_TOTAL_BYTES", "evictions", "estimates, not measurements", "counted on a small", "is assumed to take",
    "rejected", "first shipped model", "trained plainly", "an experiment tried", "README",
]
ARXIV = re.compile(r"https://arxiv\.org/abs/\d{4}\.\d{4,5}")


def _words(text: str) -> int:
    return len(text.split())


@pytest.fixture(params=NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def notebook(request):
    return request.param, nbformat.read(request.param, as_version=4)


def _markdown(nb):
    return [c for c in nb.cells if c.cell_type == "markdown"]


def test_opening_is_short_and_says_time_and_model(notebook):
    path, nb = notebook
    opening = _markdown(nb)[0].source
    assert _words(opening) <= OPENING_WORDS, f"{path.name}: opening has {_words(opening)} words"
    assert re.search(r"\bminutes\b", opening), f"{path.name}: the opening says about how long it takes"
    assert "P2P_LAB_MODEL" in opening or "no model" in opening, \
        f"{path.name}: the opening says which model runs and how to switch (or that none does)"


def test_no_cell_and_no_notebook_too_long(notebook):
    path, nb = notebook
    counts = [_words(c.source) for c in _markdown(nb)]
    assert max(counts) <= CELL_WORDS, f"{path.name}: a markdown cell has {max(counts)} words"
    assert sum(counts) <= NOTEBOOK_WORDS, f"{path.name}: {sum(counts)} words of markdown"


def test_no_build_talk(notebook):
    path, nb = notebook
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "markdown":
            continue
        for phrase in BUILD_TALK:
            assert phrase.lower() not in cell.source.lower(), f"{path.name} cell {i} talks about the build: {phrase!r}"


def test_predict_then_run(notebook):
    path, nb = notebook
    predict = [i for i, c in enumerate(nb.cells) if "predict" in c.metadata.get("tags", [])]
    assert len(predict) >= MIN_PREDICT, f"{path.name}: {len(predict)} cells tagged predict"
    for i in predict:
        assert nb.cells[i].cell_type == "markdown", f"{path.name} cell {i}: a prediction is asked in markdown"
        assert i + 1 < len(nb.cells) and any(c.cell_type == "code" for c in nb.cells[i + 1:i + 3]), \
            f"{path.name} cell {i}: a code cell right after the question answers it"


def test_closes_with_further_reading(notebook):
    path, nb = notebook
    last = nb.cells[-1]
    assert last.cell_type == "markdown" and "Further reading" in last.source, f"{path.name}: no closing reading list"
    assert ARXIV.search(last.source), f"{path.name}: the reading list links the papers on arXiv"
