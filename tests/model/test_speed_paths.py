"""The fast code paths of the SAM core compute the same thing as the plain formulations.

Chunked relative-position attention, windowed attention with projections on real tokens
only, the shared-image-embedding decoder path and the channels-last mask upscaling are
each compared, in float64, with the straightforward computation (and the decoder with
Meta's), on tiny random configurations.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from grounded_sam.model.image_encoder import (
    Attention,
    rel_pos_attention,
    rel_pos_bias,
    window_partition,
    window_unpartition,
)
from grounded_sam.model.mask_decoder import MaskDecoder
from grounded_sam.model.transformer import Attention as TokenAttention
from grounded_sam.model.transformer import TwoWayTransformer
from grounded_sam.testing.sam_refs import perturb_

DT = torch.float64


def _plain_rel_pos_attention(q, k, v, rh, rw, size, scale):
    logits = (q * scale) @ k.transpose(-1, -2) + rel_pos_bias(q, rh, rw, size, size)
    return logits.softmax(-1) @ v


@pytest.mark.parametrize("max_elements", [None, 1, 6 * 7 * 42, 10**9])
def test_rel_pos_attention_chunking_is_exact(max_elements):
    """Every chunking (per head and row, rows only, none) equals the full-bias attention."""
    g = torch.Generator().manual_seed(0)
    b, nh, (h, w), hd = 2, 3, (6, 7), 8
    q, k, v = torch.randn(3, b, nh, h * w, hd, generator=g, dtype=DT).unbind(0)
    rh = torch.randn(2 * h - 1, hd, generator=g, dtype=DT)
    rw = torch.randn(2 * w - 1, hd, generator=g, dtype=DT)
    want = _plain_rel_pos_attention(q, k, v, rh, rw, (h, w), hd**-0.5)
    got = rel_pos_attention(q, k, v, rh, rw, (h, w), hd**-0.5, max_bias_elements=max_elements)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("qkv_bias", [True, False])
@pytest.mark.parametrize("grid", [(9, 11), (8, 8)])
def test_windowed_attention_matches_partition_path(qkv_bias, grid):
    """forward_windows == partition -> attention per window -> unpartition, padding included."""
    attn = Attention(dim=16, num_heads=2, qkv_bias=qkv_bias, use_rel_pos=True, input_size=(4, 4))
    perturb_(attn.to(DT), scale=0.3)
    x = torch.randn(2, *grid, 16, dtype=DT, generator=torch.Generator().manual_seed(1))
    windows, padded = window_partition(x, 4)
    want = window_unpartition(attn(windows), 4, padded, grid)
    torch.testing.assert_close(attn.forward_windows(x, 4), want, rtol=1e-10, atol=1e-10)


def test_token_attention_broadcasts_a_shared_side():
    """A batch of 1 on either side equals that side repeated for every prompt."""
    attn = perturb_(TokenAttention(16, 2, downsample_rate=2).to(DT), scale=0.3)
    g = torch.Generator().manual_seed(2)
    tokens = torch.randn(5, 3, 16, generator=g, dtype=DT)
    image = torch.randn(1, 20, 16, generator=g, dtype=DT)
    image_rep = image.expand(5, -1, -1).clone()
    torch.testing.assert_close(attn(tokens, image, image), attn(tokens, image_rep, image_rep))
    torch.testing.assert_close(attn(image, tokens, tokens), attn(image_rep, tokens, tokens))
    with pytest.raises(ValueError, match="k and v batches differ"):
        attn(tokens, image, image_rep)


def _tiny_decoder() -> MaskDecoder:
    transformer = TwoWayTransformer(depth=2, embedding_dim=32, num_heads=4, mlp_dim=64)
    decoder = MaskDecoder(transformer_dim=32, transformer=transformer, iou_head_hidden_dim=32)
    return perturb_(decoder.to(DT), scale=0.2).eval()


def _inputs(b: int, seed: int = 3):
    g = torch.Generator().manual_seed(seed)
    image = torch.randn(1, 32, 8, 8, generator=g, dtype=DT)
    pe = torch.randn(1, 32, 8, 8, generator=g, dtype=DT)
    sparse = torch.randn(b, 2, 32, generator=g, dtype=DT)
    no_mask = torch.randn(1, 32, 1, 1, generator=g, dtype=DT).expand(b, -1, 8, 8)
    return image, pe, sparse, no_mask


@pytest.mark.parametrize("multimask", [True, False])
def test_decoder_shared_embedding_path_equals_repeated_embeddings(multimask):
    """The broadcast no-mask path (image side shared) equals one embedding copy per prompt."""
    decoder = _tiny_decoder()
    image, pe, sparse, no_mask = _inputs(4)
    assert no_mask.stride(0) == 0  # the prompt encoder's expanded view: the shared path
    with torch.no_grad():
        masks, iou = decoder(image, pe, sparse, no_mask, multimask)
        masks_rep, iou_rep = decoder(
            image.expand(4, -1, -1, -1).clone(), pe, sparse, no_mask.clone(), multimask
        )
    assert masks.shape == (4, 3 if multimask else 1, 32, 32)
    torch.testing.assert_close(masks, masks_rep, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(iou, iou_rep, rtol=1e-9, atol=1e-9)


def test_channels_last_upscaling_equals_conv_transpose_modules():
    decoder = _tiny_decoder()
    g = torch.Generator().manual_seed(4)
    src = torch.randn(3, 8 * 8, 32, generator=g, dtype=DT)
    hyper_in = torch.randn(3, 2, 4, generator=g, dtype=DT)
    with torch.no_grad():
        upscaled = decoder.output_upscaling(src.transpose(1, 2).reshape(3, 32, 8, 8))
        want = (hyper_in @ upscaled.flatten(2)).reshape(3, 2, 32, 32)
        got = decoder._upscale_and_project(src, (8, 8), hyper_in)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("multimask", [True, False])
def test_tiny_decoder_matches_meta_with_many_prompts(multimask):
    """Our decoder (shared image side) vs Meta's (embedding repeated per prompt), float64."""
    from segment_anything.modeling import MaskDecoder as MetaDecoder
    from segment_anything.modeling import TwoWayTransformer as MetaTransformer

    ours = _tiny_decoder()
    meta = MetaDecoder(
        transformer_dim=32,
        transformer=MetaTransformer(depth=2, embedding_dim=32, num_heads=4, mlp_dim=64),
        iou_head_hidden_dim=32,
    ).to(DT)
    meta.load_state_dict(ours.state_dict())
    meta.eval()
    image, pe, sparse, no_mask = _inputs(6, seed=5)
    with torch.no_grad():
        masks, iou = ours(image, pe, sparse, no_mask, multimask)
        want_masks, want_iou = meta(image, pe, sparse, no_mask, multimask)
    torch.testing.assert_close(masks, want_masks, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(iou, want_iou, rtol=1e-9, atol=1e-9)


def test_sdpa_reference_for_plain_attention():
    """Guard for the helper above: the plain formulation equals SDPA with the bias as a mask."""
    g = torch.Generator().manual_seed(6)
    q, k, v = torch.randn(3, 1, 2, 12, 4, generator=g, dtype=DT).unbind(0)
    rh, rw = torch.randn(5, 4, generator=g, dtype=DT), torch.randn(7, 4, generator=g, dtype=DT)
    bias = rel_pos_bias(q, rh, rw, (3, 4), (3, 4))
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=0.5)
    torch.testing.assert_close(_plain_rel_pos_attention(q, k, v, rh, rw, (3, 4), 0.5), want)


@pytest.mark.parametrize("window_size", [0, 4])
def test_block_chunked_mlp_equals_plain_block(monkeypatch, window_size):
    """The CPU path runs residual + MLP in token chunks (last chunk partial): same result."""
    from grounded_sam.model.image_encoder import Block

    block = Block(
        dim=16,
        num_heads=2,
        mlp_ratio=2.0,
        qkv_bias=True,
        use_rel_pos=True,
        window_size=window_size,
        input_size=(9, 11),
    )
    perturb_(block.to(DT), scale=0.3)
    monkeypatch.setattr(Block, "_MLP_CHUNK", 7)  # 99 tokens: 14 full chunks and a partial one
    x = torch.randn(2, 9, 11, 16, dtype=DT, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        a = block.norm1(x)
        a = block.attn.forward_windows(a, window_size) if window_size else block.attn(a)
        y = x + a
        want = y + block.mlp(block.norm2(y))
        got = block(x)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
