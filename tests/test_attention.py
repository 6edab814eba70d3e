"""p2p_lab.attention against torch's and diffusers' own attention, and hand-worked examples."""
import math

import pytest
import torch
import torch.nn.functional as F

from p2p_lab import attention as att


def _randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_hand_worked_example():
    q = torch.tensor([[2.0, 0.0]])
    k = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    v = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    e = [math.exp(2 / math.sqrt(2)), 1.0, math.exp(-2 / math.sqrt(2))]
    a = [x / sum(e) for x in e]
    out, w = att.scaled_dot_product_attention(q, k, v)
    assert w[0].tolist() == pytest.approx(a, abs=1e-6)
    assert out[0].tolist() == pytest.approx([a[0] + a[2], a[1] + a[2]], abs=1e-6)


@pytest.mark.parametrize("shape", [(5, 7, 8, 3), (2, 4, 6, 1, 16, 16), (3, 2, 9, 5, 4, 2)])
def test_matches_torch_sdpa(shape):
    *batch, n, m, d_k, d_v = shape
    q, k, v = _randn(*batch, n, d_k, seed=1), _randn(*batch, m, d_k, seed=2), _randn(*batch, m, d_v, seed=3)
    out, w = att.scaled_dot_product_attention(q, k, v)
    assert out.shape == (*batch, n, d_v) and w.shape == (*batch, n, m)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(w.sum(-1), torch.ones(*batch, n))


def test_mask_matches_torch():
    q, k, v = _randn(2, 5, 8, seed=1), _randn(2, 6, 8, seed=2), _randn(2, 6, 3, seed=3)
    mask = torch.rand(5, 6, generator=torch.Generator().manual_seed(4)) > 0.4
    mask[:, 0] = True
    out, w = att.scaled_dot_product_attention(q, k, v, mask)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, attn_mask=mask), atol=1e-5, rtol=1e-5)
    assert (w[:, ~mask] == 0).all()


def test_misuse_errors():
    q, k, v = _randn(3, 4), _randn(5, 4), _randn(5, 2)
    with pytest.raises(ValueError, match="same width"):
        att.scaled_dot_product_attention(q, _randn(5, 3), v)
    with pytest.raises(ValueError, match="pairs"):
        att.scaled_dot_product_attention(q, k, _randn(4, 2))
    with pytest.raises(TypeError, match="boolean"):
        att.scaled_dot_product_attention(q, k, v, torch.ones(3, 5))
    with pytest.raises(ValueError, match="attend to nothing"):
        att.scaled_dot_product_attention(q, k, v, torch.zeros(3, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="broadcast"):
        att.scaled_dot_product_attention(q, k, v, torch.ones(4, 4, dtype=torch.bool))
    with pytest.raises(TypeError, match="torch.Tensor"):
        att.scaled_dot_product_attention(q.tolist(), k, v)
    with pytest.raises(ValueError, match="multiple of the number of heads"):
        att.split_heads(_randn(2, 6), 4)
    with pytest.raises(ValueError, match="w_k must have shape"):
        att.cross_attention(_randn(4, 6), _randn(3, 5), _randn(6, 4), _randn(6, 4), _randn(5, 2))


def test_cross_attention_shapes_and_value():
    y, x = _randn(4, 6, seed=1), _randn(3, 5, seed=2)
    w_q, w_k, w_v = _randn(6, 8, seed=3), _randn(5, 8, seed=4), _randn(5, 2, seed=5)
    out, w = att.cross_attention(y, x, w_q, w_k, w_v)
    assert w.shape == (4, 3) and out.shape == (4, 2)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(y @ w_q, x @ w_k, x @ w_v))


def test_split_merge_heads_round_trip():
    x = _randn(2, 5, 12)
    h = att.split_heads(x, 3)
    assert h.shape == (2, 3, 5, 4)
    torch.testing.assert_close(h[:, 1], x[..., 4:8])  # head 1 is the second slice of the width
    torch.testing.assert_close(att.merge_heads(h), x)


@pytest.mark.parametrize("cross", [False, True])
def test_multi_head_matches_torch_module(cross):
    d, heads, d_ctx = 12, 3, (7 if cross else 12)
    x, ctx = _randn(2, 5, d, seed=1), _randn(2, 4, d_ctx, seed=2)
    w_q, w_k, w_v, w_o = (_randn(a, d, seed=s) / 3 for s, a in ((3, d), (4, d_ctx), (5, d_ctx), (6, d)))
    mha = torch.nn.MultiheadAttention(d, heads, bias=False, batch_first=True,
                                      kdim=d_ctx if cross else None, vdim=d_ctx if cross else None)
    with torch.no_grad():
        if cross:
            mha.q_proj_weight.copy_(w_q.T)
            mha.k_proj_weight.copy_(w_k.T)
            mha.v_proj_weight.copy_(w_v.T)
        else:
            mha.in_proj_weight.copy_(torch.cat([w_q.T, w_k.T, w_v.T]))
        mha.out_proj.weight.copy_(w_o.T)
        source = ctx if cross else x
        want, want_w = mha(x, source, source, average_attn_weights=False)
    out, w = att.multi_head_attention(x, w_q, w_k, w_v, w_o, heads, context=ctx if cross else None)
    torch.testing.assert_close(out, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(w, want_w, atol=1e-6, rtol=1e-5)


def test_token_maps_reads_columns_row_major():
    heads, h, w, t = 2, 2, 3, 4
    probs = torch.zeros(heads, h * w, t)
    for p in range(h * w):  # pixel p attends to token p % t (head 0) and token 0 (head 1)
        probs[0, p, p % t] = 1.0
        probs[1, p, 0] = 1.0
    maps = att.token_maps(probs, h, w)
    assert maps.shape == (t, h, w)
    for p in range(h * w):
        row, col = divmod(p, w)
        expected = [0.5 * (j == p % t) + 0.5 * (j == 0) for j in range(t)]
        assert maps[:, row, col].tolist() == pytest.approx(expected)
    with pytest.raises(ValueError, match="pick one batch element"):
        att.token_maps(probs[None], h, w)


def test_recording_control_matches_diffusers():
    from diffusers.models.attention_processor import Attention, AttnProcessor

    from p2p_lab.unet_attention import AttentionHook, LayerInfo

    torch.manual_seed(0)
    layer = Attention(query_dim=16, cross_attention_dim=10, heads=4, dim_head=4).eval()
    x, ctx = torch.randn(2, 6, 16), torch.randn(2, 5, 10)
    recorder = att._LayerRecorder("t", (2, 3))  # 6 queries: a 2 x 3 latent
    layer.set_processor(AttentionHook(LayerInfo("t", "down", 4, True), recorder))
    out = layer(x, encoder_hidden_states=ctx)
    layer.set_processor(AttnProcessor())
    torch.testing.assert_close(out, layer(x, encoder_hidden_states=ctx))  # output unchanged
    q, k = layer.head_to_batch_dim(layer.to_q(x)), layer.head_to_batch_dim(layer.to_k(ctx))
    want = layer.get_attention_scores(q, k).reshape(2, 4, 6, 5)  # diffusers' own probabilities
    torch.testing.assert_close(recorder.probs[0], want.detach(), atol=1e-6, rtol=1e-5)
    assert recorder.size == (2, 3)


def test_record_cross_attention_on_shipped_model(shipped_pipe):
    unet = shipped_pipe.unet
    before = dict(unet.attn_processors)
    layers = att.cross_attention_layers(unet)
    assert len(layers) == 7 and all(name.endswith("attn2") for name in layers)
    rec = att.record_cross_attention(shipped_pipe, "a red circle", layers[1], num_inference_steps=2)
    assert rec.probs.shape == (2, 2, 4, 16, shipped_pipe.tokenizer.model_max_length)  # 4x4 layer
    assert rec.size == (4, 4)
    torch.testing.assert_close(rec.probs.sum(-1), torch.ones(rec.probs.shape[:-1]))
    assert rec.tokens[:4] == ["<|startoftext|>", "a</w>", "red</w>", "circle</w>"]
    assert rec.maps(step=0).shape == (16, 4, 4)
    after = unet.attn_processors
    assert all(after[k] is before[k] for k in before)
    with pytest.raises(ValueError, match="not a cross-attention layer"):
        att.record_cross_attention(shipped_pipe, "a red circle", "mid_block.attn1")
    with pytest.raises(Exception):
        att.record_cross_attention(shipped_pipe, "a red circle", num_inference_steps=0)
    after = unet.attn_processors
    assert all(after[k] is before[k] for k in before)  # restored after an error too


def test_plots_label_both_axes():
    import matplotlib

    matplotlib.use("Agg")
    from p2p_lab.viz import clean_token, plot_attention, plot_attention_heads, plot_token_maps

    w = torch.softmax(_randn(4, 3), -1)
    fig = plot_attention(w, ["I", "am", "running", "late"], ["estoy", "llegando", "tarde"])
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["I", "am", "running", "late"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["estoy", "llegando", "tarde"]
    with pytest.raises(ValueError, match="labels"):
        plot_attention(w, ["only", "three", "labels"], None)
    fig = plot_attention_heads(torch.softmax(_randn(2, 3, 3), -1))
    assert [a.get_title() for a in fig.axes if a.get_title()] == ["head 0", "head 1"]  # and one colour bar
    assert len(fig.axes) == 3
    tokens = ["<|startoftext|>", "a</w>", "red</w>", "<|endoftext|>", "<|endoftext|>"]
    fig = plot_token_maps(torch.rand(5, 4, 4), tokens, image=torch.rand(16, 16, 3).numpy())
    assert [a.get_title().split("\n")[0] for a in fig.axes] == ["image", "<sot>", "a", "red", "<eot>"]
    assert clean_token("turquois") == "turquois"
