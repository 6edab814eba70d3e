"""Shared fixtures: the shipped model and an SD-v1-topology model with random weights."""
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
