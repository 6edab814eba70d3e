"""The shipped model: a standard diffusers pipeline folder, loaded offline, deterministic."""
import shutil
import socket
import warnings
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
    # a model trained before the world had appearance words has none of them in its vocabulary
    known = [w for w in world_words() if f"{w}</w>" in tok.get_vocab() or w == SPLIT_WORD]
    assert {"a", "red", "circle", "background"} <= set(known)
    for word in known:
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


# ---------------------------------------------------------------- hub ids: one table, a fallback order
# A fake Hugging Face Hub: huggingface_hub.model_info answers from a hand-written set of repositories
# (raising huggingface_hub's real errors, made by its own hf_raise_for_status from a 404 / 401
# response), and the pipeline class "downloads" an id by loading the saved SD v1 stand-in. Nothing
# touches the network; the tests read which ids were asked and loaded, in which order.

V14, V15 = "CompVis/stable-diffusion-v1-4", "stable-diffusion-v1-5/stable-diffusion-v1-5"


def _hub_error(status: int, code: str, repo: str):
    """The error huggingface_hub itself raises for a hub response with this status and error code."""
    import httpx2
    from huggingface_hub.utils import hf_raise_for_status

    url = f"https://huggingface.co/api/models/{repo}"
    response = httpx2.Response(status, request=httpx2.Request("GET", url), headers={"X-Error-Code": code})
    try:
        hf_raise_for_status(response)
    except Exception as err:  # noqa: BLE001 - the error is the product
        return err
    raise AssertionError(f"hf_raise_for_status raised nothing for {status} {code}")


class FakeHub:
    def __init__(self, repos=(), gated=(), offline=False, cached=(), wrapped=(), unreachable=False):
        self.repos, self.gated, self.offline, self.unreachable = set(repos), set(gated), offline, unreachable
        self.cached = set(cached)  # ids from_pretrained can load while offline (the local cache)
        self.wrapped = set(wrapped)  # ids diffusers reports as an OSError raised from RepositoryNotFoundError
        self.asked, self.loaded = [], []

    def model_info(self, repo_id, **kwargs):
        from huggingface_hub.errors import OfflineModeIsEnabled

        self.asked.append(repo_id)
        if self.offline:
            raise OfflineModeIsEnabled("Cannot reach https://huggingface.co: offline mode is enabled.")
        if self.unreachable:
            raise ConnectionResetError(104, "Connection reset by peer")
        if repo_id in self.gated:
            raise _hub_error(401, "GatedRepo", repo_id)
        if repo_id not in self.repos:
            raise _hub_error(404, "RepoNotFound", repo_id)
        return {"id": repo_id}


@pytest.fixture
def fake_hub(monkeypatch, standin_folder):
    import huggingface_hub

    import p2p_lab.model as model

    real = model.pipeline_class()
    hubs = []

    class FakePipeline:
        @staticmethod
        def from_pretrained(name, **kwargs):
            hub = hubs[-1]
            hub.loaded.append(name)
            if name in hub.wrapped:
                raise OSError(f"Cannot load model {name}") from _hub_error(404, "RepoNotFound", name)
            if (hub.offline and name not in hub.cached) or (not hub.offline and name not in hub.repos):
                raise OSError(f"Cannot load model {name}: model is not cached locally and an error occurred "
                              f"while trying to fetch metadata from the Hub.")
            kwargs.pop("safety_checker"), kwargs.pop("requires_safety_checker")
            return real.from_pretrained(str(standin_folder), local_files_only=True, **kwargs)

    def make(**kw):
        hubs.append(FakeHub(**kw))
        monkeypatch.setattr(huggingface_hub, "model_info", hubs[-1].model_info)
        return hubs[-1]

    monkeypatch.setattr(model, "pipeline_class", lambda: FakePipeline)
    monkeypatch.delenv(model.MODEL_ENV, raising=False)
    return make


def test_the_table_lists_sd_v14_then_v15_and_removed_ids_are_not_in_it():
    from p2p_lab.model import REMOVED_MODELS, SD_MODELS, SD_V1

    assert SD_MODELS[:2] == (V14, V15) and SD_V1 == V14
    for gone in ("runwayml/stable-diffusion-v1-5", "stabilityai/stable-diffusion-2-1",
                 "stabilityai/stable-diffusion-2-1-base", "stabilityai/stable-diffusion-2"):
        assert gone in REMOVED_MODELS and gone.lower() not in {m.lower() for m in SD_MODELS}


def test_sd15_id_is_accepted_and_loaded_first(fake_hub, monkeypatch):
    from p2p_lab.model import MODEL_ENV, ModelFallbackWarning, course_pipeline, describe_model, model_kind

    hub = fake_hub(repos={V14, V15})
    monkeypatch.setenv(MODEL_ENV, V15)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ModelFallbackWarning)  # no fallback: the id is on the hub
        pipe = course_pipeline(device="cpu")
    assert hub.asked == [V15] and hub.loaded == [V15]
    assert model_kind(pipe) == "sd" and pipe.p2p_lab_hub_id == V15
    assert describe_model(pipe).startswith(f"model: {V15} ({MODEL_ENV}={V15})")


def test_a_gone_id_falls_back_to_the_next_in_the_table_saying_so(fake_hub, monkeypatch):
    import p2p_lab.model as model

    hub = fake_hub(repos={V15})  # v1.4 deleted from the hub
    monkeypatch.setattr(model, "stable_diffusion_available", lambda: True)  # a GPU runtime's default
    with pytest.warns(model.ModelFallbackWarning) as caught:
        pipe = model.course_pipeline(device="cpu")
    assert hub.asked == [V14, V15] and hub.loaded == [V15]  # v1.4 was never downloaded
    (w,) = caught
    assert str(w.message).startswith(f"{V14} is not on the Hugging Face Hub (repository not found); "
                                      f"using {V15} instead.")
    assert pipe.p2p_lab_choice.model == V15 and f"{V14} is not available" in pipe.p2p_lab_choice.reason
    assert model.describe_model(pipe).startswith(f"model: {V15} (")


def test_fallback_goes_on_from_v15_to_v14(fake_hub):
    from p2p_lab.model import ModelFallbackWarning, load_pipeline

    hub = fake_hub(repos={V14})
    with pytest.warns(ModelFallbackWarning, match=f"{V15} is not on the Hugging Face Hub.*using {V14}"):
        pipe = load_pipeline(V15.upper(), device="cpu")  # hub ids ignore case; the table's spelling is used
    assert hub.asked == [V15, V14] and pipe.p2p_lab_hub_id == V14


def test_a_gated_id_is_skipped_with_the_fix(fake_hub):
    from p2p_lab.model import ModelFallbackWarning, load_pipeline

    hub = fake_hub(repos={V14, V15}, gated={V14})
    with pytest.warns(ModelFallbackWarning, match=f"{V14} is gated.*huggingface-cli login.*using {V15}"):
        load_pipeline(V14, device="cpu")
    assert hub.asked == [V14, V15] and hub.loaded == [V15]


def test_not_found_reported_by_diffusers_also_falls_back(fake_hub):
    """Where the hub cannot be asked first, a RepositoryNotFoundError behind diffusers' OSError counts."""
    from p2p_lab.model import ModelFallbackWarning, load_pipeline

    hub = fake_hub(repos={V14, V15}, wrapped={V14}, unreachable=True)
    with pytest.warns(ModelFallbackWarning, match=f"{V14} is not on the Hugging Face Hub.*using {V15}"):
        pipe = load_pipeline(V14, device="cpu")
    assert hub.asked == [V14, V15] and hub.loaded == [V14, V15] and pipe.p2p_lab_hub_id == V15


@pytest.mark.parametrize("removed, why", [
    ("runwayml/stable-diffusion-v1-5", "deleted from the Hugging Face Hub.*its copy is " + V15),
    ("RunwayML/Stable-Diffusion-v1-5", "deleted"),
    ("stabilityai/stable-diffusion-2-1", "withdrawn from the Hugging Face Hub in November 2025"),
    ("stabilityai/stable-diffusion-2-1-base", "withdrawn"),
])
def test_a_removed_id_is_an_error_naming_the_ids_that_work(fake_hub, monkeypatch, removed, why):
    from p2p_lab.model import MODEL_ENV, choose_model, course_pipeline, load_pipeline

    hub = fake_hub(repos={V14, V15})
    works = f"the ids that work: {V14}, {V15}"
    with pytest.raises(ValueError, match=f"(?i){why}.*{works}.*{MODEL_ENV}=shapes"):
        load_pipeline(removed, device="cpu")
    monkeypatch.setenv(MODEL_ENV, removed)
    with pytest.raises(ValueError, match=f"(?i)^{MODEL_ENV}={removed}: .*{why}.*{works}"):
        choose_model()  # refused before anything loads
    with pytest.raises(ValueError, match=f"(?i){works}"):
        course_pipeline(device="cpu")
    assert hub.asked == [] and hub.loaded == []  # refused without asking the hub


def test_an_id_the_hub_does_not_have_is_an_error_naming_the_ids_that_work(fake_hub):
    from p2p_lab.model import load_pipeline

    hub = fake_hub(repos={V14, V15})
    typo = "CompVis/stable-diffusion-v1-44"
    with pytest.raises(ValueError, match=f"could not load '{typo}': {typo} is not on the Hugging Face Hub "
                                         f"\\(repository not found\\). Did you mean {V14}\\? "
                                         f"The ids that work: {V14}, {V15}"):
        load_pipeline(typo, device="cpu")
    with pytest.raises(ValueError, match=f"^could not load 'someone/other-model': .*not on the Hugging Face "
                                         f"Hub \\(repository not found\\)\\. The ids that work: {V14}, {V15}"):
        load_pipeline("someone/other-model", device="cpu")
    # an id the table does not know is not replaced by another model: only it was asked for
    assert hub.asked == [typo, "someone/other-model"] and hub.loaded == []


def test_when_the_whole_table_is_gone_the_error_says_how_to_go_on(fake_hub):
    from p2p_lab.model import load_pipeline

    hub = fake_hub(repos=set())
    with pytest.raises(ValueError, match=f"none of the course's Stable Diffusion ids can be loaded: {V14} is not "
                                         f"on the Hugging Face Hub.*; {V15} is not on.*SD_MODELS.*shapes"):
        load_pipeline(V14, device="cpu")
    assert hub.asked == [V14, V15] and hub.loaded == []


def test_offline_tries_each_id_in_the_cache_then_names_the_network(fake_hub):
    from p2p_lab.model import ModelFallbackWarning, load_pipeline

    hub = fake_hub(repos={V14, V15}, offline=True)
    with pytest.raises(OSError, match=f"could not be reached.*tried {V14}, {V15}.*{V14}, {V15}.*"
                                      f"P2P_LAB_MODEL=shapes"):
        load_pipeline(V14, device="cpu")
    assert hub.loaded == [V14, V15]
    hub = fake_hub(repos={V14, V15}, offline=True, cached={V15})  # offline, v1.5 in the local cache
    with pytest.warns(ModelFallbackWarning, match=f"{V14} could not be loaded \\(OSError\\); using {V15}"):
        pipe = load_pipeline(V14, device="cpu")
    assert hub.loaded == [V14, V15] and pipe.p2p_lab_hub_id == V15


def test_knows_appearance_words_tells_the_flat_world_model_from_its_successors(shipped_pipe, tmp_path):
    """The shipped model's vocabulary has "shaded" and "spotted", one token each, as a tokenizer built
    today for the world (what `python -m p2p_lab train` writes) does; one built from the flat world's
    words alone (the model shipped before) has neither; the scorer's labels name appearance words only
    on a model that knows them."""
    import types

    from p2p_lab import shapes
    from p2p_lab.metrics import EditScores
    from p2p_lab.model import knows_appearance_words
    from p2p_lab.tokenizer import build_tokenizer, world_words

    assert knows_appearance_words(shipped_pipe)
    styled = types.SimpleNamespace(tokenizer=build_tokenizer(tmp_path / "today"), unet=shipped_pipe.unet)
    assert knows_appearance_words(styled)
    appearance = set(shapes.OBJECT_STYLES + shapes.BACKGROUND_STYLES)
    flat_words = [w for w in world_words() if w not in appearance]
    flat = types.SimpleNamespace(tokenizer=build_tokenizer(tmp_path / "flat", flat_words), unet=shipped_pipe.unet)
    assert "shaded</w>" not in flat.tokenizer.get_vocab() and not knows_appearance_words(flat)
    assert EditScores(styled).styles and EditScores(shipped_pipe).styles and not EditScores(flat).styles
