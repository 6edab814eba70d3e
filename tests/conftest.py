"""Shared fixtures: the shipped model, an SD-v1-topology model with random weights, one torch thread;
and a plugin that fails a notebook cell (nbval) whose output holds a warning or a library notice."""
import os
from pathlib import Path

if os.environ.get("PYTEST_XDIST_WORKER"):  # the README's command: two workers on two cores, one thread each
    os.environ["OMP_NUM_THREADS"] = "1"  # (read by torch on import, and by the notebooks' kernels): threads
    # spinning against each other's on the same cores cost far more than they add

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else max(1, min(2, torch.get_num_threads())))


class NotebookWarnings:
    """Registered as a plugin (not a conftest hook), so it sees nbval's cells under notebooks/."""

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_call(self, item):
        result = yield
        outputs = getattr(item, "test_outputs", None)  # nbval's IPyNbCell keeps the cell's outputs
        if outputs:
            from p2p_lab.testing import notebook_warnings

            found = notebook_warnings(outputs)
            if found:
                raise AssertionError(f"{item.name}: the cell's output holds warnings a student should "
                                     f"not see:\n" + "\n---\n".join(found))
        return result


def pytest_configure(config):
    config.pluginmanager.register(NotebookWarnings(), "p2p-lab-notebook-warnings")
    config.addinivalue_line("markers", "forbidding: a check test that keeps the block on the package's own implementations")
    config.addinivalue_line("markers", "hidden_tests: runs hidden tests, which the autograder runs with live checks only")


@pytest.fixture(scope="session")
def shipped_pipe():
    from p2p_lab.model import load_pipeline

    return load_pipeline(device="cpu")


@pytest.fixture(scope="session")
def sd_like_pipe():
    from p2p_lab.testing import sd_like_pipeline

    return sd_like_pipeline()


@pytest.fixture(scope="session")
def drawn():
    """A ground-truth picture (float in [0, 1]) of a one-object prompt: the shapes world's renderer,
    the object flat unless the prompt says "shaded", placed by the seed. For fake edits in tests."""
    import numpy as np

    from p2p_lab import shapes

    def draw(prompt: str, seed: int):
        want = shapes.parse_caption(prompt)
        w = want["objects"][0]
        scene = shapes.sample_scene(np.random.default_rng(seed), shape=w["shape"], color=w["color"],
                                    background=want["background"], style=w["style"])
        return shapes.render(scene)[0].astype(np.float32) / 255.0

    return draw


@pytest.fixture(scope="session")
def load_benchmark():
    """A loader of ``benchmarks/<name>.py`` as a module (the benchmarks are scripts, not a package)."""
    import importlib.util

    def load(name: str):
        path = Path(__file__).resolve().parent.parent / "benchmarks" / f"{name}.py"
        spec = importlib.util.spec_from_file_location(name, path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod
    return load


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny tensors on two busy cores: one torch thread is faster than two fighting threads.
    A module opts in with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


CHECK_TESTS = ("test_checks_attention", "test_checks_ddpm", "test_checks_ldm", "test_checks_p2p",
               "test_checks_inversion")


def pytest_generate_tests(metafunc):
    """Every check test runs twice: the checks computing their expected values (the master package,
    the autograder), and comparing with values recorded as a release records them (the student
    version, whose checks hold no answer)."""
    if metafunc.module.__name__ in CHECK_TESTS and not metafunc.definition.get_closest_marker("hidden_tests"):
        metafunc.parametrize("check_values", ["live", "recorded"], indirect=True)


@pytest.fixture(scope="session")
def recorded_expectations(tmp_path_factory):
    """What ``release`` records for the student version, saved and read back as it ships."""
    from p2p_lab.checks._core import load_expectations, record_expectations, save_expectations

    path = save_expectations(record_expectations(), tmp_path_factory.mktemp("checks") / "expected.safetensors")
    return load_expectations(path)


@pytest.fixture(autouse=True)
def check_values(request):
    if getattr(request, "param", "live") == "live":
        yield "live"
        return
    from p2p_lab.checks._core import using_expectations

    with using_expectations(request.getfixturevalue("recorded_expectations")):
        yield "recorded"


@pytest.fixture(autouse=True)
def _public_checks_unblocked(request, monkeypatch):
    """The check tests feed the checks the package's references and known mistakes, which call the
    package's implementations that the checks block for students; unblock them there, except in
    tests marked ``forbidding`` (which test the block itself)."""
    if not request.module.__name__.startswith("test_checks_") or request.node.get_closest_marker("forbidding"):
        return
    from p2p_lab.checks import attention, ddpm, inversion, ldm, p2p

    monkeypatch.setattr(attention, "FORBIDDEN", ())
    for module in (ddpm, ldm, p2p, inversion):
        monkeypatch.setattr(module, "FORBIDDEN", {name: () for name in module.FORBIDDEN})
