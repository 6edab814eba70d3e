"""`python -m p2p_lab train`: a few real steps, resumable, deterministic, exports a pipeline."""
import json
import tempfile
from pathlib import Path

import numpy as np

import pytest
import torch
from safetensors.torch import load_file

from p2p_lab.__main__ import main as cli
from p2p_lab.train import TrainConfig, attention_loss

TINY = ["--n-scenes", "64", "--vae-steps", "2", "--vae-batch", "4", "--batch", "4", "--decoder-steps", "2",
        "--decoder-batch", "4",
        "--checkpoint-every", "2", "--export-every", "100", "--no-progress", "--warmup", "2"]


def run(tmp_path, name, steps):
    out = tmp_path / name
    assert cli(["train", "--out", str(out), "--export", str(out / "export"), "--steps", str(steps), *TINY]) == 0
    return out


def test_training_runs_exports_and_resumes_exactly(tmp_path):
    straight = run(tmp_path, "a", 4)
    run(tmp_path, "b", 2)
    (tmp_path / "b" / "export").rename(tmp_path / "b" / "export-2")
    resumed = run(tmp_path, "b", 4)  # picks up at step 2
    assert json.loads((resumed / "ldm" / "state.json").read_text())["step"] == 4
    wa = load_file(str(straight / "ldm" / "unet.safetensors"))
    wb = load_file(str(resumed / "ldm" / "unet.safetensors"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)

    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(str(straight / "export"), local_files_only=True)
    img = pipe("a red circle", num_inference_steps=2, output_type="np",
               generator=torch.Generator().manual_seed(0)).images
    assert img.shape == (1, 32, 32, 3)


def test_decoder_finetune_keeps_the_encoder_and_resumes_exactly(tmp_path):
    def train(name, decoder_steps):
        out = tmp_path / name
        args = ["train", "--out", str(out), "--export", str(out / "export"), "--steps", "2", *TINY]
        args[args.index("--decoder-steps") + 1] = str(decoder_steps)
        assert cli(args) == 0
        return out

    straight = train("a", 4)
    train("b", 2)
    resumed = train("b", 4)  # the VAE and UNet stages are done: only the decoder goes on, from step 2
    assert json.loads((resumed / "decoder" / "state.json").read_text())["step"] == 4
    vae_stage = load_file(str(straight / "vae" / "vae.safetensors"))
    shipped = load_file(str(straight / "export" / "vae" / "diffusion_pytorch_model.safetensors"))
    again = load_file(str(resumed / "export" / "vae" / "diffusion_pytorch_model.safetensors"))
    assert all(torch.equal(shipped[k], again[k]) for k in shipped)
    frozen = [k for k in shipped if k.startswith(("encoder.", "quant_conv."))]
    tuned = [k for k in shipped if k.startswith(("decoder.", "post_quant_conv."))]
    assert frozen and tuned and len(frozen) + len(tuned) == len(shipped)
    assert all(torch.equal(shipped[k], vae_stage[k]) for k in frozen)  # latents unchanged: the UNet stays valid
    assert not all(torch.equal(shipped[k], vae_stage[k]) for k in tuned)


def test_unknown_option_is_refused(capsys):
    with pytest.raises(SystemExit):
        cli(["train", "--stpes", "3"])
    assert "unrecognized arguments" in capsys.readouterr().err


def test_attention_loss_is_minimal_for_the_target_segmentation():
    """Hand-worked: 2 pixels (one inside), 4 tokens; object word = token 1, background = token 3."""
    groups = torch.zeros(1, 3, 4)
    groups[0, 0, 1] = 1.0
    bg = torch.tensor([[0.0, 0.0, 0.0, 1.0]])
    inside = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]])  # 2x2 "image": pixel 0 inside
    perfect = torch.zeros(1, 4, 4)
    perfect[0, 0, 1] = 1.0
    perfect[0, 1:, 3] = 1.0
    uniform = torch.full((1, 4, 4), 0.25)
    assert attention_loss([((2, 2), perfect)], inside, groups, bg) < 1e-3
    assert attention_loss([((2, 2), uniform)], inside, groups, bg) == pytest.approx(
        -torch.log(torch.tensor(0.25 + 1e-4)).item(), rel=1e-4)


def test_attention_capture_keeps_cross_attention_maps_with_gradients_and_restores_the_processors():
    from p2p_lab.model import ModelConfig, build_unet
    from p2p_lab.train import AttentionCapture
    from p2p_lab.unet_attention import hooked

    unet = build_unet(ModelConfig())
    before = {name: type(p) for name, p in unet.attn_processors.items()}
    capture = AttentionCapture((8, 8))
    z, ctx = torch.randn(2, 4, 8, 8), torch.randn(2, 16, 64)  # latents, prompt embeddings (b, L, D)
    with pytest.raises(RuntimeError), hooked(unet, capture):
        unet(z, 10, ctx)
        raise RuntimeError("training fails")
    assert {name: type(p) for name, p in unet.attn_processors.items()} == before
    grids = [grid for grid, _ in capture.maps]
    assert set(grids) == {(8, 8), (4, 4)}  # the two levels (the mid block at 4x4)
    for (rows, cols), p in capture.maps:
        assert p.shape == (2, rows * cols, 16) and p.requires_grad
        assert torch.allclose(p.sum(-1), torch.ones(2, rows * cols))
    sum(p.square().sum() for _, p in capture.maps).backward()
    assert unet.down_blocks[0].attentions[0].transformer_blocks[0].attn2.to_k.weight.grad is not None


def test_config_defaults_document_themselves():
    cfg = TrainConfig()
    assert cfg.caption_dropout > 0 and cfg.attn_loss_weight >= 0 and cfg.steps > cfg.warmup


def test_decoy_caption_swaps_the_object_words_and_keeps_the_token_layout():
    from p2p_lab import shapes
    from p2p_lab.tokenizer import build_tokenizer
    from p2p_lab.train import context_start, decoy_caption

    tok = build_tokenizer(Path(tempfile.mkdtemp()) / "bpe")
    rng = np.random.default_rng(0)
    for text in ["a red circle on a blue background", "a big turquoise square on a red background",
                 "a small green triangle", "a circle on a yellow background"]:
        for _ in range(10):
            d = decoy_caption(text, rng, tok)
            w, v = text.split(), d.split()
            n_obj = w.index("on") if "on" in w else len(w)
            assert w[n_obj:] == v[n_obj:]  # the context words stay
            assert v[n_obj - 1] in shapes.SHAPES and v[n_obj - 1] != w[n_obj - 1]  # another shape
            assert len(tok(d).input_ids) == len(tok(text).input_ids)
            if "on" in w:  # a colour never equals the background
                assert v[n_obj - 2] != w[-2]
    # position 0 is the start token; "turquoise" is two tokens
    assert context_start(tok, "a red circle on a blue background", 16) == 4
    assert context_start(tok, "a big turquoise square on a red background", 16) == 6
    assert context_start(tok, "a triangle", 16) == 3


def test_context_swap_changes_training(tmp_path):
    w = {}
    for swap in ("0", "1.0"):
        out = tmp_path / f"swap{swap}"
        assert cli(["train", "--out", str(out), "--export", str(out / "export"), "--steps", "2",
                    "--context-swap", swap, *TINY]) == 0
        w[swap] = load_file(str(out / "ldm" / "unet.safetensors"))
    assert not all(torch.equal(w["0"][k], w["1.0"][k]) for k in w["0"])
    assert TrainConfig().context_swap > 0  # the shipped model was trained with decoys


def test_word_decoys_encode_each_object_word_after_decoys_of_the_earlier_ones():
    """With word decoys, "red" in "a big red circle ..." is the embedding of "red" after another size,
    "circle" that of "circle" after another size and colour; everything else is the caption's own.
    Checked against the text encoder run on such hand-built captions (it is causal: a token's
    embedding depends only on the tokens up to it)."""
    from p2p_lab import shapes
    from p2p_lab.model import ModelConfig, build_text_encoder
    from p2p_lab.tokenizer import build_tokenizer
    from p2p_lab.train import encode_captions

    tok = build_tokenizer(Path(tempfile.mkdtemp()) / "bpe")
    enc = build_text_encoder(ModelConfig(), tok)
    texts = ["a big red circle on a blue background", "", "a square on a red background"]
    cond = encode_captions(tok, enc, texts, np.random.default_rng(0),
                           TrainConfig(context_swap=0.0, word_decoys=1.0), "cpu")

    def E(text):
        ids = tok([text], padding="max_length", max_length=16, return_tensors="pt").input_ids
        return enc(ids)[0][0]

    own = E(texts[0])
    assert torch.allclose(cond[0, :3], own[:3]) and torch.allclose(cond[0, 5:], own[5:])  # start, "a", "big"; the rest
    sizes = [s for s in shapes.SIZES if s != "big"]
    colours = [c for c in shapes.COLORS if c not in ("red", "blue") and len(tok(c, add_special_tokens=False).input_ids) == 1]
    red_after = [E(f"a {s} red circle on a blue background")[3] for s in sizes]
    circle_after = [E(f"a {s} {c} circle on a blue background")[4] for s in sizes for c in colours]
    assert any(torch.allclose(cond[0, 3], r, atol=1e-6) for r in red_after)
    assert any(torch.allclose(cond[0, 4], r, atol=1e-6) for r in circle_after)
    assert not torch.allclose(cond[0, 3], own[3]) and not torch.allclose(cond[0, 4], own[4])
    # a dropped caption and a caption with one object word are their own encodings
    assert torch.allclose(cond[1], E("")) and torch.allclose(cond[2], E(texts[2]))
    cond.sum().backward()  # the decoy encodings train the text encoder too
    assert enc.get_input_embeddings().weight.grad is not None
    # off (the shipped model's setting): the plain encoding
    plain = encode_captions(tok, enc, texts, np.random.default_rng(0), TrainConfig(context_swap=0.0), "cpu")
    assert torch.allclose(plain[0], own) and TrainConfig().word_decoys > 0  # on for the styles world


def test_init_from_starts_the_unet_stage_from_a_pipeline(tmp_path):
    src = run(tmp_path, "a", 2)
    out = tmp_path / "b"
    assert cli(["train", "--out", str(out), "--export", str(out / "export"), "--steps", "0",
                "--init-from", str(src / "export"), *TINY]) == 0
    a = load_file(str(src / "export" / "unet" / "diffusion_pytorch_model.safetensors"))
    b = load_file(str(out / "export" / "unet" / "diffusion_pytorch_model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)  # no steps: the exported weights are the start's
    va, vb = (load_file(str(d / "export" / "vae" / "diffusion_pytorch_model.safetensors")) for d in (src, out))
    assert all(torch.equal(va[k], vb[k]) for k in va)  # the pipeline's own autoencoder is kept


def test_caption_targets_name_the_style_words_as_object_and_background_words():
    import tempfile

    from p2p_lab import shapes
    from p2p_lab.tokenizer import build_tokenizer
    from p2p_lab.train import caption_targets

    tok = build_tokenizer(Path(tempfile.mkdtemp()) / "bpe")
    spec = shapes.ShapeSpec("circle", "red", "big", (9, 9), 7.0, "shaded", 0.6)
    scene = shapes.Scene((spec,), "blue", "spotted")
    cfg = TrainConfig(caption_dropout=0.0)
    for seed in range(20):  # the size and colour words are optional: find a caption with all of them
        text, groups, bg = caption_targets(tok, scene, np.random.default_rng(seed), cfg, 16)
        if text == "a big shaded red circle on a spotted blue background":
            break
    else:
        raise AssertionError("no full caption drawn")
    # positions, by hand: 0 start, 1 a, 2 big, 3 shaded, 4 red, 5 circle, 6 on, 7 a, 8 spotted, 9 blue
    assert [torch.nonzero(g).flatten().tolist() for g in groups] == [[2], [3], [4], [5]]
    assert torch.nonzero(bg).flatten().tolist() == [8, 9]


def test_a_foreign_or_finished_checkpoint_is_refused(tmp_path):
    from p2p_lab.model import ModelConfig
    from p2p_lab.train import check_resumable

    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text(json.dumps({"train": {**vars(TrainConfig()), "p_style": 0.0},
                                                 "model": vars(ModelConfig()) | {"unet_channels": [32, 64]}}))
    with pytest.raises(ValueError, match=r"train\.p_style: 0\.0 there, 0\.4 now.*new --out"):
        check_resumable(out, TrainConfig(), ModelConfig())
    (out / "config.json").write_text(json.dumps({"train": vars(TrainConfig()),
                                                 "model": vars(ModelConfig()) | {"unet_channels": [32, 64]}}))
    check_resumable(out, TrainConfig(threads=1), ModelConfig())  # same settings: resumes
    (out / "done.json").write_text("{}")
    with pytest.raises(ValueError, match="finished training run.*Raise --steps"):
        check_resumable(out, TrainConfig(), ModelConfig())
    check_resumable(out, TrainConfig(steps=TrainConfig().steps + 1000), ModelConfig())  # extends it



def test_a_run_from_before_a_setting_existed_resumes_at_its_default(tmp_path):
    from p2p_lab.model import ModelConfig
    from p2p_lab.train import check_resumable

    out = tmp_path / "run"
    out.mkdir()
    older = {k: v for k, v in vars(TrainConfig()).items() if k != "attn_region"}  # written before it existed
    (out / "config.json").write_text(json.dumps({"train": older, "model": vars(ModelConfig())}))
    check_resumable(out, TrainConfig(), ModelConfig())  # it ran on the object's own mask, the default
    with pytest.raises(ValueError, match=r"train\.attn_region: 'shape' there, 'box' now"):
        check_resumable(out, TrainConfig(attn_region="box"), ModelConfig())


def test_the_box_region_is_the_bounding_square_of_every_shape():
    """The attention loss's "box" region: a square of side 2r around the object's centre whatever its
    shape, area (2r)^2 in pixels; the "shape" region is the object itself (a circle: pi r^2; an upright
    triangle of height and base 2r: 2r^2)."""
    from p2p_lab import shapes
    from p2p_lab.train import render_dataset

    shape_data = render_dataset(200, 3, 0.4, 0.35)
    box_data = render_dataset(200, 3, 0.4, 0.35, region="box")
    assert np.array_equal(shape_data["images"], box_data["images"])  # the same scenes, other masks
    rng = np.random.default_rng(3)
    for i in range(200):  # render_dataset's own draws, repeated to learn each scene's centre and radius
        obj = shapes.sample_scene(rng, p_style=0.4, p_background_style=0.35).objects[0]
        (cy, cx), r = obj.center, obj.radius
        whole = r < min(cy, cx, 32 - cy, 32 - cx)  # the square lies inside the picture
        if whole:  # sampled at a quarter pixel: within a quarter pixel times the outline's length
            assert abs(box_data["masks"][i].sum() - (2 * r) ** 2) < 0.25 * 8 * r
            area, outline = {"circle": (np.pi * r ** 2, 2 * np.pi * r), "square": ((2 * r) ** 2, 8 * r),
                             "triangle": (2 * r ** 2, (2 + 2 * 5 ** 0.5) * r)}[obj.shape]
            assert abs(shape_data["masks"][i].sum() - area) < 0.25 * outline
    with pytest.raises(ValueError, match="unknown attention region 'disc'.*'shape'.*'box'"):
        render_dataset(2, 0, region="disc")
    with pytest.raises(SystemExit, match="unknown attention region 'disc'.*'shape'.*'box'"):
        cli(["train", "--attn-region", "disc", "--out", "unused", "--export", "unused"])

TINY_RUN = dict(n_scenes=64, vae_steps=2, vae_batch=4, batch=4, decoder_steps=2, decoder_batch=4, warmup=2, steps=2)


def test_a_recipe_is_its_runs_chained_by_hand_and_skips_finished_runs(tmp_path):
    from p2p_lab.train import run_recipe

    stages = (dict(TINY_RUN), dict(TINY_RUN, attn_loss_weight=0.01, seed=1))
    run_recipe(stages, tmp_path / "recipe", tmp_path / "recipe-export", progress=False, checkpoint_every=2,
               export_every=100)
    # the same two runs by hand: train, then fine-tune its pipeline with the second run's settings
    flags = lambda d: [x for k, v in d.items() for x in (f"--{k.replace('_', '-')}", str(v))]  # noqa: E731
    first, second = tmp_path / "a", tmp_path / "b"
    assert cli(["train", "--out", str(first), "--export", str(first / "export"), "--no-progress",
                *flags(stages[0])]) == 0
    assert cli(["train", "--out", str(second), "--export", str(second / "export"), "--no-progress",
                "--init-from", str(first / "export"), *flags(stages[1])]) == 0
    for part in ("unet/diffusion_pytorch_model", "text_encoder/model", "vae/diffusion_pytorch_model"):
        a = load_file(str(tmp_path / "recipe-export" / f"{part}.safetensors"))
        b = load_file(str(second / "export" / f"{part}.safetensors"))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), part
    # run again: both runs are finished and are the recipe's, so nothing trains and the export is kept
    stamp = (tmp_path / "recipe" / "run-1" / "done.json").stat().st_mtime_ns
    run_recipe(stages, tmp_path / "recipe", tmp_path / "recipe-export", progress=False)
    assert (tmp_path / "recipe" / "run-1" / "done.json").stat().st_mtime_ns == stamp
    # a finished run trained otherwise is refused, naming the setting
    with pytest.raises(ValueError, match=r"run-1 holds a finished run with other settings.*seed: 1 there, 2 now"):
        run_recipe((stages[0], dict(stages[1], seed=2)), tmp_path / "recipe", tmp_path / "x", progress=False)
    with pytest.raises(ValueError, match=r"only \[.*threads.*\] may be set beside it \(got \['lr'\]\)"):
        run_recipe(stages, tmp_path / "recipe", tmp_path / "x", lr=1.0)


def test_the_recipe_flag_refuses_training_settings_and_unknown_names(tmp_path):
    with pytest.raises(SystemExit, match="unknown recipe 'tiny'; the recipes are \\['shipped'\\]"):
        cli(["train", "--recipe", "tiny", "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="sets every training setting itself; drop --steps"):
        cli(["train", "--recipe", "shipped", "--steps", "5", "--out", str(tmp_path)])
    from p2p_lab.train import RECIPES, TrainConfig
    for settings in RECIPES["shipped"]:
        TrainConfig(**settings)  # every run of the shipped recipe names real settings
