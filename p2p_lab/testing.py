"""Stand-ins for Stable Diffusion v1: its exact topology with random weights, for tests and benchmarks.

No model weights can be downloaded where the course is tested, so the Stable Diffusion branch of the
notebooks runs on stand-ins selected with the model switch (``P2P_LAB_MODEL=<folder>``, see
:func:`p2p_lab.model.choose_model`):

* :func:`sd_like_pipeline` (``size="tiny"``): SD v1's layer names, block types, layers per block,
  head counts, ``cross_attention_dim=768`` and 77-token prompts, at a tiny width and a small latent,
  so code that runs here runs on ``CompVis/stable-diffusion-v1-4`` with the same layer names and
  the same attention-map resolutions relative to the latent (64, 32, 16, 8 at 512 px). It samples
  in well under a second on a CPU.
* ``size="full"``: SD v1's real configs (UNet 320/640/1280/1280, CLIP ViT-L/14's text encoder of
  width 768 and 12 layers, the VAE at 512 px), for measuring memory and time.

The tokenizer is a CLIP-convention BPE trained on :data:`SD_WORDS` (every word of every Stable
Diffusion prompt in the notebooks, each one token, except the words of :data:`SD_SPLIT_WORDS`,
which stay two tokens as rare words do in CLIP's real vocabulary) and the shapes world's words.
"""
from __future__ import annotations

import re
import tempfile
from pathlib import Path

import torch

SD_V1_MAX_LENGTH = 77
SD_V1_CROSS_DIM = 768
SD_V1_VOCAB = 49408  # CLIP's vocabulary size (the full-size stand-in's embedding table)

# Every word of the Stable Diffusion prompts in notebooks 02-06 (tests/test_sd_branch.py checks
# that a notebook cannot add a word without adding it here).
SD_WORDS = """
a an the of on in at with and by my eating riding sitting standing next to wearing
painting photograph photo picture watercolor oil sketch drawing portrait close up
squirrel lion cat dog tabby horse astronaut bear rabbit tiger
burger pizza apple cake bowl table chair sofa street beach forest field garden sky mountain
fluffy big small red blue green yellow white black golden wooden old orange
""".split()
SD_SPLIT_WORDS = ("quokka",)  # stays two tokens, as "turquoise" does in the shapes world


def sd_tokenizer(folder: str | Path | None = None):
    """A CLIPTokenizer of 77 tokens whose vocabulary holds every word of :data:`SD_WORDS`."""
    from . import tokenizer as shapes_tokenizer

    folder = folder or tempfile.mkdtemp(prefix="p2p_sd_bpe_")
    words = [*SD_WORDS, *SD_SPLIT_WORDS, *shapes_tokenizer.world_words()]
    return shapes_tokenizer.build_tokenizer(
        folder, words, split_words=(*SD_SPLIT_WORDS, shapes_tokenizer.SPLIT_WORD),
        max_length=SD_V1_MAX_LENGTH)


def _unet(size: str, latent_size: int, width: int):
    from diffusers import UNet2DConditionModel

    channels = (320, 640, 1280, 1280) if size == "full" else (width, 2 * width, 2 * width, 2 * width)
    return UNet2DConditionModel(
        sample_size=latent_size, in_channels=4, out_channels=4, layers_per_block=2,
        block_out_channels=channels,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                          "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=SD_V1_CROSS_DIM, attention_head_dim=8, norm_num_groups=min(32, channels[0]))


def _vae(size: str, latent_size: int, width: int):
    from diffusers import AutoencoderKL

    channels = (128, 256, 512, 512) if size == "full" else (width, width, 2 * width, 2 * width)
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=channels, norm_num_groups=min(32, channels[0]),
        sample_size=latent_size * 8, scaling_factor=0.18215)


def _text_encoder(size: str, tokenizer):
    from transformers import CLIPTextConfig, CLIPTextModel

    full = size == "full"
    return CLIPTextModel(CLIPTextConfig(
        vocab_size=SD_V1_VOCAB if full else len(tokenizer), hidden_size=SD_V1_CROSS_DIM,
        intermediate_size=3072 if full else 256, num_hidden_layers=12 if full else 1,
        num_attention_heads=12, max_position_embeddings=SD_V1_MAX_LENGTH, hidden_act="quick_gelu",
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id))


def sd_like_pipeline(seed: int = 0, latent_size: int | None = None, width: int = 32, size: str = "tiny"):
    """A ``StableDiffusionPipeline`` with SD v1's UNet/VAE/text-encoder topology, random weights, on CPU.

    ``size``: ``"tiny"`` (channel widths cut to ``width``: 32, 64, 64, 64; one text layer) or
    ``"full"`` (SD v1's own widths and depths). ``latent_size``: the UNet's sample size (default 16
    for tiny, SD v1's 64, i.e. 512 px images, for full).
    """
    from .model import assemble_pipeline, build_scheduler

    if size not in ("tiny", "full"):
        raise ValueError(f"size must be 'tiny' or 'full', got {size!r}")
    latent_size = latent_size or (64 if size == "full" else 16)
    torch.manual_seed(seed)
    unet = _unet(size, latent_size, width)
    vae = _vae(size, latent_size, width)
    tokenizer = sd_tokenizer()
    text = _text_encoder(size, tokenizer)
    pipe = assemble_pipeline(vae.eval(), text.eval(), tokenizer, unet.eval(), build_scheduler())
    pipe.set_progress_bar_config(disable=True)
    return pipe


def save_sd_standin(folder: str | Path, size: str = "tiny", seed: int = 0,
                    dtype: torch.dtype = torch.float32) -> Path:
    """Write a stand-in (:func:`sd_like_pipeline`) as a diffusers pipeline folder, for
    ``P2P_LAB_MODEL=<folder>``. Deterministic for a seed; the full size takes about a minute."""
    from .model import save_pipeline

    import diffusers.utils.logging as dlog

    pipe = sd_like_pipeline(seed, size=size)
    if dtype != torch.float32:
        level = dlog.get_verbosity()
        dlog.set_verbosity_error()  # its note on modules kept in float32 (SD v1 has none)
        try:
            pipe.to(dtype=dtype)
        finally:
            dlog.set_verbosity(level)
    return save_pipeline(pipe, folder)


# ---------------------------------------------------------------- running the notebooks as a student would

_PROGRESS = re.compile(r"^[^\n]*\d+%\|[^\n]*\|[^\n]*$|^\s*$")  # a tqdm line: "sampling: 40%|####  | 2/5 [...]"


def notebook_warnings(outputs) -> list[str]:
    """What a cell (or every cell of a notebook) wrote to stderr, progress bars aside: library
    warnings and notices a student should not have to read past ("Some weights were not used...",
    "`torch_dtype` is deprecated", ...)."""
    if hasattr(outputs, "cells"):
        return [w for c in outputs.cells if c.cell_type == "code" for w in notebook_warnings(c.outputs)]
    found = []
    for out in outputs:
        if out.get("output_type") == "stream" and out.get("name") == "stderr":
            lines = [line for line in out.get("text", "").replace("\r", "\n").split("\n")
                     if not _PROGRESS.match(line)]
            if lines:
                found.append("\n".join(lines)[:500])
    return found


def execute_notebook(path: str | Path, cwd: str | Path, env: dict | None = None, timeout: int = 900):
    """Run a notebook top to bottom in a fresh kernel (nbclient), in ``cwd``, with extra environment
    variables ``env``; returns the executed notebook (cells keep their outputs and timing).
    Raises ``nbclient.exceptions.CellExecutionError`` at the first cell that fails."""
    import os

    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(str(path), as_version=4)
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3", record_timing=True,
                            resources={"metadata": {"path": str(cwd)}})
    client.execute(env={**os.environ, **(env or {})}, cwd=str(cwd))
    return nb


def checks_notebook(nb):
    """A notebook cut down to its exercises and their public checks: the set-up cell, the cell that
    imports the checks, a cell printing where ``p2p_lab`` was imported from, then each exercise cell
    and the check cell after it (a master's solutions or a release's stubs, as ``nb`` holds)."""
    import copy

    from nbformat.v4 import new_code_cell

    nb = copy.deepcopy(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    imports = next(c for c in code if "from p2p_lab.checks import" in c.source)
    cells = [code[0], *([imports] if imports is not code[0] else []),
             new_code_cell("import p2p_lab\nprint('package at', p2p_lab.__file__)")]
    for i, c in enumerate(code):
        if c.metadata.get("p2p_lab", {}).get("question"):
            cells += [c, code[i + 1]]
    nb.cells = cells
    return nb


def check_verdicts(executed) -> dict:
    """What the public checks printed in an executed :func:`checks_notebook`: counts of passed,
    not-implemented and other failures, the package's location and the whole printed text."""
    printed = "\n".join(o.get("text", "") for c in executed.cells for o in c.get("outputs", []))
    where = re.search(r"package at (\S+)", printed)
    not_implemented = printed.count(": FAILED: not implemented")
    return {"passed": printed.count(": PASSED"), "not_implemented": not_implemented,
            "failed": printed.count(": FAILED") - not_implemented, "package": where and where.group(1),
            "printed": printed}
