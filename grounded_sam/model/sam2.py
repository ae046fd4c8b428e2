"""SAM 2.1's image path: ``Sam2`` (Hiera encoder + SAM 2 prompt encoder / mask decoder),
its four variants, and the loader of Meta's ``sam2.1_hiera_*.pt`` checkpoints.

Only the single-image path of SAM 2 lives here; the video modules (memory attention, memory
encoder, object pointers) are not built, and :func:`image_state_dict` checks that what a
checkpoint carries beyond the image path is exactly those modules.

What differs from SAM 1 (:class:`~grounded_sam.model.sam.Sam`), all inside this model class:

- preprocessing: the image is resized to a 1024x1024 square (no letterbox, aspect ratio not
  kept) with ImageNet normalisation of 0..1 values; coordinates scale by ``1024 / W`` and
  ``1024 / H``; masks are upsampled straight from 256x256 to the image size;
- the encoder also returns two high-resolution feature maps (strides 4 and 8, already
  projected by the decoder's ``conv_s0`` / ``conv_s1``), which the decoder adds into its
  upscaling path; the image embedding has ``no_mem_embed`` added;
- the decoder has an object-score token that takes part in attention, a sigmoid on the IoU
  head, and optionally the "dynamic multimask via stability" fallback for single-mask output;
- boxes are given to the prompt encoder as two corner points (labels 2 and 3) placed before
  the points, and a padding point is always appended; logits are clamped to (-32, 32).

Parameter names match Meta's checkpoints: ``image_encoder.*``, ``sam_prompt_encoder.*``,
``sam_mask_decoder.*`` and ``no_mem_embed`` (``Sam2.prompt_encoder`` / ``.mask_decoder`` are
aliases of the ``sam_*`` modules).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from grounded_sam.errors import InputError, WeightsError
from grounded_sam.model._fused import gelu_
from grounded_sam.model.common import MLP
from grounded_sam.model.hiera import FpnNeck, Hiera, HieraImageEncoder, Mlp, add_nearest_2x_
from grounded_sam.model.mask_decoder import MaskDecoder
from grounded_sam.model.memo import memoized
from grounded_sam.model.precision import autocast
from grounded_sam.model.prompt_encoder import PromptEncoder
from grounded_sam.model.sam import SamBase
from grounded_sam.model.transformer import Attention, TwoWayTransformer

__all__ = [
    "MEMORY_KEYS",
    "SAM2_CONFIGS",
    "TEST_CONFIG",
    "ManyToFewAttention",
    "Sam2",
    "Sam2Config",
    "Sam2MaskDecoder",
    "Sam2PromptEncoder",
    "Sam2TwoWayTransformer",
    "build_sam2",
    "build_sam2_model",
    "expected_image_shapes",
    "image_state_dict",
    "list_sam2_models",
    "load_sam2_checkpoint",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_SIZE = 1024
EMBED_DIM = 256
LOGIT_LIMIT = 32.0  # Meta's SAM2ImagePredictor clamps low-res logits to (-32, 32)


# --------------------------------------------------------------------------- configs
@dataclass(frozen=True)
class Sam2Config:
    """A Hiera trunk configuration (the ``trunk`` block of Meta's ``sam2.1_hiera_*.yaml``)."""

    embed_dim: int
    num_heads: int
    stages: tuple[int, ...]
    global_att_blocks: tuple[int, ...]
    window_pos_embed_bkg_spatial_size: tuple[int, int]
    window_spec: tuple[int, ...] = (8, 4, 14, 7)
    description: str = ""

    @property
    def channel_list(self) -> list[int]:
        """Stage widths, lowest resolution first (the neck's ``backbone_channel_list``)."""
        return [self.embed_dim * 2**i for i in reversed(range(len(self.stages)))]


SAM2_CONFIGS: dict[str, Sam2Config] = {
    "sam2.1_hiera_tiny": Sam2Config(
        96, 1, (1, 2, 7, 2), (5, 7, 9), (7, 7), description="SAM 2.1 Hiera-T (27M encoder)"
    ),
    "sam2.1_hiera_small": Sam2Config(
        96, 1, (1, 2, 11, 2), (7, 10, 13), (7, 7), description="SAM 2.1 Hiera-S (34M encoder)"
    ),
    "sam2.1_hiera_base_plus": Sam2Config(
        112, 2, (2, 3, 16, 3), (12, 16, 20), (14, 14), description="SAM 2.1 Hiera-B+ (69M encoder)"
    ),
    "sam2.1_hiera_large": Sam2Config(
        144,
        2,
        (2, 6, 36, 4),
        (23, 33, 43),
        (7, 7),
        (8, 4, 16, 8),
        description="SAM 2.1 Hiera-L (213M encoder)",
    ),
}

# A reduced Hiera (every code path of the full ones: windowed and global attention, padded
# windows, Q-pooling at each stage change, both window embeddings) at the real 1024 input,
# for fast tests. Not registered; build it with ``build_sam2_model(TEST_CONFIG)``.
TEST_CONFIG = Sam2Config(8, 1, (1, 2, 3, 1), (4,), (7, 7), description="test-only Hiera")


def list_sam2_models() -> list[str]:
    """The registered SAM 2.1 variants (the stems of Meta's checkpoint files)."""
    return sorted(SAM2_CONFIGS)


# --------------------------------------------------------------------------- modules
class Sam2PromptEncoder(PromptEncoder):
    """SAM 1's prompt encoder, also embedding points labelled 2 / 3 (box top-left /
    bottom-right corners, SAM 2's way of passing boxes)."""

    def _embed_points(self, points: torch.Tensor, labels: torch.Tensor, pad: bool) -> torch.Tensor:
        emb = super()._embed_points(points, labels, pad)
        if pad:
            labels = torch.cat([labels, -labels.new_ones(labels.shape[0], 1)], dim=1)
        labels = labels[..., None]
        emb = emb + (labels == 2) * self.point_embeddings[2].weight
        return emb + (labels == 3) * self.point_embeddings[3].weight


class ManyToFewAttention(Attention):
    """SAM's decoder attention (same parameters and results) for many queries attending to
    few keys: the image tokens (4096) attending to the prompt tokens (under ten).

    PyTorch's fused CPU attention is slow for that shape (about 3 ms for 8 heads of 4096 x 9),
    and per-head batched products are slower still. Here all heads go through one matrix
    product each way, against block-diagonal keys and values: the scores of head ``h`` are
    ``q_h . k_h`` as before (the other heads' blocks contribute exact zeros), and the output
    comes out already as (tokens, heads * head_dim) for the output projection.
    """

    MAX_KEYS = 64  # beyond this, the fused kernel

    def forward(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, projected: dict | None = None
    ) -> torch.Tensor:
        """(Bq, Nq, C) queries, (Bk, Nk, C) keys/values -> (max(Bq, Bk), Nq, C); a batch of 1 on
        either side is shared by the other's. ``projected`` as in ``Attention.forward``."""
        nk = k.shape[1]
        if torch.is_grad_enabled() or nk > self.MAX_KEYS or v.shape[0] != k.shape[0]:
            return super().forward(q, k, v, projected)
        nh, d = self.num_heads, self.internal_dim
        hd = d // nh
        bk = k.shape[0]
        qp = self.project("q", q, projected)  # (Bq, Nq, d)
        kp = self.project("k", k, projected).view(bk, nk, nh, hd)
        vp = self.project("v", v, projected).view(bk, nk, nh, hd)
        eye = torch.eye(nh, dtype=kp.dtype, device=kp.device)
        # keys: (Bk, nh * nk, d), row (h, j) holds k_j of head h in head h's columns, zeros
        # elsewhere; the scores come out transposed, (B, nh * nk, Nq), so the softmax over
        # the few keys runs along a non-innermost axis (vectorised over the many queries;
        # along a last axis of ~9 it is 40x slower)
        kb = kp.permute(0, 2, 1, 3)[:, :, :, None, :] * eye.view(1, nh, 1, nh, 1)
        scores = torch.matmul(kb.reshape(bk, nh * nk, d), qp.transpose(1, 2))
        b, _, nq = scores.shape
        probs = torch.softmax(scores.view(b, nh, nk, nq).mul_(hd**-0.5), dim=2)
        vb = vp.permute(0, 2, 1, 3)[:, :, :, None, :] * eye.view(1, nh, 1, nh, 1)
        out = torch.matmul(probs.view(b, nh * nk, nq).transpose(1, 2), vb.reshape(bk, nh * nk, d))
        return self.out_proj(out)


class Sam2TwoWayTransformer(TwoWayTransformer):
    """SAM 1's two-way transformer; SAM 2 names its MLP layers ``mlp.layers.0/1``."""

    def __init__(
        self, *, depth: int = 2, embedding_dim: int = 256, num_heads: int = 8, mlp_dim: int = 2048
    ) -> None:
        super().__init__(
            depth=depth, embedding_dim=embedding_dim, num_heads=num_heads, mlp_dim=mlp_dim
        )
        for layer in self.layers:
            layer.mlp = Mlp(embedding_dim, mlp_dim, act=nn.ReLU)
            # the image tokens attend to the prompt tokens
            layer.cross_attn_image_to_token = ManyToFewAttention(
                embedding_dim, num_heads, downsample_rate=2
            )


class Sam2MaskDecoder(MaskDecoder):
    """SAM 2's mask decoder.

    Beyond SAM 1's: an object-score token placed before the IoU token (it attends with the
    others; its head ``pred_obj_score_head`` is kept for the checkpoint but the image path
    does not use its output), a sigmoid on the IoU head, ``conv_s0`` / ``conv_s1`` projecting
    the stride-4 / stride-8 encoder features (applied once per image, by ``Sam2.encode``), and
    those features added after each transposed convolution of the upscaling path.

    ``dynamic_multimask_via_stability``: for single-mask output, when the single-mask token's
    low-res logits are unstable (area above +delta over area above -delta below ``thresh``),
    return the multimask output with the highest predicted IoU instead (Meta's fallback).
    """

    def __init__(
        self,
        *,
        transformer_dim: int = EMBED_DIM,
        transformer: nn.Module,
        num_multimask_outputs: int = 3,
        iou_head_depth: int = 3,
        iou_head_hidden_dim: int = 256,
        dynamic_multimask_via_stability: bool = True,
        dynamic_multimask_stability_delta: float = 0.05,
        dynamic_multimask_stability_thresh: float = 0.98,
    ) -> None:
        super().__init__(
            transformer_dim=transformer_dim,
            transformer=transformer,
            num_multimask_outputs=num_multimask_outputs,
            iou_head_depth=iou_head_depth,
            iou_head_hidden_dim=iou_head_hidden_dim,
        )
        d = transformer_dim
        self.iou_prediction_head = MLP(
            d, iou_head_hidden_dim, self.num_mask_tokens, iou_head_depth, sigmoid_output=True
        )
        self.obj_score_token = nn.Embedding(1, d)
        self.conv_s0 = nn.Conv2d(d, d // 8, kernel_size=1)
        self.conv_s1 = nn.Conv2d(d, d // 4, kernel_size=1)
        self.pred_obj_score_head = MLP(d, d, 1, 3)
        self.dynamic_multimask_via_stability = dynamic_multimask_via_stability
        self.dynamic_multimask_stability_delta = dynamic_multimask_stability_delta
        self.dynamic_multimask_stability_thresh = dynamic_multimask_stability_thresh

    def forward(  # type: ignore[override]
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        multimask_output: bool,
        high_res_features: tuple[torch.Tensor, torch.Tensor],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Predict masks for a batch of prompts on one image.

        Args:
            image_embeddings: (1 or B, C, 64, 64), ``no_mem_embed`` included; a batch of 1 is
                shared by all prompts (never copied).
            image_pe: (1, C, 64, 64).
            sparse_prompt_embeddings: (B, N, C); dense_prompt_embeddings: (B, C, 64, 64).
            high_res_features: ``(feat_s0 (1 or B, C/8, 256, 256), feat_s1 (1 or B, C/4, 128,
                128))``, after ``conv_s0`` / ``conv_s1``.
        Returns:
            low-res logits (B, 3 or 1, 256, 256) (not clamped) and IoU predictions (B, 3 or 1).
        """
        b = sparse_prompt_embeddings.shape[0]
        tokens = torch.cat(
            [self.obj_score_token.weight, self.iou_token.weight, self.mask_tokens.weight]
        )
        tokens = torch.cat(
            [
                tokens.unsqueeze(0).expand(b, -1, -1),
                sparse_prompt_embeddings.to(tokens.dtype),
            ],
            dim=1,
        )
        if image_embeddings.shape[0] not in (1, b):
            raise InputError(
                f"image_embeddings batch ({image_embeddings.shape[0]}) must be 1 or match the "
                f"number of prompts ({b})"
            )
        src = self.image_tokens(image_embeddings, dense_prompt_embeddings)
        h, w = src.shape[-2:]
        hs, src = self.transformer(src, image_pe, tokens)
        iou_pred = self.iou_prediction_head(hs[:, 1, :])  # (B, 4)
        mask_tokens_out = hs[:, 2 : 2 + self.num_mask_tokens, :]
        hyper = torch.stack(
            [mlp(mask_tokens_out[:, i, :]) for i, mlp in enumerate(self.output_hypernetworks_mlps)],
            dim=1,
        )  # (B, 4, C/8)
        if multimask_output:
            masks = self._upscale_and_project_hr(src, (h, w), hyper[:, 1:], high_res_features)
            return masks, iou_pred[:, 1:]
        if not self.dynamic_multimask_via_stability or self.training:
            masks = self._upscale_and_project_hr(src, (h, w), hyper[:, :1], high_res_features)
            return masks, iou_pred[:, :1]
        # Single mask with the stability fallback: decode the single-mask token and the best
        # multimask token (by predicted IoU) together; the two other multimask outputs are
        # never needed.
        rows = torch.arange(b, device=iou_pred.device)
        best = iou_pred[:, 1:].argmax(dim=-1) + 1
        pair = torch.stack([hyper[:, 0], hyper[rows, best]], dim=1)  # (B, 2, C/8)
        masks = self._upscale_and_project_hr(src, (h, w), pair, high_res_features)
        single, fallback = masks[:, :1], masks[:, 1:]
        stable = self._stability(single) >= self.dynamic_multimask_stability_thresh  # (B, 1)
        masks = torch.where(stable[..., None, None], single, fallback)
        iou = torch.where(stable, iou_pred[:, :1], iou_pred[rows, best][:, None])
        return masks, iou

    def high_res_tokens(
        self, high_res: tuple[torch.Tensor, torch.Tensor], size: tuple[int, int]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``feat_s1``, ``feat_s0`` in the sub-pixel order of the upscaling products, with the
        transposed convolutions' biases added: (B, h*w, 4*C/4) and (B, 4*h*w, 4*C/8). Per
        image: kept between calls on it (see :mod:`grounded_sam.model.memo`)."""
        up1, up2 = self.output_upscaling[0], self.output_upscaling[3]
        feat_s0, feat_s1 = high_res
        h, w = size
        c1, c2 = up1.weight.shape[1], up2.weight.shape[1]

        def reorder() -> tuple[torch.Tensor, torch.Tensor]:
            # feat_s1[b, c, 2i+dy, 2j+dx] -> [b, (i, j), (dy, dx, c)], plus dc1's bias
            f1 = feat_s1.reshape(-1, c1, h, 2, w, 2).permute(0, 2, 4, 3, 5, 1)
            f1 = (f1 + up1.bias).reshape(-1, h * w, 4 * c1)
            # feat_s0[b, c, 4i+2dy+dy2, 4j+2dx+dx2] -> [b, (i, j, dy, dx), (dy2, dx2, c)]
            f0 = feat_s0.reshape(-1, c2, h, 2, 2, w, 2, 2).permute(0, 2, 5, 3, 6, 4, 7, 1)
            f0 = (f0 + up2.bias).reshape(-1, h * w * 4, 4 * c2)
            return f1, f0

        return memoized(self, "high_res", (feat_s0, feat_s1, up1.bias, up2.bias), reorder)

    def prepare(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        no_mask_dense: torch.Tensor,
        high_res_features: tuple[torch.Tensor, ...] = (),
    ) -> None:
        super().prepare(image_embeddings, image_pe, no_mask_dense)
        if high_res_features:
            self.high_res_tokens(tuple(high_res_features), tuple(image_embeddings.shape[-2:]))

    def _stability(self, logits: torch.Tensor) -> torch.Tensor:
        """(B, 1, h, w) logits -> (B, 1) IoU of the masks at +delta and -delta (1 if empty)."""
        flat = logits.flatten(-2)
        delta = self.dynamic_multimask_stability_delta
        inter = (flat > delta).sum(-1).float()
        union = (flat > -delta).sum(-1).float()
        return torch.where(union > 0, inter / union, 1.0)

    def _upscale_and_project_hr(
        self,
        src: torch.Tensor,
        size: tuple[int, int],
        hyper_in: torch.Tensor,
        high_res: tuple[torch.Tensor, torch.Tensor],
    ) -> torch.Tensor:
        """``hyper_in @ act2(dc2(act1(ln(dc1(src) + feat_s1))) + feat_s0)`` on channels-last
        tokens: (B, h*w, C) image tokens, (B, T, C/8) hypernetwork outputs -> (B, T, 4h, 4w).

        As SAM 1's ``_upscale_and_project``: each 2x2-stride-2 transposed convolution is a
        matrix product from one input pixel to its 2x2 output pixels, run on tokens in
        "sub-pixel" order; here the high-resolution features are reordered to that order once
        per call (with the transposed convolution's bias folded in) and enter the products as
        their additive term (``addmm``), so they cost no separate pass. Prompts run one at a
        time so the per-prompt (16*h*w, C/8) features stay in cache.
        """
        up1, norm, act1, up2, act2 = self.output_upscaling
        h, w = size
        b, t = src.shape[0], hyper_in.shape[1]
        c1, c2 = up1.weight.shape[1], up2.weight.shape[1]
        f1, f0 = self.high_res_tokens(high_res, size)
        w1 = up1.weight.permute(0, 2, 3, 1).reshape(-1, 4 * c1)  # (C, (dy, dx, c1))
        w2 = up2.weight.permute(0, 2, 3, 1).reshape(-1, 4 * c2)  # (c1, (dy2, dx2, c2))
        in_place = not torch.is_grad_enabled()

        def act(x: torch.Tensor, module: nn.Module) -> torch.Tensor:
            if isinstance(module, nn.GELU) and module.approximate == "none":
                return gelu_(x)  # in place when autograd is off (and its self-check passed)
            return module(x)

        masks: torch.Tensor | None = None
        rows: list[torch.Tensor] = []  # with autograd (no out= products)
        for i in range(b):
            j = i if f1.shape[0] > 1 else 0
            k = i if f0.shape[0] > 1 else 0
            x = src[i] if src.shape[0] > 1 else src[0]  # (hw, C)
            x = torch.addmm(f1[j], x.to(w1.dtype), w1).view(h * w * 4, c1)
            x = act(F.layer_norm(x, (c1,), norm.weight, norm.bias, norm.eps), act1)
            x = act(torch.addmm(f0[k], x, w2), act2).view(h * w * 16, c2)
            rhs = hyper_in[i].to(x.dtype).t()  # (C/8, T)
            if not in_place:
                rows.append(x @ rhs)
                continue
            if masks is None:  # the first prompt fixes the dtype (lower under autocast)
                masks = x.new_empty(b, h * w * 16, t)
            torch.matmul(x, rhs, out=masks[i])
        if rows:
            masks = torch.stack(rows)
        if masks is None:  # no prompts
            masks = src.new_empty(0, h * w * 16, t)
        # pixel (i, j), first sub-pixel (dy, dx), second (dy2, dx2): y = 4i + 2dy + dy2
        masks = masks.view(b, h, w, 2, 2, 2, 2, t).permute(0, 7, 1, 3, 5, 2, 4, 6)
        return masks.reshape(b, t, 4 * h, 4 * w)


# --------------------------------------------------------------------------- the model
class Sam2(SamBase):
    """SAM 2.1 for single images: the :class:`~grounded_sam.model.sam.SamBase` interface (see
    the module docstring for what differs from SAM 1 inside it).

    Attributes beyond ``SamBase``'s: ``dynamic_multimask_via_stability`` (the decoder's
    single-mask fallback; settable); ``prompt_encoder`` / ``mask_decoder`` are the
    ``sam_prompt_encoder`` / ``sam_mask_decoder`` modules (Meta's checkpoint names).
    """

    family = "sam2"

    def __init__(
        self,
        *,
        image_encoder: HieraImageEncoder,
        prompt_encoder: Sam2PromptEncoder,
        mask_decoder: Sam2MaskDecoder,
        name: str = "sam2",
    ) -> None:
        super().__init__(name)
        self.image_encoder = image_encoder
        self.sam_prompt_encoder = prompt_encoder
        self.sam_mask_decoder = mask_decoder
        self.no_mem_embed = nn.Parameter(torch.zeros(1, 1, prompt_encoder.embed_dim))
        self.register_buffer(
            "pixel_mean", torch.tensor(IMAGENET_MEAN).view(-1, 1, 1), persistent=False
        )
        self.register_buffer(
            "pixel_std", torch.tensor(IMAGENET_STD).view(-1, 1, 1), persistent=False
        )

    @property
    def prompt_encoder(self) -> Sam2PromptEncoder:
        return self.sam_prompt_encoder

    @property
    def mask_decoder(self) -> Sam2MaskDecoder:
        return self.sam_mask_decoder

    @property
    def img_size(self) -> int:
        """Side of the square model input (1024)."""
        return self.image_encoder.img_size

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    @property
    def dynamic_multimask_via_stability(self) -> bool:
        return self.sam_mask_decoder.dynamic_multimask_via_stability

    @dynamic_multimask_via_stability.setter
    def dynamic_multimask_via_stability(self, value: bool) -> None:
        self.sam_mask_decoder.dynamic_multimask_via_stability = bool(value)

    # ------------------------------------------------------------------ image
    def prepare_image(self, image: np.ndarray) -> tuple[torch.Tensor, tuple[int, int]]:
        """(H, W, 3) uint8 RGB -> ((1, 3, 1024, 1024) float32 model input on ``self.device``,
        input_size (1024, 1024)).

        As Meta's ``SAM2Transforms``: values to 0..1, bilinear (antialiased) resize of the
        whole image to the square, ImageNet mean/std normalisation.
        """
        if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3:
            shape = getattr(image, "shape", None)
            raise InputError(f"expected an (H, W, 3) uint8 RGB array, got shape {shape}")
        if image.dtype != np.uint8:
            raise InputError(f"expected an (H, W, 3) uint8 RGB array, got dtype {image.dtype}")
        s = self.img_size
        if not (image.flags.c_contiguous and image.flags.writeable):
            image = np.array(image, order="C")  # torch needs a writable, contiguous buffer
        if self.device.type != "cpu" or torch.is_grad_enabled():
            x = torch.from_numpy(image).to(self.device)
            x = x.permute(2, 0, 1).contiguous().float().div(255)
            x = F.interpolate(
                x[None], size=(s, s), mode="bilinear", align_corners=False, antialias=True
            )
            return (x - self.pixel_mean) / self.pixel_std, (s, s)
        return self._prepare_cpu(torch.from_numpy(image), s), (s, s)

    # Image rows per step of the CPU resize's horizontal pass (see ``_prepare_cpu``).
    _RESIZE_STEP_ROWS = 128

    def _prepare_cpu(self, image: torch.Tensor, s: int) -> torch.Tensor:
        """(H, W, 3) uint8 -> (1, 3, s, s) float32, contiguous: the values of Meta's
        ``SAM2Transforms`` (to 0..1, antialiased bilinear resize, ImageNet mean/std) up to float
        rounding (the 1/255 is applied after the resize, with the normalisation; the resize
        is linear with weights summing to one).

        PyTorch's antialiased resize is separable (a horizontal pass, then a vertical one), so
        the horizontal pass runs on a few rows of the uint8 image at a time, each converted to
        float while in cache: the whole image is never converted to float (a 12 MP photo
        would be a 144 MB buffer, page-faulted on every call), nor copied to channels-first.
        Measured (1 thread, thread CPU time): 11 / 33 / 149 / 211 ms for Meta's transforms on
        chelsea (300x451), 1080p, 4K and 12 MP images, 7.5 / 20 / 48 / 65 ms here.
        """
        h, w, _ = image.shape
        resize = dict(mode="bilinear", align_corners=False, antialias=True)
        if w != s:
            x = torch.empty(1, 3, h, s)
            step = self._RESIZE_STEP_ROWS
            for r in range(0, h, step):
                rows = image[r : r + step].permute(2, 0, 1)[None].float()  # channels-last
                x[:, :, r : r + step] = F.interpolate(rows, size=(rows.shape[2], s), **resize)
        else:
            x = image.permute(2, 0, 1)[None].float().contiguous()
        if h != s:
            x = F.interpolate(x, size=(s, s), **resize)
        mean, std = self.pixel_mean, self.pixel_std
        if x.dtype != mean.dtype:  # a model cast to another dtype (e.g. .double())
            x = x.to(mean.dtype)
        return x.mul_(1.0 / (255.0 * std)).sub_(mean / std)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """(B, 3, 1024, 1024) model input -> (image embedding (B, 256, 64, 64) with
        ``no_mem_embed`` added, (feat_s0 (B, 32, 256, 256), feat_s1 (B, 64, 128, 128))),
        float32, computed in the model's precision mode.

        The outputs are channels-last in memory (NCHW shapes over (B, H, W, C) storage).
        """
        s = self.img_size
        if x.ndim != 4 or x.shape[1] != 3 or tuple(x.shape[-2:]) != (s, s):
            raise InputError(
                f"SAM 2 expects a (B, 3, {s}, {s}) model input (see prepare_image), got shape "
                f"{tuple(x.shape)}"
            )
        with autocast(self.precision, x.device):
            emb, feat_s0, feat_s1 = self._encode(x)
        return (
            emb.float().permute(0, 3, 1, 2),
            (feat_s0.float().permute(0, 3, 1, 2), feat_s1.float().permute(0, 3, 1, 2)),
        )

    def _encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Trunk + neck, channels-last: embedding (B, 64, 64, C), feat_s0, feat_s1.

        The neck's stride-4 and stride-8 levels are used only through ``conv_s0`` /
        ``conv_s1``: each pair of 1x1 convolutions runs as one (weights multiplied first).
        """
        enc, dec = self.image_encoder, self.sam_mask_decoder
        neck = enc.neck
        feats = enc.trunk.features(x)  # (tokens, to_spatial) per stage
        n = len(feats)
        emb_level = n - 1 - enc.scalp
        heads = {emb_level - 2: dec.conv_s0, emb_level - 1: dec.conv_s1}
        prev = None
        out: dict[int, torch.Tensor] = {}
        for level in range(n - 1, -1, -1):
            tokens, to_spatial = feats[level]
            top_down = level in neck.fpn_top_down_levels and prev is not None
            head = heads.get(level)
            if head is not None and not top_down:
                # per-token maps first, then the (narrow) result is laid out spatially
                out[level] = to_spatial(neck.lateral(level, tokens, then=head))
                continue
            lat = to_spatial(neck.lateral(level, tokens))
            if top_down:
                lat = add_nearest_2x_(lat, prev)
            prev = lat
            out[level] = lat if head is None else F.linear(lat, head.weight.flatten(1), head.bias)
        emb = out[emb_level]
        emb = (
            emb + self.no_mem_embed.view(-1).to(emb.dtype)
            if torch.is_grad_enabled()
            else (emb.add_(self.no_mem_embed.view(-1).to(emb.dtype)))
        )
        return emb, out[emb_level - 2], out[emb_level - 1]

    # ------------------------------------------------------------------ prompts
    def transform_coords(
        self,
        coords: torch.Tensor,
        original_size: tuple[int, int],
        input_size: tuple[int, int],
    ) -> torch.Tensor:
        """(..., 2) xy pixels of the original (H, W) image -> the 1024x1024 model-input frame
        (float32): x * 1024 / W, y * 1024 / H (as Meta: normalise, then scale)."""
        h, w = original_size
        coords = torch.as_tensor(coords).to(torch.float32).clone()
        coords[..., 0] = coords[..., 0] / w
        coords[..., 1] = coords[..., 1] / h
        return coords * coords.new_tensor([input_size[1], input_size[0]])

    def decode(
        self,
        embedding: torch.Tensor,
        high_res: tuple[torch.Tensor, ...],
        point_coords: torch.Tensor | None,
        point_labels: torch.Tensor | None,
        boxes: torch.Tensor | None,
        mask_input: torch.Tensor | None,
        multimask_output: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompts -> (low-res logits (B, C, 256, 256) float32 clamped to (-32, 32), IoU (B, C)
        float32); C is 3 with ``multimask_output``, else 1.

        Args:
            embedding: (1 or B, 256, 64, 64) from :meth:`encode` (a batch of 1 is shared).
            high_res: (feat_s0, feat_s1) from :meth:`encode`.
            point_coords: (B, N, 2) in the model-input frame, or None; point_labels (B, N) int
                (1 foreground, 0 background, -1 padding).
            boxes: (B, 4) XYXY in the model-input frame, or None; passed as two corner points
                (labels 2, 3) before the points.
            mask_input: (B, 1, 256, 256) low-res logits of a previous call, or None.
        """
        if (point_coords is None) != (point_labels is None):
            raise InputError("point_coords and point_labels must be given together")
        points = None
        if point_coords is not None:
            points = (point_coords.to(torch.float32), point_labels.to(torch.int32))
        if boxes is not None:
            corners = boxes.to(torch.float32).reshape(-1, 2, 2)
            corner_labels = torch.tensor([[2, 3]], dtype=torch.int32, device=corners.device)
            corner_labels = corner_labels.expand(corners.shape[0], 2)
            if points is not None:
                pc, pl = points
                if pc.shape[0] != corners.shape[0]:
                    n = max(pc.shape[0], corners.shape[0])
                    pc, pl = pc.expand(n, -1, -1), pl.expand(n, -1)
                    corners, corner_labels = corners.expand(n, -1, -1), corner_labels.expand(n, -1)
                points = (torch.cat([corners, pc], dim=1), torch.cat([corner_labels, pl], dim=1))
            else:
                points = (corners, corner_labels)
        pe = self.sam_prompt_encoder
        with autocast(self.precision, embedding.device):
            sparse, dense = pe(points=points, boxes=None, masks=mask_input)
            low_res, iou = self.sam_mask_decoder(
                image_embeddings=embedding,
                image_pe=pe.get_dense_pe(),
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=multimask_output,
                high_res_features=tuple(high_res),
            )
        low_res = low_res.float().clamp_(-LOGIT_LIMIT, LOGIT_LIMIT)
        return low_res, iou.float()

    def postprocess_masks(
        self,
        low_res: torch.Tensor,
        input_size: tuple[int, int],
        original_size: tuple[int, int],
    ) -> torch.Tensor:
        """(B, C, 256, 256) logits -> (B, C, H, W) float32 logits at the original image size
        (one bilinear resize; the model input has no padding to crop)."""
        return F.interpolate(
            low_res.float(), tuple(original_size), mode="bilinear", align_corners=False
        )


# --------------------------------------------------------------------------- building
def build_sam2_model(
    config: Sam2Config | str,
    *,
    name: str | None = None,
    dynamic_multimask_via_stability: bool = True,
) -> Sam2:
    """A randomly initialised ``Sam2`` of a registered variant name or a :class:`Sam2Config`."""
    if isinstance(config, str):
        if config not in SAM2_CONFIGS:
            raise InputError(
                f"unknown SAM 2 variant {config!r}; valid names: {', '.join(list_sam2_models())}"
            )
        name, config = config, SAM2_CONFIGS[config]
    trunk = Hiera(
        embed_dim=config.embed_dim,
        num_heads=config.num_heads,
        stages=config.stages,
        global_att_blocks=config.global_att_blocks,
        window_pos_embed_bkg_spatial_size=config.window_pos_embed_bkg_spatial_size,
        window_spec=config.window_spec,
    )
    neck = FpnNeck(d_model=EMBED_DIM, backbone_channel_list=config.channel_list)
    grid = IMAGE_SIZE // 16
    return Sam2(
        image_encoder=HieraImageEncoder(trunk, neck, img_size=IMAGE_SIZE),
        prompt_encoder=Sam2PromptEncoder(
            embed_dim=EMBED_DIM,
            image_embedding_size=(grid, grid),
            input_image_size=(IMAGE_SIZE, IMAGE_SIZE),
            mask_in_chans=16,
        ),
        mask_decoder=Sam2MaskDecoder(
            transformer=Sam2TwoWayTransformer(embedding_dim=EMBED_DIM),
            dynamic_multimask_via_stability=dynamic_multimask_via_stability,
        ),
        name=name or ("sam2.1_hiera_test" if config == TEST_CONFIG else "sam2_custom"),
    )


# --------------------------------------------------------------------------- checkpoints
def _memory_key_shapes(d: int = EMBED_DIM, mem: int = 64, num_maskmem: int = 7) -> dict:
    """Key -> shape of every tensor a SAM 2.1 checkpoint holds outside the image path: the
    video modules (memory attention, memory encoder, object pointers, temporal encodings).
    The same for all four variants."""
    shapes: dict[str, tuple[int, ...]] = {
        "maskmem_tpos_enc": (num_maskmem, 1, 1, mem),
        "no_mem_pos_enc": (1, 1, d),
        "no_obj_ptr": (1, d),
        "no_obj_embed_spatial": (1, mem),
        "mask_downsample.weight": (1, 1, 4, 4),
        "mask_downsample.bias": (1,),
        "obj_ptr_tpos_proj.weight": (mem, d),
        "obj_ptr_tpos_proj.bias": (mem,),
    }

    def linear(prefix: str, n_in: int, n_out: int) -> None:
        shapes[f"{prefix}.weight"] = (n_out, n_in)
        shapes[f"{prefix}.bias"] = (n_out,)

    def norm(prefix: str, n: int) -> None:
        shapes[f"{prefix}.weight"] = shapes[f"{prefix}.bias"] = (n,)

    for i in range(3):
        linear(f"obj_ptr_proj.layers.{i}", d, d)
    for i in range(4):
        p = f"memory_attention.layers.{i}"
        for attn, kv_dim in (("self_attn", d), ("cross_attn_image", mem)):
            linear(f"{p}.{attn}.q_proj", d, d)
            linear(f"{p}.{attn}.k_proj", kv_dim, d)
            linear(f"{p}.{attn}.v_proj", kv_dim, d)
            linear(f"{p}.{attn}.out_proj", d, d)
        linear(f"{p}.linear1", d, 2048)
        linear(f"{p}.linear2", 2048, d)
        for j in (1, 2, 3):
            norm(f"{p}.norm{j}", d)
    norm("memory_attention.norm", d)
    # mask downsampler: four 3x3 stride-2 convs (1 -> 4 -> 16 -> 64 -> 256) + LayerNorm2d
    # each, then a 1x1 conv
    c_in = 1
    for i, c_out in enumerate((4, 16, 64, 256)):
        p = f"memory_encoder.mask_downsampler.encoder.{3 * i}"
        shapes[f"{p}.weight"], shapes[f"{p}.bias"] = (c_out, c_in, 3, 3), (c_out,)
        norm(f"memory_encoder.mask_downsampler.encoder.{3 * i + 1}", c_out)
        c_in = c_out
    shapes["memory_encoder.mask_downsampler.encoder.12.weight"] = (d, d, 1, 1)
    shapes["memory_encoder.mask_downsampler.encoder.12.bias"] = (d,)
    shapes["memory_encoder.pix_feat_proj.weight"], shapes["memory_encoder.pix_feat_proj.bias"] = (
        (d, d, 1, 1),
        (d,),
    )
    for i in range(2):
        p = f"memory_encoder.fuser.layers.{i}"
        shapes[f"{p}.gamma"] = (d,)
        shapes[f"{p}.dwconv.weight"], shapes[f"{p}.dwconv.bias"] = (d, 1, 7, 7), (d,)
        norm(f"{p}.norm", d)
        linear(f"{p}.pwconv1", d, 4 * d)
        linear(f"{p}.pwconv2", 4 * d, d)
    shapes["memory_encoder.out_proj.weight"], shapes["memory_encoder.out_proj.bias"] = (
        (mem, d, 1, 1),
        (mem,),
    )
    return shapes


MEMORY_KEYS = _memory_key_shapes()
# Keys SAM 2.1 added to SAM 2.0's checkpoints (all in the video path).
SAM21_ONLY_KEYS = frozenset(
    {"no_obj_embed_spatial", "obj_ptr_tpos_proj.weight", "obj_ptr_tpos_proj.bias"}
)


_SHAPES: dict[str, dict[str, tuple[int, ...]]] = {}


def expected_image_shapes(name_or_config: str | Sam2Config) -> dict[str, tuple[int, ...]]:
    """Key -> shape of a variant's image-path state dict (built on the meta device; cached per
    registered name)."""
    key = name_or_config if isinstance(name_or_config, str) else None
    if key is not None and key in _SHAPES:
        return _SHAPES[key]
    with torch.device("meta"):
        model = build_sam2_model(name_or_config)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if key is not None:
        _SHAPES[key] = shapes
    return shapes


def _first(items: list[str], n: int = 5) -> str:
    more = f" ... (+{len(items) - n} more)" if len(items) > n else ""
    return ", ".join(items[:n]) + more


def _identify(state_dict: Mapping[str, torch.Tensor]) -> str:
    """What a state dict looks like, for error messages."""
    keys = set(state_dict)
    got = {k: tuple(v.shape) for k, v in state_dict.items() if k.startswith("image_encoder.")}
    for name in list_sam2_models():
        exp = {
            k: v for k, v in expected_image_shapes(name).items() if k.startswith("image_encoder.")
        }
        if exp == got:
            if keys & set(MEMORY_KEYS) and not keys & SAM21_ONLY_KEYS:
                return f"a SAM 2.0 checkpoint of the {name.replace('sam2.1', 'sam2')!r} size"
            return f"a {name!r} checkpoint"
    if any(k.startswith("image_encoder.trunk.") for k in keys):
        return "a SAM 2 checkpoint of another size or a damaged one"
    if any(k.startswith("image_encoder.blocks.") for k in keys):
        return "a SAM 1 (ViT) checkpoint"
    if any(k.startswith("image_encoder.layers.") for k in keys):
        return "a MobileSAM checkpoint"
    return "not a SAM 2 checkpoint"


def image_state_dict(
    name: str | Sam2Config, state_dict: Mapping[str, torch.Tensor], source: str = "checkpoint"
) -> dict[str, torch.Tensor]:
    """The image-path part of a SAM 2.1 state dict, after checking the whole of it.

    Accepts Meta's full state dict (the ``"model"`` entry of ``sam2.1_hiera_*.pt``), whose
    keys beyond the image path must be exactly SAM 2.1's video modules (:data:`MEMORY_KEYS`,
    shapes included), or an image-path-only state dict (``Sam2.state_dict()``).

    Raises:
        WeightsError: naming ``source``, the variant, the first missing / unexpected /
            mis-shaped keys and what the file looks like (e.g. a SAM 2.0 checkpoint, which is
            refused: its weights differ from SAM 2.1's even where the keys agree).
    """
    label = name if isinstance(name, str) else "custom SAM 2 config"
    expected = expected_image_shapes(name)
    keys = set(state_dict)
    memory = keys - set(expected)
    problems = []
    if memory:
        if not keys & SAM21_ONLY_KEYS and memory <= set(MEMORY_KEYS):
            raise WeightsError(
                f"{source} is {_identify(state_dict)} (no {sorted(SAM21_ONLY_KEYS)[0]!r}), not "
                f"SAM 2.1; {label!r} needs Meta's SAM 2.1 file (sam2.1_hiera_*.pt, see "
                "grounded_sam.weights)"
            )
        unexpected = sorted(memory - set(MEMORY_KEYS))
        # a file with some of the video modules must have all of them (truncated otherwise)
        missing_mem = sorted(set(MEMORY_KEYS) - memory) if memory & set(MEMORY_KEYS) else []
        if unexpected:
            problems.append(f"{len(unexpected)} unexpected keys: {_first(unexpected)}")
        if missing_mem:
            problems.append(f"{len(missing_mem)} missing video-module keys: {_first(missing_mem)}")
        bad = [
            f"{k} {tuple(state_dict[k].shape)} != {MEMORY_KEYS[k]}"
            for k in sorted(memory & set(MEMORY_KEYS))
            if tuple(state_dict[k].shape) != MEMORY_KEYS[k]
        ]
        if bad:
            problems.append(f"{len(bad)} video-module keys with other shapes: {_first(bad)}")
    missing = [k for k in expected if k not in keys]
    if missing:
        problems.append(f"{len(missing)} missing keys: {_first(missing)}")
    mis_shaped = [
        f"{k} {tuple(state_dict[k].shape)} != {s}"
        for k, s in expected.items()
        if k in keys and tuple(state_dict[k].shape) != s
    ]
    if mis_shaped:
        problems.append(f"{len(mis_shaped)} keys with other shapes: {_first(mis_shaped)}")
    if problems:
        raise WeightsError(
            f"{source} does not match SAM 2.1 variant {label!r}: "
            + "; ".join(problems)
            + f"; this file looks like {_identify(state_dict)}"
        )
    return {k: state_dict[k] for k in expected}


def load_sam2_checkpoint(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a ``sam2.1_hiera_*.pt`` file (``{"model": state_dict}``) or a plain state dict with
    ``torch.load(..., weights_only=True)`` on the CPU. Raises :class:`WeightsError` for a
    missing, empty, truncated or non-checkpoint file."""
    p = Path(path)
    if not p.is_file():
        raise WeightsError(f"SAM 2 checkpoint not found: {str(p)!r}")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, foreign pickle, not a torch file at all
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise WeightsError(
            f"{str(p)!r} is not a readable SAM 2 checkpoint ({first}); it may be truncated: "
            "delete it and download it again"
        ) from e
    if isinstance(obj, Mapping) and isinstance(obj.get("model"), Mapping):
        obj = obj["model"]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(
            f"{str(p)!r} is not a SAM 2 checkpoint: expected {{'model': state_dict}} or a state "
            f"dict of tensors, got {type(obj).__name__}"
        )
    return dict(obj)


def build_sam2(
    name: str,
    checkpoint: str | os.PathLike | Mapping[str, torch.Tensor] | None = None,
    *,
    dynamic_multimask_via_stability: bool = True,
    device: str | torch.device = "cpu",
) -> Sam2:
    """Build a SAM 2.1 variant in eval mode, random or from a checkpoint or a state dict.

    The low-level builder of this module; ``grounded_sam.build_sam(name, ...)`` is the public
    one (weights registry, precision modes, the same checkpoint checks).

    Args:
        name: one of :func:`list_sam2_models` (``sam2.1_hiera_tiny``, ``_small``,
            ``_base_plus``, ``_large``).
        checkpoint: Meta's ``sam2.1_hiera_*.pt`` (path), or a state dict; ``None`` gives
            random weights. Checked with :func:`image_state_dict`, loaded strictly.
        dynamic_multimask_via_stability: Meta's single-mask fallback (on, as Meta's
            ``build_sam2`` sets it); see :class:`Sam2MaskDecoder`.
        device: torch device.
    """
    model = build_sam2_model(name, dynamic_multimask_via_stability=dynamic_multimask_via_stability)
    if checkpoint is not None:
        if isinstance(checkpoint, Mapping):
            sd, source = dict(checkpoint), "state dict"
        else:
            sd, source = load_sam2_checkpoint(checkpoint), f"checkpoint {str(checkpoint)!r}"
        model.load_state_dict(image_state_dict(name, sd, source), strict=True)
    return model.eval().to(device)
