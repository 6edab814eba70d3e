"""Editing a real image: invert it into the model's noise, then edit the inversion.

Taught in notebook 06. Prompt-to-Prompt edits an image the model *generated*: it knows the z_T the
image came from. A real image ``x`` (a photograph; in the shapes world a scene drawn by the
generator, :func:`p2p_lab.shapes.render`, which the model never sampled) has no z_T; an inversion
finds one, and what each method needs so that sampling back from it gives ``x`` again.

Notation (notebooks 04 and 06): ``z*_0 = E(x)``, the encoder's posterior mean (:func:`p2p_lab.ldm.encode`);
the sampling loop's step i (0 .. n-1) goes from timestep t = ``timesteps[i]`` down to the previous
one; ``eps_c`` and ``eps_u`` are the UNet's noise predictions with the prompt's embedding c and an
unconditional embedding u, guided as ``eps = eps_u + w (eps_c - eps_u)`` (:func:`p2p_lab.ldm.guidance`).

DDIM inversion (the pivot of every method; Song et al. 2021, run backwards), from z*_0 up to z*_T:

    z*_t = sqrt(abar_t) (z*_prev - sqrt(1 - abar_prev) eps) / sqrt(abar_prev) + sqrt(1 - abar_t) eps,
    eps = eps(z*_prev, t) under the inverse guidance w_inv (1: eps_c, as the papers invert)

(:func:`p2p_lab.ldm.ddim_inverse_step`). Sampling back with the DDIM step (:func:`p2p_lab.ldm.ddim_step`)
at w = w_inv would be exact if eps(z_t, t) equalled eps(z_prev, t): true only in the limit of small
steps. Reconstructing or editing at the edit's guidance w != w_inv drifts away from the trajectory.
The four methods (``method=``; each one class of the registry ``METHODS``, a subclass of
:class:`InversionMethod`), all sampled back from z_T = z*_T:

* ``"ddim"``: nothing more; u is the empty prompt's embedding. Drifts with w (and with w_inv).
* ``"null-text"`` (Mokady et al. 2022, arXiv 2211.09794): per step i, from the sampled-back z_bar_t (z_bar_T = z*_T),
  Adam on the null embedding u_i (starting from u_{i-1}; u_{-1} = the empty prompt's embedding):
  ``u_i = argmin_u || DDIM(z_bar_t, eps_u + w (eps_c - eps_u)) - z*_prev ||^2``, at most
  ``num_inner_steps`` steps, stopped early below ``early_stop + 2e-5 i`` (the official code), then
  ``z_bar_prev = DDIM(z_bar_t, eps with u_i)``. Every row of an edit (source and targets) is guided
  with u_i at step i.
* ``"negative-prompt"`` (Miyake et al. 2023, arXiv 2305.16807): u = c, the source prompt's own embedding, for every
  row. For the source row ``eps = eps_c + w (eps_c - eps_c) = eps_c`` at every w: its
  reconstruction is the w = 1 sampling, which undoes the w = 1 inversion up to the small-step error.
  No optimisation.
* ``"direct"`` (DirectInversion of PnP Inversion, Ju et al. 2024, arXiv 2310.01506): after every step the source row is put back on
  the trajectory, ``z_prev <- z_prev + (z*_prev - z_prev) = z*_prev`` ("add back the
  difference"); its attention at every step is thus the attention at z*_t, which the target rows
  receive. The targets run as usual (u = the empty prompt's embedding). No optimisation (the
  paper precomputes the differences in one more guided pass; putting the row back is the same
  and needs none); the reconstruction is the autoencoder's own, D(z*_0).

:func:`invert` returns an :class:`Inversion`; ``p2p.edit(pipe, prompt, targets, inversion=inv)``
edits it with every edit option (its ``source_image`` is the reconstruction). An inversion is made
for one number of steps, one guidance scale and one scheduler; an edit that asks for others is an
error (unset, it takes the inversion's).
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import time
from typing import Callable, ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from .. import ldm
from .options import strict_options

NULL_TEXT_STOP_SLOPE = 2e-5  # the official code's early stop: loss < early_stop + 2e-5 i at step i

Tensor = torch.Tensor


# ---------------------------------------------------------------- the image the model sees

def image_size(pipe) -> int:
    """The model's image side in pixels: 32 for the shipped model, 512 for Stable Diffusion v1."""
    size = pipe.unet.config.sample_size
    size = size if isinstance(size, int) else max(size)
    return size * pipe.vae_scale_factor


def load_image(image, size: int) -> np.ndarray:
    """A path, a PIL image or an (H, W, 3) array -> float32 (size, size, 3) in [0, 1].

    Arrays: float in [0, 1], or uint8 (any integer type with values 0..255 is read as 8-bit).
    An RGBA image loses its alpha channel. The image is resized (area interpolation; not cropped:
    crop to a square first to keep its proportions) to the model's size.
    """
    if isinstance(image, (str, os.PathLike)):
        from PIL import Image

        if not os.path.exists(image):
            raise ValueError(f"no image file at {str(image)!r}")
        with Image.open(image) as im:
            image = im.convert("RGB")
    if hasattr(image, "convert") and hasattr(image, "size"):  # a PIL image
        image = np.asarray(image.convert("RGB"))
    if isinstance(image, torch.Tensor):
        raise TypeError("image is a torch tensor; pass an (H, W, 3) numpy array in [0, 1], e.g. "
                        "p2p_lab.ldm.to_numpy(x)[0] for a (1, 3, H, W) tensor")
    if not isinstance(image, np.ndarray):
        raise TypeError(f"image must be an (H, W, 3) numpy array in [0, 1] (or uint8), a PIL image "
                        f"or a path, got {type(image).__name__}")
    arr = image
    if arr.ndim == 3 and arr.shape[0] in (3, 4) and arr.shape[-1] not in (3, 4):
        raise ValueError(f"image has shape {arr.shape}, channels first; pass (H, W, 3): "
                         f"image.transpose(1, 2, 0)")
    if arr.ndim != 3 or arr.shape[-1] not in (3, 4):
        raise ValueError(f"image must have shape (H, W, 3), got {arr.shape}"
                         + ("; a grey image: np.stack([image] * 3, -1)" if arr.ndim == 2 else ""))
    arr = arr[..., :3]
    if arr.dtype == np.bool_ or not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise TypeError(f"image must hold floats in [0, 1] or 8-bit integers, got dtype {arr.dtype}")
    if np.issubdtype(arr.dtype, np.integer):
        if arr.min() < 0 or arr.max() > 255:
            raise ValueError(f"an integer image must hold 8-bit values 0..255, got {arr.min()}..{arr.max()}")
        arr = arr.astype(np.uint8)
    else:
        lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
        if not np.isfinite(arr).all() or lo < -1e-3 or hi > 1 + 1e-3:
            raise ValueError(f"a float image must hold values in [0, 1], got {lo:.3g}..{hi:.3g}"
                             + ("; divide 0..255 values by 255 (or pass uint8)" if hi > 1 else ""))
    x = ldm.image_to_tensor(arr, size)  # (1, 3, size, size) in [0, 1]
    return np.ascontiguousarray(ldm.to_numpy(x)[0])  # (size, size, 3), one memory layout whatever came in


# ---------------------------------------------------------------- the methods, one class each

METHODS: dict[str, type["InversionMethod"]] = {}  # name -> class (the registry), in definition order


class InversionMethod:
    """One way of inverting a real image (notebook 06): the registry's entry under ``name``.

    After the DDIM pass every method shares (:func:`ddim_inversion`), :meth:`fit` computes what the
    method needs (its state: the fields of a subclass); an edit then asks it for the rows'
    unconditional embedding (:meth:`uncond`) and the source row's pin (:meth:`source_pin`), and
    the source cache's key hashes its :meth:`tensors`. A new method is one subclass with a new
    ``name``: it registers itself, and :func:`invert`, the widget and the benchmark offer it.
    """

    name: ClassVar[str]
    options: ClassVar[tuple[str, ...]] = ()  # invert()'s keyword options that only this method reads

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        METHODS[cls.name] = cls

    @classmethod
    def check(cls, inverse_guidance: float) -> None:
        """ValueError for an inversion setting the method cannot use (none by default)."""

    @classmethod
    def fit(cls, pipe, latents: list[Tensor], cond: Tensor, scheduler, guidance_scale: float,
            progress: bool | None, **options) -> "InversionMethod":
        """The method's state for the trajectory ``latents`` (z*_0 .. z*_T) of the prompt ``cond`` (1, L, D)."""
        return cls()

    def uncond(self, pipe, inv: "Inversion") -> Tensor | Callable[[int], Tensor] | None:
        """Every row's unconditional embedding: None (the empty prompt's), a tensor (1, L, D) or a
        function of the loop step i."""
        return None

    def source_pin(self, pipe, inv: "Inversion") -> Callable[[int], Tensor] | None:
        """None, or a function of the loop step i giving the source row's latent after step i."""
        return None

    def tensors(self) -> list[Tensor]:
        """The method's own tensors, hashed into the source cache's key (besides the trajectory)."""
        return []


@dataclasses.dataclass
class DDIMInversion(InversionMethod):
    """``"ddim"``: the DDIM pass alone; u is the empty prompt's embedding. Drifts with w."""

    name: ClassVar[str] = "ddim"


@dataclasses.dataclass
class NullTextInversion(InversionMethod):
    """``"null-text"``: a null embedding u_i per step, optimised so that sampling back at the
    edit's guidance stays on the trajectory (:func:`null_text_inversion`)."""

    name: ClassVar[str] = "null-text"
    options: ClassVar[tuple[str, ...]] = ("num_inner_steps", "early_stop", "lr")
    null_embeddings: Tensor = dataclasses.field(repr=False)  # (n, L, D) u_i, CPU float32
    null_losses: list[float] = dataclasses.field(repr=False)  # the last inner loss per step
    null_inner_steps: list[int] = dataclasses.field(repr=False)  # Adam steps per step

    @classmethod
    def fit(cls, pipe, latents, cond, scheduler, guidance_scale, progress, num_inner_steps: int = 10,
            early_stop: float = 1e-5, lr: float = 1e-2):
        return cls(*null_text_inversion(pipe, latents, cond, scheduler, guidance_scale, num_inner_steps,
                                        early_stop, lr, progress=progress))

    def uncond(self, pipe, inv):
        nulls = self.null_embeddings.to(ldm.pipe_device(pipe), pipe.text_encoder.dtype)  # (n, L, D)
        return lambda i: nulls[i:i + 1]  # (1, L, D): u_i

    def tensors(self):
        return [self.null_embeddings]


@dataclasses.dataclass
class NegativePromptInversion(InversionMethod):
    """``"negative-prompt"``: u = c, the source prompt's own embedding, for every row."""

    name: ClassVar[str] = "negative-prompt"
    source_embedding: Tensor = dataclasses.field(repr=False)  # (1, L, D), CPU float32

    @classmethod
    def check(cls, inverse_guidance):
        if inverse_guidance != 1:
            raise ValueError("negative-prompt inversion samples back with eps = eps_c (guidance-free), so it "
                             "inverts at inverse_guidance=1; leave inverse_guidance at 1")

    @classmethod
    def fit(cls, pipe, latents, cond, scheduler, guidance_scale, progress):
        return cls(cond.float().cpu())

    def uncond(self, pipe, inv):
        return self.source_embedding.to(ldm.pipe_device(pipe), pipe.text_encoder.dtype)  # (1, L, D)

    def tensors(self):
        return [self.source_embedding]


@dataclasses.dataclass
class DirectInversion(InversionMethod):
    """``"direct"``: after every step the source row is put back on the trajectory, z_prev <- z*_prev."""

    name: ClassVar[str] = "direct"

    def source_pin(self, pipe, inv):
        on = [z.to(ldm.pipe_device(pipe), ldm.pipe_dtype(pipe)) for z in inv.latents]
        return lambda i: on[inv.num_inference_steps - 1 - i]  # (1, C, h, w): z*_prev


# ---------------------------------------------------------------- the result

@dataclasses.dataclass(eq=False)
class Inversion:
    """A real image inverted with one method, for one run setting (steps, guidance, scheduler).

    ``latents[k]`` is z* after k inversion steps (CPU float32, (1, C, h, w)): ``latents[0] = z*_0 =
    E(x)``, ``latents[n] = z*_T``; the loop's step i lands on ``latents[n - 1 - i]``
    (:meth:`target_after`). ``state`` is the method's own (:class:`InversionMethod`); its fields
    read as the inversion's too (``inv.null_embeddings`` of a null-text inversion).
    """

    state: InversionMethod
    prompt: str
    num_inference_steps: int
    guidance_scale: float  # the guidance the reconstruction and the edits run at
    inverse_guidance: float  # the guidance of the DDIM inversion pass (1: the conditional eps)
    scheduler: str  # class name
    scheduler_config: dict = dataclasses.field(repr=False)
    timesteps: list[int] = dataclasses.field(repr=False)
    latents: list[Tensor] = dataclasses.field(repr=False)  # n + 1 entries, (1, C, h, w) each
    image: np.ndarray = dataclasses.field(repr=False)  # the input as the model sees it, (H, W, 3) in [0, 1]
    seconds: float = 0.0  # wall time of the inversion

    def __getattr__(self, name: str):
        if name.startswith("_") or name == "state":
            raise AttributeError(name)
        try:
            return getattr(self.state, name)
        except AttributeError:
            raise AttributeError(f"a {self.method!r} inversion has no {name!r}") from None

    @property
    def method(self) -> str:
        """The method's name (a key of ``METHODS``)."""
        return self.state.name

    @property
    def z_T(self) -> Tensor:
        """z*_T (1, C, h, w), CPU float32: where every row of an edit starts."""
        return self.latents[-1]

    @property
    def z_0(self) -> Tensor:
        """z*_0 = E(x) (1, C, h, w), CPU float32."""
        return self.latents[0]

    @property
    def latent_hw(self) -> tuple[int, int]:
        return tuple(self.z_0.shape[-2:])

    def target_after(self, i: int) -> Tensor:
        """z*_prev, where the loop's step i should land: ``latents[n - 1 - i]`` (1, C, h, w)."""
        return self.latents[self.num_inference_steps - 1 - i]

    @property
    def key(self) -> str:
        """A fingerprint of everything an edit from this inversion depends on (the source cache's
        key): the run setting, the trajectory and the method's own tensors."""
        if "_key" not in self.__dict__:
            h = hashlib.sha1(repr((self.method, self.prompt, self.num_inference_steps, self.guidance_scale,
                                   self.inverse_guidance, self.scheduler,
                                   sorted(self.scheduler_config.items()))).encode())
            for t in [*self.latents, *self.state.tensors()]:
                h.update(t.detach().float().cpu().numpy().tobytes())
            self._key = f"{self.method}:{h.hexdigest()[:16]}"
        return self._key

    # -- what an edit (or the reconstruction) needs: the method's, the one place they differ

    def start_latents(self, pipe, n_rows: int) -> Tensor:
        """z*_T for every row, (n_rows, C, h, w) on the pipeline's device and dtype."""
        return self.z_T.to(ldm.pipe_device(pipe), ldm.pipe_dtype(pipe)).repeat(n_rows, 1, 1, 1)

    def uncond(self, pipe):
        """The unconditional embedding of every row (:meth:`InversionMethod.uncond`)."""
        return self.state.uncond(pipe, self)

    def source_pin(self, pipe):
        """The source row's pin, or None (:meth:`InversionMethod.source_pin`)."""
        return self.state.source_pin(pipe, self)

    # -- checks

    def check_edit(self, pipe, source: str, num_inference_steps, guidance_scale) -> tuple[int, float]:
        """The steps and guidance an edit of this inversion runs at (unset: the inversion's);
        ValueError where the edit asks for another prompt, steps, guidance, scheduler or size."""
        if source != self.prompt:
            raise ValueError(f"this inversion was made for the prompt {self.prompt!r}, the edit's source "
                             f"is {source!r}; edit with source={self.prompt!r} (or invert again with this prompt)")
        steps = self.num_inference_steps if num_inference_steps is None else int(num_inference_steps)
        if steps != self.num_inference_steps:
            raise ValueError(f"this inversion was made with num_inference_steps={self.num_inference_steps}, "
                             f"the edit asks for {steps}; pass num_inference_steps={self.num_inference_steps} "
                             f"(or None), or invert again with num_inference_steps={steps}")
        w = self.guidance_scale if guidance_scale is None else float(guidance_scale)
        if w != self.guidance_scale:
            raise ValueError(f"this inversion was made for guidance_scale={self.guidance_scale}, the edit asks "
                             f"for {w}; pass guidance_scale={self.guidance_scale} (or None), or invert again "
                             f"with guidance_scale={w}")
        sch = pipe.scheduler
        if type(sch).__name__ != self.scheduler or dict(sch.config) != self.scheduler_config:
            diff = sorted(k for k in set(sch.config) | set(self.scheduler_config)
                          if sch.config.get(k) != self.scheduler_config.get(k))
            raise ValueError(f"this inversion was made with a {self.scheduler}, the pipeline now has a "
                             f"{type(sch).__name__} (config differs in {diff}); edit with the scheduler "
                             f"the inversion used, or invert again")
        hw = ldm.latent_shape(pipe)[-2:]
        if tuple(hw) != self.latent_hw:
            raise ValueError(f"this inversion has {self.latent_hw} latents, this pipeline samples {tuple(hw)}; "
                             f"invert with the pipeline you edit with")
        return steps, w

    # -- sampling back

    def _sample_back(self, pipe, keep: bool = False, progress: bool | None = False):
        """z_0 sampled back from z*_T as an edit's source row is, and (``keep``) z after each step."""
        self.check_edit(pipe, self.prompt, None, None)
        scheduler = ldm.fresh_scheduler(pipe, self.num_inference_steps)
        cond = ldm.encode_text(pipe, [self.prompt])  # (1, L, D)
        uncond = self.uncond(pipe)
        if uncond is None and self.guidance_scale != 1:
            uncond = ldm.encode_text(pipe, [""])
        pin, trail = self.source_pin(pipe), []

        def on_step(i, out):
            z = out.prev if pin is None else pin(i)
            if keep:
                trail.append(z.float().cpu())
            return z

        z0 = ldm.denoise(pipe, self.start_latents(pipe, 1), cond, uncond, scheduler, self.guidance_scale,
                         on_step=on_step, progress=progress)
        return z0, trail

    def reconstruction(self, pipe) -> np.ndarray:
        """The image sampled back from z*_T at the inversion's guidance, (H, W, 3) float32 in [0, 1]:
        what an edit's ``source_image`` is."""
        return ldm.to_numpy(ldm.decode(pipe, self._sample_back(pipe)[0]))[0]

    def autoencoded(self, pipe) -> np.ndarray:
        """D(E(x)), the autoencoder's own reconstruction (H, W, 3): the ceiling of any inversion."""
        return ldm.to_numpy(ldm.decode(pipe, self.z_0.to(ldm.pipe_device(pipe), pipe.vae.dtype)))[0]

    def drift(self, pipe) -> np.ndarray:
        """Per loop step i, how far sampling back strays from the trajectory: the RMS distance
        sqrt(mean((z_prev - z*_prev)^2)) of the latent after step i (n values; 0 for direct)."""
        _, trail = self._sample_back(pipe, keep=True)
        return np.array([float((z - self.target_after(i)).pow(2).mean().sqrt()) for i, z in enumerate(trail)])


# ---------------------------------------------------------------- inverting

def ddim_inversion(pipe, z0: Tensor, cond: Tensor, scheduler, guidance_scale: float = 1.0,
                   progress: bool | None = None) -> list[Tensor]:
    """z*_0 -> z*_1 -> ... -> z*_T by :func:`p2p_lab.ldm.ddim_inverse_step`, eps predicted at the point
    we stand on (z*_prev, t) for the prompt ``cond`` (1, L, D), guided at ``guidance_scale`` with the
    empty prompt (1: the conditional eps alone). Returns n + 1 latents, CPU float32."""
    emb = cond if guidance_scale == 1 else torch.cat([ldm.encode_text(pipe, [""]), cond])  # (1 or 2, L, D)
    z, out = z0, [z0.float().cpu()]
    for t in ldm.progress_bar(pipe, reversed(scheduler.timesteps), len(scheduler.timesteps),
                              desc="DDIM inversion", enabled=progress):
        eps = ldm.guided_eps(pipe.unet, scheduler, z, t, emb, guidance_scale)  # (1, C, h, w)
        z = ldm.ddim_inverse_step(scheduler, z, eps, t)
        out.append(z.float().cpu())
    return out


@contextlib.contextmanager
def frozen_weights(module: torch.nn.Module):
    """No gradients for the module's weights inside the block (their flags put back afterwards):
    backpropagation then reaches only the embedding being optimised."""
    flags = [(p, p.requires_grad) for p in module.parameters()]
    try:
        module.requires_grad_(False)
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def optimise_null(unet, scheduler, z_t: Tensor, t, cond: Tensor, null: Tensor, guidance_scale: float,
                  target: Tensor, lr: float, num_inner_steps: int, threshold: float) -> tuple[Tensor, float, int]:
    """One step of null-text inversion: Adam on the null embedding u (1, L, D), from ``null``, so that
    the guided DDIM step from z_t lands on ``target`` = z*_prev:

        loss(u) = mean((DDIM(z_t, eps_u + w (eps_c - eps_u), t) - z*_prev)^2)

    eps_c is computed once; gradients reach u only (the UNet's weights are frozen). u is float32
    and cast to the UNet's dtype for each call; under float16 the loss is scaled for the backward
    pass (and the gradient unscaled in float32), as mixed-precision training does. Stops after
    ``num_inner_steps`` Adam steps or once the loss is below ``threshold``. Returns (u, the last
    loss, Adam steps taken)."""
    dtype = unet.dtype
    z_in = scheduler.scale_model_input(z_t, t)
    with torch.no_grad():
        eps_c = unet(z_in, t, encoder_hidden_states=cond.to(dtype)).sample.float()  # (1, C, h, w)
    u = null.detach().float().clone().requires_grad_(True)
    opt = torch.optim.Adam([u], lr=lr)
    scale = 2.0 ** 10 if dtype == torch.float16 else 1.0
    loss_value, steps = float("nan"), 0
    with torch.enable_grad(), frozen_weights(unet):
        for steps in range(1, num_inner_steps + 1):
            eps_u = unet(z_in, t, encoder_hidden_states=u.to(dtype)).sample.float()  # (1, C, h, w)
            eps = ldm.guidance(eps_u, eps_c, guidance_scale)
            loss = F.mse_loss(ldm.ddim_step(scheduler, z_t.float(), eps, t), target.float())
            (grad,) = torch.autograd.grad(loss * scale, u)
            loss_value = loss.item()
            if not torch.isfinite(grad).all():  # float16 overflow: a smaller scale, no step
                scale /= 2 ** 4
                continue
            u.grad = grad / scale
            opt.step()
            if loss_value < threshold:
                break
    return u.detach(), loss_value, steps


def null_text_inversion(pipe, latents: list[Tensor], cond: Tensor, scheduler, guidance_scale: float,
                        num_inner_steps: int = 10, early_stop: float = 1e-5, lr: float = 1e-2,
                        progress: bool | None = None):
    """Per-step null embeddings u_0 .. u_{n-1} (n, L, D) for the trajectory ``latents`` (z*_0 .. z*_T),
    and per step the last loss and the Adam steps taken (:func:`optimise_null`; lr 1e-2 (1 - i / 100)
    and the early stop early_stop + 2e-5 i, as in the official code)."""
    device, dtype = ldm.pipe_device(pipe), ldm.pipe_dtype(pipe)
    n = len(scheduler.timesteps)
    null = ldm.encode_text(pipe, [""]).float()  # (1, L, D): u_{-1}
    z = latents[-1].to(device, dtype)  # z_bar_T = z*_T
    nulls, losses, inner = [], [], []
    for i, t in ldm.progress_bar(pipe, list(enumerate(scheduler.timesteps)), n, desc="null-text inversion",
                                 enabled=progress):
        target = latents[n - 1 - i].to(device)
        if guidance_scale != 1:  # at w = 1 eps = eps_c: u changes nothing
            null, loss, k = optimise_null(pipe.unet, scheduler, z, t, cond, null, guidance_scale, target,
                                          lr * (1 - i / 100), num_inner_steps, early_stop + NULL_TEXT_STOP_SLOPE * i)
        else:
            loss, k = float("nan"), 0
        nulls.append(null.cpu())
        losses.append(loss), inner.append(k)
        emb = torch.cat([null.to(dtype), cond.to(dtype)])  # (2, L, D)
        z = ldm.denoise_step(pipe.unet, scheduler, z, t, emb, guidance_scale).prev  # z_bar_prev
    return torch.cat(nulls), losses, inner


def _check_scheduler(pipe) -> None:
    from diffusers import DDIMScheduler

    if type(pipe.scheduler) is not DDIMScheduler:
        raise ValueError(f"inversion runs the DDIM step backwards, so it needs a DDIMScheduler; this pipeline "
                         f"has a {type(pipe.scheduler).__name__}: pipe = p2p_lab.ldm.with_scheduler(pipe, "
                         f"diffusers.DDIMScheduler) first (and edit with that pipeline)")


def _method(method: str, inverse_guidance: float, options: dict) -> type[InversionMethod]:
    """The registry's class for ``method``; ValueError for an unknown method, or an option it ignores."""
    if method not in METHODS:
        raise ValueError(f"method {method!r} is unknown; use one of {', '.join(repr(m) for m in METHODS)}")
    cls = METHODS[method]
    for name, value in options.items():
        if value is not None and name not in cls.options:
            readers = [m for m, c in METHODS.items() if name in c.options]
            raise ValueError(f"{name}={value!r} has no effect on {method!r} inversion (only "
                             f"{', '.join(map(repr, readers))} reads it); drop {name}=")
    cls.check(inverse_guidance)
    return cls


@strict_options
@torch.no_grad()
def invert(pipe, image, prompt: str, method: str, num_inference_steps: int | None = None,
           guidance_scale: float | None = None, *, inverse_guidance: float = 1.0, num_inner_steps: int | None = None,
           early_stop: float | None = None, lr: float | None = None, progress: bool | None = None) -> Inversion:
    """Invert a real image for editing with ``p2p.edit(pipe, prompt, targets, inversion=...)``.

    image: an (H, W, 3) numpy array (float in [0, 1], or uint8), a PIL image or a path; resized
    (not cropped) to the model's size (32 px for the shipped model, 512 for Stable Diffusion v1).
    prompt: the image's caption (the edit's source prompt). method: a name of the registry
    ``METHODS``: "ddim", "null-text", "negative-prompt" or "direct" (the module's docstring gives
    each one's equations).
    num_inference_steps, guidance_scale: the steps and guidance the reconstruction and the edits
    will run at (default: the model's, ``p2p_lab.model.sampling_defaults``); null-text optimises
    its null embeddings for this guidance. inverse_guidance: the guidance of the DDIM inversion
    pass, 1 (the conditional eps alone) as the papers invert; set it to guidance_scale to invert
    under the guidance you sample back with ("ddim" or "direct"; not for "negative-prompt", whose
    sampling is guidance-free). num_inner_steps, early_stop, lr: null-text's Adam (default: the
    paper's 10 steps, the official code's early stop 1e-5 and learning rate 1e-2; an error with
    another method, which would ignore them). progress: a progress bar (default: on for Stable
    Diffusion, off for the shipped model).

    Needs a DDIMScheduler (:func:`p2p_lab.ldm.with_scheduler` makes one); the image is encoded with
    the posterior mean (:func:`p2p_lab.ldm.encode`).
    """
    from .sampling import resolve_run

    options = dict(num_inner_steps=num_inner_steps, early_stop=early_stop, lr=lr)
    cls = _method(method, inverse_guidance, options)
    if not isinstance(prompt, str):
        raise TypeError(f"prompt must be a string (the image's caption), got {prompt!r}")
    _check_scheduler(pipe)
    start = time.perf_counter()
    run = resolve_run(pipe, 0, num_inference_steps, guidance_scale, progress)
    cond = ldm.encode_text(pipe, [prompt])  # (1, L, D); a prompt too long raises here
    x = load_image(image, image_size(pipe))  # (H, W, 3) in [0, 1]
    device, dtype = ldm.pipe_device(pipe), ldm.pipe_dtype(pipe)
    z0 = ldm.encode(pipe, ldm.image_to_tensor(x)).to(device, dtype)  # (1, C, h, w): z*_0
    scheduler = ldm.fresh_scheduler(pipe, run.num_steps)
    latents = ddim_inversion(pipe, z0, cond, scheduler, inverse_guidance, progress=run.progress)
    state = cls.fit(pipe, latents, cond, scheduler, run.guidance_scale, run.progress,
                    **{k: v for k, v in options.items() if v is not None})
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()
    sch = pipe.scheduler
    return Inversion(state, prompt, run.num_steps, run.guidance_scale, float(inverse_guidance),
                     type(sch).__name__, dict(sch.config), [int(t) for t in scheduler.timesteps], latents, x,
                     seconds=time.perf_counter() - start)
