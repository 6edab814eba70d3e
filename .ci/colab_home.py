"""Homes 2 and 3 as a new user meets them: every notebook run the way Colab runs it, once for each
library set of LIBRARY_SETS (each in its own fresh environment; by default DEFAULT_SETS, the two ends:
``oldest`` and ``today``; ``--libs oldest colab-2025 today`` adds the middle one: a set takes
about 6 minutes on a quiet 2-core machine (estimated from the one-set run's 7.5) and measured 14 on a
busy one):

- ``oldest``: the oldest versions pyproject.toml claims (numpy 1.24, transformers 4.40, diffusers
  0.30, accelerate 0.30, ipywidgets 7.6, ...; where a floor cannot be installed with the others or
  has no wheel for this Python, the nearest release that can, named beside it);
- ``colab-2025``: Colab's runtime of late 2025 (numpy 2.0, transformers 4.57, diffusers 0.35,
  ipywidgets 7.7.1): the last transformers 4, whose deprecation notices the loader filters;
- ``today``: Colab's runtime today (numpy 2.1, transformers 5.15, diffusers 0.39, ipywidgets 7.7.1;
  Colab's Python 3.13 and torch 2.11 cannot be run here: the environment keeps this machine's Python
  and its CPU build of torch).

The wheel, the student release and the suite's reference image are made once and shared.

1. A fresh virtual environment gets what a Colab CPU runtime has preinstalled (torch first, then
   the set's pins), and nothing of this repository.
2. The package is built as a wheel; only the .ipynb files are copied into an empty folder; the
   kernel starts with a stand-in ``google.colab`` module imported, so each notebook's Colab set-up
   cell runs, its install line pointed at that wheel (``pip install`` of the wheel, dependencies
   from the package index). No notebook can read a file of the repository.
3. Every notebook runs top to bottom; none may print a warning; the install must not have upgraded
   or downgraded a package Colab ships, nor pulled in JupyterLab or nbval; the installed model
   draws the same image on Colab's libraries as the checkout does on the suite's.
4. The headless widget tests run in the same environment (ipywidgets 7.7, the package installed
   from the wheel).
5. The student version (``python -m p2p_lab release``, run here with the suite's libraries) is
   installed in its place, as a course's Colab badge installs it: every master solution passes its
   public check from the expectations recorded at release, on Colab's older libraries.

Usage (with the suite's environment active): python .ci/colab_home.py WORK_DIR [--libs NAME ...]
(prints one line per notebook and set; exit status 1 on failure)
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import numpy as np

from p2p_lab.testing import notebook_warnings

ROOT = Path(__file__).resolve().parent.parent
TORCH = "torch==2.13.0"  # the CPU build on this machine's disk; installed first (see README)
# What a Colab runtime brings, one list per library set (see the docstring). The package must run on
# each unchanged, and installing it must not replace any of them. The notebook runner and test tools
# (the last five) are the same in every set: they run the notebooks, the notebooks do not import them.
RUNNER_TOOLS = ["ipykernel==6.29.5", "nbclient==0.10.2", "nbformat==5.10.4", "notebook==6.5.7", "pytest==8.4.2"]
LIBRARY_SETS = {
    "oldest": [  # pyproject.toml's lower bounds
        "numpy==1.24.4", "transformers==4.40.0", "diffusers==0.30.0", "accelerate==0.30.0",
        "tokenizers==0.19.1",  # floor 0.15: transformers 4.40 needs >= 0.19
        "safetensors==0.4.1",  # floor 0.4: transformers 4.40 needs >= 0.4.1
        "matplotlib==3.8.0", "ipywidgets==7.6.0",
        "scipy==1.10.1", "scikit-image==0.21.0",
        "pillow==9.3.0",  # floor 9.0: the first release with a wheel for Python 3.11
        "tqdm==4.60.0", *RUNNER_TOOLS,
    ],
    "colab-2025": [
        "numpy==2.0.2", "transformers==4.57.1", "diffusers==0.35.2", "accelerate==1.11.0",
        "tokenizers==0.22.1", "safetensors==0.6.2", "matplotlib==3.10.0", "ipywidgets==7.7.1",
        "scipy==1.16.3", "scikit-image==0.25.2", "pillow==11.3.0", "tqdm==4.67.1", *RUNNER_TOOLS,
    ],
    "today": [  # Colab's runtime today: numpy 2.1, transformers 5.15, diffusers 0.39 (latest patches)
        "numpy==2.1.3", "transformers==5.15.1", "diffusers==0.39.0", "accelerate==1.16.0",
        "tokenizers==0.22.2", "safetensors==0.8.0", "matplotlib==3.10.0", "ipywidgets==7.7.1",
        "scipy==1.16.3", "scikit-image==0.25.2", "pillow==11.3.0", "tqdm==4.67.1", *RUNNER_TOOLS,
    ],
}
DEFAULT_SETS = ("oldest", "today")
KEPT = ("torch", "numpy", "transformers", "diffusers", "matplotlib", "ipywidgets")
NEVER = ("jupyterlab", "nbval")  # the course's install must not add these (the lab and test extras have them)
INSTALL_LINE = re.compile(r'!pip -q install "(git\+https://github\.com/[^"]+)"')
FAKE_COLAB = "# a stand-in for Colab's own module: the notebooks only ask whether it is imported\n"
STARTUP = "import google.colab  # the kernel of a Colab runtime has it imported\n"


def sh(*cmd, **kw) -> subprocess.CompletedProcess:
    print("$", " ".join(map(str, cmd)), flush=True)
    return subprocess.run([str(c) for c in cmd], check=True, **kw)


def freeze(python: Path) -> dict[str, str]:
    out = subprocess.run([str(python), "-m", "pip", "list", "--format=json"], check=True,
                         capture_output=True, text=True).stdout
    return {p["name"].lower().replace("_", "-"): p["version"] for p in json.loads(out)}


def make_env(work: Path, pins: list[str]) -> Path:
    venv = work / "colab-venv"
    sh(sys.executable, "-m", "venv", venv)
    python = venv / "bin" / "python"
    sh(python, "-m", "pip", "install", "-q", TORCH)
    sh(python, "-m", "pip", "install", "-q", *pins)
    return python


def build_wheel(work: Path) -> Path:
    out = work / "wheel"
    sh(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", out, ROOT)
    (wheel,) = out.glob("p2p_lab-*.whl")
    print(f"wheel: {wheel.name}, {wheel.stat().st_size / 2 ** 20:.1f} MiB", flush=True)
    return wheel


def colab_kernel_env(work: Path) -> dict:
    fake = work / "fake-colab"
    (fake / "google" / "colab").mkdir(parents=True, exist_ok=True)
    (fake / "google" / "__init__.py").write_text("")
    (fake / "google" / "colab" / "__init__.py").write_text(FAKE_COLAB)
    ipython = work / "ipython"
    (ipython / "profile_default" / "startup").mkdir(parents=True, exist_ok=True)
    (ipython / "profile_default" / "startup" / "00-colab.py").write_text(STARTUP)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("P2P_LAB_", "VIRTUAL_ENV"))}
    bin_dir = work / "colab-venv" / "bin"  # the `!pip` of the set-up cell is this environment's
    return dict(env, PATH=f"{bin_dir}:{env.get('PATH', '')}", PYTHONPATH=str(fake),
                IPYTHONDIR=str(ipython), MPLBACKEND="Agg", PIP_DISABLE_PIP_VERSION_CHECK="1")


# A cell's limit: every notebook runs top to bottom in under 3 minutes, so a cell past this has hung.
# On a loaded machine a kernel's reply is now and then lost and the cell waits forever (seen twice,
# never on a quiet machine); such a notebook is run once more from a fresh kernel, as tests/test_site.py
# does for the site build. A notebook that fails any other way, or hangs twice, is a problem.
CELL_TIMEOUT_S = 400
NOTEBOOK_TIMEOUT_S = 1500
HUNG = ("CellTimeoutError", "DeadKernelError", "Timeout waiting for")
RUNNER = r'''
import sys, time
import nbformat
from nbclient import NotebookClient
path, cwd, out, CELL_TIMEOUT_S = *sys.argv[1:4], int(sys.argv[4])
nb = nbformat.read(path, as_version=4)
start = time.time()
NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name="python3",
               resources={"metadata": {"path": cwd}}).execute()
nb.metadata["p2p_lab_seconds"] = time.time() - start
nbformat.write(nb, out)
'''
SAMPLE = r'''
import sys
import numpy as np, torch
from p2p_lab.model import load_pipeline
pipe = load_pipeline(device="cpu")
g = torch.Generator("cpu").manual_seed(3)
np.save(sys.argv[1], pipe("a red circle on a blue background", num_inference_steps=5, generator=g,
                          output_type="np").images)
'''


def colab_notebooks(wheel: Path, work: Path) -> tuple[dict[str, str], list[str]]:
    """Every notebook with its Colab install line pointed at the wheel, read once with the wheel (so
    that every library set runs the same notebooks as the package they were built with); the
    masters as they were, in ``work/masters``, for the student version's checks."""
    notebooks, problems = {}, []
    (work / "masters").mkdir()
    for src in sorted((ROOT / "notebooks").glob("*.ipynb")):
        (work / "masters" / src.name).write_text(src.read_text())
        nb = json.loads(src.read_text())
        cells = ["".join(c["source"]) for c in nb["cells"]]
        lines = [m for text in cells for m in INSTALL_LINE.findall(text)]
        if len(lines) != 1:
            problems.append(f"{src.name}: expected one Colab install line, found {len(lines)}")
            continue
        for cell, text in zip(nb["cells"], cells):
            cell["source"] = text.replace(lines[0], str(wheel))
        notebooks[src.name] = json.dumps(nb)
    return notebooks, problems


def run_one(python: Path, runner: Path, nb: Path, folder: Path, executed: Path, env: dict):
    cmd = [str(python), str(runner), str(nb), str(folder), str(executed), str(CELL_TIMEOUT_S)]
    try:
        return subprocess.run(cmd, env=env, cwd=folder, capture_output=True, text=True,
                              timeout=NOTEBOOK_TIMEOUT_S)
    except subprocess.TimeoutExpired as hung:
        return subprocess.CompletedProcess(cmd, 1, str(hung.stdout or ""),
                                           f"Timeout waiting for the notebook: {hung}")


def run_notebooks(python: Path, notebooks: dict[str, str], work: Path) -> list[str]:
    folder = work / "notebooks"
    folder.mkdir()
    problems = []
    env = colab_kernel_env(work)
    runner = work / "run_one.py"
    runner.write_text(RUNNER)
    for name, text in notebooks.items():
        (folder / name).write_text(text)
    for nb in sorted(folder.glob("*.ipynb")):
        executed = work / f"executed-{nb.name}"
        run = run_one(python, runner, nb, folder, executed, env)
        if run.returncode and any(sign in run.stderr for sign in HUNG):
            print(f"{nb.name}: a cell hung (kernel reply lost?); running it once more", flush=True)
            run = run_one(python, runner, nb, folder, executed, env)
        if run.returncode:
            problems.append(f"{nb.name} failed:\n{run.stdout[-2000:]}\n{run.stderr[-4000:]}")
            continue
        result = nbformat.read(executed, as_version=4)
        print(f"{nb.name}: ran in {result.metadata['p2p_lab_seconds']:.0f} s (Colab-like, CPU, installed "
              f"wheel)", flush=True)
        if notebook_warnings(result):
            problems.append(f"{nb.name} printed warnings: {notebook_warnings(result)}")
    leftovers = sorted(p.name for p in folder.iterdir() if p.suffix != ".ipynb")
    print("files the notebooks wrote:", leftovers or "none", flush=True)
    return problems


def check_packages(python: Path, before: dict[str, str]) -> list[str]:
    after = freeze(python)
    problems = [f"installing the course changed {name} {before[name]} -> {after.get(name)}"
                for name in KEPT if before.get(name) != after.get(name)]
    problems += [f"installing the course pulled in {name}" for name in NEVER
                 if name in after and name not in before]
    if "p2p-lab" not in after:
        problems.append("the notebooks' set-up cell did not install p2p_lab")
    where = subprocess.run([str(python), "-c", "import p2p_lab; print(p2p_lab.__file__)"], cwd="/",
                           capture_output=True, text=True).stdout.strip()
    if "site-packages" not in where:
        problems.append(f"p2p_lab imported from {where}, not from the installed wheel")
    return problems


def suite_image(work: Path) -> Path:
    """What the checkout draws on the suite's libraries (made once, compared with every set's)."""
    script, ours = work / "sample.py", work / "suite.npy"
    script.write_text(SAMPLE)
    subprocess.run([sys.executable, str(script), str(ours)], cwd=ROOT, check=True, capture_output=True)
    return ours


def check_same_images(python: Path, work: Path, ours: Path) -> list[str]:
    """The installed wheel on Colab's libraries draws what the checkout draws on the suite's
    (diffusers' own pipeline call, same seed), and loads without a word on stderr."""
    script = work / "sample.py"
    script.write_text(SAMPLE)
    theirs = work / "colab.npy"
    run = subprocess.run([str(python), str(script), str(theirs)], cwd=work, capture_output=True, text=True,
                         env=dict(os.environ, HF_HUB_OFFLINE="1"))
    if run.returncode:
        return [f"sampling with the installed wheel failed:\n{run.stderr[-3000:]}"]
    problems = [f"loading the shipped model printed: {run.stderr[-2000:]}"] if run.stderr.strip() else []
    diff = float(abs(np.load(theirs) - np.load(ours)).max())
    print(f"shipped model, Colab's libraries vs the suite's: largest pixel difference {diff:.2e}", flush=True)
    return problems + ([f"the images differ by {diff} between the two stacks"] if diff > 1e-4 else [])


def run_widget_tests(python: Path, work: Path) -> list[str]:
    version = subprocess.run([str(python), "-c", "import ipywidgets; print(ipywidgets.__version__)"],
                             capture_output=True, text=True).stdout.strip()
    tests = sorted(str(p) for p in (ROOT / "tests").glob("test_widgets_*.py"))
    run = subprocess.run([str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir",
                          str(ROOT), *tests], cwd=work, capture_output=True, text=True,
                         env=dict(os.environ, MPLBACKEND="Agg"))
    print(f"widget tests with ipywidgets {version}: {run.stdout.strip().splitlines()[-1:]}", flush=True)
    return [] if run.returncode == 0 else [f"widget tests failed with ipywidgets {version}:\n{run.stdout[-4000:]}"]


STUDENT_CHECKS = r"""
import json, sys
from pathlib import Path
import nbformat
from p2p_lab.testing import check_verdicts, checks_notebook, execute_notebook

out = {}
for master in sorted(Path(sys.argv[1]).glob("*.ipynb")):
    path = Path.cwd() / f"checks_{master.name}"
    nbformat.write(checks_notebook(nbformat.read(master, as_version=4)), path)
    v = check_verdicts(execute_notebook(path, Path.cwd()))
    n = sum(1 for c in nbformat.read(master, as_version=4).cells if c.metadata.get("p2p_lab", {}).get("question"))
    out[master.name] = dict(v, expected=n)
print(json.dumps(out))
"""


def build_student_wheel(work: Path) -> Path:
    """The student version (``python -m p2p_lab release``, the suite's libraries) as a wheel."""
    release = work / "release"
    sh(sys.executable, "-m", "p2p_lab", "release", release, "--no-timings")
    sh(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", work / "student-wheel",
       release / "student")
    (wheel,) = (work / "student-wheel").glob("p2p_lab-*.whl")
    return wheel


def run_student_checks(python: Path, work: Path, wheel: Path, masters: Path) -> list[str]:
    sh(python, "-m", "pip", "install", "-q", "--no-deps", "--force-reinstall", wheel)
    (work / "student-checks").mkdir()
    run = subprocess.run([str(python), "-c", STUDENT_CHECKS, str(masters)], cwd=work / "student-checks",
                         capture_output=True, text=True, env=dict(os.environ, MPLBACKEND="Agg"))
    if run.returncode != 0:
        return [f"the student version's checks did not run:\n{run.stderr[-3000:]}"]
    problems = []
    for name, v in json.loads(run.stdout.strip().splitlines()[-1]).items():
        print(f"{name}: student version's checks, master solutions: {v['passed']} of {v['expected']} passed "
              f"(package at {v['package']})", flush=True)
        if v["passed"] != v["expected"] or v["failed"] or "site-packages" not in str(v["package"]):
            problems.append(f"{name}: the student version's checks on the master solutions:\n{v['printed'][-3000:]}")
    return problems


def run_set(name: str, work: Path, notebooks: dict[str, str], student_wheel: Path, ours: Path) -> list[str]:
    """Every check of the Colab-like home in a fresh environment with library set ``name``."""
    start = time.time()
    work.mkdir()
    print(f"=== library set {name!r}: {' '.join(LIBRARY_SETS[name][:8])} (and {TORCH})", flush=True)
    python = make_env(work, LIBRARY_SETS[name])
    before = freeze(python)
    print(f"[{name}] installed: " + ", ".join(f"{k} {before.get(k)}" for k in (*KEPT, "huggingface-hub")), flush=True)
    problems = run_notebooks(python, notebooks, work)
    problems += check_packages(python, before)
    problems += check_same_images(python, work, ours)
    problems += run_widget_tests(python, work)
    problems += run_student_checks(python, work, student_wheel, work.parent / "masters")  # last: replaces the package
    print(f"[{name}] {time.time() - start:.0f} s, {len(problems)} problem(s)", flush=True)
    return [f"[{name}] {p}" for p in problems]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=f"library sets: "
                                     + "; ".join(f"{k}: {' '.join(v[:4])} ..." for k, v in LIBRARY_SETS.items()))
    parser.add_argument("work", type=Path, help="an empty (or disposable) working folder; it is emptied first")
    parser.add_argument("--libs", nargs="+", choices=list(LIBRARY_SETS), default=list(DEFAULT_SETS),
                        metavar="NAME", help=f"the library sets to run, in order (default: {' '.join(DEFAULT_SETS)}; "
                                             f"all: {' '.join(LIBRARY_SETS)})")
    args = parser.parse_args(argv)
    start, work = time.time(), args.work.resolve()
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    wheel = build_wheel(work)
    notebooks, problems = colab_notebooks(wheel, work)
    student_wheel, ours = build_student_wheel(work), suite_image(work)
    print(f"shared work (wheel, notebooks, student release, reference image): {time.time() - start:.0f} s", flush=True)
    problems += [p for name in args.libs for p in run_set(name, work / name, notebooks, student_wheel, ours)]
    print(f"Colab-like home: {time.time() - start:.0f} s in all ({', '.join(args.libs)})", flush=True)
    for p in problems:
        print("PROBLEM:", p, flush=True)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
