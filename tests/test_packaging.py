"""Set-up files agree with each other and with the README."""
import re
import tomllib
from pathlib import Path

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


def _colab_preinstalled() -> dict[str, str]:
    import ast

    tree = ast.parse((ROOT / ".ci" / "colab_home.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "COLAB_PREINSTALLED":
            return {_name(e.value): e.value.split("==")[1] for e in node.value.elts}
    raise AssertionError("COLAB_PREINSTALLED not found in .ci/colab_home.py")


def test_installing_on_colab_upgrades_nothing_colab_ships_and_adds_no_lab_tools():
    """Every dependency's lower bound admits the (older) version the Colab-like home preinstalls,
    and the package itself needs neither JupyterLab nor the test tools (they are extras)."""
    from packaging.requirements import Requirement

    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    colab = _colab_preinstalled()
    for req in map(Requirement, meta["dependencies"]):
        name = _name(req.name)
        if name in colab:
            assert req.specifier.contains(colab[name]), f"{req} would replace Colab's {name} {colab[name]}"
    core = {_name(r) for r in meta["dependencies"]}
    assert not core & {"jupyterlab", "nbval", "pytest", "nbclient", "nbformat", "notebook", "playwright"}
