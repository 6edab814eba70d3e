"""Set-up files agree with each other and with the README."""
import re
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: tomllib came with 3.11
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parent.parent
CONDA_NAMES = {"pytorch": "torch"}  # conda-forge name -> PyPI name


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[ ;]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def test_environment_yml_lists_the_same_packages_as_pyproject():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = meta["optional-dependencies"]
    pip_names = {_name(r) for r in meta["dependencies"] + extras["lab"] + extras["test"]} - {"p2p-lab"}
    conda = []
    text = (ROOT / "environment.yml").read_text()
    for line in text[text.index("dependencies:"):].splitlines():
        m = re.match(r"^  - ([A-Za-z0-9_.\-]+)", line)
        if m and m.group(1) not in {"python", "pip"}:
            conda.append(CONDA_NAMES.get(m.group(1), m.group(1)))
    assert {_name(c) for c in conda} == pip_names


def test_torch_and_numpy_are_not_pinned_tightly():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for req in meta["dependencies"]:
        if _name(req) in {"torch", "numpy"}:
            assert "==" not in req and "<" not in req, req


def _readme_commands():
    return re.findall(r"```bash\n(.+?)\n```", (ROOT / "README.md").read_text())


def test_readme_has_two_commands_and_ci_runs_the_test_one():
    commands = [c for c in _readme_commands() if c.startswith("python3 -m venv")]
    assert len(commands) == 2
    open_cmd, test_cmd = commands
    assert "jupyter lab" in open_cmd and "pytest" in test_cmd
    assert test_cmd in (ROOT / ".ci" / "run").read_text()


def test_no_pickle_weights_in_data():
    bad = [p for p in (ROOT / "data").rglob("*") if p.suffix in {".bin", ".pt", ".pth", ".ckpt", ".pkl"}]
    assert not bad


def _colab_library_sets() -> dict[str, dict[str, str]]:
    """.ci/colab_home.py's LIBRARY_SETS as {set: {package: pinned version}}."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("colab_home", ROOT / ".ci" / "colab_home.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return {name: {_name(p): p.split("==")[1] for p in pins} for name, pins in mod.LIBRARY_SETS.items()}


# Where the oldest set cannot pin pyproject's floor itself (checked by hand with pip: see colab_home.py)
ABOVE_THE_FLOOR = {"tokenizers": "0.19", "pillow": "9.3"}


def test_the_oldest_library_set_is_the_floor_pyproject_claims():
    """The Colab-like run's oldest set pins each dependency at its lower bound's release (major.minor),
    torch aside (the machine's CPU build), and nothing else is an exception than ABOVE_THE_FLOOR."""
    from packaging.requirements import Requirement

    oldest = _colab_library_sets()["oldest"]
    for req in map(Requirement, tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]):
        name = _name(req.name)
        if name == "torch":
            continue
        (floor,) = [s.version for s in req.specifier if s.operator == ">="]
        want = ABOVE_THE_FLOOR.get(name, ".".join(floor.split(".")[:2]))
        assert name in oldest, f"the oldest library set does not pin {name} (pyproject: {req})"
        assert ".".join(oldest[name].split(".")[:2]) == want, f"{name}: oldest set {oldest[name]}, pyproject {req}"


def test_todays_colab_set_has_todays_colab_libraries():
    today = _colab_library_sets()["today"]
    assert {k: ".".join(today[k].split(".")[:2]) for k in ("numpy", "transformers", "diffusers", "ipywidgets")} \
        == {"numpy": "2.1", "transformers": "5.15", "diffusers": "0.39", "ipywidgets": "7.7"}
    assert today["ipywidgets"] == "7.7.1"


def test_installing_on_colab_upgrades_nothing_colab_ships_and_adds_no_lab_tools():
    """Every dependency's lower bound admits the (older) version the Colab-like home preinstalls,
    and the package itself needs neither JupyterLab nor the test tools (they are extras)."""
    from packaging.requirements import Requirement

    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for set_name, colab in _colab_library_sets().items():
        for req in map(Requirement, meta["dependencies"]):
            name = _name(req.name)
            if name in colab:
                assert req.specifier.contains(colab[name]), \
                    f"{req} would replace {name} {colab[name]} of the {set_name!r} library set"
    core = {_name(r) for r in meta["dependencies"]}
    assert not core & {"jupyterlab", "nbval", "pytest", "nbclient", "nbformat", "notebook", "playwright"}


def _colab_home():
    import importlib.util

    spec = importlib.util.spec_from_file_location("colab_home_run", ROOT / ".ci" / "colab_home.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _notebook(*sources: str) -> str:
    import nbformat

    return nbformat.writes(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(s) for s in sources]))


def test_colab_home_runs_a_hung_notebook_once_more_and_reports_one_that_hangs_twice(tmp_path, monkeypatch,
                                                                                    capsys):
    """The Colab-like run cuts a hung cell off and runs its notebook again from a fresh kernel, once:
    a notebook that hangs only the first time passes, one that hangs every time is a problem, and one
    that fails for another reason is not run again."""
    import sys

    home = _colab_home()
    monkeypatch.setattr(home, "CELL_TIMEOUT_S", 3)
    marker = tmp_path / "hung-once"
    notebooks = {
        "a_hangs_once.ipynb": _notebook(f"import pathlib, time\nm = pathlib.Path({str(marker)!r})\n"
                                        "if not m.exists():\n    m.write_text('x')\n    time.sleep(60)"),
        "b_hangs_always.ipynb": _notebook("import time\ntime.sleep(60)"),
        "c_raises.ipynb": _notebook("raise ValueError('a real failure')"),
    }
    problems = home.run_notebooks(Path(sys.executable), notebooks, tmp_path)
    printed = capsys.readouterr().out
    assert [p.split(" ")[0] for p in problems] == ["b_hangs_always.ipynb", "c_raises.ipynb"]
    assert "a real failure" in problems[1]
    assert printed.count("running it once more") == 2  # a and b, never c
    assert "a_hangs_once.ipynb: ran in" in printed
