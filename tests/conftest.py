"""Shared fixtures: the shipped model, an SD-v1-topology model with random weights, one torch thread."""
import pytest
import torch

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


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
