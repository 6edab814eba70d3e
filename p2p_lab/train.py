"""Training the shipped model: ``python -m p2p_lab train`` (course part 6, "beyond the slides").

Four stages, each resumable from the checkpoints in ``TrainConfig.out`` (kept outside git); the
three that train run one resume -> loop -> checkpoint skeleton (:class:`Stage`):

1. the autoencoder (``AutoencoderKL``) on rendered shapes-world images, then frozen;
2. the whole dataset encoded once into latent means and standard deviations;
3. Algorithm 1 of DDPM on latents: t ~ U{0..999}, eps ~ N(0, I), z_t = sqrt(abar_t) z_0 +
   sqrt(1 - abar_t) eps, loss ||eps - eps_theta(z_t, t, c)||^2, with the text encoder trained
   jointly with the UNet and the caption dropped (replaced by "") 10% of the time so that
   classifier-free guidance works;
4. the decoder alone, on latents from the frozen encoder (``finetune_decoder``): sharper pictures,
   and the UNet's latents stay valid.

One addition the course states plainly wherever it shows attention maps: an auxiliary per-pixel
cross-attention loss (``attn_loss_weight``) pushes latent pixels inside the object to attend to the
object's words and pixels outside to the background word. Large models learn such maps from scale
alone; a model this small, trained for an hour on a CPU, reads the prompt through the end and padding
tokens instead unless it is helped.

The shipped model is a recipe of such runs, each fine-tuning the one before (``RECIPES``):
``python -m p2p_lab train --recipe shipped`` trains it, each run resumable as above.

Runs through Hugging Face ``accelerate``: the same command uses a GPU where there is one.
Checkpoints are safetensors (weights and optimizer moments) plus a JSON file of counters.
"""
from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from . import shapes
from .ddpm import add_noise
from .model import (ModelConfig, assemble_pipeline, build_scheduler, build_text_encoder,
                    build_unet, build_vae, save_pipeline)
from .unet_attention import Control, attend_all, hooked


@dataclasses.dataclass
class TrainConfig:
    out: str = "runs/shapes-ldm"  # checkpoints and logs (outside git)
    export: str = "data/shapes-ldm"  # where the finished pipeline is written
    seed: int = 0
    n_scenes: int = 50_000  # rendered once, then encoded once
    vae_steps: int = 3500
    vae_batch: int = 16  # small batches: more updates per CPU second on this simple world
    vae_lr: float = 1e-3  # 100-step warm-up, constant, linear decay to 0 over the last 1000 steps
    kl_weight: float = 1e-6  # on the summed KL per image
    decoder_steps: int = 3000  # last stage: the decoder alone, encoder frozen (see finetune_decoder)
    decoder_batch: int = 32
    decoder_lr: float = 3e-4  # 100-step warm-up, constant, linear decay to 0 over the last 30 %
    steps: int = 6000  # UNet + text encoder steps
    batch: int = 64
    lr: float = 8e-4  # AdamW, linear warm-up then cosine to zero
    warmup: int = 500
    weight_decay: float = 0.01
    ema: float = 0.999  # EMA of UNet and text encoder weights; the EMA weights are shipped
    caption_dropout: float = 0.1
    attn_loss_weight: float = 0.05  # 0 switches the auxiliary attention loss off
    attn_region: str = "shape"  # the attention loss's object region: "shape", the object's own mask;
    # "box", its bounding square (the same for a circle, square or triangle in one place: the maps
    # then say where the object is, not which outline it has)
    context_swap: float = 0.5  # fraction of captions whose tokens after the object words are encoded
    # from a decoy caption naming another object (see decoy_caption); 0 switches it off
    word_decoys: float = 0.5  # fraction of captions whose object words are each encoded after decoy
    # earlier object words (see encode_captions), so that "shaded" is read from its own token
    p_style: float = 0.4  # share of objects drawn shaded (shapes.OBJECT_STYLES); 0: the flat world
    p_background_style: float = 0.35  # share of backgrounds drawn spotted; 0: the flat world
    init_from: str | None = None  # a pipeline folder to fine-tune: its UNet and text encoder start the
    # UNet stage, its autoencoder is kept (no autoencoder stages)
    checkpoint_every: int = 500
    export_every: int = 2000  # also exports to <out>/pipeline for a look while training
    threads: int = 0  # torch CPU threads; 0 keeps torch's default
    progress: bool = True

    def __post_init__(self):
        check_attn_region(self.attn_region)


def check_attn_region(region: str) -> None:
    """Refuse an attention region other than "shape" or "box" (TrainConfig.attn_region), naming both."""
    if region not in ("shape", "box"):
        raise ValueError(f"unknown attention region {region!r}; use 'shape' (the object's own mask) or "
                         f"'box' (its bounding square)")


# ------------------------------------------------------------------ data

def _style_index(style, styles) -> int:
    return 0 if style is None else 1 + styles.index(style)


def render_dataset(n: int, seed: int, p_style: float = 0.0, p_background_style: float = 0.0,
                   region: str = "shape") -> dict[str, np.ndarray]:
    """n one-object scenes: images (n, 32, 32, 3) uint8, soft masks (n, 32, 32) of each object's
    ``region`` ("shape": the object itself; "box": its bounding square), attributes."""
    check_attn_region(region)
    rng = np.random.default_rng(seed)
    size = shapes.IMAGE_SIZE
    images = np.empty((n, size, size, 3), np.uint8)
    masks = np.empty((n, size, size), np.float32)
    attrs = np.empty((n, 6), np.int64)  # shape, colour, size, background, style, background style
    colors = list(shapes.COLORS)
    for i in range(n):
        scene = shapes.sample_scene(rng, p_style=p_style, p_background_style=p_background_style)
        obj = scene.objects[0]
        images[i], _ = shapes.render(scene)
        masks[i] = shapes.shape_mask(obj if region == "shape" else dataclasses.replace(obj, shape="square"))
        attrs[i] = (shapes.SHAPES.index(obj.shape), colors.index(obj.color),
                    shapes.SIZES.index(obj.size), colors.index(scene.background),
                    _style_index(obj.style, shapes.OBJECT_STYLES),
                    _style_index(scene.background_style, shapes.BACKGROUND_STYLES))
    return {"images": images, "masks": masks, "attrs": attrs}


def scene_from_attrs(a) -> shapes.Scene:
    """The scene a row of ``attrs`` describes, for its caption (places, sizes and spots left out)."""
    colors = list(shapes.COLORS)
    style = shapes.OBJECT_STYLES[a[4] - 1] if len(a) > 4 and a[4] else None
    bg_style = shapes.BACKGROUND_STYLES[a[5] - 1] if len(a) > 5 and a[5] else None
    obj = shapes.ShapeSpec(shapes.SHAPES[a[0]], colors[a[1]], shapes.SIZES[a[2]], (0.0, 0.0), 0.0, style)
    return shapes.Scene((obj,), colors[a[3]], bg_style)


def images_to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (n, H, W, 3) -> float (n, 3, H, W) in [-1, 1]."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def _token_count(tokenizer, word: str) -> int:
    """Tokens of one word, remembered on the tokenizer (training asks for the same words often)."""
    counts = tokenizer.__dict__.setdefault("_p2p_token_counts", {})
    if word not in counts:
        counts[word] = len(tokenizer(word, add_special_tokens=False).input_ids)
    return counts[word]


def word_groups(tokenizer, words: list[str], length: int) -> list[list[int]]:
    """Token positions of each word of a whitespace-split caption (position 0 is the start token)."""
    pos, groups = 1, []
    for w in words:
        n = _token_count(tokenizer, w)
        groups.append([p for p in range(pos, pos + n) if p < length])
        pos += n
    return groups


N_OBJECT_WORDS = 4  # size, style, colour, shape: the most words an object has


def caption_targets(tokenizer, scene, rng, cfg: TrainConfig, length: int):
    """A random caption for a scene, plus which token positions name the object (one row per
    object word: size, style, colour, shape) and the background (its colour and style words)."""
    obj_groups, bg = torch.zeros(N_OBJECT_WORDS, length), torch.zeros(length)
    if rng.random() < cfg.caption_dropout:
        return "", obj_groups, bg
    text = shapes.random_caption(scene, rng)
    words = text.split()
    n_obj = words.index("on") if "on" in words else len(words)  # words before "on" name the object
    k = 0
    for i, g in enumerate(word_groups(tokenizer, words, length)):
        if 0 < i < n_obj:  # skip the article
            obj_groups[k, g] = 1.0
            k += 1
        elif words[-1] == "background" and (i == len(words) - 2 or words[i] in shapes.BACKGROUND_STYLES):
            bg[g] = 1.0
    return text, obj_groups, bg


def decoy_caption(text: str, rng, tokenizer) -> str:
    """The caption with its object words (size, colour, shape) replaced by others of the same token
    count, the background kept: "a red circle on a blue background" -> "a green square on a blue
    background".

    Why: CLIP's text encoder is causal, so the tokens after the object words (the background word,
    the end and padding tokens) carry the object in their embeddings, and a small model learns to
    read the object's identity and place from them. Prompt-to-Prompt edits only the attention maps,
    so such a model moves or keeps the object whatever the maps say. Encoding that tail from a decoy
    now and then (``context_swap``) teaches the model to read the object from its own words, the
    way the maps route it.
    """
    words = text.split()
    n_obj = words.index("on") if "on" in words else len(words)
    background = words[n_obj + 2] if n_obj < len(words) else None
    for i in range(1, n_obj):
        w = words[i]
        if w in shapes.SHAPES:
            pool = [x for x in shapes.SHAPES if x != w]
        elif w in shapes.COLORS:
            n = _token_count(tokenizer, w)
            pool = [x for x in shapes.COLORS if x not in (w, background) and _token_count(tokenizer, x) == n]
        elif w in shapes.SIZES:
            pool = [x for x in shapes.SIZES if x != w]
        elif w in shapes.OBJECT_STYLES:  # another style, or a size word where the caption has none
            pool = [x for x in shapes.OBJECT_STYLES + shapes.SIZES if x != w and x not in words
                    and _token_count(tokenizer, x) == _token_count(tokenizer, w)]
        else:
            continue
        if pool:
            words[i] = pool[int(rng.integers(len(pool)))]
    return " ".join(words)


def context_start(tokenizer, text: str, length: int) -> int:
    """Position of the first token after the object words (position 0 is the start token)."""
    words = text.split()
    n_obj = words.index("on") if "on" in words else len(words)
    return min(length, 1 + sum(_token_count(tokenizer, w) for w in words[:n_obj]))


# ------------------------------------------------------------------ attention capture

class AttentionCapture(Control):
    """Keeps each cross-attention layer's head-averaged probabilities, gradients included.

    A client of :mod:`p2p_lab.unet_attention` (install it with ``hooked(unet, capture)``): at every
    cross-attention layer A = softmax(Q K^T / sqrt(d)) is computed explicitly (``attend_all``) and
    ``maps`` gets (the layer's query grid (rows, cols), A averaged over heads). Self-attention keeps
    torch's fused attention. Training has no guidance (``n_uncond = 0``); a guided sampling run
    passes its unconditional rows, which are then not recorded.
    """

    def __init__(self, latent_hw: tuple[int, int], n_uncond: int = 0):
        super().__init__(latent_hw)
        self.n_uncond = n_uncond
        self.maps: list[tuple[tuple[int, int], torch.Tensor]] = []

    def wants(self, layer) -> bool:
        return layer.is_cross

    def attention(self, layer, q, k, v, mask):
        return attend_all(self, layer, q, k, v, mask)

    def attend(self, layer, probs):
        self.maps.append((layer.resolution, probs.mean(1)))  # (batch, n_pixels, n_tokens)
        return probs


def attention_loss(maps, masks, obj_groups, bg) -> torch.Tensor:
    """Per-pixel loss: object pixels attend to the object's words, the rest to the background word.

    Inside the object (a latent pixel at least half covered by its mask), -mean over the object's
    words w of log sum_{j in w} A_ij; outside, -log sum_{j in background} A_ij; averaged over the
    pixels of every map (captions without object or background words weigh nothing).
    maps: list of ((rows, cols), A of shape (b, rows * cols, m)), as :class:`AttentionCapture`
    keeps them; masks: (b, 1, H, W) object masks in [0, 1]; obj_groups: (b, g, m) one row per
    object word present; bg: (b, m).
    """
    present = obj_groups.amax(-1)  # (b, g)
    has_obj, has_bg = present.amax(-1), bg.amax(-1)  # (b,)
    inside_at: dict[tuple[int, int], torch.Tensor] = {}
    total, weight = 0.0, 0.0
    for grid, p in maps:
        if grid not in inside_at:
            inside_at[grid] = (F.adaptive_avg_pool2d(masks, grid) >= 0.5).float().flatten(1)  # (b, n_pix)
        inside = inside_at[grid]
        p_word = torch.einsum("bnm,bgm->bng", p, obj_groups)  # (b, n_pix, 3)
        l_in = -(torch.log(p_word + 1e-4) * present[:, None]).sum(-1) / present.sum(-1).clamp(min=1)[:, None]
        l_out = -torch.log((p * bg[:, None]).sum(-1) + 1e-4)  # (b, n_pix)
        w_in, w_out = inside * has_obj[:, None], (1 - inside) * has_bg[:, None]
        total = total + (l_in * w_in + l_out * w_out).sum()
        weight = weight + (w_in + w_out).sum()
    return total / max(float(weight), 1.0)


# ------------------------------------------------------------------ checkpoints (safetensors only)

def save_optimizer(opt: torch.optim.Optimizer, path: Path) -> None:
    from safetensors.torch import save_file

    state = opt.state_dict()["state"]
    save_file({f"{i}.{k}": v.detach().cpu().contiguous().reshape(v.shape) for i, st in state.items()
               for k, v in st.items()}, str(path))


def load_optimizer(opt: torch.optim.Optimizer, path: Path) -> None:
    from safetensors.torch import load_file

    flat, state = load_file(str(path)), {}
    for key, v in flat.items():
        i, k = key.split(".", 1)
        state.setdefault(int(i), {})[k] = v
    opt.load_state_dict({"state": state, "param_groups": opt.state_dict()["param_groups"]})


def save_modules(path: Path, **modules) -> None:
    from safetensors.torch import save_file

    path.mkdir(parents=True, exist_ok=True)
    for name, m in modules.items():
        save_file({k: v.detach().cpu().contiguous() for k, v in m.state_dict().items()}, str(path / f"{name}.safetensors"))


def load_modules(path: Path, **modules) -> None:
    from safetensors.torch import load_file

    for name, m in modules.items():
        m.load_state_dict(load_file(str(path / f"{name}.safetensors")))


def lr_at(step: int, cfg: TrainConfig) -> float:
    """The UNet stage's learning rate: lr (step + 1) / warmup during the warm-up, then
    lr (1 + cos(pi f)) / 2 with f = (step - warmup) / (steps - warmup), a cosine to zero."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    frac = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0)))


def warmup_decay(step: int, total: int, decay_steps: float) -> float:
    """The autoencoder stages' learning-rate factor: min(1, (step + 1) / 100, (total - step) / decay_steps),
    a 100-step warm-up, constant, then linear decay to 0 over the last ``decay_steps`` steps."""
    return min(1.0, (step + 1) / 100, (total - step) / decay_steps)


def set_lr(opt, lr: float) -> None:
    for group in opt.param_groups:
        group["lr"] = lr


# ------------------------------------------------------------------ one stage: resume -> loop -> checkpoint

@dataclasses.dataclass
class Stage:
    """One resumable stage, kept in ``folder``: its modules (``<name>.safetensors``), the
    optimizer's moments (``optimizer.safetensors``) and the steps done (``state.json``)."""

    folder: Path
    total: int  # steps of the whole stage
    modules: dict[str, torch.nn.Module]
    opt: torch.optim.Optimizer
    step: int = 0  # steps done

    @classmethod
    def resume(cls, folder: Path, total: int, modules: dict, opt) -> "Stage":
        """The stage as its last checkpoint left it (modules and moments loaded), or fresh."""
        state = folder / "state.json"
        stage = cls(folder, total, modules, opt, json.loads(state.read_text())["step"] if state.exists() else 0)
        if stage.step:
            load_modules(folder, **modules)
            load_optimizer(opt, folder / "optimizer.safetensors")
        return stage

    def save(self) -> None:
        save_modules(self.folder, **self.modules)
        save_optimizer(self.opt, self.folder / "optimizer.safetensors")
        (self.folder / "state.json").write_text(json.dumps({"step": self.step}))

    def run(self, step_fn, desc: str, cfg: TrainConfig, after=None) -> None:
        """``step_fn(step)`` (one update; returns figures {name: scalar tensor}) until ``total`` steps
        are done; a checkpoint every ``cfg.checkpoint_every`` steps and at the end, then
        ``after(steps_done, figures)``."""
        from tqdm.auto import tqdm

        bar = tqdm(total=self.total, initial=self.step, desc=desc, disable=not cfg.progress, mininterval=10)
        while self.step < self.total:
            figures = step_fn(self.step)
            self.step += 1
            bar.update(1)
            if self.step % 50 == 0:  # .item() waits for the GPU: not every step
                bar.set_postfix({k: f"{v.item():.4f}" for k, v in figures.items()})
            if self.step % cfg.checkpoint_every == 0 or self.step == self.total:
                self.save()
            if after is not None:
                after(self.step, figures)
        bar.close()


def optimizer_step(accelerator, opt, loss, clip=None) -> None:
    opt.zero_grad()
    accelerator.backward(loss)
    if clip is not None:
        accelerator.clip_grad_norm_(clip, 1.0)
    opt.step()


# ------------------------------------------------------------------ stages

def train_vae(cfg: TrainConfig, mcfg: ModelConfig, data, accelerator):
    """The autoencoder: ||D(z) - x||^2 + kl_weight KL(q(z|x) || N(0, I)), z ~ q(z|x) (sampled)."""
    vae = build_vae(mcfg)
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr)
    stage = Stage.resume(Path(cfg.out) / "vae", cfg.vae_steps, {"vae": vae}, opt)
    _, opt = accelerator.prepare(vae, opt)
    images = images_to_tensor(data["images"])  # (n, 3, 32, 32)

    def step(i: int):
        g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + i)
        x = images[torch.randint(len(images), (cfg.vae_batch,), generator=g)].to(accelerator.device)
        set_lr(opt, cfg.vae_lr * warmup_decay(i, cfg.vae_steps, 1000))
        post = vae.encode(x).latent_dist
        recon = vae.decode(post.sample(generator=None)).sample  # (b, 3, 32, 32)
        loss = F.mse_loss(recon, x) + cfg.kl_weight * post.kl().mean()
        optimizer_step(accelerator, opt, loss)
        return {"loss": loss}

    stage.run(step, "autoencoder", cfg)
    return vae.eval().requires_grad_(False)


def finetune_decoder(cfg: TrainConfig, vae, data, accelerator):
    """Train the decoder alone on latents drawn from the frozen encoder: ||D(z) - x||^2, z ~ q(z|x).

    The encoder, and so every latent the UNet was trained on, stays as it is: the UNet needs no
    retraining, and the pictures get sharper edges (what the scorer reads a shape from). Stable
    Diffusion's released autoencoders were improved the same way (a decoder fine-tuned later).
    """
    trained = list(vae.decoder.parameters()) + list(vae.post_quant_conv.parameters())
    vae.requires_grad_(False)
    for p in trained:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(trained, lr=cfg.decoder_lr, weight_decay=0.0)
    stage = Stage.resume(Path(cfg.out) / "decoder", cfg.decoder_steps, {"vae": vae}, opt)
    _, opt = accelerator.prepare(vae, opt)
    dev = accelerator.device
    images = images_to_tensor(data["images"])  # (n, 3, 32, 32)
    decay = max(1.0, 0.3 * cfg.decoder_steps)

    def step(i: int):
        g = torch.Generator().manual_seed(cfg.seed * 1_000_033 + 7 + i)
        x = images[torch.randint(len(images), (cfg.decoder_batch,), generator=g)]
        with torch.no_grad():
            post = vae.encode(x.to(dev)).latent_dist
            z = post.mean + post.std * torch.randn(post.mean.shape, generator=g).to(dev)  # (b, 4, 8, 8)
        set_lr(opt, cfg.decoder_lr * warmup_decay(i, cfg.decoder_steps, decay))
        loss = F.mse_loss(vae.decode(z).sample, x.to(dev))
        optimizer_step(accelerator, opt, loss)
        return {"loss": loss}

    stage.run(step, "decoder", cfg)
    return vae.eval().requires_grad_(False).cpu()


@torch.no_grad()
def encode_dataset(cfg: TrainConfig, vae, data, device) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file, save_file

    path = Path(cfg.out) / "latents.safetensors"
    if path.exists():
        return load_file(str(path))
    means, stds = [], []
    images = images_to_tensor(data["images"])
    for i in range(0, len(images), 256):
        dist = vae.encode(images[i:i + 256].to(device)).latent_dist
        means.append(dist.mean.cpu().contiguous())
        stds.append(dist.std.cpu().contiguous())
    lat = {"mean": torch.cat(means), "std": torch.cat(stds)}
    save_file(lat, str(path))
    return lat


def encode_captions(tokenizer, text_encoder, texts, rng, cfg: TrainConfig, device) -> torch.Tensor:
    """c = E(caption), with the tokens after the object words encoded from a decoy caption for a
    ``context_swap`` share of the captions (see :func:`decoy_caption`), and for a ``word_decoys``
    share each object word after the first encoded after decoys of the earlier ones. Shape (b, L, D)."""
    length = tokenizer.model_max_length
    ids = tokenizer(list(texts), padding="max_length", max_length=length, truncation=True,
                    return_tensors="pt").input_ids.to(device)  # (b, L)
    cond = text_encoder(ids)[0]  # (b, L, D)
    decoys = list(texts)
    if cfg.context_swap > 0:
        swap = [bool(x) and rng.random() < cfg.context_swap for x in texts]
        decoys = [decoy_caption(x, rng, tokenizer) if sw else x for x, sw in zip(texts, swap)]
        pos = torch.arange(length)
        tail = torch.stack([(pos >= context_start(tokenizer, x, length)) & sw for x, sw in zip(texts, swap)])  # (b, L)
        dec_ids = tokenizer(decoys, padding="max_length", max_length=length, truncation=True,
                            return_tensors="pt").input_ids.to(device)
        cond = torch.where(tail.to(device)[..., None], text_encoder(dec_ids)[0], cond)
    if cfg.word_decoys <= 0:
        return cond
    # word decoys: "a big red circle ..." -> "big" as it is, "red" encoded in "a small red ...", "circle"
    # in "a small green circle ...": each object word's embedding then carries its own attribute and
    # decoys of the earlier ones, so the model must read size, colour and shape from each word's own
    # token (the causal encoder otherwise writes "big" into "red" and "circle" too)
    variants, where = [], []  # extra captions to encode, and (row, token positions) to take from each
    for b, (x, d) in enumerate(zip(texts, decoys)):
        if not x or rng.random() >= cfg.word_decoys:
            continue
        d = d if d != x else decoy_caption(x, rng, tokenizer)
        words, fake = x.split(), d.split()
        groups = word_groups(tokenizer, words, length)
        n_obj = words.index("on") if "on" in words else len(words)
        for k in range(2, n_obj):  # object words after the first (word 0 is the article)
            if groups[k] and word_groups(tokenizer, fake[:k] + words[k:], length)[k] == groups[k]:
                variants.append(" ".join(fake[:k] + words[k:]))
                where.append((b, groups[k]))
    if not variants:
        return cond
    var_ids = tokenizer(variants, padding="max_length", max_length=length, truncation=True,
                        return_tensors="pt").input_ids.to(device)
    encoded = text_encoder(var_ids)[0]  # (n_variants, L, D)
    cond = cond.clone()
    for v, (b, positions) in enumerate(where):
        cond[b, positions] = encoded[v, positions]
    return cond


def forward_noise(z0, abar, g):
    """Property 1 at random times: t ~ U{0..999}, eps ~ N(0, I) (drawn from ``g`` on the CPU),
    z_t = sqrt(abar_t) z_0 + sqrt(1 - abar_t) eps. Returns z_t, t, eps on the device of ``abar``."""
    t = torch.randint(0, len(abar), (z0.shape[0],), generator=g)  # (b,)
    eps = torch.randn(z0.shape, generator=g)  # (b, C, h, w)
    z0, eps, t = z0.to(abar.device), eps.to(abar.device), t.to(abar.device)
    return add_noise(z0, eps, abar[t].view(-1, 1, 1, 1)), t, eps  # abar_t: (b, 1, 1, 1)


def train_ldm(cfg: TrainConfig, mcfg: ModelConfig, tokenizer, lat, data, vae, accelerator):
    """Algorithm 1 on latents, UNet and text encoder jointly, with the attention loss:
    ||eps - eps_theta(sqrt(abar_t) z_0 + sqrt(1 - abar_t) eps, t, c)||^2 + attn_loss_weight L_attn.
    The EMA of the weights (decay min(ema, (1 + n) / (10 + n)) after n steps) is what ships."""
    unet, text_encoder = build_unet(mcfg), build_text_encoder(mcfg, tokenizer)
    if cfg.init_from:  # a fine-tune: start from a trained pipeline's weights
        from diffusers import UNet2DConditionModel
        from transformers import CLIPTextModel

        unet.load_state_dict(UNet2DConditionModel.from_pretrained(cfg.init_from, subfolder="unet").state_dict())
        text_encoder.load_state_dict(CLIPTextModel.from_pretrained(cfg.init_from, subfolder="text_encoder").state_dict())
    ema_unet, ema_text = build_unet(mcfg), build_text_encoder(mcfg, tokenizer)
    ema_unet.load_state_dict(unet.state_dict())
    ema_text.load_state_dict(text_encoder.state_dict())
    params = list(unet.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    modules = {"unet": unet, "text_encoder": text_encoder, "ema_unet": ema_unet, "ema_text": ema_text}
    stage = Stage.resume(Path(cfg.out) / "ldm", cfg.steps, modules, opt)
    unet_run, text_run, opt = accelerator.prepare(unet, text_encoder, opt)
    dev = accelerator.device
    ema_unet.to(dev)
    ema_text.to(dev)
    ema_params = list(ema_unet.parameters()) + list(ema_text.parameters())
    abar = build_scheduler().alphas_cumprod.to(dev)  # (1000,)
    length = tokenizer.model_max_length
    masks = torch.from_numpy(data["masks"])[:, None]  # (n, 1, 32, 32)
    capture = AttentionCapture((unet.config.sample_size,) * 2)  # the UNet's latent (rows, cols)

    def step(i: int):
        rng = np.random.default_rng([cfg.seed, i])
        g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + i)
        idx = torch.from_numpy(rng.integers(len(lat["mean"]), size=cfg.batch))
        z0 = (lat["mean"][idx] + lat["std"][idx] * torch.randn(lat["mean"][idx].shape, generator=g))
        z0 = z0 * vae.config.scaling_factor  # (b, 4, 8, 8), unit variance
        texts, groups, bgs = zip(*(caption_targets(tokenizer, scene_from_attrs(data["attrs"][j]), rng, cfg, length)
                                   for j in idx.tolist()))
        zt, t, eps = forward_noise(z0, abar, g)  # (b, 4, 8, 8), (b,), (b, 4, 8, 8)
        set_lr(opt, lr_at(i, cfg))
        capture.maps.clear()
        cond = encode_captions(tokenizer, text_run, texts, rng, cfg, dev)  # (b, 16, 64)
        mse = F.mse_loss(unet_run(zt, t, cond).sample, eps)
        aux = torch.zeros((), device=dev)
        if cfg.attn_loss_weight > 0:
            aux = attention_loss(capture.maps, masks[idx].to(dev), torch.stack(groups).to(dev),
                                 torch.stack(bgs).to(dev))
        optimizer_step(accelerator, opt, mse + cfg.attn_loss_weight * aux, clip=params)
        n = i + 1  # steps done
        decay = min(cfg.ema, (1 + n) / (10 + n))
        with torch.no_grad():
            torch._foreach_lerp_(ema_params, [p.detach() for p in params], 1 - decay)
        return {"mse": mse, "attn": aux}

    log = open(Path(cfg.out) / "log.jsonl", "a")
    t0 = time.time()

    def after(done: int, figures) -> None:
        if done % 100 == 0:
            log.write(json.dumps({"step": done, "mse": figures["mse"].item(), "attn": figures["attn"].item(),
                                  "lr": lr_at(done, cfg), "sec": time.time() - t0}) + "\n")
            log.flush()
        if done % cfg.export_every == 0 and done < cfg.steps:
            export(Path(cfg.out) / "pipeline", vae, ema_unet, ema_text, tokenizer)

    try:
        with hooked(unet, capture):
            stage.run(step, "unet+text", cfg, after)
    finally:
        log.close()
    return ema_unet, ema_text


def export(folder: Path, vae, unet, text_encoder, tokenizer) -> None:
    """Write a standard diffusers pipeline folder (safetensors only)."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel

    u = UNet2DConditionModel.from_config(unet.config)
    u.load_state_dict(unet.state_dict())
    te = CLIPTextModel(text_encoder.config)
    te.load_state_dict(text_encoder.state_dict())
    save_pipeline(assemble_pipeline(vae, te.eval(), tokenizer, u.eval()), folder)


# settings that change how a run goes, not what it trains
_RUN_ONLY = {"out", "export", "threads", "progress", "checkpoint_every", "export_every"}
_TOTALS = ("vae_steps", "steps", "decoder_steps")  # a finished run may be extended by raising these
_RECIPE_RUN_ONLY = _RUN_ONLY - {"out", "export"}  # what may be set beside a recipe (it names its own folders)


def _settings_differ(out: Path, cfg: TrainConfig, mcfg: ModelConfig, totals_too: bool = False) -> list[str]:
    """The settings in which ``out``'s run differs from ``cfg`` and ``mcfg`` (run-only ones aside;
    the step totals too when ``totals_too``), each as 'part.name: there, now'."""
    old = json.loads((out / "config.json").read_text())
    new = json.loads(json.dumps({"train": dataclasses.asdict(cfg), "model": dataclasses.asdict(mcfg)}))
    default = json.loads(json.dumps({"train": dataclasses.asdict(TrainConfig()), "model": dataclasses.asdict(ModelConfig())}))
    # a setting missing from an older run's config.json ran at its default (it did not exist yet)
    there = {part: {k: old.get(part, {}).get(k, default[part][k]) for k in new[part]} for part in new}
    return [f"{part}.{k}: {there[part][k]!r} there, {v!r} now" for part in ("train", "model")
            for k, v in new[part].items()
            if k not in _RUN_ONLY and (totals_too or k not in _TOTALS) and there[part][k] != v]


def check_resumable(out: Path, cfg: TrainConfig, mcfg: ModelConfig) -> None:
    """Refuse a checkpoint folder trained with other settings (resuming it would mix two runs'
    weights) or a finished run asked for nothing more, naming what differs and the fix. Raising a
    stage's step total extends a run; anything else must match."""
    if not (out / "config.json").exists():
        return
    diff = _settings_differ(out, cfg, mcfg)
    if diff:
        raise ValueError(f"{out} holds checkpoints of a run with other settings ({'; '.join(diff)}); "
                         f"resume it with the same settings, or pass a new --out folder.")
    old = json.loads((out / "config.json").read_text())
    new = dataclasses.asdict(cfg)
    if (out / "done.json").exists() and all(new[k] <= old["train"][k] for k in _TOTALS):
        raise ValueError(f"{out} holds a finished training run (done.json): nothing is left to train "
                         f"at these step counts, and its pipeline was exported already. Raise --steps "
                         f"(or --vae-steps, --decoder-steps) to train on, or pass a new --out folder.")


def main(cfg: TrainConfig, mcfg: ModelConfig | None = None) -> Path:
    from accelerate import Accelerator

    from .tokenizer import build_tokenizer

    mcfg = mcfg or ModelConfig()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    out = Path(cfg.out)
    check_resumable(out, cfg, mcfg)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps({"train": dataclasses.asdict(cfg),
                                                 "model": dataclasses.asdict(mcfg)}, indent=1))
    accelerator = Accelerator()
    tokenizer = build_tokenizer(out / "bpe")
    data_file = out / "scenes.npz"
    if data_file.exists():
        data = dict(np.load(data_file))
    else:
        data = render_dataset(cfg.n_scenes, cfg.seed, cfg.p_style, cfg.p_background_style, cfg.attn_region)
        np.savez(data_file, **data)
    t0 = time.time()
    if cfg.init_from:  # a fine-tune: the pipeline's own autoencoder (its latents are the UNet's)
        from diffusers import AutoencoderKL

        vae = AutoencoderKL.from_pretrained(cfg.init_from, subfolder="vae")
        with torch.no_grad():
            lat = encode_dataset(cfg, vae.to(accelerator.device), data, accelerator.device)
    else:
        vae = train_vae(cfg, mcfg, data, accelerator)
        lat = encode_dataset(cfg, vae, data, accelerator.device)
        vae.register_to_config(scaling_factor=float(1.0 / lat["mean"].std()))
    vae = vae.cpu()
    unet, text_encoder = train_ldm(cfg, mcfg, tokenizer, lat, data, vae, accelerator)
    if not cfg.init_from:
        vae = finetune_decoder(cfg, vae, data, accelerator)
    export(Path(cfg.export), vae, unet, text_encoder, tokenizer)
    (out / "done.json").write_text(json.dumps({"seconds_this_run": time.time() - t0,
                                               "device": str(accelerator.device),
                                               "threads": torch.get_num_threads()}))
    return Path(cfg.export)


# ------------------------------------------------------------------ the shipped model's recipe

# The shipped model, run by run: each entry a TrainConfig's settings; every run after the first
# fine-tunes the previous run's pipeline (init_from). ``python -m p2p_lab train --recipe shipped``.
RECIPES: dict[str, tuple[dict, ...]] = {
    "shipped": (
        dict(vae_steps=10_000),  # the autoencoder (longer than the default), 6000 UNet steps, the decoder
        dict(attn_loss_weight=0.02),  # 6000 more UNet steps, a lighter attention loss
        dict(attn_loss_weight=0.02, lr=4e-4, seed=1),  # 6000 more at half the rate, on newly drawn scenes
    ),
}


def recipe_run_settings(name: str, cfg: TrainConfig) -> dict:
    """What a command line may set beside ``--recipe name``: the settings of ``cfg`` that change how
    the runs go (threads, progress, checkpoint intervals). An unknown recipe, or a training setting
    changed from its default beside a recipe (the recipe fixes those), is refused by name."""
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; the recipes are {sorted(RECIPES)}")
    fixed = [f"--{f.name.replace('_', '-')}" for f in dataclasses.fields(TrainConfig)
             if f.name not in _RUN_ONLY and getattr(cfg, f.name) != f.default]
    if fixed:
        raise ValueError(f"--recipe {name} sets every training setting itself; drop {' '.join(fixed)} (only --out, "
                         f"--export, --threads, --progress and the checkpoint intervals go with it)")
    return {k: getattr(cfg, k) for k in _RECIPE_RUN_ONLY}


def run_recipe(stages, out: str | Path, export: str | Path, **run_settings) -> Path:
    """Train ``stages`` (TrainConfig settings, one dict per run) one after another: run k in
    ``out/run-k``, fine-tuning run k - 1's pipeline, the last one's exported to ``export``.

    Each run resumes as a single run does, so an interrupted recipe picks up where it stopped; a
    finished run (done.json) is kept if its settings are the recipe's, refused if not.
    ``run_settings``: settings that change how the runs go, not what they train (threads, progress,
    checkpoint_every, export_every)."""
    import shutil

    extra = set(run_settings) - _RECIPE_RUN_ONLY
    if extra:
        raise ValueError(f"a recipe fixes what each run trains; only {sorted(_RECIPE_RUN_ONLY)} "
                         f"may be set beside it (got {sorted(extra)})")
    previous = None
    for k, settings in enumerate(stages):
        folder = Path(out) / f"run-{k}"
        cfg = TrainConfig(**{**settings, **run_settings, "out": str(folder), "export": str(folder / "export"),
                             "init_from": previous})
        if (folder / "done.json").exists():
            diff = _settings_differ(folder, cfg, ModelConfig(), totals_too=True)
            if diff:
                raise ValueError(f"{folder} holds a finished run with other settings than the recipe's "
                                 f"({'; '.join(diff)}); pass a new --out folder.")
        else:
            main(cfg)
        previous = str(folder / "export")
    shutil.copytree(previous, export, dirs_exist_ok=True)
    return Path(export)
