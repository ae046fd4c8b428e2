"""Reference SAM models (Meta's segment_anything, ultralytics' TinyViT) with perturbed weights.

Shared by the parity tests of the SAM core, the automatic mask generator and the benchmarks.
Every parameter and buffer gets noise, zero-initialised ones (pos_embed, rel_pos) included,
so no code path hides behind zeros; BatchNorm variances stay positive.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch import nn

PIXEL_MEAN = [123.675, 116.28, 103.53]
PIXEL_STD = [58.395, 57.12, 57.375]

# A small ViT that keeps SAM's 1024 input / 64x64 embedding: fast tests of the whole path.
TINY_VIT_CFG = dict(
    img_size=1024,
    patch_size=16,
    embed_dim=64,
    depth=2,
    num_heads=2,
    mlp_ratio=4.0,
    out_chans=256,
    qkv_bias=True,
    use_rel_pos=True,
    window_size=14,
    global_attn_indexes=(1,),
)


@torch.no_grad()
def perturb_(model: nn.Module, scale: float = 0.05, seed: int = 0) -> nn.Module:
    """Add N(0, scale) noise to every floating parameter and buffer a checkpoint carries, in place.

    Non-persistent buffers (Meta's ``pixel_mean``/``pixel_std``) are constants of the
    architecture, not weights: perturbing them would make the reference normalise images
    differently from any model loaded from the saved checkpoint.
    """
    g = torch.Generator().manual_seed(seed)
    saved = set(model.state_dict())
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        if not t.is_floating_point() or name not in saved:
            continue
        t.add_(torch.randn(t.shape, generator=g, dtype=t.dtype) * scale)
        if name.endswith("running_var"):
            t.abs_().add_(1e-2)
    return model


def _meta_prompt_and_decoder():
    from segment_anything.modeling import MaskDecoder, PromptEncoder, TwoWayTransformer

    prompt = PromptEncoder(
        embed_dim=256,
        image_embedding_size=(64, 64),
        input_image_size=(1024, 1024),
        mask_in_chans=16,
    )
    decoder = MaskDecoder(
        num_multimask_outputs=3,
        transformer=TwoWayTransformer(depth=2, embedding_dim=256, mlp_dim=2048, num_heads=8),
        transformer_dim=256,
        iou_head_depth=3,
        iou_head_hidden_dim=256,
    )
    return prompt, decoder


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """The reference constructors draw their base initialisation from torch's global RNG: seed
    it (and restore the caller's RNG state after) so the same ``seed`` gives the same weights in
    every process."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def meta_sam(image_encoder: nn.Module, seed: int = 0) -> nn.Module:
    """Meta's ``Sam`` around ``image_encoder`` with SAM's prompt encoder/decoder, perturbed, eval."""
    from segment_anything.modeling import Sam

    with _seeded(seed + 1):
        prompt, decoder = _meta_prompt_and_decoder()
    model = Sam(
        image_encoder=image_encoder,
        prompt_encoder=prompt,
        mask_decoder=decoder,
        pixel_mean=PIXEL_MEAN,
        pixel_std=PIXEL_STD,
    )
    return perturb_(model, seed=seed).eval()


def meta_tiny_vit_sam(seed: int = 0) -> nn.Module:
    from segment_anything.modeling import ImageEncoderViT

    with _seeded(seed):
        enc = ImageEncoderViT(norm_layer=partial(nn.LayerNorm, eps=1e-6), **TINY_VIT_CFG)
    return meta_sam(enc, seed)


def meta_vit_b(seed: int = 0) -> nn.Module:
    from segment_anything import sam_model_registry

    with _seeded(seed):
        model = sam_model_registry["vit_b"]()
    return perturb_(model, seed=seed).eval()


def meta_mobile_sam(seed: int = 0) -> nn.Module:
    """Meta's Sam wrapper with ultralytics' TinyViT: the MobileSAM reference (mobile_sam.pt keys)."""
    from grounded_sam.detectors.yolo_clip import _import_ultralytics

    _import_ultralytics()  # first, so its OMP_NUM_THREADS=1 does not stay in the environment
    from ultralytics.models.sam.build import build_mobile_sam

    with _seeded(seed):
        encoder = build_mobile_sam().image_encoder
    return meta_sam(encoder, seed)


def ours_tiny_vit_sam(state_dict: dict) -> nn.Module:
    from grounded_sam.model.image_encoder import ImageEncoderViT
    from grounded_sam.model.zoo import _sam

    model = _sam(ImageEncoderViT(**TINY_VIT_CFG), "tiny_vit_test")
    model.load_state_dict(state_dict, strict=True)
    return model.eval()


def meta_modules_in_ours(meta: nn.Module) -> nn.Module:
    """Our ``Sam`` wrapper around Meta's own encoder, prompt encoder and decoder modules.

    Meta's modules have the call signatures ours have, so our predictor and automatic
    generator can drive Meta's model: differences then come from our driver code alone.
    """
    from grounded_sam.model.sam import Sam

    return Sam(
        image_encoder=meta.image_encoder,
        prompt_encoder=meta.prompt_encoder,
        mask_decoder=meta.mask_decoder,
        name="meta",
    ).eval()


def save_checkpoint(model: nn.Module, path: Path) -> Path:
    """Save ``model.state_dict()`` the way the official checkpoints are (a plain state dict)."""
    torch.save(model.state_dict(), path)
    return path


def rel_diff(a, b) -> float:
    """max |a - b| / max |a|."""
    a = torch.as_tensor(np.asarray(a) if not isinstance(a, torch.Tensor) else a).double()
    b = torch.as_tensor(np.asarray(b) if not isinstance(b, torch.Tensor) else b).double()
    return float((a - b).abs().max() / a.abs().max().clamp_min(1e-12))
