"""Inverting a real image and editing it (notebook 06): DDIM, null-text, negative-prompt and
DirectInversion, each against an independent reference (the autoencoder's own reconstruction, the
DDIM formula written out, plain sampling at w = 1, the inverted trajectory)."""
import numpy as np
import pytest
import torch

from p2p_lab import finetune, ldm, shapes
from p2p_lab.metrics import psnr
from p2p_lab.p2p import INVERSION_METHODS, Inversion, LocalBlend, edit, invert

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SCENE = shapes.Scene((shapes.ShapeSpec("circle", "red", "big", (11.0, 13.0), 7.0),), "blue")
S = shapes.caption(SCENE)  # "a red circle on a blue background"
T1 = "a green circle on a blue background"
T2 = "a red square on a blue background"
IMAGE = shapes.render(SCENE)[0]  # (32, 32, 3) uint8: drawn by the generator, never sampled by the model
FAST = dict(num_inference_steps=4, guidance_scale=4.0)


def close(a, b, atol=1e-5):
    return np.abs(np.asarray(a) - np.asarray(b)).max() <= atol


@pytest.fixture(scope="module")
def inversions(shipped_pipe):
    """One inversion per method of the same scene, 4 steps, for guidance 4 (null-text: 3 Adam steps)."""
    return {m: invert(shipped_pipe, IMAGE, S, m, **({"num_inner_steps": 3} if m == "null-text" else {}), **FAST)
            for m in INVERSION_METHODS}


def test_ddim_inversion_is_the_formula_written_out(shipped_pipe):
    """z*_t = sqrt(abar_t) (z*_prev - sqrt(1 - abar_prev) eps) / sqrt(abar_prev) + sqrt(1 - abar_t) eps
    with eps = UNet(z*_prev, t, c), abar from the scheduler's table, z*_0 the encoder's mean."""
    inv = invert(shipped_pipe, IMAGE, S, "ddim", **FAST)
    sch = ldm.fresh_scheduler(shipped_pipe, 4)
    abar = sch.alphas_cumprod
    x = torch.from_numpy(IMAGE.astype(np.float32) / 255).permute(2, 0, 1)[None] * 2 - 1
    with torch.no_grad():
        z = shipped_pipe.vae.encode(x).latent_dist.mean * shipped_pipe.vae.config.scaling_factor
        c = ldm.encode_text(shipped_pipe, [S])
        assert torch.allclose(inv.z_0, z, atol=1e-4)  # float32 noise of another memory layout: up to 6e-5
        z = inv.z_0.clone()  # so that each step below is checked alone, to float precision
        ts = [int(t) for t in sch.timesteps][::-1]  # 1, 251, 501, 751
        for k, t in enumerate(ts):
            a_prev = abar[ts[k - 1]] if k else sch.final_alpha_cumprod
            eps = shipped_pipe.unet(z, t, encoder_hidden_states=c).sample
            z = abar[t].sqrt() * (z - (1 - a_prev).sqrt() * eps) / a_prev.sqrt() + (1 - abar[t]).sqrt() * eps
            assert torch.allclose(inv.latents[k + 1], z, atol=1e-5), k
    assert len(inv.latents) == 5 and inv.timesteps == ts[::-1] and torch.equal(inv.target_after(3), inv.z_0)


def test_ddim_inversion_without_guidance_converges_to_the_autoencoder(shipped_pipe):
    """Without guidance the round trip is exact in the limit of small steps: the drift is first
    order (about half with twice the steps) and 40 steps come within the autoencoder's own
    reconstruction D(E(x)) by over 36 dB (measured 38.7 to 47 dB on four scenes; 20 steps 33 to 41)."""
    runs = {n: invert(shipped_pipe, IMAGE, S, "ddim", n, 1.0) for n in (20, 40)}
    drift = {n: inv.drift(shipped_pipe).max() for n, inv in runs.items()}
    assert 0.35 < drift[40] / drift[20] < 0.65, drift
    ceiling = runs[40].autoencoded(shipped_pipe)
    assert psnr(ceiling, runs[40].reconstruction(shipped_pipe)) > 36.0


def test_negative_prompt_reconstruction_is_sampling_at_guidance_one(shipped_pipe, inversions):
    """u = c makes eps = eps_c + w (eps_c - eps_c) = eps_c: at any w the reconstruction is the w = 1
    sampling from z*_T (diffusers-equal ldm.sample), which is DDIM inversion's reconstruction at w = 1."""
    neg = inversions["negative-prompt"]
    assert neg.guidance_scale == 4.0 and torch.equal(neg.z_T, inversions["ddim"].z_T)  # the same w = 1 pivot
    plain = ldm.sample(shipped_pipe, S, None, 4, 1.0, latents=neg.z_T).numpy()[0]
    assert close(neg.reconstruction(shipped_pipe), plain)
    ddim_w1 = invert(shipped_pipe, IMAGE, S, "ddim", 4, 1.0)
    assert close(ddim_w1.reconstruction(shipped_pipe), plain)
    assert not close(inversions["ddim"].reconstruction(shipped_pipe), plain, 1e-2)  # at w = 4 it drifts


def test_null_text_lowers_the_drift_at_the_edit_guidance(shipped_pipe):
    """Null-text's per-step null embeddings keep the guided sampling nearer the trajectory than
    DDIM inversion at the same guidance, at every step; the UNet's weights are untouched."""
    before = finetune.weights_fingerprint(shipped_pipe.unet)
    flags = [p.requires_grad for p in shipped_pipe.unet.parameters()]
    kw = dict(num_inference_steps=10, guidance_scale=4.0)
    nt = invert(shipped_pipe, IMAGE, S, "null-text", **kw)
    ddim = invert(shipped_pipe, IMAGE, S, "ddim", **kw)
    assert finetune.weights_fingerprint(shipped_pipe.unet) == before
    assert [p.requires_grad for p in shipped_pipe.unet.parameters()] == flags
    d_nt, d_ddim = nt.drift(shipped_pipe), ddim.drift(shipped_pipe)  # measured: 0.11 vs 0.16 at the end
    assert (d_nt < d_ddim).all() and d_nt[-1] < 0.8 * d_ddim[-1], (d_nt, d_ddim)
    ceiling = nt.autoencoded(shipped_pipe)
    assert psnr(ceiling, nt.reconstruction(shipped_pipe)) > psnr(ceiling, ddim.reconstruction(shipped_pipe)) + 3
    assert nt.null_embeddings.shape == (10, 16, ldm.encode_text(shipped_pipe, [""]).shape[-1])
    assert nt.null_inner_steps == [10] * 10 and all(np.isfinite(nt.null_losses))
    assert not torch.allclose(nt.null_embeddings[0], ldm.encode_text(shipped_pipe, [""])[0])
    # the early stop: a threshold above every loss stops after one Adam step
    quick = invert(shipped_pipe, IMAGE, S, "null-text", early_stop=1.0, num_inference_steps=3)
    assert quick.null_inner_steps == [1] * 3


@pytest.mark.parametrize("method", INVERSION_METHODS)
def test_edit_from_an_inversion_keeps_the_reconstruction(method, shipped_pipe, inversions):
    inv = inversions[method]
    res = edit(shipped_pipe, S, [T1, T2], inversion=inv)  # steps and guidance: the inversion's
    assert res.images.shape == (3, 32, 32, 3) and res.prompts == [S, T1, T2]
    assert close(res.source_image, inv.reconstruction(shipped_pipe))
    assert not close(res.target_images[0], res.source_image, 1e-2)  # the edit did something
    # no attention control: the targets are plain samples from z*_T with the method's embeddings
    base = edit(shipped_pipe, S, [T1], inversion=inv, cross_tau=0.0, self_tau=0.0, context_tau=0.0)
    if method == "ddim":
        ref = ldm.sample(shipped_pipe, [S, T1], None, 4, 4.0, latents=inv.z_T.repeat(2, 1, 1, 1)).numpy()
        assert close(base.images, ref)
    if method == "negative-prompt":  # every row guided with u = c_source
        with torch.no_grad():
            cond = ldm.encode_text(shipped_pipe, [S, T1])
            z = ldm.denoise(shipped_pipe, inv.z_T.repeat(2, 1, 1, 1), cond, cond[:1],
                            ldm.fresh_scheduler(shipped_pipe, 4), 4.0)
        assert close(base.images, ldm.to_numpy(ldm.decode(shipped_pipe, z)))


def test_direct_inversion_keeps_the_source_row_on_the_trajectory(shipped_pipe, inversions):
    inv = inversions["direct"]
    res = edit(shipped_pipe, S, [T1, T2], inversion=inv, local_blend=LocalBlend(["circle", "square"]))
    for i, z in enumerate(res.cache.latents):  # the source row after every step
        assert torch.equal(z.float().cpu(), inv.target_after(i))
    assert close(res.source_image, inv.autoencoded(shipped_pipe))  # D(z*_0): the ceiling
    assert (inv.drift(shipped_pipe) == 0).all()


@pytest.mark.parametrize("method", ["null-text", "direct"])
def test_cached_rerun_from_an_inversion_equals_a_full_edit(method, shipped_pipe, inversions):
    inv = inversions[method]
    first = edit(shipped_pipe, S, T1, inversion=inv)
    opts = dict(cross_tau={"square": (0.0, 0.5), "default_": 0.75}, self_tau=(0.25, 0.5),
                reweight={"square": 1.5}, local_blend=LocalBlend(["circle", "square"], start=0.0))
    cached = edit(shipped_pipe, S, [T2, T1], inversion=inv, cache=first.cache, **opts)
    full = edit(shipped_pipe, S, [T2, T1], inversion=inv, **opts)
    assert cached.from_cache and not full.from_cache and close(cached.images, full.images)
    resumed = edit(shipped_pipe, S, T1, inversion=inv, cache=first.cache, cross_tau=0.5)
    assert close(resumed.images, edit(shipped_pipe, S, T1, inversion=inv, cross_tau=0.5).images)
    # a cache belongs to one inversion: not another one, not a generated source, and back
    other = inversions["ddim" if method == "direct" else "direct"]
    with pytest.raises(ValueError, match="inversion"):
        edit(shipped_pipe, S, T1, inversion=other, cache=first.cache)
    with pytest.raises(ValueError, match="inversion"):
        edit(shipped_pipe, S, T1, cache=first.cache, **FAST)
    generated = edit(shipped_pipe, S, T1, **FAST)
    with pytest.raises(ValueError, match="inversion"):
        edit(shipped_pipe, S, T1, inversion=inv, cache=generated.cache)


def test_image_inputs(shipped_pipe, tmp_path):
    """uint8, float, PIL, a path and a 2x larger picture (resized to 32 px) are the same image."""
    from PIL import Image

    ref = invert(shipped_pipe, IMAGE, S, "direct", 2, 4.0)
    big = np.repeat(np.repeat(IMAGE, 2, 0), 2, 1)  # (64, 64, 3): area-resized back exactly
    Image.fromarray(IMAGE).save(tmp_path / "scene.png")
    for image in (IMAGE.astype(np.float32) / 255, Image.fromarray(IMAGE), tmp_path / "scene.png",
                  str(tmp_path / "scene.png"), big, np.dstack([IMAGE, np.full((32, 32), 255, np.uint8)])):
        inv = invert(shipped_pipe, image, S, "direct", 2, 4.0)
        assert inv.image.shape == (32, 32, 3) and close(inv.image, ref.image, 1e-6)
        assert torch.allclose(inv.z_T, ref.z_T, atol=1e-5)
    assert isinstance(ref, Inversion) and ref.key == invert(shipped_pipe, IMAGE, S, "direct", 2, 4.0).key
    assert ref.key != invert(shipped_pipe, IMAGE, S, "ddim", 2, 4.0).key


def test_errors(shipped_pipe, inversions):
    from diffusers import DDIMScheduler, EulerDiscreteScheduler

    inv = inversions["ddim"]
    cases = [
        (dict(image=IMAGE[..., 0]), ValueError, r"\(H, W, 3\).*np.stack"),
        (dict(image=IMAGE.transpose(2, 0, 1)), ValueError, "channels first.*transpose"),
        (dict(image=IMAGE.astype(np.float32)), ValueError, r"\[0, 1\].*divide 0..255 values by 255"),
        (dict(image=torch.zeros(1, 3, 32, 32)), TypeError, "torch tensor.*to_numpy"),
        (dict(image=[[0.0]]), TypeError, "numpy array"),
        (dict(image=IMAGE > 0), TypeError, "dtype bool"),
        (dict(image="no/such/picture.png"), ValueError, "no image file"),
        (dict(method="pnp"), ValueError, "'ddim', 'null-text', 'negative-prompt', 'direct'"),
        (dict(prompt=S + " and a big red square on a green background"), ValueError, "reads at most 16"),
        (dict(method="negative-prompt", inverse_guidance=4.0), ValueError, "inverse_guidance=1"),
        (dict(steps=3), TypeError, "no option 'steps'"),
        (dict(num_inner_steps=3), ValueError, "num_inner_steps=3 has no effect on 'ddim' inversion.*'null-text'"),
        (dict(method="direct", lr=0.1), ValueError, "lr=0.1 has no effect on 'direct'.*drop lr="),
    ]
    for change, error, message in cases:
        kw = dict(image=IMAGE, prompt=S, method="ddim", **FAST)
        kw.update(change)
        with pytest.raises(error, match=message):
            invert(shipped_pipe, **kw)
    with pytest.raises(ValueError, match="num_inference_steps=4.*asks for 5"):
        edit(shipped_pipe, S, T1, inversion=inv, num_inference_steps=5)
    with pytest.raises(ValueError, match="guidance_scale=4.0.*asks for 7.5"):
        edit(shipped_pipe, S, T1, inversion=inv, guidance_scale=7.5)
    with pytest.raises(ValueError, match="made for the prompt .*source is 'a red circle'"):
        edit(shipped_pipe, "a red circle", T1, inversion=inv)
    with pytest.raises(TypeError, match="must be an Inversion"):
        edit(shipped_pipe, S, T1, inversion=inv.z_T)
    with pytest.raises(ValueError, match="seed=3 has no effect on an edit from an inversion.*drop seed="):
        edit(shipped_pipe, S, T1, inversion=inv, seed=3)
    original = shipped_pipe.scheduler
    try:
        shipped_pipe.scheduler = DDIMScheduler.from_config(original.config, timestep_spacing="trailing")
        with pytest.raises(ValueError, match=r"made with a DDIMScheduler.*differs in \['timestep_spacing'\]"):
            edit(shipped_pipe, S, T1, inversion=inv)
        shipped_pipe.scheduler = EulerDiscreteScheduler.from_config(original.config)
        with pytest.raises(ValueError, match="DDIMScheduler, the pipeline now has a EulerDiscreteScheduler"):
            edit(shipped_pipe, S, T1, inversion=inv)
        with pytest.raises(ValueError, match="needs a DDIMScheduler.*with_scheduler"):
            invert(shipped_pipe, IMAGE, S, "ddim")
    finally:
        shipped_pipe.scheduler = original


def test_sd_topology_inversion_and_edit(sd_like_pipe):
    """An SD-v1-topology pipeline (77 tokens, random weights, 128 px images from 16x16 latents): a
    256 px photo is resized, null-text's Adam runs in float32 beside the UNet, and an edit from the
    inversion guides every row with the per-step null embeddings."""
    photo = np.random.default_rng(0).random((256, 256, 3))
    inv = invert(sd_like_pipe, photo, "a red circle", "null-text", 2, 5.0, num_inner_steps=2, progress=False)
    assert inv.image.shape == (128, 128, 3) and inv.z_T.shape == (1, 4, 16, 16) and inv.z_T.dtype == torch.float32
    assert inv.null_embeddings.shape == (2, 77, sd_like_pipe.text_encoder.config.hidden_size)
    assert inv.null_embeddings.dtype == torch.float32 and torch.isfinite(inv.null_embeddings).all()
    assert not torch.equal(inv.null_embeddings[0], inv.null_embeddings[1])  # optimised per step
    res = edit(sd_like_pipe, "a red circle", "a blue circle", inversion=inv, progress=False)
    assert res.images.shape == (2, 128, 128, 3) and np.isfinite(res.images).all()
    # batches of 4 and 2 rows round differently (3e-5 measured with these random weights)
    assert close(res.source_image, inv.reconstruction(sd_like_pipe), 1e-4)


def test_null_text_in_float16(sd_like_pipe):
    """A float16 UNet and text encoder (the GPU's dtype; the autoencoder stays float32 here, as
    float16 convolutions are slow on a CPU): the loss is scaled for the backward pass, so the
    gradient reaching the float32 null embedding does not vanish, and Adam moves it as in float32."""
    import copy

    pipe = copy.deepcopy(sd_like_pipe)
    pipe.unet.to(torch.float16), pipe.text_encoder.to(torch.float16)
    photo = np.random.default_rng(0).random((128, 128, 3))
    kw = dict(num_inner_steps=1, progress=False)
    low, ref = (invert(p, photo, "a red circle", "null-text", 1, 5.0, **kw) for p in (pipe, sd_like_pipe))
    # one Adam step from the empty prompt's embedding; these random weights give gradients so small
    # that Adam's eps (1e-8) sets the step size, so the step measures the gradient's size too
    steps = [inv.null_embeddings - ldm.encode_text(p, [""]).float().cpu() for inv, p in ((low, pipe), (ref, sd_like_pipe))]
    assert low.null_embeddings.dtype == torch.float32 and torch.isfinite(low.null_embeddings).all()
    assert (torch.sign(steps[0]) == torch.sign(steps[1])).float().mean() > 0.9  # measured 0.97
    size = [s.abs().mean().item() for s in steps]
    assert 0.8 < size[0] / size[1] < 1.25, size  # neither underflowed nor left scaled
    assert abs(low.null_losses[0] - ref.null_losses[0]) < 0.05 * ref.null_losses[0]


def test_a_new_method_is_one_class(shipped_pipe, inversions):
    """A subclass of InversionMethod registers itself; invert and edit take it by name. This one
    guides every row with the empty prompt's embedding, given as its own tensor, and pins nothing:
    what DDIM inversion's edit does (classifier-free guidance with u = E("")), so the two edits
    are equal; its key hashes its tensor and names it."""
    from p2p_lab.p2p.inversion import METHODS, InversionMethod

    class EmptyPrompt(InversionMethod):
        name = "empty-prompt (test)"

        @classmethod
        def fit(cls, pipe, latents, cond, scheduler, guidance_scale, progress):
            out = cls()
            out.u = ldm.encode_text(pipe, [""]).float().cpu()  # (1, L, D)
            return out

        def uncond(self, pipe, inv):
            return self.u

        def tensors(self):
            return [self.u]

    try:
        assert METHODS["empty-prompt (test)"] is EmptyPrompt
        inv = invert(shipped_pipe, IMAGE, S, "empty-prompt (test)", **FAST)
        ddim = inversions["ddim"]
        assert inv.method == "empty-prompt (test)" and torch.equal(inv.z_T, ddim.z_T)
        assert inv.key != ddim.key and inv.key.startswith("empty-prompt (test):")
        ours, theirs = (edit(shipped_pipe, S, [T1], inversion=i).images for i in (inv, ddim))
        assert close(ours, theirs, 1e-6)
    finally:
        del METHODS["empty-prompt (test)"]


def test_the_key_hashes_each_methods_own_tensors(inversions):
    """Two inversions that differ only in a method's own tensor (null-text's u_0, negative-prompt's
    c) have different keys: an edit never reuses the other's cache."""
    import copy

    for method, name in (("null-text", "null_embeddings"), ("negative-prompt", "source_embedding")):
        inv = inversions[method]
        other = copy.copy(inv)
        other.__dict__.pop("_key", None)
        other.state = copy.copy(inv.state)
        setattr(other.state, name, getattr(inv.state, name) + 1e-3)
        assert other.key != inv.key and other.key.split(":")[0] == method
