"""p2p_lab.ldm against diffusers itself: the hand-written loop reproduces pipe(...)."""
import copy

import numpy as np
import pytest
import torch

from p2p_lab import baseline, finetune, ldm

PROMPT = "a red circle on a blue background"


def _pipe_images(pipe, prompt, seed, steps, w):
    return pipe(prompt, num_inference_steps=steps, guidance_scale=w,
                generator=torch.Generator("cpu").manual_seed(seed), output_type="pt").images


@pytest.mark.parametrize("w", [7.5, 1.0])
def test_hand_loop_equals_pipeline_shipped(shipped_pipe, w):
    want = _pipe_images(shipped_pipe, PROMPT, 3, 6, w)
    got = ldm.sample(shipped_pipe, PROMPT, seed=3, num_inference_steps=6, guidance_scale=w,
                     progress=False).images
    assert got.shape == want.shape == (1, 3, 32, 32)
    assert (got - want).abs().max().item() <= 1e-4


def test_hand_loop_equals_pipeline_sd_like_batch(sd_like_pipe):
    prompts = [PROMPT, "a big turquoise square"]
    want = _pipe_images(sd_like_pipe, prompts, 5, 3, 7.5)
    got = ldm.sample(sd_like_pipe, prompts, seed=5, num_inference_steps=3, guidance_scale=7.5,
                     progress=False).images
    assert got.shape == want.shape == (2, 3, 128, 128)
    assert (got - want).abs().max().item() <= 1e-4


def test_hand_loop_equals_pipeline_with_euler(shipped_pipe):
    """Euler needs init_noise_sigma and scale_model_input: the loop handles any scheduler."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline

    parts = dict(shipped_pipe.components,
                 scheduler=EulerDiscreteScheduler.from_config(shipped_pipe.scheduler.config))
    pipe = StableDiffusionPipeline(**parts)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.scheduler.init_noise_sigma > 2  # so forgetting it would show
    want = _pipe_images(pipe, PROMPT, 1, 5, 4.0)
    got = ldm.sample(pipe, PROMPT, seed=1, num_inference_steps=5, guidance_scale=4.0, progress=False)
    assert (got.images - want).abs().max().item() <= 1e-4


def test_intermediates(shipped_pipe):
    out = ldm.sample(shipped_pipe, PROMPT, seed=0, num_inference_steps=4, guidance_scale=5.0,
                     return_intermediates=True, progress=False)
    assert len(out.trajectory) == 5 and len(out.x0) == 4 and len(out.timesteps) == 4
    assert out.timesteps == sorted(out.timesteps, reverse=True)  # noisy to clean
    assert torch.equal(out.trajectory[0], ldm.initial_latents(shipped_pipe, 0))
    assert torch.equal(out.trajectory[-1], out.latents)
    # DDIM's last step by the formula (eta = 0): z_prev = sqrt(abar_prev) x0 + sqrt(1 - abar_prev) eps,
    # with eps recovered from z_t and x0, and abar_prev = alphas_cumprod[0] (set_alpha_to_one=False)
    abar = shipped_pipe.scheduler.alphas_cumprod
    a_t, a_prev = abar[out.timesteps[-1]], abar[0]
    z_t, x0 = out.trajectory[-2], out.x0[-1]
    eps = (z_t - a_t.sqrt() * x0) / (1 - a_t).sqrt()
    assert torch.allclose(out.latents, a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps, atol=1e-4)


def test_initial_latents_match_diffusers(shipped_pipe):
    from diffusers.utils.torch_utils import randn_tensor

    want = randn_tensor((2, 4, 8, 8), generator=torch.Generator("cpu").manual_seed(7),
                        device=torch.device("cpu"), dtype=torch.float32)
    assert torch.equal(ldm.initial_latents(shipped_pipe, 7, batch_size=2), want)


def test_guidance_closed_form():
    u, c = torch.tensor([1.0, -2.0]), torch.tensor([3.0, 0.0])
    assert torch.equal(ldm.guidance(u, c, 0.0), u)
    assert torch.equal(ldm.guidance(u, c, 1.0), c)
    assert torch.equal(ldm.guidance(u, c, 7.5), torch.tensor([16.0, 13.0]))  # 1 + 7.5*2, -2 + 7.5*2
    with pytest.raises(ValueError, match="same shape"):
        ldm.guidance(u, c[:1], 2.0)


def test_sampling_step_equals_diffusers_by_hand(shipped_pipe):
    pipe = shipped_pipe
    pipe.scheduler.set_timesteps(10)
    t = pipe.scheduler.timesteps[4]
    z = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    emb = ldm.encode_prompt(pipe, PROMPT)
    with torch.no_grad():
        eps_u = pipe.unet(z, t, encoder_hidden_states=emb.uncond).sample
        eps_c = pipe.unet(z, t, encoder_hidden_states=emb.cond).sample
    want = pipe.scheduler.step(eps_u + 3.0 * (eps_c - eps_u), t, z).prev_sample
    got = ldm.sampling_step(pipe.unet, pipe.scheduler, z, t, emb.both(), 3.0)
    assert torch.allclose(got, want, atol=1e-5)
    with pytest.raises(ValueError, match="rows"):
        ldm.sampling_step(pipe.unet, pipe.scheduler, z, t, torch.cat([emb.both(), emb.cond]), 3.0)


def test_predict_x0_matches_ddim(shipped_pipe):
    from diffusers import DDIMScheduler

    sch = DDIMScheduler.from_config(shipped_pipe.scheduler.config)
    sch.set_timesteps(20)
    g = torch.Generator().manual_seed(1)
    z, eps = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    t = sch.timesteps[5]
    want = sch.step(eps, t, z).pred_original_sample
    assert torch.allclose(ldm.predict_x0(sch, z, eps, t), want, atol=1e-5)


def test_tokenize_and_encode_prompt(shipped_pipe):
    tok = shipped_pipe.tokenizer
    ids = ldm.tokenize(tok, "a turquoise circle")  # (1, L)
    L = tok.model_max_length
    assert ids.shape == (1, L)
    assert ids[0, 0] == tok.bos_token_id
    n_words = len(tok("a turquoise circle", add_special_tokens=False).input_ids)
    assert n_words == 4  # "turquoise" is two tokens
    assert (ids[0, n_words + 1:] == tok.eos_token_id).all()  # end token, then padding with it
    emb = ldm.encode_prompt(shipped_pipe, ["a red circle", "a blue square"])
    D = shipped_pipe.text_encoder.config.hidden_size
    assert emb.cond.shape == emb.uncond.shape == (2, L, D)
    assert torch.equal(emb.uncond[0], emb.uncond[1])  # both are ""
    assert torch.equal(emb.both()[:2], emb.uncond)
    # the library's own prompt encoding gives the same tensors
    cond, uncond = shipped_pipe.encode_prompt(["a red circle", "a blue square"], "cpu", 1, True)
    assert torch.allclose(emb.cond, cond) and torch.allclose(emb.uncond, uncond)
    with pytest.raises(ValueError, match="tokens"):
        ldm.tokenize(tok, " ".join(["a red circle"] * 10))


@pytest.mark.parametrize("fixture, size, latent", [("shipped_pipe", 32, 8), ("sd_like_pipe", 128, 16)])
def test_encode_decode_shapes(request, fixture, size, latent):
    pipe = request.getfixturevalue(fixture)
    x = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    z = ldm.encode(pipe, x)
    assert z.shape == (2, 4, latent, latent)
    y = ldm.decode(pipe, z)
    assert y.shape == x.shape and y.min() >= 0 and y.max() <= 1
    # decode divides by the scaling factor, as diffusers does
    with torch.no_grad():
        raw = pipe.vae.decode(z / pipe.vae.config.scaling_factor).sample
    assert torch.allclose(y, (raw / 2 + 0.5).clamp(0, 1))
    with pytest.raises(ValueError, match="image_to_tensor"):
        ldm.encode(pipe, x[0])


def test_decode_and_encode_split_big_batches(sd_like_pipe, monkeypatch):
    """A batch bigger than one autoencoder call goes through in pieces (the memory of a 512-px batch),
    and gives what one diffusers call on the whole batch gives."""
    pipe = sd_like_pipe
    x = torch.rand(5, 3, 128, 128, generator=torch.Generator().manual_seed(1))
    calls = []
    for name in ("encode", "decode"):
        original = getattr(pipe.vae, name)
        monkeypatch.setattr(pipe.vae, name, lambda t, *a, _o=original, _n=name, **k: calls.append((_n, len(t))) or _o(t, *a, **k))
    monkeypatch.setattr(ldm, "VAE_CHUNK_PIXELS", 2 * 128 * 128)  # two of these images per call
    z = ldm.encode(pipe, x)
    y = ldm.decode(pipe, z)
    assert calls == [("encode", 2), ("encode", 2), ("encode", 1), ("decode", 2), ("decode", 2), ("decode", 1)]
    monkeypatch.undo()
    with torch.no_grad():
        whole_z = pipe.vae.encode(x * 2 - 1).latent_dist.mean * pipe.vae.config.scaling_factor
        whole_y = (pipe.vae.decode(z / pipe.vae.config.scaling_factor).sample / 2 + 0.5).clamp(0, 1)
    assert torch.allclose(z, whole_z, atol=1e-5) and torch.allclose(y, whole_y, atol=1e-5)


def test_image_to_tensor():
    import numpy as np

    img = np.zeros((64, 64, 3), np.uint8)
    img[:32] = 255
    x = ldm.image_to_tensor(img, size=32)
    assert x.shape == (1, 3, 32, 32)
    assert x[0, :, :16].min() == 1.0 and x[0, :, 16:].max() == 0.0
    assert ldm.to_numpy(x).shape == (1, 32, 32, 3)


def test_attention_layers_sd_topology(sd_like_pipe, shipped_pipe):
    layers = ldm.attention_layers(sd_like_pipe)
    cross = [a for a in layers if a.kind == "cross"]
    selfs = [a for a in layers if a.kind == "self"]
    assert len(cross) == len(selfs) == 16  # SD v1: 6 down, 1 mid, 9 up transformer blocks
    assert all(a.n_key == 77 for a in cross)
    assert all(a.n_key == a.n_query for a in selfs)
    assert {a.res for a in cross} == {16, 8, 4, 2}  # 64/32/16/8 at 512 px
    shipped = ldm.attention_layers(shipped_pipe)
    assert len(shipped) == len(shipped_pipe.unet.attn_processors)
    assert all(a.n_key == shipped_pipe.tokenizer.model_max_length for a in shipped if a.kind == "cross")


def test_latent_cost_closed_form():
    ours, sd = ldm.latent_cost(32, 4), ldm.latent_cost(512, 8)
    assert ours.latent_shape == (4, 8, 8) and sd.latent_shape == (4, 64, 64)
    assert ours.values_ratio == 3 * 32 * 32 / 256 == 12
    assert sd.values_ratio == 48 and sd.pixels_ratio == 64 and sd.attention_ratio == 4096
    with pytest.raises(ValueError):
        ldm.latent_cost(30, 4)


def _train_batch(size=32, n=4):
    from p2p_lab import shapes
    import numpy as np

    rng = np.random.default_rng(0)
    scenes = [shapes.sample_scene(rng) for _ in range(n)]
    images = torch.cat([ldm.image_to_tensor(shapes.render(s)[0], size=size) for s in scenes])
    return images, [shapes.caption(s) for s in scenes]


@pytest.mark.parametrize("which", ["all", "cross-attention"])
def test_train_briefly_trains_both_parts_and_restores_every_weight(shipped_pipe, which):
    import numpy as np

    before = {k: copy.deepcopy(m.state_dict()) for k, m in (("u", shipped_pipe.unet), ("t", shipped_pipe.text_encoder))}
    print_before = finetune.weights_fingerprint(shipped_pipe.unet)
    log = finetune.train_briefly(shipped_pipe, *_train_batch(), steps=2, which=which)
    assert len(log.losses) == 2 and all(np.isfinite(log.losses))
    assert log.text_change > 0 and log.unet_change > 0  # the text encoder is trained too
    for key, m in (("u", shipped_pipe.unet), ("t", shipped_pipe.text_encoder)):
        after = m.state_dict()
        assert all(torch.equal(before[key][k], after[k]) and before[key][k].dtype == after[k].dtype for k in after)
        assert not any(p.requires_grad and p.grad is not None for p in m.parameters())
    assert finetune.weights_fingerprint(shipped_pipe.unet) == print_before
    if which == "cross-attention":
        assert log.trained and all(".attn2.to_k." in n or ".attn2.to_v." in n or n.startswith("text_encoder.")
                                   for n in log.trained)
        assert len(log.trained) < len(finetune.trainable_parameters(shipped_pipe, "all"))


def test_train_briefly_in_low_precision_keeps_the_pipeline_dtype(sd_like_pipe):
    pipe = copy.deepcopy(sd_like_pipe)
    pipe.unet.to(torch.bfloat16), pipe.text_encoder.to(torch.bfloat16), pipe.vae.to(torch.bfloat16)
    before = copy.deepcopy(pipe.unet.state_dict())
    log = finetune.train_briefly(pipe, *_train_batch(size=128, n=1), steps=2, which="cross-attention")
    assert log.text_change > 0 and log.unet_change > 0
    assert all(torch.equal(before[k], v) and v.dtype == torch.bfloat16 for k, v in pipe.unet.state_dict().items())
    with pytest.raises(ValueError, match="'all' or 'cross-attention'"):
        finetune.trainable_parameters(pipe, "attention")


def test_fingerprint_sees_a_changed_weight(sd_like_pipe):
    unet = copy.deepcopy(sd_like_pipe.unet)
    before = finetune.weights_fingerprint(unet)
    with torch.no_grad():
        next(unet.parameters())[0].flatten()[0] += 1e-3
    assert finetune.weights_fingerprint(unet) != before


def test_fixed_seed_baseline_same_prompt_changes_nothing(shipped_pipe):
    stats = baseline.fixed_seed_baseline(shipped_pipe, PROMPT, PROMPT, seeds=[0, 1],
                                    num_inference_steps=3)
    assert stats.seeds == [0, 1] and len(stats.shift) == 2
    assert not any(stats.background_changed)
    assert all(s == 0 for s, f in zip(stats.shift, stats.found) if f)


def test_progress_bar_on_for_stable_diffusion_quiet_on_the_shipped_model(shipped_pipe, sd_like_pipe, capsys):
    from p2p_lab import p2p

    for sample in (lambda pipe, **kw: ldm.sample(pipe, "a cat", 0, 2, 7.5, **kw),
                   lambda pipe, **kw: p2p.fixed_seed(pipe, "a cat", num_inference_steps=2, **kw),
                   lambda pipe, **kw: p2p.edit(pipe, "a red cat", "a blue cat", num_inference_steps=2, **kw)):
        capsys.readouterr()
        sample(sd_like_pipe)
        assert "| 0/2 [" in capsys.readouterr().err  # tqdm's bar over the 2 steps (later refreshes depend on the clock)
        sample(shipped_pipe)
        assert capsys.readouterr().err == ""
        sample(sd_like_pipe, progress=False)
        assert capsys.readouterr().err == ""


def test_ddim_step_is_diffusers_ddim_and_the_inverse_undoes_it(shipped_pipe):
    sch = ldm.fresh_scheduler(shipped_pipe, 10)
    g = torch.Generator().manual_seed(0)
    z, eps = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    for t in sch.timesteps:
        ours = ldm.ddim_step(sch, z, eps, t)
        theirs = sch.step(eps, t, z, eta=0.0).prev_sample
        assert torch.allclose(ours, theirs, atol=1e-5)
        assert torch.allclose(ldm.ddim_inverse_step(sch, ours, eps, t), z, atol=1e-4)


def test_fresh_scheduler_refuses_step_counts_past_the_schedule(shipped_pipe):
    # SD's scheduler config ('leading' spacing, steps_offset 1) at n = 1000 asks diffusers for
    # timestep 1000, which its own DDIM step cannot index (alphas_cumprod has 1000 entries)
    from diffusers import DDIMScheduler

    sch = DDIMScheduler.from_config(shipped_pipe.scheduler.config)
    sch.set_timesteps(1000)
    with pytest.raises(IndexError):
        sch.step(torch.zeros(1, 4, 2, 2), sch.timesteps[0], torch.zeros(1, 4, 2, 2))
    with pytest.raises(ValueError, match="at most 999 steps"):
        ldm.fresh_scheduler(shipped_pipe, 1000)
    for bad in (0, -3, 2.5, True, "20", 1001):
        with pytest.raises(ValueError, match="whole number from 1 to 1000"):
            ldm.fresh_scheduler(shipped_pipe, bad)
    ours = ldm.fresh_scheduler(shipped_pipe, np.int64(999))
    theirs = DDIMScheduler.from_config(shipped_pipe.scheduler.config)
    theirs.set_timesteps(999)
    assert torch.equal(ours.timesteps, theirs.timesteps) and int(ours.timesteps[0]) == 999


def test_moved_names_live_in_one_module_each():
    """Training helpers live in p2p_lab.finetune and the fixed-seed baseline in p2p_lab.baseline (notebook
    04 calls them there); ldm keeps no second name for them, and ldm.attention_layers is the hook layer's."""
    from p2p_lab import unet_attention

    for name in ("train_briefly", "weights_fingerprint", "fixed_seed_baseline", "fixed_seed"):
        assert not hasattr(ldm, name), name
    assert callable(finetune.train_briefly) and callable(baseline.fixed_seed_baseline)
    assert ldm.attention_layers is unet_attention.attention_layers
