"""The shipped model: a standard diffusers pipeline folder, loaded offline, deterministic."""
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest
import torch

from p2p_lab import shapes
from p2p_lab.model import SHIPPED_MODEL, load_pipeline
from p2p_lab.tokenizer import MAX_LENGTH, SPLIT_WORD, world_words


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a connection fails loudly."""
    def refuse(*args, **kwargs):
        raise OSError("network access attempted in an offline test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_folder_is_a_small_safetensors_pipeline():
    files = [p for p in SHIPPED_MODEL.rglob("*") if p.is_file()]
    weights = [p for p in files if p.suffix in {".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".pkl"}]
    assert weights and all(p.suffix == ".safetensors" for p in weights)
    assert sum(p.stat().st_size for p in files) <= 25 * 2**20


def test_standard_diffusers_loading_offline(no_network):
    from diffusers import (AutoencoderKL, DDIMScheduler, StableDiffusionPipeline,
                           UNet2DConditionModel)
    from transformers import CLIPTextModel, CLIPTokenizer

    pipe = StableDiffusionPipeline.from_pretrained(str(SHIPPED_MODEL), local_files_only=True)
    assert isinstance(pipe.vae, AutoencoderKL)
    assert isinstance(pipe.unet, UNet2DConditionModel)
    assert isinstance(pipe.text_encoder, CLIPTextModel)
    assert isinstance(pipe.tokenizer, CLIPTokenizer)
    assert isinstance(pipe.scheduler, DDIMScheduler)
    assert any(name.endswith("attn2.processor") for name in pipe.unet.attn_processors)


def test_tokenizer_conventions(shipped_pipe):
    tok = shipped_pipe.tokenizer
    assert tok.model_max_length == MAX_LENGTH
    ids = tok("a red circle", padding="max_length", max_length=MAX_LENGTH).input_ids
    assert len(ids) == MAX_LENGTH
    assert ids[0] == tok.bos_token_id and ids[4] == tok.eos_token_id and ids[-1] == tok.pad_token_id
    assert tok.convert_ids_to_tokens(ids[1:4]) == ["a</w>", "red</w>", "circle</w>"]
    for word in world_words():
        n = len(tok(word, add_special_tokens=False).input_ids)
        assert n == (2 if word == SPLIT_WORD else 1), word


def test_same_seed_same_image_bit_for_bit(shipped_pipe):
    def run():
        g = torch.Generator().manual_seed(3)
        return shipped_pipe("a red circle on a blue background", num_inference_steps=5,
                            generator=g, output_type="np").images

    a, b = run(), run()
    assert a.shape == (1, shapes.IMAGE_SIZE, shapes.IMAGE_SIZE, 3)
    assert np.array_equal(a, b)


def test_missing_folder_gets_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_pipeline(tmp_path / "nowhere")


def test_incomplete_folder_names_what_is_missing(tmp_path):
    folder = tmp_path / "broken"
    shutil.copytree(SHIPPED_MODEL, folder)
    shutil.rmtree(folder / "unet")
    with pytest.raises(FileNotFoundError, match="unet"):
        load_pipeline(folder)


def test_hub_id_offline_gets_a_clear_error(no_network):
    with pytest.raises(OSError, match="network"):
        load_pipeline("CompVis/stable-diffusion-v1-4", device="cpu")


def test_loader_defaults_to_cpu_float32_here():
    pipe = load_pipeline()
    assert pipe.device.type == ("cuda" if torch.cuda.is_available() else pipe.device.type)
    assert pipe.unet.dtype == (torch.float16 if pipe.device.type == "cuda" else torch.float32)
    assert Path(pipe.config._name_or_path).resolve() == SHIPPED_MODEL.resolve()


# ---------------------------------------------------------------- the one model switch

@pytest.fixture(scope="module")
def standin_folder(tmp_path_factory):
    from p2p_lab.testing import save_sd_standin

    return save_sd_standin(tmp_path_factory.mktemp("sd") / "standin")


def test_switch_defaults_to_the_shipped_model_without_a_gpu(monkeypatch):
    from p2p_lab.model import MODEL_ENV, choose_model

    monkeypatch.delenv(MODEL_ENV, raising=False)
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the default may be Stable Diffusion")
    assert choose_model().model is None
    monkeypatch.setenv(MODEL_ENV, "shapes")
    assert choose_model().model is None


def test_switch_loads_a_pipeline_folder_and_names_its_kind(monkeypatch, standin_folder):
    from p2p_lab.model import MODEL_ENV, course_pipeline, describe_model, model_kind

    monkeypatch.setenv(MODEL_ENV, str(standin_folder))
    pipe = course_pipeline(device="cpu")
    assert model_kind(pipe) == "sd" and pipe.tokenizer.model_max_length == 77
    assert str(standin_folder) in describe_model(pipe)
    monkeypatch.setenv(MODEL_ENV, "shapes")
    assert model_kind(course_pipeline(device="cpu")) == "shapes"


def test_switch_errors_name_the_problem(monkeypatch, tmp_path, no_network):
    from p2p_lab.model import MODEL_ENV, course_pipeline

    monkeypatch.setenv(MODEL_ENV, str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match=f"{MODEL_ENV}=.*does not exist"):
        course_pipeline()
    (tmp_path / "empty").mkdir()
    monkeypatch.setenv(MODEL_ENV, str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match="not a complete diffusers pipeline folder.*model_index"):
        course_pipeline()
    monkeypatch.setenv(MODEL_ENV, "CompVis/stable-diffusion-v1-4")
    with pytest.raises(OSError, match="could not be reached.*P2P_LAB_MODEL=shapes"):
        course_pipeline(device="cpu")


def test_a_pipeline_the_course_cannot_serve_is_refused(shipped_pipe):
    from p2p_lab.model import model_kind

    class Odd:
        tokenizer = type("T", (), {"model_max_length": 32})()
        unet = type("U", (), {"config": type("C", (), {"cross_attention_dim": 512})()})()

    assert model_kind(shipped_pipe) == "shapes"
    with pytest.raises(ValueError, match="32-token prompts and text width 512"):
        model_kind(Odd())


def test_step_and_dtype_knobs(monkeypatch):
    from p2p_lab.model import DTYPE_ENV, STEPS_ENV, _env_dtype, course_steps

    monkeypatch.delenv(STEPS_ENV, raising=False)
    assert course_steps(50) == 50
    monkeypatch.setenv(STEPS_ENV, "3")
    assert course_steps(50) == 3 and course_steps(2) == 2
    monkeypatch.setenv(STEPS_ENV, "many")
    with pytest.raises(ValueError, match=STEPS_ENV):
        course_steps(50)
    monkeypatch.setenv(DTYPE_ENV, "bfloat16")
    assert _env_dtype() is torch.bfloat16
    monkeypatch.setenv(DTYPE_ENV, "int8")
    with pytest.raises(ValueError, match="not a torch floating-point dtype"):
        _env_dtype()


def test_text_encoder_weights_carry_the_prefix_transformers_4_loads():
    from safetensors.torch import load_file

    keys = load_file(str(SHIPPED_MODEL / "text_encoder" / "model.safetensors"))
    assert keys and all(k.startswith("text_model.") for k in keys)
    assert (SHIPPED_MODEL / "tokenizer" / "vocab.json").exists() and (SHIPPED_MODEL / "tokenizer" / "merges.txt").exists()
