"""Algorithm 1 on latents, briefly: a few training steps of a loaded pipeline, its weights put back.

Taught in notebook 04 ("the UNet and the text encoder are learned jointly"): the denoising loss on
latents (:func:`diffusion_loss`), the parameters a demo trains (:func:`trainable_parameters`),
:func:`train_briefly` and :func:`weights_fingerprint` (the check that nothing stayed changed).
Training the shipped model itself is :mod:`p2p_lab.train`.
"""
from __future__ import annotations

import contextlib
import dataclasses

import torch

from .ddpm import add_noise
from .ldm import encode, pipe_device, pipe_dtype, tokenize

__all__ = ["diffusion_loss", "TrainLog", "trainable_parameters", "train_briefly", "weights_fingerprint"]

Tensor = torch.Tensor


def diffusion_loss(pipe, images: Tensor, captions: list[str], generator: torch.Generator | None = None) -> Tensor:
    """Algorithm 1 on latents: ``|| eps - eps_theta(sqrt(abar_t) z_0 + sqrt(1 - abar_t) eps, t, c) ||^2``.

    z_0 comes from the frozen encoder; t ~ U{0..T-1}, eps ~ N(0, I). The text encoder runs with
    gradients, so the loss trains it together with the UNet ("learned jointly").
    """
    unet, text_encoder = pipe.unet, pipe.text_encoder
    device = pipe_device(pipe)
    z0 = encode(pipe, images).to(pipe_dtype(pipe))  # (b, C, h, w), no gradient: the autoencoder is frozen
    T = pipe.scheduler.config.num_train_timesteps
    t = torch.randint(0, T, (z0.shape[0],), generator=generator).to(device)  # (b,)
    eps = torch.randn(z0.shape, generator=generator).to(device, z0.dtype)  # (b, C, h, w)
    abar = pipe.scheduler.alphas_cumprod.to(device)[t].view(-1, 1, 1, 1).to(z0.dtype)  # (b, 1, 1, 1)
    z_t = add_noise(z0, eps, abar)  # Property 1
    ids = tokenize(pipe.tokenizer, captions).to(device)  # (b, L)
    cond = text_encoder(ids)[0]  # (b, L, D), with gradients
    eps_pred = unet(z_t, t, encoder_hidden_states=cond).sample  # (b, C, h, w)
    return torch.nn.functional.mse_loss(eps_pred.float(), eps.float())


@dataclasses.dataclass
class TrainLog:
    losses: list[float]
    unet_change: float  # relative change of the UNet's trained weights
    text_change: float  # relative change of the text encoder's trained weights
    trained: list[str]  # names of the trained parameters ("unet." / "text_encoder." + name)


def trainable_parameters(pipe, which: str = "all") -> dict[str, torch.nn.Parameter]:
    """The parameters a training demo updates, by name (``"unet."`` / ``"text_encoder."`` + name).

    ``which="all"``: every parameter of the UNet and the text encoder (the shipped model: 1.5 M).
    ``which="cross-attention"``: only what the prompt passes through on its way into the image: the
    UNet's cross-attention keys and values (``attn2.to_k``, ``attn2.to_v``) and the text encoder's
    last layer and final norm (Stable Diffusion: about 6 % of its weights, so a demo fits a T4).
    """
    if which not in ("all", "cross-attention"):
        raise ValueError(f"which must be 'all' or 'cross-attention', got {which!r}")
    n_text = pipe.text_encoder.config.num_hidden_layers
    last = (f"encoder.layers.{n_text - 1}.", "final_layer_norm.")  # transformers 4 adds "text_model."
    out = {}
    for part, module in (("unet", pipe.unet), ("text_encoder", pipe.text_encoder)):
        for name, p in module.named_parameters():
            keep = which == "all" or (".attn2.to_k." in name or ".attn2.to_v." in name
                                      if part == "unet" else name.removeprefix("text_model.").startswith(last))
            if keep:
                out[f"{part}.{name}"] = p
    return out


def _rel_change(before: dict, params: dict, part: str) -> float:
    names = [n for n in before if n.startswith(part + ".")]
    num = sum(((params[n].detach().float() - before[n].float()) ** 2).sum() for n in names)
    den = sum((before[n].float() ** 2).sum() for n in names)
    return float((num / den).sqrt()) if names else 0.0


@contextlib.contextmanager
def _training(pipe, params: dict):
    """For the ``with`` block: only ``params`` train, as float32 copies; afterwards every one of
    the pipeline's own tensors and gradient flags is put back exactly, even on error."""
    saved = {n: p.data for n, p in params.items()}  # the pipeline's own tensors, put back below
    modules = (pipe.unet, pipe.text_encoder)
    flags = {id(p): p.requires_grad for m in modules for p in m.parameters()}
    try:
        for m in modules:
            m.requires_grad_(False)
        for p in params.values():
            p.data = p.data.float().clone()  # float32 copies of the trained weights only
            p.requires_grad_(True)
        yield saved
    finally:
        for n, p in params.items():
            p.grad, p.data = None, saved[n]
        for m in modules:
            for p in m.parameters():
                p.requires_grad_(flags[id(p)])


def train_briefly(pipe, images: Tensor, captions: list[str], steps: int = 5, lr: float = 1e-4,
                  seed: int = 0, which: str = "all", optimizer=torch.optim.Adam) -> TrainLog:
    """A few optimizer steps of :func:`diffusion_loss`, then every trained weight put back.

    One optimizer updates the UNet's and the text encoder's parameters of
    :func:`trainable_parameters` (``which``): the gradient of the denoising loss reaches the text
    encoder through the cross-attention keys and values. The trained weights are float32 during
    training (under autocast where the pipeline is float16 or bfloat16) and the pipeline's own
    weights are restored exactly afterwards, even on error; only the trained ones are copied, so a
    demo on Stable Diffusion fits a Colab T4 (``which="cross-attention"``, a small batch).
    """
    params = trainable_parameters(pipe, which)
    dtype, device = pipe_dtype(pipe), pipe_device(pipe)
    with _training(pipe, params) as saved:
        opt = optimizer(list(params.values()), lr=lr)
        g = torch.Generator().manual_seed(seed)
        losses = []
        for _ in range(steps):
            with torch.autocast(device.type, dtype=dtype, enabled=dtype in (torch.float16, torch.bfloat16)):
                loss = diffusion_loss(pipe, images, captions, g)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        return TrainLog(losses, _rel_change(saved, params, "unet"),
                        _rel_change(saved, params, "text_encoder"), list(params))


def weights_fingerprint(module: torch.nn.Module) -> tuple[float, ...]:
    """Per-tensor sums and sums of squares (float64) of a module's weights: equal fingerprints mean
    unchanged weights, checked without copying them (Stable Diffusion's UNet is 1.7 GB in fp16)."""
    out = []
    for t in module.state_dict().values():
        t = t.detach().double()
        out += [float(t.sum()), float((t * t).sum())]
    return tuple(out)
