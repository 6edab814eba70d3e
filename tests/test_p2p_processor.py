"""The P2P attention processor against diffusers' default AttnProcessor2_0 (issue 6)."""
import pytest
import torch
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

from p2p_lab.p2p import AttentionStore, attention_layers
from p2p_lab.p2p.controls import StoreControl
from p2p_lab.unet_attention import AttentionHook, LayerInfo, hooked


pytestmark = pytest.mark.usefixtures("one_torch_thread")


class Idle:
    n_uncond = 0

    def __init__(self, latent_hw):
        self.latent_hw = latent_hw

    def wants(self, layer):
        return False


def _unet_call(pipe, seed=0, batch=2):
    unet = pipe.unet
    g = torch.Generator().manual_seed(seed)
    s = unet.config.sample_size
    x = torch.randn(batch, 4, s, s, generator=g)
    ctx = torch.randn(batch, pipe.tokenizer.model_max_length, unet.config.cross_attention_dim, generator=g)
    with torch.no_grad():
        return unet(x, 500, encoder_hidden_states=ctx).sample, (s, s)


@pytest.mark.parametrize("name", ["sd_like_pipe", "shipped_pipe"])
def test_idle_and_explicit_equal_default_processor(name, request):
    pipe = request.getfixturevalue(name)
    assert all(isinstance(p, AttnProcessor2_0) for p in pipe.unet.attn_processors.values())
    ref, hw = _unet_call(pipe)
    with hooked(pipe.unet, Idle(hw)):
        idle, _ = _unet_call(pipe)
    store = AttentionStore(kinds=("cross", "self"))
    ctrl = StoreControl(store, hw, n_uncond=1)  # row 0 fused, row 1 explicit
    with hooked(pipe.unet, ctrl):
        explicit, _ = _unet_call(pipe)
    assert torch.allclose(idle, ref, atol=1e-5)
    assert (explicit - ref).abs().max() <= 1e-5
    assert len(store.layers) == len(pipe.unet.attn_processors)
    # restored: plain calls use diffusers' processors again
    assert all(isinstance(p, AttnProcessor2_0) for p in pipe.unet.attn_processors.values())


def test_processors_restored_on_error(shipped_pipe):
    class Boom(Idle):
        def wants(self, layer):
            return True

        def attention(self, layer, q, k, v, mask):
            raise RuntimeError("boom")

    before = shipped_pipe.unet.attn_processors
    with pytest.raises(RuntimeError, match="boom"):
        with hooked(shipped_pipe.unet, Boom((8, 8))):
            _unet_call(shipped_pipe)
    after = shipped_pipe.unet.attn_processors
    assert all(after[k] is before[k] for k in before)


def test_layer_knowledge_matches_sd_v1_topology(sd_like_pipe):
    layers = attention_layers(sd_like_pipe)  # latent 16: SD's 64, 32, 16, 8 maps scaled by 1/4
    cross = [l for l in layers if l.is_cross]
    # SD v1: 16 transformer blocks; cross-attention at 64, 32, 16 (down, 2 each), 8 (mid), 16, 32, 64 (up, 3 each)
    assert len(cross) == 16 and len(layers) == 32
    res = [l.res for l in cross]
    assert res == [16, 16, 8, 8, 4, 4, 2, 4, 4, 4, 8, 8, 8, 16, 16, 16]
    # a non-square latent: each side halves (rounding up) per level, read from the hidden-state length
    grids = [l.resolution for l in attention_layers(sd_like_pipe, (16, 12)) if l.is_cross]
    assert grids[:7] == [(16, 12), (16, 12), (8, 6), (8, 6), (4, 3), (4, 3), (2, 2)]
    assert [l.place for l in cross].count("mid") == 1
    assert all(l.heads == 8 for l in layers)
    assert cross[0].name == "down_blocks.0.attentions.0.transformer_blocks.0.attn2"


def test_float_softmax_under_low_precision():
    """bfloat16 / float16 activations: the explicit probabilities are float32 and sum to one."""
    torch.manual_seed(0)
    attn = Attention(query_dim=32, cross_attention_dim=24, heads=4, dim_head=8)
    x, ctx = torch.randn(2, 16, 32), torch.randn(2, 7, 24)
    ref = attn(x, ctx)

    for dtype in (torch.bfloat16, torch.float16):
        low = Attention(query_dim=32, cross_attention_dim=24, heads=4, dim_head=8)
        low.load_state_dict(attn.state_dict())
        low = low.to(dtype)
        store = AttentionStore()
        low.set_processor(AttentionHook(LayerInfo("t", "down", 4, True), StoreControl(store, (4, 4), 0)))
        out = low(x.to(dtype), ctx.to(dtype))
        probs = store.sums[("t", 0)]
        assert out.dtype == dtype and probs.dtype == torch.float32
        assert torch.allclose(probs.sum(-1), torch.ones(()), atol=1e-6)
        assert (out.float() - ref).abs().max() < 0.05
