"""Shared fixtures: the shipped model, an SD-v1-topology model with random weights, one torch thread;
and a plugin that fails a notebook cell (nbval) whose output holds a warning or a library notice."""
import pytest
import torch

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


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


@pytest.fixture(scope="session")
def shipped_pipe():
    from p2p_lab.model import load_pipeline

    return load_pipeline(device="cpu")


@pytest.fixture(scope="session")
def sd_like_pipe():
    from p2p_lab.testing import sd_like_pipeline

    return sd_like_pipeline()


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny tensors on two busy cores: one torch thread is faster than two fighting threads.
    A module opts in with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
