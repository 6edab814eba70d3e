"""The course as a static site: ``python -m p2p_lab site OUT`` (:func:`build_site`).

Every notebook becomes a page (``OUT/05_prompt_to_prompt.html``), read without running: the text is
the student version's (solutions stubbed, :func:`~p2p_lab.grading.student_notebook`), the outputs
come from executing the master on the shipped model at build time. Each widget cell's output is
replaced by an *explorer*: frames precomputed in the same kernel by the widget's own code (its
sliders set one value at a time, its figure saved) and a slider in plain HTML and JavaScript that
swaps the picture (``_static/p2p-explorer.js``). The builder is Sphinx with MyST-NB and the furo
theme; math is typeset by a copy of MathJax 2 (from the ``jupyter-server-mathjax`` package) inside
the site, so a page makes no request off the site. Needs ``pip install -e ".[site]"``.

Steps: :func:`check_out_dir` (a non-empty folder must hold a previous site's :data:`MARKER`),
:func:`execute` (a master plus one injected cell after each widget cell, executed once and cached
in ``cache_dir`` while the notebook, the package modules its kernel loaded and the model are unchanged), :func:`page_notebook` (student text + executed outputs + explorers),
:func:`sphinx_build`, then :func:`leaks` over every page (a solution line on the site stops the
build) and the report (build time, size).
"""
from __future__ import annotations

import base64
import copy
import dataclasses
import hashlib
import html
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from . import COLAB_REPO, colab_url
from .grading.notebooks import BEGIN, END, PACKAGE_DIR, REPO_ROOT, cell_source

__all__ = ["build_site", "SiteError", "SiteReport", "explorer_frames", "solution_lines", "leaks",
           "check_out_dir", "MARKER", "register_cli"]

MARKER = ".p2p_lab-site"  # written into every built site: a rebuild may replace that folder's contents
EXPLORER_MIME = "application/vnd.p2p-lab.explorer+json"
WIDGET_CALL = re.compile(r"\bmake_(\w+_ui|attention_explorer)\(")
BADGE = re.compile(r"\[!\[Open In Colab\]\([^)]*\)\]\([^)]*\)")
DEFAULT_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "p2p_lab" / "site"
STATIC = "_static"


class SiteError(RuntimeError):
    """The site cannot be built: the message names the folder, notebook or cell, and the fix."""


# --------------------------------------------------------------------------- the output folder

def check_out_dir(out: Path) -> None:
    """Refuse a folder that holds files but no :data:`MARKER` (it is not a site built here)."""
    if out.exists() and not out.is_dir():
        raise SiteError(f"{out} is a file: give a folder for the site")
    if out.is_dir() and any(out.iterdir()) and not (out / MARKER).exists():
        raise SiteError(f"{out} is not empty and is not a site built by `python -m p2p_lab site` (no "
                        f"{MARKER} in it): give an empty or new folder, or empty this one first")


# --------------------------------------------------------------------------- executing the masters

def widget_cells(nb) -> list[int]:
    """Indices of the code cells that make a widget (``make_*_ui(...)``, ``make_attention_explorer``)."""
    return [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and WIDGET_CALL.search(cell_source(c))]


_INJECTED = ("from p2p_lab.site import explorer_frames as _p2p_site_frames\n"
             "_p2p_site_frames(_)  # the widget the cell above displayed")


def run_copy(master):
    """The master as it is executed for the site: each cell tagged with its index in the master,
    and after each widget cell a cell computing the explorer's frames (:func:`explorer_frames`)."""
    import nbformat

    nb = copy.deepcopy(master)
    cells = []
    for i, cell in enumerate(nb.cells):
        cell.metadata["p2p_site"] = {"index": i}
        cells.append(cell)
        if i in widget_cells(master):
            extra = nbformat.v4.new_code_cell(_INJECTED)
            extra.metadata["p2p_site"] = {"explorer_for": i}
            cells.append(extra)
    last = nbformat.v4.new_code_cell(_LOADED)
    last.metadata["p2p_site"] = {"loaded": True}
    nb.cells = cells + [last]
    for c in nb.cells:
        if c.cell_type == "code":
            c.outputs, c.execution_count = [], None
    return nb


_LOADED_MIME = "application/vnd.p2p-lab.loaded+json"
_LOADED = ("import sys as _p2p_sys\nfrom IPython.display import display as _p2p_display\n"
           "_p2p_display({%r: sorted({m.__file__ for m in list(_p2p_sys.modules.values()) if getattr(m, '__name__', '')"
           ".startswith('p2p_lab') and getattr(m, '__file__', None)})}, raw=True)" % _LOADED_MIME)


def _file_hash(path: Path) -> str:
    """A file's content hash; of this module only what runs in the kernel (the explorers)."""
    data = path.read_bytes()
    if path.resolve() == Path(__file__).resolve():
        data = data.split(b"# " + b"-" * 75 + b" explorers")[1].split(b"# " + b"-" * 75 + b" pages")[0]
    return hashlib.sha256(data).hexdigest()[:16]


def _dependencies(executed) -> dict:
    """{file: hash} of what an executed notebook depended on: the package modules its kernel
    loaded (reported by its last cell) and the shipped model's files."""
    loaded = [o["data"][_LOADED_MIME] for o in executed.cells[-1].get("outputs", []) if _LOADED_MIME in o.get("data", {})]
    files = [Path(f) for f in (loaded[0] if loaded else [])]
    data = REPO_ROOT / "data" if (REPO_ROOT / "data").is_dir() else PACKAGE_DIR / "data"
    files += [f for f in sorted(data.rglob("*")) if f.is_file()]
    return {str(f): _file_hash(f) for f in files if f.exists()}


def _still_valid(deps: dict) -> bool:
    return bool(deps) and all(Path(f).exists() and _file_hash(Path(f)) == h for f, h in deps.items())


def _failed_cell(nb):
    """Where the first error output is (the master's cell index, counting from 0, markdown cells
    included, and the cell's first line) and its error line."""
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                meta = cell.metadata.get("p2p_site", {})
                index = meta.get("index", meta.get("explorer_for"))
                first = next((line for line in cell_source(cell).splitlines() if line.strip()), "")
                what = "the explorer computed after cell" if "explorer_for" in meta else "cell"
                return f"{what} {index} (`{first.strip()[:60]}`)", f"{out.get('ename')}: {out.get('evalue')}"
    return "a cell", None


def execute(path: Path, cache_dir: Path | None, timeout: int = 1800, log=print):
    """The executed run copy of the master ``path`` (:func:`run_copy`) and the seconds it took
    (0.0 from the cache). A cell that fails raises :class:`SiteError` naming the notebook and cell."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError, CellTimeoutError

    master = nbformat.read(str(path), as_version=4)
    nb = run_copy(master)
    text = json.dumps([[c.cell_type, cell_source(c)] for c in nb.cells])  # not the cells' random ids
    key = hashlib.sha256(text.encode()).hexdigest()[:20]
    cached = cache_dir / f"{path.stem}-{key}.ipynb" if cache_dir else None
    if cached is not None and cached.exists():
        done = nbformat.read(str(cached), as_version=4)
        if _still_valid(done.metadata.get("p2p_site_dependencies", {})):
            log(f"  {path.name}: executed copy reused from {cached.parent} (the notebook, the package "
                f"modules it loaded and the model are unchanged)")
            return done, 0.0
    log(f"  {path.name}: executing on the shipped model...")
    start = time.perf_counter()
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "MPLBACKEND": "Agg"}
    env.pop("P2P_LAB_MODEL", None)  # the site shows the shipped model
    with tempfile.TemporaryDirectory(prefix="p2p_site_run_") as cwd:
        client = NotebookClient(nb, timeout=timeout, kernel_name="python3",
                                resources={"metadata": {"path": cwd}})
        try:
            client.execute(env=env, cwd=cwd)
        except CellTimeoutError:
            where, line = _failed_cell(nb)
            raise SiteError(f"{path.name}, {where}: timed out after {timeout} s per cell ({line or 'no output'}); "
                            f"a cell of the course takes about a minute at most: run the notebook in Jupyter to "
                            f"see what waits, or raise --timeout") from None
        except CellExecutionError as err:
            where, line = _failed_cell(nb)
            line = line or str(err).strip().splitlines()[-1]
            raise SiteError(f"{path.name}, {where}: failed while executing: {line}. Fix the "
                            f"notebook (run it in Jupyter to see the traceback), then build again") from None
    seconds = time.perf_counter() - start
    nb.metadata["p2p_site_dependencies"] = _dependencies(nb)
    if cached is not None:
        cached.parent.mkdir(parents=True, exist_ok=True)
        for old in cached.parent.glob(f"{path.stem}-*.ipynb"):
            old.unlink()
        nbformat.write(nb, str(cached))
    return nb, seconds


# --------------------------------------------------------------------------- explorers (in the kernel)

@dataclasses.dataclass
class Sweep:
    """One control moved over ``values`` while the others keep the widget's defaults."""

    label: str
    values: list
    default: int  # index of the widget's own value
    note: str = ""


class _Muted:
    """While inside, the widget's own redraw (``name``) does nothing: several controls can be set
    with one computation after them (each control change would otherwise re-run the edit)."""

    def __init__(self, ui, name: str):
        self.ui, self.name = ui, name

    def __enter__(self):
        setattr(self.ui, self.name, lambda *args, **kwargs: None)

    def __exit__(self, *exc):
        delattr(self.ui, self.name)


def _frames(ui, view, setter, sweep: Sweep) -> dict:
    from .viz.p2p import figure_to_png

    pngs = []
    for v in sweep.values:
        with _Muted(ui, view.redraw):
            setter(v)
        pngs.append(base64.b64encode(figure_to_png(view.draw(), view.dpi)).decode("ascii"))
    with _Muted(ui, view.redraw):
        setter(sweep.values[sweep.default])
    return {"label": sweep.label, "values": [f"{v:g}" if isinstance(v, float) else str(v) for v in sweep.values],
            "default": sweep.default, "note": sweep.note, "frames": pngs}


@dataclasses.dataclass
class _View:
    """How to redraw a widget and get its figure: ``redraw`` is the method its controls call."""

    title: str
    redraw: str
    draw: object  # () -> Figure: redraw with the current controls and return the figure
    dpi: int


def _drawer(ui, redraw: str, figure: str):
    def draw():
        getattr(type(ui), redraw)(ui, *([ui.slider.value] if redraw == "redraw" else []))
        status = getattr(getattr(ui, "status", None), "value", "")
        if "#b00" in status:  # the widget shows a setting's error instead of raising it
            raise RuntimeError(f"the widget refused a setting: {re.sub('<[^>]+>', '', status)}")
        return getattr(ui, figure)
    return draw


def _grid(lo: float, hi: float, step: float, keep: float) -> tuple[list, int]:
    values = [round(lo + k * step, 4) for k in range(int(round((hi - lo) / step)) + 1)]
    if not any(abs(v - keep) < 1e-9 for v in values):
        values = sorted(values + [round(keep, 4)])
    return values, min(range(len(values)), key=lambda k: abs(values[k] - keep))


def _set(widget):
    def setter(v):
        widget.value = v
    return setter


def _noising_sweeps(ui):
    t = ui.slider.value
    values, default = _grid(0, ui.sched.T, 50, t)
    values = [int(v) for v in values]
    sweeps = [(Sweep("t", values, default, "x_t of each image with one fixed noise draw"), _set(ui.slider))]
    return _View("x_t as t moves", "redraw", _drawer(ui, "redraw", "fig"), 80), sweeps


def _edit_sweeps(ui):
    sweeps = []
    for name, slider, step in (("cross tau", ui.cross_tau, 0.1), ("self tau", ui.self_tau, 0.2)):
        values, default = _grid(0.0, 1.0, step, slider.value)
        sweeps.append((Sweep(name, values, default, f"the other controls at their defaults"), _set(slider)))
    if ui.alpha_words:
        word = ui.alpha_words[0]
        own, slider = ui.word_own[word], ui.word_tau[word]
        values, default = _grid(0.0, 1.0, 0.2, slider.value)

        def word_tau(v, own=own, slider=slider):
            own.value = True
            slider.value = v
        sweeps.append((Sweep(f"tau['{word}'] (alpha of '{word}')", values, default,
                             f"'{word}' gets its own tau; cross tau stays {ui.cross_tau.value:.2f}"), word_tau))
        sweeps.append((None, lambda v, own=own: setattr(own, "value", False)))  # back to one tau
    words = [w for w in ui.reweight_word.options if w != "(none)"]
    if words:
        word = next((w for w in words if w not in (ui.source_word, ui.target_word)), words[0])
        values, default = _grid(-2.0, 4.0, 1.0, 1.0)

        def reweight(v, word=word):
            ui.reweight_word.value = word
            ui.reweight_scale.value = v
        sweeps.append((Sweep(f"re-weight '{word}' (scale c)", values, default,
                             f"the attention to '{word}' multiplied by c"), reweight))
        sweeps.append((None, lambda v: setattr(ui.reweight_word, "value", "(none)")))
    return _View("Prompt-to-Prompt edit", "render", _drawer(ui, "render", "figure"), ui.dpi), sweeps


def _attention_sweeps(ui):
    token = ui.token
    options = list(token.options)  # [(label, index)]
    labels = [label for label, _ in options]
    default = [j for _, j in options].index(token.value)

    def pick(label):
        token.value = dict(options)[label]
    step_values = list(range(ui.step.min, ui.step.max + 1))
    sweeps = [(Sweep("token", labels, default, "its map at the last step, all layers averaged"), pick),
              (Sweep("step", step_values, step_values.index(ui.step.value),
                     f"token {labels[default]!r}, all layers averaged"), _set(ui.step))]
    return _View("cross-attention per token and step", "render", _drawer(ui, "render", "figure"), ui.dpi), sweeps


def _real_edit_sweeps(ui):
    methods = list(ui.method.options)
    sweeps = [(Sweep("inversion", methods, methods.index(ui.method.value),
                     f"cross tau {ui.cross_tau.value:.2f}, self tau {ui.self_tau.value:.2f}"), _set(ui.method))]
    values, default = _grid(0.0, 1.0, 0.2, ui.cross_tau.value)
    sweeps.append((Sweep("cross tau", values, default, f"{ui.method.value} inversion"), _set(ui.cross_tau)))
    return _View("real-image edit", "render", _drawer(ui, "render", "figure"), ui.dpi), sweeps


_SWEEPS = {"NoisingUI": _noising_sweeps, "EditUI": _edit_sweeps, "AttentionExplorer": _attention_sweeps,
           "RealEditUI": _real_edit_sweeps}


def explorer_frames(ui):
    """Run in the notebook's kernel after a widget cell: move each of the widget's controls over a
    grid of values (the others at the widget's defaults), save the widget's figure at each one and
    display the frames as one :data:`EXPLORER_MIME` output, which the site builder turns into a
    slider. Knows the widgets of :mod:`p2p_lab.widgets`; any other object raises TypeError."""
    from IPython.display import display

    kind = type(ui).__name__
    if kind not in _SWEEPS:
        raise TypeError(f"no static explorer for a {kind}: add one to p2p_lab.site._SWEEPS "
                        f"(known widgets: {', '.join(_SWEEPS)})")
    view, sweeps = _SWEEPS[kind](ui)
    out = []
    for sweep, setter in sweeps:
        if sweep is None:
            with _Muted(ui, view.redraw):
                setter(None)  # restore a control a sweep switched on
        else:
            out.append(_frames(ui, view, setter, sweep))
    view.draw()  # the widget as it was
    display({EXPLORER_MIME: {"kind": kind, "title": view.title, "sweeps": out}}, raw=True)


# --------------------------------------------------------------------------- pages

def _explorer_html(data: dict, folder: str, files: list[list[str]], number: int) -> str:
    """The explorer's HTML: a picker of the control to move, a range slider, its value and the frame."""
    sweeps = [{"label": s["label"], "values": s["values"], "default": s["default"], "note": s["note"],
               "frames": [f"{folder}/{f}" for f in names]} for s, names in zip(data["sweeps"], files)]
    first = sweeps[0]
    options = "".join(f'<option value="{k}">{html.escape(s["label"])}</option>' for k, s in enumerate(sweeps))
    payload = html.escape(json.dumps(sweeps), quote=True)
    hidden = "" if len(sweeps) > 1 else ' style="display:none"'
    picker = (f'<span{" hidden" if len(sweeps) > 1 else ""}>{html.escape(first["label"])}</span>'
              f'<select class="p2p-explorer-pick"{hidden} aria-label="control">{options}</select>')
    pick_text = "Pick a control (the others stay at the widget's values). " if len(sweeps) > 1 else ""
    alt = html.escape(f'{data["title"]}: {first["label"]} = {first["values"][first["default"]]}')
    return (f'<div class="p2p-explorer" id="p2p-explorer-{number}" data-sweeps="{payload}">\n'
            f'<p class="p2p-explorer-head"><strong>Explorer</strong> ({html.escape(data["title"])}): the widget\'s '
            f'pictures, computed when this page was built. {pick_text}Move the slider; to change anything '
            f'else, open the notebook in Colab.</p>\n'
            f'<div class="p2p-explorer-controls"><label>{picker}</label> <input class="p2p-explorer-slider" type="range" min="0" '
            f'max="{len(first["values"]) - 1}" step="1" value="{first["default"]}" aria-label="value"> '
            f'<output class="p2p-explorer-value">{html.escape(first["values"][first["default"]])}</output></div>\n'
            f'<p class="p2p-explorer-note">{html.escape(first["note"])}</p>\n'
            f'<img class="p2p-explorer-frame" src="{first["frames"][first["default"]]}" alt="{alt}">\n</div>')


def _write_explorer(data: dict, static: Path, name: str, number: int) -> tuple[str, int]:
    """Write the frames as PNG files under ``static/explorers/`` and return the explorer's HTML."""
    folder = f"{name}-{number}"
    (static / "explorers" / folder).mkdir(parents=True, exist_ok=True)
    files, count = [], 0
    for k, sweep in enumerate(data["sweeps"]):
        names = []
        for j, frame in enumerate(sweep["frames"]):
            names.append(f"{k}-{j}.png")
            (static / "explorers" / folder / names[-1]).write_bytes(base64.b64decode(frame))
            count += 1
        files.append(names)
    return _explorer_html(data, f"{STATIC}/explorers/{folder}", files, number), count


def _clean_outputs(outputs: list) -> list:
    """Outputs as a page shows them: widget views (progress bars) and their text stand-ins dropped."""
    kept = []
    for out in outputs:
        data = out.get("data", {})
        if "application/vnd.jupyter.widget-view+json" in data:
            continue
        kept.append(out)
    return kept


def page_notebook(master, executed, name: str, static: Path, repo: str | None = None):
    """The notebook a page is built from: the student version's cells (:func:`student_notebook`),
    the executed master's outputs, each widget cell's output replaced by its explorer (frames
    written into ``static``), and the Colab badge a local image linking to ``colab_url(name)``.
    Returns (notebook, number of frames)."""
    import nbformat

    from .grading.bundle import student_notebook

    page = student_notebook(master, name)
    by_index, explorers = {}, {}
    for cell in executed.cells:
        meta = cell.metadata.get("p2p_site", {})
        if "index" in meta:
            by_index[meta["index"]] = cell
        elif "explorer_for" in meta:
            found = [o for o in cell.get("outputs", []) if EXPLORER_MIME in o.get("data", {})]
            explorers[meta["explorer_for"]] = found[0]["data"][EXPLORER_MIME] if found else None
    frames, number = 0, 0
    badge = f"[![Open In Colab]({STATIC}/colab-badge.svg)]({colab_url(name, repo or COLAB_REPO)})"
    has_badge = False
    for i, cell in enumerate(page.cells):
        cell.metadata.pop("p2p_site", None)
        if cell.cell_type == "markdown":
            cell.source, n = BADGE.subn(badge, cell.source)
            has_badge = has_badge or n > 0
            continue
        if cell.cell_type != "code" or i not in by_index:
            continue
        done = by_index[i]
        cell.outputs, cell.execution_count = _clean_outputs(done.get("outputs", [])), done.get("execution_count")
        if i in explorers:
            number += 1
            if explorers[i] is None:
                raise SiteError(f"{name}, cell {i}: the widget's explorer made no frames")
            text, count = _write_explorer(explorers[i], static, Path(name).stem, number)
            frames += count
            cell.outputs = [nbformat.v4.new_output("display_data", data={"text/html": text})]
    if not has_badge:
        page.cells.insert(1, nbformat.v4.new_markdown_cell(badge))
    page.metadata.pop("widgets", None)
    return page, frames


# --------------------------------------------------------------------------- the landing page

def _first_heading(nb) -> str:
    for cell in nb.cells:
        for line in cell_source(cell).splitlines():
            if line.startswith("# "):
                return line[2:].strip()
    return "untitled"


def course_map(masters: list[Path]) -> str:
    """The landing page (MyST markdown): each notebook in order, what it teaches and how long,
    then each notebook's further reading."""
    import nbformat

    rows, reading = [], []
    for path in masters:
        nb = nbformat.read(str(path), as_version=4)
        opening = "\n".join(cell_source(c) for c in nb.cells[:3] if c.cell_type == "markdown")
        learn = re.search(r"\*\*What you will learn\*\*\s*\n(.*?)(?:\n\s*\n|\n\*\*)", opening, re.S)
        bullets = [b.strip().rstrip(";.") for b in re.findall(r"^\s*[-*] (.+)$", learn.group(1), re.M)] if learn else []
        when = re.search(r"\*\*Time:\*\*\s*([^.*]+)", opening)
        page = f"{path.stem}.md"
        rows.append(f"### [{_first_heading(nb)}]({page})\n\n"
                    + (f"*{when.group(1).strip()}.*\n\n" if when else "")
                    + "".join(f"- {b}\n" for b in bullets))
        further = [cell_source(c) for c in nb.cells if c.cell_type == "markdown"
                   and cell_source(c).lstrip().lower().startswith("## further reading")]
        if further:
            body = further[0].split("\n", 1)[1].strip() if "\n" in further[0] else ""
            reading.append(f"### {_first_heading(nb)}\n\n{body}\n")
    toctree = "\n".join(p.stem for p in masters)
    return ("# Prompt-to-Prompt, from attention to image editing\n\n"
            "A course in six notebooks, read here without running anything: every figure was computed on "
            "the course's own small diffusion model (the shapes world) when this site was built, and "
            "every widget is an explorer you can move. To run a notebook, write the exercises and press "
            "its checks, open it in Colab (the badge on each page) or install the course locally.\n\n"
            "## The course, in order\n\n" + "\n".join(rows) + "\n## Further reading\n\n" + "\n".join(reading)
            + f"\n```{{toctree}}\n:hidden:\n:maxdepth: 1\n\n{toctree}\n```\n")


# --------------------------------------------------------------------------- Sphinx

_CONF = '''# Written by p2p_lab.site for one build.
project = "p2p_lab"
author = "the p2p_lab course"
copyright = "the p2p_lab course"
extensions = ["myst_nb", "sphinx.ext.mathjax"]
exclude_patterns = ["_build", "**.ipynb_checkpoints"]
nb_execution_mode = "off"
nb_merge_streams = True
myst_enable_extensions = ["dollarmath", "amsmath"]
myst_update_mathjax = False
suppress_warnings = ["mystnb.unknown_mime_type", "myst.header", "misc.highlighting_failure", "myst.xref_missing"]
html_theme = "furo"
html_title = "p2p_lab: Prompt-to-Prompt, from attention to image editing"
html_static_path = ["_static"]
html_css_files = ["p2p-explorer.css"]
html_js_files = ["p2p-explorer.js"]
html_copy_source = False
html_show_sourcelink = False
html_show_sphinx = False
html_theme_options = {"navigation_with_keys": True}
# MathJax 2 from inside the site: HTML-CSS output with the STIX-Web fonts it ships (as Jupyter does)
mathjax_path = "mathjax/MathJax.js?config=TeX-AMS-MML_HTMLorMML-full"
mathjax2_config = {
    "HTML-CSS": {"availableFonts": [], "webFont": "STIX-Web", "imageFont": None, "preferredFont": None},
    "tex2jax": {"inlineMath": [["\\\\(", "\\\\)"]], "displayMath": [["\\\\[", "\\\\]"]],
                "processEscapes": True, "processClass": "math|output_area", "ignoreClass": "document"},
    "menuSettings": {"zoom": "None"},
    "showMathMenu": False,
}
'''

_CSS = """.p2p-explorer { border: 1px solid var(--color-background-border, #ccc); border-radius: 6px;
  padding: 0.6em 0.8em; margin: 0.5em 0 1em; }
.p2p-explorer-controls { display: flex; align-items: center; gap: 0.8em; flex-wrap: wrap; }
.p2p-explorer-slider { flex: 1 1 16em; max-width: 28em; }
.p2p-explorer-value { font-family: var(--font-stack--monospace, monospace); min-width: 5em; }
.p2p-explorer-note { font-size: 0.85em; margin: 0.3em 0; opacity: 0.8; }
.p2p-explorer-frame { max-width: 100%; height: auto; display: block; background: white; }
.p2p-explorer-head { margin-top: 0; }
.p2p-explorer-pick { width: auto; max-width: 100%; }
"""

_JS = """// Explorers of the p2p_lab course site: a slider swaps precomputed frames (no server, no kernel).
(function () {
  function setup(root) {
    var sweeps = JSON.parse(root.getAttribute("data-sweeps"));
    var pick = root.querySelector(".p2p-explorer-pick"), slider = root.querySelector(".p2p-explorer-slider");
    var value = root.querySelector(".p2p-explorer-value"), note = root.querySelector(".p2p-explorer-note");
    var img = root.querySelector(".p2p-explorer-frame");
    var head = root.querySelector(".p2p-explorer-head strong");
    function show() {
      var s = sweeps[+pick.value], k = +slider.value;
      img.src = s.frames[k];
      img.alt = s.label + " = " + s.values[k];
      value.textContent = s.values[k];
    }
    pick.addEventListener("change", function () {
      var s = sweeps[+pick.value];
      slider.max = s.values.length - 1;
      slider.value = s.default;
      note.textContent = s.note;
      show();
    });
    slider.addEventListener("input", show);
    slider.addEventListener("change", show);
    sweeps.forEach(function (s) { s.frames.forEach(function (f) { new Image().src = f; }); });
  }
  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll(".p2p-explorer").forEach(setup);
  });
})();
"""

_BADGE_SVG = """<svg xmlns="http://www.w3.org/2000/svg" width="117" height="20" role="img" aria-label="Open in Colab">
<title>Open in Colab</title><rect width="117" height="20" rx="3" fill="#555"/>
<rect x="24" width="93" height="20" rx="3" fill="#F9AB00"/><rect x="24" width="6" height="20" fill="#F9AB00"/>
<circle cx="9" cy="10" r="4.5" fill="none" stroke="#F9AB00" stroke-width="2.4"/>
<circle cx="16" cy="10" r="4.5" fill="none" stroke="#E8710A" stroke-width="2.4"/>
<text x="70" y="14" fill="#1a1a1a" font-family="Verdana,DejaVu Sans,sans-serif" font-size="11"
 text-anchor="middle">Open in Colab</text></svg>
"""


def _mathjax_source() -> Path:
    try:
        import jupyter_server_mathjax
    except ImportError:
        raise SiteError("the site typesets math with a local MathJax from the jupyter-server-mathjax "
                        "package: pip install -e \".[site]\"") from None
    return Path(jupyter_server_mathjax.__file__).parent / "static"


def copy_mathjax(dst: Path) -> None:
    """MathJax 2 into ``dst``: the loader, config, TeX input, HTML-CSS output with its STIX-Web fonts,
    extensions; not the SVG output (unused) nor languages other than English."""
    src = _mathjax_source()
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("*.md"))
    shutil.rmtree(dst / "jax" / "output" / "SVG", ignore_errors=True)
    loc = dst / "localization"
    if loc.is_dir():
        for lang in loc.iterdir():
            if lang.name != "en":
                shutil.rmtree(lang) if lang.is_dir() else lang.unlink()


def sphinx_build(src: Path, build: Path) -> None:
    """Run Sphinx (HTML builder) on ``src`` in a separate process; its errors become SiteError."""
    for module in ("sphinx", "myst_nb", "furo"):
        try:
            __import__(module)
        except ImportError:
            raise SiteError(f"the site builder needs {module}: pip install -e \".[site]\"") from None
    cmd = [sys.executable, "-m", "sphinx", "-b", "html", "-q", "-E", "-j", "1", str(src), str(build)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SiteError(f"Sphinx failed (exit {done.returncode}):\n{(done.stderr or done.stdout)[-3000:]}")


# --------------------------------------------------------------------------- leaks

def solution_lines(masters: list[Path], min_length: int = 24) -> set[str]:
    """Every line between the solution markers of the masters that is long enough to be telling
    (``min_length`` characters, comments aside): the release's leak scan (tests/test_grading.py);
    less the lines the student version shows anyway (a solution may repeat a line of the text)."""
    import nbformat

    from .grading.bundle import student_notebook

    lines, public = set(), []
    for path in masters:
        nb = nbformat.read(str(path), as_version=4)
        for cell in nb.cells:
            inside = False
            for line in cell_source(cell).split("\n"):
                if line.strip() in (BEGIN, END):
                    inside = line.strip() == BEGIN
                elif inside and len(line.strip()) >= min_length and not line.strip().startswith("#"):
                    lines.add(line.strip())
        public += [cell_source(c) for c in student_notebook(nb, path.name).cells]
    public_text = "\n".join(public)
    return {line for line in lines if line not in public_text}


def page_text(raw: str) -> str:
    """A page's text as a reader sees it: tags removed, entities decoded (code is split in spans)."""
    return html.unescape(re.sub(r"<[^>]+>", "", raw))


def leaks(site: Path, lines: set[str]) -> list[str]:
    """``file: line`` for each solution line found in the site's text files."""
    found = []
    for path in sorted(site.rglob("*")):
        if path.suffix not in (".html", ".js", ".txt", ".json", ".ipynb", ".md", ".css") or "mathjax" in path.parts:
            continue
        raw = path.read_text(errors="replace")
        text = raw + "\n" + page_text(raw)
        found += [f"{path.relative_to(site)}: {line}" for line in sorted(lines) if line in text]
    return found


# --------------------------------------------------------------------------- the build

@dataclasses.dataclass
class SiteReport:
    """What a build made and what it cost."""

    out: Path
    pages: list[str]
    seconds: float
    execute_seconds: dict[str, float]  # 0.0: reused from the cache
    frames: dict[str, int]
    size_bytes: int

    def __str__(self) -> str:
        runs = ", ".join(f"{k} {v:.0f} s" if v else f"{k} cached" for k, v in self.execute_seconds.items())
        explorers = ", ".join(f"{k}: {v}" for k, v in self.frames.items() if v) or "none"
        return (f"site: {self.out / 'index.html'} ({len(self.pages)} pages)\n"
                f"  executing: {runs}\n  explorer frames: {explorers}\n"
                f"  build time: {self.seconds:.0f} s ({self.seconds / 60:.1f} min) on {os.cpu_count()} CPU cores\n"
                f"  site size: {self.size_bytes / 1e6:.1f} MB")


def _size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def build_site(out, notebooks_dir=None, cache_dir: Path | str | None = DEFAULT_CACHE, timeout: int = 1800,
               repo: str | None = None, log=print) -> SiteReport:
    """Build the course site into ``out`` (see the module's docstring); returns a :class:`SiteReport`.

    ``notebooks_dir``: the master notebooks (default ``notebooks/``). ``cache_dir``: where executed
    notebooks are kept and reused while the notebook's text, the package modules its kernel loaded
    and the model's files are unchanged (None: no cache). ``timeout``: seconds per cell. ``repo``: the GitHub owner/name the Colab badges open
    (default ``p2p_lab.COLAB_REPO``).
    """
    import nbformat

    start = time.perf_counter()
    out = Path(out).resolve()
    check_out_dir(out)
    if repo is not None and not re.fullmatch(r"[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+", repo):
        raise SiteError(f"repo must be a GitHub repository as owner/name, got {repo!r}")
    if timeout <= 0:
        raise SiteError(f"timeout is seconds per cell and must be positive, got {timeout}")
    notebooks_dir = Path(notebooks_dir or REPO_ROOT / "notebooks")
    masters = sorted(notebooks_dir.glob("*.ipynb"))
    if not masters:
        raise SiteError(f"no notebooks (*.ipynb) in {notebooks_dir}: give the folder of master notebooks")
    copy_mathjax_from = _mathjax_source()  # fail before executing anything when the extra is missing
    cache = Path(cache_dir) if cache_dir else None
    with tempfile.TemporaryDirectory(prefix="p2p_site_") as tmp:
        src, build = Path(tmp) / "src", Path(tmp) / "html"
        static = src / STATIC
        static.mkdir(parents=True)
        seconds, frames = {}, {}
        for path in masters:
            executed, seconds[path.stem] = execute(path, cache, timeout, log)
            page, frames[path.stem] = page_notebook(nbformat.read(str(path), as_version=4), executed,
                                                    path.name, static, repo)
            nbformat.write(page, str(src / path.name))
        (src / "index.md").write_text(course_map(masters))
        (src / "conf.py").write_text(_CONF)
        (static / "p2p-explorer.js").write_text(_JS)
        (static / "p2p-explorer.css").write_text(_CSS)
        (static / "colab-badge.svg").write_text(_BADGE_SVG)
        assert copy_mathjax_from.is_dir()
        copy_mathjax(static / "mathjax")
        log("  building the pages with Sphinx (MyST-NB, furo)...")
        sphinx_build(src, build)
        for junk in (".buildinfo", ".doctrees", "_sources", "objects.inv", ".buildinfo.bak"):
            target = build / junk
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
        found = leaks(build, solution_lines(masters))
        if found:
            raise SiteError("solution code would be published; nothing was written to "
                            f"{out}:\n  " + "\n  ".join(found[:20]))
        if out.exists():
            for child in out.iterdir():
                shutil.rmtree(child) if child.is_dir() else child.unlink()
        shutil.copytree(build, out, dirs_exist_ok=True)
    (out / ".nojekyll").write_text("")  # GitHub Pages: serve _static/ and _images/ as they are
    (out / MARKER).write_text("")
    pages = sorted(p.name for p in out.glob("*.html") if p.stem[:2].isdigit())
    report = SiteReport(out, pages, time.perf_counter() - start, seconds, frames, 0)
    (out / MARKER).write_text("built by python -m p2p_lab site; a rebuild replaces this folder's contents\n"
                              + "\n".join(str(report).splitlines()[1:-1]) + "\n")
    report.size_bytes = _size(out)
    return report


# --------------------------------------------------------------------------- command line

def _site_cmd(args) -> int:
    try:
        report = build_site(args.out, args.notebooks, None if args.no_cache else args.cache,
                            args.timeout, args.repo)
    except SiteError as err:
        print(f"site: {err}", file=sys.stderr)
        return 2
    print(report)
    return 0


def register_cli(subparsers) -> dict:
    """Add ``site`` to ``python -m p2p_lab``; returns {name: (help, fn)}."""
    commands = {"site": ("build the course as a static HTML site (every figure, explorers without a kernel)",
                         _site_cmd)}
    p = subparsers.add_parser("site", help=commands["site"][0])
    p.add_argument("out", help="output folder: empty, new, or a site built here before (index.html is the landing page)")
    p.add_argument("--notebooks", default=None, help="folder of master notebooks (default: notebooks/)")
    p.add_argument("--cache", default=str(DEFAULT_CACHE),
                   help=f"folder of executed notebooks reused while nothing they depend on changed (default {DEFAULT_CACHE})")
    p.add_argument("--no-cache", action="store_true", help="execute every notebook afresh and keep nothing")
    p.add_argument("--timeout", type=int, default=1800, help="seconds a cell may run (default 1800)")
    p.add_argument("--repo", default=None, help="GitHub owner/name the Colab badges open (default p2p_lab.COLAB_REPO)")
    return commands
