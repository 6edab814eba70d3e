"""The shipped model: its architecture, how it is assembled, and one loader for every notebook.

Taught in notebook 04. The shipped model is a standard diffusers ``StableDiffusionPipeline`` made of
the same classes as Stable Diffusion v1 (``AutoencoderKL``, ``UNet2DConditionModel`` with
cross-attention, ``CLIPTextModel`` + ``CLIPTokenizer``, a DDIM scheduler), only much smaller, so that
it samples in well under a second on a laptop CPU.
"""
from __future__ import annotations

import contextlib
import dataclasses
import difflib
import os
import warnings
from pathlib import Path

import torch


def _shipped_model() -> Path:
    """Where the shipped model is: inside the installed package (``p2p_lab/data/shapes-ldm``, put
    there when the wheel is built from ``data/``), or in the checkout's ``data/shapes-ldm``."""
    here = Path(__file__).resolve().parent
    installed, checkout = here / "data" / "shapes-ldm", here.parent / "data" / "shapes-ldm"
    return installed if (installed / "model_index.json").exists() else checkout


SHIPPED_MODEL = _shipped_model()

# The Stable Diffusion hub ids the course knows, in ONE table. SD_MODELS is the fallback order: the
# id asked for is tried first, then the others in this order, and one that the hub no longer has
# ("repository not found") or that needs a login is skipped with a ModelFallbackWarning naming it
# and the id used. Hub ids rot: add a working copy of SD v1 here (a 77-token CLIP text encoder,
# cross-attention width 768: what model_kind calls "sd"), move a dead one to REMOVED_MODELS.
SD_MODELS = (
    "CompVis/stable-diffusion-v1-4",  # Stable Diffusion v1.4 (the P2P paper's model; the default)
    "stable-diffusion-v1-5/stable-diffusion-v1-5",  # v1.5, the copy of runwayml's deleted repository
)
# Ids that once worked and are gone (matched without regard to case): asking for one is an error
# that names its replacement and SD_MODELS.
REMOVED_MODELS = {
    "runwayml/stable-diffusion-v1-5": "deleted from the Hugging Face Hub; its copy is "
                                      "stable-diffusion-v1-5/stable-diffusion-v1-5",
    **{f"stabilityai/{name}": "Stable Diffusion 2.x was withdrawn from the Hugging Face Hub in November 2025 "
                              "(and its 1024-wide OpenCLIP text encoder is not SD v1's, which the notebooks serve)"
       for name in ("stable-diffusion-2", "stable-diffusion-2-base", "stable-diffusion-2-1",
                    "stable-diffusion-2-1-base")},
}
SD_V1 = SD_MODELS[0]  # the model the switch picks on a machine with a CUDA GPU and the hub reachable
PIPELINE_PARTS = ("model_index.json", "unet", "vae", "text_encoder", "tokenizer", "scheduler")
MODEL_ENV = "P2P_LAB_MODEL"  # which model the notebooks use: "shapes", a hub id or a pipeline folder
STEPS_ENV = "P2P_LAB_STEPS"  # at most this many sampling steps in the notebooks (the tests lower it)
DTYPE_ENV = "P2P_LAB_DTYPE"  # the dtype course_pipeline loads in, e.g. "bfloat16" (default: see load_pipeline)


@dataclasses.dataclass
class ModelConfig:
    """Sizes of the shipped model (32x32 RGB images, 4x8x8 latents)."""

    image_size: int = 32
    vae_channels: tuple[int, ...] = (16, 32, 32)  # three levels: 32 -> 8 pixels (factor 4)
    latent_channels: int = 4
    unet_channels: tuple[int, ...] = (32, 64)  # cross-attention at 8x8 and 4x4 (+ mid block)
    unet_heads: int = 4
    text_width: int = 64  # = cross_attention_dim
    text_layers: int = 3
    text_heads: int = 4
    max_length: int = 16  # tokens per prompt, padded


def build_vae(cfg: ModelConfig):
    from diffusers import AutoencoderKL

    n = len(cfg.vae_channels)
    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=cfg.latent_channels,
                         down_block_types=("DownEncoderBlock2D",) * n,
                         up_block_types=("UpDecoderBlock2D",) * n,
                         block_out_channels=cfg.vae_channels, layers_per_block=1,
                         norm_num_groups=16, sample_size=cfg.image_size)


def build_text_encoder(cfg: ModelConfig, tokenizer):
    from transformers import CLIPTextConfig, CLIPTextModel

    conf = CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=cfg.text_width,
                          intermediate_size=4 * cfg.text_width, num_hidden_layers=cfg.text_layers,
                          num_attention_heads=cfg.text_heads, max_position_embeddings=cfg.max_length,
                          bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                          pad_token_id=tokenizer.pad_token_id, projection_dim=cfg.text_width)
    return CLIPTextModel(conf)


def build_unet(cfg: ModelConfig):
    from diffusers import UNet2DConditionModel

    n = len(cfg.unet_channels)
    latent = cfg.image_size // 2 ** (len(cfg.vae_channels) - 1)
    return UNet2DConditionModel(sample_size=latent, in_channels=cfg.latent_channels,
                                out_channels=cfg.latent_channels,
                                down_block_types=("CrossAttnDownBlock2D",) * n,
                                up_block_types=("CrossAttnUpBlock2D",) * n,
                                block_out_channels=cfg.unet_channels, layers_per_block=1,
                                cross_attention_dim=cfg.text_width,
                                attention_head_dim=cfg.unet_heads,  # diffusers reads this as heads
                                norm_num_groups=16)


def build_scheduler():
    """DDIM with Stable Diffusion v1's noise schedule (scaled-linear betas, 1000 steps)."""
    from diffusers import DDIMScheduler

    return DDIMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                         beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False,
                         steps_offset=1)


def assemble_pipeline(vae, text_encoder, tokenizer, unet, scheduler=None):
    return pipeline_class()(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                            scheduler=scheduler or build_scheduler(), safety_checker=None,
                            feature_extractor=None, requires_safety_checker=False)


def save_pipeline(pipe, folder: str | os.PathLike) -> Path:
    """A standard diffusers pipeline folder (safetensors only) that loads with transformers 4 and 5.

    transformers 5 saves a CLIPTextModel's weights without the ``text_model.`` prefix, and
    transformers 4 then loads none of them (it warns and starts from random weights); with the
    prefix, both load them. The tokenizer gets its BPE files too (:func:`~p2p_lab.tokenizer.save_tokenizer`).
    """
    from safetensors.torch import load_file, save_file

    from .tokenizer import save_tokenizer

    folder = Path(folder)
    pipe.save_pretrained(str(folder), safe_serialization=True)
    save_tokenizer(pipe.tokenizer, folder / "tokenizer")
    weights = folder / "text_encoder" / "model.safetensors"
    state = load_file(str(weights))
    save_file({k if k.startswith("text_model.") else f"text_model.{k}": v for k, v in state.items()},
              str(weights), metadata={"format": "pt"})
    return folder


@dataclasses.dataclass(frozen=True)
class SamplingDefaults:
    num_inference_steps: int
    guidance_scale: float


SHAPES_DEFAULTS = SamplingDefaults(num_inference_steps=20, guidance_scale=4.0)
SD_DEFAULTS = SamplingDefaults(num_inference_steps=50, guidance_scale=7.5)


def is_shapes_model(pipe) -> bool:
    """True for a shapes-world pipeline (16-token prompts), False for Stable Diffusion and others."""
    return pipe.tokenizer.model_max_length == ModelConfig.max_length


def sampling_defaults(pipe) -> SamplingDefaults:
    """Default steps and guidance: 20 DDIM steps at guidance 4 for the shipped model, SD's 50 / 7.5
    otherwise. (Prompt-to-Prompt's own settings default to the paper's for every model: see
    :class:`p2p_lab.p2p.options.EditOptions`.)"""
    return SHAPES_DEFAULTS if is_shapes_model(pipe) else SD_DEFAULTS


def default_device() -> str:
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def stable_diffusion_available(timeout: float = 3.0) -> bool:
    """True where Stable Diffusion v1 can run: a CUDA GPU and a reachable Hugging Face Hub (Colab)."""
    import socket

    if not torch.cuda.is_available():
        return False
    try:
        socket.create_connection(("huggingface.co", 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _check_folder(folder: Path, what: str = "model folder") -> None:
    if not folder.is_dir():
        raise FileNotFoundError(
            f"{what} {folder} does not exist. Give the folder of a diffusers pipeline (one with a "
            f"model_index.json), or leave it out for the shipped model.")
    missing = [p for p in PIPELINE_PARTS if not (folder / p).exists()]
    if missing:
        hint = (f"restore it from git (`git checkout -- {folder}`) or retrain it"
                if folder == SHIPPED_MODEL else "save a complete pipeline there with pipe.save_pretrained(folder)")
        raise FileNotFoundError(f"{what} {folder} is not a complete diffusers pipeline folder: missing "
                                f"{missing}; {hint}.")


def _looks_local(model) -> bool:
    text = str(model)
    return (isinstance(model, Path) or Path(text).expanduser().exists()
            or text.startswith((".", "/", "~")) or text.count("/") != 1)


def pipeline_class():
    """diffusers' ``StableDiffusionPipeline``, imported without transformers' notice that its image
    processors fall back to PIL where torchvision is missing (the pipeline module imports one; the
    course never uses it). Every part of the package gets the class here."""
    import transformers.utils.logging as tlog

    notices = tlog.get_logger("transformers.utils.import_utils")
    level = notices.level
    notices.setLevel(40)  # ERROR, for this import only
    try:
        from diffusers import StableDiffusionPipeline
    finally:
        notices.setLevel(level)
    return StableDiffusionPipeline


class _DropTorchDtypeNotice:
    """A logging filter: transformers 4.56-4.57 warn that ``torch_dtype`` is deprecated whenever
    diffusers releases of their time (which know only that name) load a text encoder."""

    def filter(self, record) -> bool:
        return "`torch_dtype` is deprecated" not in record.getMessage()


@contextlib.contextmanager
def _loading(show_bars: bool):
    """One load: diffusers' and transformers' loading bars on or off (a local folder loads in a
    fraction of a second; a hub download of several GB should show its progress), and without
    the libraries' notices about each other's argument names."""
    import diffusers.utils.logging as dlog
    import transformers.utils.logging as tlog

    before = (dlog.is_progress_bar_enabled(), tlog.is_progress_bar_enabled())
    if not show_bars:
        dlog.disable_progress_bar()
        tlog.disable_progress_bar()
    handlers = tlog.get_logger().handlers  # transformers' library logger (its children propagate)
    notice = _DropTorchDtypeNotice()
    for h in handlers:
        h.addFilter(notice)
    try:
        yield
    finally:
        for h in handlers:
            h.removeFilter(notice)
        if before[0]:
            dlog.enable_progress_bar()
        if before[1]:
            tlog.enable_progress_bar()


def _dtype_kwarg(dtype) -> dict:
    """diffusers renamed ``torch_dtype`` to ``dtype`` (the old name warns); older releases know only it."""
    from diffusers.pipelines import pipeline_utils

    return {"dtype" if hasattr(pipeline_utils, "_resolve_dtype") else "torch_dtype": dtype}


class ModelFallbackWarning(UserWarning):
    """An id of :data:`SD_MODELS` could not be used (gone from the hub, or gated) and the next one was."""


def _working_ids() -> str:
    return ", ".join(SD_MODELS)


def _known(model_id: str) -> str | None:
    """The spelling :data:`SD_MODELS` gives ``model_id`` (hub ids ignore case), or None."""
    return next((m for m in SD_MODELS if m.lower() == model_id.lower()), None)


def check_hub_id(model_id: str) -> None:
    """Refuse a hub id that is known to be gone (:data:`REMOVED_MODELS`), naming what works instead."""
    why = REMOVED_MODELS.get(model_id.lower())
    if why is not None:
        raise ValueError(f"{model_id!r} cannot be loaded: {why}. Use one of the ids that work: {_working_ids()} "
                         f"(e.g. {MODEL_ENV}={SD_MODELS[0]}), or {MODEL_ENV}=shapes for the shipped model.")


def hub_candidates(model_id: str) -> list[str]:
    """The hub ids :func:`load_pipeline` tries for ``model_id``, in order: an id of :data:`SD_MODELS`
    first, then the table's others in its order; any other id alone (no other model stands in for a
    model the table does not know)."""
    check_hub_id(model_id)
    known = _known(model_id)
    return [model_id] if known is None else [known] + [m for m in SD_MODELS if m != known]


def _hub_verdict(model_id: str) -> str | None:
    """Why the Hugging Face Hub will not serve ``model_id`` ("gone", "gated"), or None when it has it
    or cannot be asked (offline: the local cache may still hold it, so the load is tried).

    diffusers turns a missing repository into "Couldn't connect to the Hub" and a cache miss, so the
    hub is asked directly, with huggingface_hub's own errors."""
    import huggingface_hub
    from huggingface_hub.utils import GatedRepoError, RepositoryNotFoundError

    try:
        huggingface_hub.model_info(model_id)
    except GatedRepoError:  # a subclass of RepositoryNotFoundError: test it first
        return "gated"
    except RepositoryNotFoundError:
        return "gone"
    except Exception:  # offline, no network, a server error: let from_pretrained try the cache
        return None
    return None


def _is_not_found(err: BaseException) -> bool:
    from huggingface_hub.utils import GatedRepoError, RepositoryNotFoundError

    seen = set()
    while err is not None and id(err) not in seen:  # the error and those it was raised from
        if isinstance(err, RepositoryNotFoundError) and not isinstance(err, GatedRepoError):
            return True
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return False


_SKIPPED = {"gone": "is not on the Hugging Face Hub (repository not found)",
            "gated": "is gated on the Hugging Face Hub (accept its licence on its page and log in with "
                     "`huggingface-cli login`)"}


def _from_hub(model_id: str, dtype: torch.dtype):
    """Load ``model_id`` from the hub, falling back along :data:`SD_MODELS`; returns (pipe, id used)."""
    StableDiffusionPipeline = pipeline_class()
    skipped, failed = [], []  # (id, reason) of ids not found / gated, and of ids the load failed for
    for candidate in hub_candidates(model_id):
        verdict = _hub_verdict(candidate)
        if verdict is not None:
            skipped.append((candidate, _SKIPPED[verdict]))
            continue
        try:
            pipe = StableDiffusionPipeline.from_pretrained(candidate, safety_checker=None,
                                                           requires_safety_checker=False, **_dtype_kwarg(dtype))
        except OSError as err:  # huggingface_hub's and diffusers' errors all derive from OSError
            if _is_not_found(err):
                skipped.append((candidate, _SKIPPED["gone"]))
            else:
                failed.append((candidate, err))
            continue
        if skipped or failed:
            missed = "; ".join([f"{m} {why}" for m, why in skipped]
                               + [f"{m} could not be loaded ({type(e).__name__})" for m, e in failed])
            warnings.warn(f"{missed}; using {candidate} instead. (The course's Stable Diffusion ids, in the "
                          f"order tried: {_working_ids()}.)", ModelFallbackWarning, stacklevel=3)
        return pipe, candidate
    tried = "; ".join(f"{m} {why}" for m, why in skipped)
    if not failed and _known(model_id) is not None:  # the whole table is gone
        raise ValueError(f"none of the course's Stable Diffusion ids can be loaded: {tried}. Add a working copy "
                         f"of SD v1 to p2p_lab.model.SD_MODELS, or set {MODEL_ENV} to a local SD v1 pipeline "
                         f"folder, or to shapes for the shipped model.")
    if not failed:
        hint = difflib.get_close_matches(model_id.lower(), [m.lower() for m in SD_MODELS], n=1, cutoff=0.8)
        maybe = f" Did you mean {_known(hint[0])}?" if hint else ""
        raise ValueError(f"could not load {model_id!r}: {tried}.{maybe} The ids that work: {_working_ids()} "
                         f"(set {MODEL_ENV} to one, or to shapes for the shipped model).")
    first = failed[0][1]
    raise OSError(
        f"could not load {model_id!r}: no local folder has that name, and the Hugging Face Hub could not "
        f"be reached or has no such model ({type(first).__name__}"
        + (f"; {tried}" if tried else "") + f"; tried {', '.join(m for m, _ in skipped + failed)}). "
        f"A hub id needs the network (and, for some models, a login with `huggingface-cli login`). "
        f"The course's Stable Diffusion ids: {_working_ids()}. Offline, use the shipped model: "
        f"load_pipeline() with no argument, or {MODEL_ENV}=shapes for the notebooks.") from first


def load_pipeline(model: str | os.PathLike | None = None, device: str | None = None,
                  dtype: torch.dtype | None = None):
    """The shipped shapes-world pipeline by default, or a diffusers model by folder or hub id.

    ``model``: None (the shipped model), a local pipeline folder, or a hub id such as
    ``"CompVis/stable-diffusion-v1-4"``. An id of :data:`SD_MODELS` that the hub no longer has is
    replaced by the next one there, with a :class:`ModelFallbackWarning`; an id of
    :data:`REMOVED_MODELS`, or one the hub does not have, is a ValueError naming the ids that work.
    ``device``: picked automatically (CUDA, then MPS, then CPU). ``dtype``: float16 on CUDA,
    float32 elsewhere. The sampling progress bar is switched off (the course's own loops show
    theirs). A hub pipeline remembers the id it came from as ``pipe.p2p_lab_hub_id``.
    """
    device = device or default_device()
    dtype = dtype or (torch.float16 if str(device).startswith("cuda") else torch.float32)
    local = model is None or _looks_local(model)
    path = SHIPPED_MODEL if model is None else Path(str(model)).expanduser()
    with _loading(show_bars=not local):
        if local:
            _check_folder(path)
            pipe = pipeline_class().from_pretrained(str(path), local_files_only=True, **_dtype_kwarg(dtype))
        else:
            pipe, used = _from_hub(str(model).strip(), dtype)
            pipe.p2p_lab_hub_id = used
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


# ---------------------------------------------------------------- the one model switch

@dataclasses.dataclass(frozen=True)
class ModelChoice:
    """Which model the notebooks use, and why. ``model`` as :func:`load_pipeline` takes it."""

    model: str | None  # None: the shipped model
    reason: str


def choose_model() -> ModelChoice:
    """The course's model switch, in one place.

    ``P2P_LAB_MODEL`` decides when it is set: ``shapes`` (the shipped model), a hub id (those of
    :data:`SD_MODELS`, e.g. ``CompVis/stable-diffusion-v1-4`` or
    ``stable-diffusion-v1-5/stable-diffusion-v1-5``), or a local pipeline folder; a removed id
    (:data:`REMOVED_MODELS`) is refused here, naming the ids that work. Unset: Stable Diffusion v1.4
    where it can run (a CUDA GPU and the Hugging Face Hub reachable: Colab with a GPU; the next id of
    :data:`SD_MODELS` if the hub no longer has it), else the shipped model.
    """
    value = os.environ.get(MODEL_ENV, "").strip()
    if value:
        if value.lower() in ("shapes", "shipped"):
            return ModelChoice(None, f"{MODEL_ENV}={value}")
        if _looks_local(value):
            _check_folder(Path(value).expanduser(), f"{MODEL_ENV}={value}: the folder")
        else:
            try:
                check_hub_id(value)
            except ValueError as err:
                raise ValueError(f"{MODEL_ENV}={value}: {err}") from None
        return ModelChoice(value, f"{MODEL_ENV}={value}")
    if stable_diffusion_available():
        return ModelChoice(SD_V1, "a CUDA GPU and the Hugging Face Hub are reachable")
    return ModelChoice(None, "no CUDA GPU with the Hugging Face Hub here")


def _env_dtype() -> torch.dtype | None:
    name = os.environ.get(DTYPE_ENV, "").strip()
    if not name:
        return None
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"{DTYPE_ENV}={name} is not a torch floating-point dtype; use float32, "
                         f"float16 or bfloat16, or unset it")
    return dtype


def course_pipeline(device: str | None = None):
    """The pipeline every notebook uses: the model :func:`choose_model` picks, loaded by
    :func:`load_pipeline` and checked to be one the course can serve (:func:`model_kind`)."""
    choice = choose_model()
    pipe = load_pipeline(choice.model, device=device, dtype=_env_dtype())
    model_kind(pipe)
    used = getattr(pipe, "p2p_lab_hub_id", None)
    if used is not None and used != choice.model:  # the table's fallback stood in
        choice = ModelChoice(used, f"{choice.reason}; {choice.model} is not available")
    pipe.p2p_lab_choice = choice  # what describe_model reports
    return pipe


def model_kind(pipe) -> str:
    """``"shapes"`` for the shipped shapes-world model (16-token prompts), ``"sd"`` for a Stable
    Diffusion v1-style model (77-token CLIP prompts, cross-attention width 768). The notebooks
    branch on this; any other pipeline gets a clear error."""
    L = pipe.tokenizer.model_max_length
    width = pipe.unet.config.cross_attention_dim
    if L == ModelConfig.max_length and width == ModelConfig.text_width:
        return "shapes"
    if L == 77 and width == 768:
        return "sd"
    raise ValueError(
        f"the course's notebooks serve the shipped shapes-world model (16-token prompts, text width "
        f"{ModelConfig.text_width}) and Stable Diffusion v1.x (77-token prompts, text width 768); this "
        f"pipeline has {L}-token prompts and text width {width}. Set {MODEL_ENV}=shapes or "
        f"{MODEL_ENV} to one of {_working_ids()}.")


def knows_appearance_words(pipe) -> bool:
    """Was the model trained on the world's appearance words ("shaded", "spotted"), one token each?
    The flat-world model shipped before this one was not; the shipped model is."""
    from . import shapes

    vocab = pipe.tokenizer.get_vocab()
    return all(f"{w}</w>" in vocab for w in shapes.OBJECT_STYLES + shapes.BACKGROUND_STYLES)


def describe_model(pipe) -> str:
    """One line for a notebook's model cell: which model, why, image size, device and dtype."""
    choice = getattr(pipe, "p2p_lab_choice", None)
    name = "the shipped shapes-world model" if is_shapes_model(pipe) else (
        choice.model if choice is not None and choice.model else pipe.config._name_or_path)
    size = pipe.vae_scale_factor * pipe.unet.config.sample_size
    why = f" ({choice.reason})" if choice is not None else ""
    return f"model: {name}{why} | {size}x{size} images | {pipe.device.type}, {str(pipe.unet.dtype).replace('torch.', '')}"


def course_steps(n: int) -> int:
    """``n`` sampling steps, or fewer where ``P2P_LAB_STEPS`` asks for fewer (the course's tests do,
    to run every notebook quickly)."""
    cap = os.environ.get(STEPS_ENV, "").strip()
    if not cap:
        return n
    if not cap.isdigit() or int(cap) < 1:
        raise ValueError(f"{STEPS_ENV}={cap} must be a whole number >= 1, or unset")
    return min(n, int(cap))
