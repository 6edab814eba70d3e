"""What grading reads from a notebook, shared by the release (:mod:`.bundle`), the grading parent
(:mod:`.parent`) and the grading process (:mod:`.child`): the solution markers, question ids,
cell sources and the key a cell's recorded time is found by; and where the course's files are."""
from __future__ import annotations

import hashlib
import re
from pathlib import Path

# Built from pieces so that this file itself never contains a marker line.
BEGIN = "# BEGIN " + "SOLUTION"
END = "# END " + "SOLUTION"
PACKAGE_DIR = Path(__file__).resolve().parent.parent
REPO_ROOT = PACKAGE_DIR.parent
QUESTION_ID = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")  # question ids (test_<id> must be a name)


def cell_source(cell) -> str:
    """A cell's source as one string (nbformat may hold it as a list of lines)."""
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


def question_of(cell) -> str | None:
    """The question an exercise cell answers: its metadata ``{"p2p_lab": {"question": id}}``."""
    return (cell.get("metadata", {}).get("p2p_lab") or {}).get("question")


def cell_key(source: str) -> str:
    """Names a cell by its source: the master's recorded times (``timings.json``) are keyed so."""
    return hashlib.sha256(source.strip().encode()).hexdigest()[:16]
