"""The modules traced into ``encoder.onnx`` and ``decoder.onnx``.

They hold a SAM model's own submodules and weights and define only what the exported files
compute, in the plain form of the reference implementations (Meta's ``SamOnnxModel`` and
SAM 2's image path): no CPU fast paths, no in-place or ``out=`` writes, no loops over the
prompt batch. Trace them inside :func:`plain_mode`, which makes the model's own modules take
their reference code paths as well (see there).

Decoder inputs and outputs are those of Meta's exported decoder (``scripts/export_onnx_model.py``
of ``segment_anything``):

======================  ================  =================================================
name                    shape / dtype     meaning
======================  ================  =================================================
``image_embeddings``    (1, 256, 64, 64)  the encoder's embedding
``point_coords``        (1, N, 2) f32     x, y in the 1024 model-input frame
``point_labels``        (1, N) f32        1 fg, 0 bg, 2 / 3 box top-left / bottom-right,
                                          -1 padding
``mask_input``          (1, 1, 256, 256)  low-res logits of a previous prediction
``has_mask_input``      (1,) f32          1 to use ``mask_input``, 0 to ignore it
``orig_im_size``        (2,) f32          (H, W) of the original image
``masks``               (1, C, H, W) f32  mask logits at the original size (> 0: inside)
``iou_predictions``     (1, C) f32        predicted IoU of each mask
``low_res_masks``       (1, C, 256, 256)  low-res logits (the next ``mask_input``)
======================  ================  =================================================

C is 4 (mask 0 from the single-mask token, 1..3 the multimask outputs), or 1 when exported
with ``single_mask``. SAM 2.1's decoder also takes ``high_res_feats_0`` (1, 32, 256, 256) and
``high_res_feats_1`` (1, 64, 128, 128) after ``image_embeddings``; see :class:`Sam2DecoderGraph`
for how its prompts and masks differ.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "ENCODER_IO",
    "DECODER_IO",
    "SamEncoderGraph",
    "SamDecoderGraph",
    "Sam2EncoderGraph",
    "Sam2DecoderGraph",
    "encoder_graph",
    "decoder_graph",
    "plain_mode",
    "prepadded_size",
]

# family -> (input names, output names) of each file
ENCODER_IO = {
    "sam": (["input_image"], ["image_embeddings"]),
    "sam2": (["image"], ["high_res_feats_0", "high_res_feats_1", "image_embeddings"]),
}
_PROMPTS = ["point_coords", "point_labels", "mask_input", "has_mask_input", "orig_im_size"]
_OUTPUTS = ["masks", "iou_predictions", "low_res_masks"]
DECODER_IO = {
    "sam": (["image_embeddings", *_PROMPTS], _OUTPUTS),
    "sam2": (["image_embeddings", "high_res_feats_0", "high_res_feats_1", *_PROMPTS], _OUTPUTS),
}

SAM2_LOGIT_LIMIT = 32.0  # SAM 2's image predictor clamps the low-res logits to (-32, 32)


@contextlib.contextmanager
def plain_mode(model: nn.Module) -> Iterator[None]:
    """Trace ``model`` through its reference code paths.

    Our SAM modules take inference-only fast paths when autograd is off (in-place updates,
    ``out=`` products, cached tables, and on the CPU the fused oneDNN operators of
    :mod:`grounded_sam.model._fused`); the ONNX exporter cannot express some of them and
    must never see the private ones. With autograd on, every module runs its plain
    training-time path. The parameters are switched to ``requires_grad=False`` meanwhile
    (restored after), so no autograd graph is recorded and tracing costs no extra memory.
    """
    flags = [(p, p.requires_grad) for p in model.parameters()]
    training = model.training
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        model.eval()
        with torch.enable_grad():
            yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        model.train(training)


# --------------------------------------------------------------------------- encoders
class SamEncoderGraph(nn.Module):
    """SAM 1 / MobileSAM image encoder: (1, 3, 1024, 1024) normalised, zero-padded image ->
    (1, 256, 64, 64) ``image_embeddings``.

    With ``preprocess``, the input is instead the resized image, (h, w, 3) float32 RGB in
    0..255 with its long side at most 1024 (samexporter's ``--use-preprocess`` layout, which
    X-AnyLabeling's SAM loader feeds), normalised and zero-padded inside the graph.

    The ViT runs in Meta's reference form (window partition, attention with the whole
    relative-position bias, unpartition; residual, MLP, residual). The model's CPU path
    slices the bias by heads and query rows and the MLP by rows to stay in cache, which would
    trace into hundreds of scatter writes, each copying the whole output in onnxruntime.
    Other encoders (MobileSAM's TinyViT) run their own forward.
    """

    def __init__(self, model: nn.Module, preprocess: bool = False) -> None:
        super().__init__()
        self.image_encoder = model.image_encoder
        self.preprocess = bool(preprocess)
        self.img_size = int(model.img_size)
        self.register_buffer("pixel_mean", model.pixel_mean.reshape(-1).clone(), persistent=False)
        self.register_buffer("pixel_std", model.pixel_std.reshape(-1).clone(), persistent=False)

    def forward(self, input_image: torch.Tensor) -> torch.Tensor:
        x = input_image
        if self.preprocess:  # as Sam.preprocess, on an (h, w, 3) image
            x = ((x - self.pixel_mean) / self.pixel_std).permute(2, 0, 1)
            h, w = x.shape[-2:]
            x = F.pad(x, (0, self.img_size - w, 0, self.img_size - h)).unsqueeze(0)
        enc = self.image_encoder
        if not hasattr(enc, "blocks") or not hasattr(enc, "patch_embed"):
            return enc(x)
        x = enc.patch_embed(x)  # (B, H, W, C)
        if enc.pos_embed is not None:
            x = x + enc.pos_embed
        for blk in enc.blocks:
            shortcut = x
            x = _vit_attention(blk.attn, blk.norm1(x), blk.window_size)
            x = shortcut + x
            x = x + blk.mlp(blk.norm2(x))
        return enc.neck(x.permute(0, 3, 1, 2))


def _vit_attention(attn: nn.Module, x: torch.Tensor, window_size: int) -> torch.Tensor:
    """SAM's ViT attention on a (B, H, W, C) grid, windowed when ``window_size > 0`` (Meta's
    ``Block`` + ``Attention``), with the model's own parameters and helpers."""
    from grounded_sam.model.image_encoder import (
        rel_pos_attention,
        window_partition,
        window_unpartition,
    )

    h, w = x.shape[1:3]
    if window_size > 0:
        x, padded = window_partition(x, window_size)
    b, gh, gw, c = x.shape
    nh = attn.num_heads
    qkv = attn.qkv(x).reshape(b, gh * gw, 3, nh, c // nh).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)  # each (B, nH, HW, hd)
    if attn.use_rel_pos:
        out = rel_pos_attention(
            q, k, v, attn.rel_pos_h, attn.rel_pos_w, (gh, gw), attn.scale, _WHOLE_BIAS
        )
    else:
        out = F.scaled_dot_product_attention(q, k, v, scale=attn.scale)
    x = attn.proj(out.transpose(1, 2).reshape(b, gh, gw, c))
    if window_size > 0:
        x = window_unpartition(x, window_size, padded, (h, w))
    return x


_WHOLE_BIAS = 1 << 62  # rel_pos_attention's slice limit: never slice in the exported graph


class Sam2EncoderGraph(nn.Module):
    """SAM 2.1 image encoder: (1, 3, 1024, 1024) ImageNet-normalised image (the whole image
    resized to the square) -> ``high_res_feats_0`` (1, 32, 256, 256), ``high_res_feats_1``
    (1, 64, 128, 128) (the stride-4 / stride-8 FPN levels after the decoder's ``conv_s0`` /
    ``conv_s1``) and ``image_embeddings`` (1, 256, 64, 64) with ``no_mem_embed`` added.

    As Meta's ``SAM2Base.forward_image`` + ``_prepare_backbone_features`` for one image: the
    Hiera blocks on the spatial grid, the FPN neck, then the two projections.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.trunk = model.image_encoder.trunk
        self.neck = model.image_encoder.neck
        self.scalp = model.image_encoder.scalp
        self.conv_s0 = model.sam_mask_decoder.conv_s0
        self.conv_s1 = model.sam_mask_decoder.conv_s1
        self.no_mem_embed = model.no_mem_embed

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        trunk = self.trunk
        x = trunk.patch_embed.proj(image)  # (B, C, H, W)
        x = (x + trunk.pos_embed_grid(tuple(x.shape[-2:]))).permute(0, 2, 3, 1)
        stages = []
        for i, blk in enumerate(trunk.blocks):
            x = blk(x)
            if i in trunk.stage_ends:
                stages.append(x)
        levels = self.neck(stages)  # channels-last, highest resolution first
        levels = levels[: len(levels) - self.scalp]
        feat_s0 = self.conv_s0(levels[0].permute(0, 3, 1, 2))
        feat_s1 = self.conv_s1(levels[1].permute(0, 3, 1, 2))
        emb = (levels[2] + self.no_mem_embed.view(-1)).permute(0, 3, 1, 2)
        return feat_s0, feat_s1, emb


# --------------------------------------------------------------------------- decoders
def prepadded_size(orig_im_size: torch.Tensor, longest_side: int) -> torch.Tensor:
    """(2,) float (H, W) -> (2,) int64 (h, w) of the image resized so its long side is
    ``longest_side``: ``int(H * (longest_side / max(H, W)) + 0.5)``.

    Computed in float64 with the operations of Meta's ``ResizeLongestSide`` (Python floats),
    so the crop matches the resized image for every size; float32 rounds some sizes whose
    exact value is a half-integer to the other side.
    """
    size = orig_im_size.to(torch.float64)
    scale = longest_side / torch.max(size)
    return torch.floor(size * scale + 0.5).to(torch.int64)


def _embed_points(prompt_encoder: nn.Module, coords: torch.Tensor, labels: torch.Tensor):
    """(1, N, 2) coordinates in the model frame, (1, N) float labels -> (1, N, 256) sparse
    embeddings: positional encoding of the pixel centres (zero for padding) plus the embedding
    of the label (-1 not-a-point, 0 background, 1 foreground, 2 / 3 box corners); as the
    prompt encoder embeds points and box corners."""
    pe = prompt_encoder
    size = pe.input_image_size
    xy = (coords + 0.5) / coords.new_tensor([size[1], size[0]])
    emb = pe.pe_layer._pe_encoding(xy)
    labels = labels.unsqueeze(-1)
    emb = emb * (labels != -1)
    emb = emb + pe.not_a_point_embed.weight * (labels == -1)
    for i in range(pe.num_point_embeddings):
        emb = emb + pe.point_embeddings[i].weight * (labels == i)
    return emb


def _embed_mask(prompt_encoder: nn.Module, mask_input: torch.Tensor, has_mask_input: torch.Tensor):
    """The dense embedding: the downscaled ``mask_input`` when ``has_mask_input`` is 1, the
    learned no-mask embedding when it is 0."""
    pe = prompt_encoder
    no_mask = pe.no_mask_embed.weight.reshape(1, -1, 1, 1)
    return has_mask_input * pe.mask_downscaling(mask_input) + (1 - has_mask_input) * no_mask


def _predict_all_masks(
    decoder: nn.Module,
    image_embeddings: torch.Tensor,
    image_pe: torch.Tensor,
    sparse: torch.Tensor,
    dense: torch.Tensor,
    high_res: tuple[torch.Tensor, torch.Tensor] | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The mask decoder for all four mask tokens: (1, 4, 256, 256) low-res logits and (1, 4)
    IoU predictions (Meta's ``MaskDecoder.predict_masks``; SAM 2's with its object-score
    token before the IoU token and the high-resolution features added in the upscaling)."""
    n_mask = decoder.num_mask_tokens
    parts = [decoder.iou_token.weight, decoder.mask_tokens.weight]
    if high_res is not None:
        parts.insert(0, decoder.obj_score_token.weight)
    first = len(parts) - 2  # index of the IoU token
    tokens = torch.cat(parts, dim=0).unsqueeze(0).expand(sparse.shape[0], -1, -1)
    tokens = torch.cat([tokens, sparse], dim=1)
    src = image_embeddings + dense
    b, c, h, w = src.shape
    hs, keys = decoder.transformer(src, image_pe, tokens)
    iou = decoder.iou_prediction_head(hs[:, first, :])
    mask_tokens = hs[:, first + 1 : first + 1 + n_mask, :]
    hyper = torch.stack(
        [mlp(mask_tokens[:, i, :]) for i, mlp in enumerate(decoder.output_hypernetworks_mlps)],
        dim=1,
    )  # (B, 4, C / 8)
    src = keys.transpose(1, 2).reshape(b, c, h, w)
    up1, norm, act1, up2, act2 = decoder.output_upscaling
    if high_res is None:
        x = act2(up2(act1(norm(up1(src)))))
    else:
        feat_s0, feat_s1 = high_res
        x = act1(norm(up1(src) + feat_s1))
        x = act2(up2(x) + feat_s0)
    b, c, h, w = x.shape
    masks = (hyper @ x.reshape(b, c, h * w)).reshape(b, n_mask, h, w)
    return masks, iou


class SamDecoderGraph(nn.Module):
    """SAM 1 / MobileSAM decoder with Meta's exported inputs and outputs (module docstring).

    As Meta's ``SamOnnxModel`` with ``return_single_mask=single_mask``, except the crop to the
    resized image before the final resize: ``segment_anything`` 1.0 (the PyPI release)
    converts the crop size to a Python ``int`` while tracing, which freezes it to the example
    input's aspect ratio (its issue #56); here it stays a graph computation
    (:func:`prepadded_size`), right for every image size.

    Prompts follow Meta's convention: box corners as two points labelled 2 and 3; without a
    box, append one padding point (0, 0) labelled -1. N may be 0 (a mask prompt alone).
    """

    def __init__(self, model: nn.Module, single_mask: bool = False) -> None:
        super().__init__()
        self.prompt_encoder = model.prompt_encoder
        self.mask_decoder = model.mask_decoder
        self.img_size = int(model.img_size)
        self.single_mask = bool(single_mask)

    def forward(
        self,
        image_embeddings: torch.Tensor,
        point_coords: torch.Tensor,
        point_labels: torch.Tensor,
        mask_input: torch.Tensor,
        has_mask_input: torch.Tensor,
        orig_im_size: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        pe = self.prompt_encoder
        sparse = _embed_points(pe, point_coords, point_labels)
        dense = _embed_mask(pe, mask_input, has_mask_input)
        low_res, iou = _predict_all_masks(
            self.mask_decoder, image_embeddings, pe.get_dense_pe(), sparse, dense, None
        )
        if self.single_mask:
            low_res, iou = self._select(low_res, iou, torch._shape_as_tensor(point_coords)[1])
        s = self.img_size
        masks = F.interpolate(low_res, size=(s, s), mode="bilinear", align_corners=False)
        crop = prepadded_size(orig_im_size, s)
        masks = masks[..., : crop[0], : crop[1]]
        size = orig_im_size.to(torch.int64)
        masks = F.interpolate(masks, size=(size[0], size[1]), mode="bilinear", align_corners=False)
        return masks, iou, low_res

    @staticmethod
    def _select(
        low_res: torch.Tensor, iou: torch.Tensor, num_points: torch.Tensor | int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Meta's ``select_masks``: with more than two points (padding included) the
        single-mask token, else the best multimask output by predicted IoU (no control flow:
        the first token's score is shifted by +-1000)."""
        reweight = iou.new_tensor([[1000.0] + [0.0] * (iou.shape[1] - 1)])
        best = torch.argmax(iou + (num_points - 2.5) * reweight, dim=1)
        rows = torch.arange(low_res.shape[0])
        return low_res[rows, best].unsqueeze(1), iou[rows, best].unsqueeze(1)


class Sam2DecoderGraph(nn.Module):
    """SAM 2.1 decoder: Meta's decoder inputs plus ``high_res_feats_0`` / ``high_res_feats_1``
    (after ``image_embeddings``), the same outputs.

    What differs from SAM 1's (all as SAM 2's ``SAM2ImagePredictor``):

    - ``point_coords`` are in the 1024x1024 square the whole image was resized to:
      ``x * 1024 / W``, ``y * 1024 / H``;
    - the graph appends SAM 2's padding point itself (when N > 0): pass the points and box
      corners (labels 2 / 3) only, without a -1 point;
    - masks are resized straight from 256x256 to (H, W) (no letterbox to crop);
    - ``iou_predictions`` went through a sigmoid; logits are clamped to (-32, 32);
    - ``single_mask``: the single-mask token, or, when its low-res logits are unstable, the
      best multimask output (SAM 2's ``dynamic_multimask_via_stability``).
    """

    def __init__(self, model: nn.Module, single_mask: bool = False) -> None:
        super().__init__()
        self.prompt_encoder = model.sam_prompt_encoder
        self.mask_decoder = model.sam_mask_decoder
        self.single_mask = bool(single_mask)

    def forward(
        self,
        image_embeddings: torch.Tensor,
        high_res_feats_0: torch.Tensor,
        high_res_feats_1: torch.Tensor,
        point_coords: torch.Tensor,
        point_labels: torch.Tensor,
        mask_input: torch.Tensor,
        has_mask_input: torch.Tensor,
        orig_im_size: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        pe = self.prompt_encoder
        n = torch._shape_as_tensor(point_coords)[1]  # traced: N stays dynamic
        # SAM 2 pads every point prompt with one (0, 0, -1) point, and a prompt without points
        # (a mask alone) with none: keep the padding point only when N > 0.
        coords = torch.cat([point_coords, point_coords.new_zeros(1, 1, 2)], dim=1)
        labels = torch.cat([point_labels, -point_labels.new_ones(1, 1)], dim=1)
        keep = n + torch.clamp(n, max=1)
        coords, labels = coords[:, :keep], labels[:, :keep]
        sparse = _embed_points(pe, coords, labels)
        dense = _embed_mask(pe, mask_input, has_mask_input)
        low_res, iou = _predict_all_masks(
            self.mask_decoder,
            image_embeddings,
            pe.get_dense_pe(),
            sparse,
            dense,
            (high_res_feats_0, high_res_feats_1),
        )
        if self.single_mask:
            low_res, iou = self._select(low_res, iou)
        low_res = torch.clamp(low_res, -SAM2_LOGIT_LIMIT, SAM2_LOGIT_LIMIT)
        size = orig_im_size.to(torch.int64)
        masks = F.interpolate(
            low_res, size=(size[0], size[1]), mode="bilinear", align_corners=False
        )
        return masks, iou, low_res

    def _select(
        self, low_res: torch.Tensor, iou: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """SAM 2's single-mask output: token 0 when its logits are stable (IoU of the masks
        thresholded at +delta and -delta at least ``thresh``), else the best of tokens 1..3;
        without the stability fallback, token 0."""
        dec = self.mask_decoder
        if not dec.dynamic_multimask_via_stability:
            return low_res[:, :1], iou[:, :1]
        rows = torch.arange(low_res.shape[0])
        best = torch.argmax(iou[:, 1:], dim=1) + 1
        flat = low_res[:, 0].flatten(1)
        delta = dec.dynamic_multimask_stability_delta
        inter = (flat > delta).sum(-1).float()
        union = (flat > -delta).sum(-1).float()
        stability = torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union))
        stable = stability >= dec.dynamic_multimask_stability_thresh
        masks = torch.where(stable[:, None, None], low_res[:, 0], low_res[rows, best])
        scores = torch.where(stable, iou[:, 0], iou[rows, best])
        return masks.unsqueeze(1), scores.unsqueeze(1)


def encoder_graph(model: nn.Module, preprocess: bool = False) -> nn.Module:
    """The encoder module to trace for ``model``'s family (``preprocess``: SAM 1 only)."""
    if model.family == "sam2":
        return Sam2EncoderGraph(model)
    return SamEncoderGraph(model, preprocess)


def decoder_graph(model: nn.Module, single_mask: bool = False) -> nn.Module:
    """The decoder module to trace for ``model``'s family."""
    if model.family == "sam2":
        return Sam2DecoderGraph(model, single_mask)
    return SamDecoderGraph(model, single_mask)
