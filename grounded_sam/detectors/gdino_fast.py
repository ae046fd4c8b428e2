"""Faster inference for Hugging Face's ``GroundingDinoForObjectDetection``, same outputs.

    hf = AutoModelForZeroShotObjectDetection.from_pretrained(...).eval()
    fast = fast_model(hf)                                  # shares hf's weights (fp32)
    text = fast.encode_text(input_ids, attention_mask, token_type_ids)   # once per prompt
    out = fast(pixel_values, pixel_mask=mask, text_features=text)        # an image or a batch
    out = fast(**processor_inputs)                         # or exactly like hf(**inputs)
    processor.post_process_grounded_object_detection(out, input_ids, ...)

``out.logits`` ``(B, queries, max_text_len)`` and ``out.pred_boxes`` ``(B, queries, 4)`` (cx, cy,
w, h in [0, 1] of the padded input) are what transformers' model returns, to float rounding
(about 1e-5 on logits, 1e-6 on boxes). ``transformers`` stays the loader, tokenizer, processor
and BERT text encoder; this module runs the rest on the same parameters. Measurements behind
each choice are in ``docs/grounding-dino-speed.md`` (CPU seconds on one Sapphire Rapids core,
Grounding-DINO-tiny shapes, 800x1202 input: transformers 14.5, this module 5.4):

- **Image-text fusion, reformulated exactly.** transformers projects all ~20k image tokens to
  1024-d queries and values, and back (three 20k x 256 x 1024 products per layer). The scores
  are ``v Wq_h^T k_h^T``: with the few text keys ``k`` known, ``Wq_h^T k_h^T`` is a 256 x T
  matrix, so the scores cost one 20k x 256 x (heads*T) product. The same holds for the image
  side's output (``P_h (t Wv_h^T) Wo_h^T``) and the text side (``softmax(.) (v Wv_h^T + b) =
  (softmax(.) v) Wv_h^T + b``, rows summing to 1). Never more work than the original (equal
  at T = 256): 0.52 -> 0.04 s per layer at 8 tokens, 1.26 -> 0.59 s at 256.
- **Deformable sampling as one weighted gather.** transformers runs ``grid_sample`` per level
  on a (batch*heads, 32, H, W) copy of the values, whose 32 channels lie H*W floats apart.
  Here values stay token-major (32 contiguous floats per head), each level gets a one-pixel
  zero border so out-of-image corners need no masks (their clamped index lands on a zero),
  and ``F.embedding_bag(..., per_sample_weights=...)`` gathers and sums the 4 corners x points
  x levels of each (query, head) in one pass.
- **FFN in token chunks** of :data:`_CHUNK` so the 2048-wide activation stays in cache; ReLU /
  GELU and the residual adds fused into the matrix products (oneDNN post-ops through
  ``grounded_sam.model._fused``, or ``addmm_`` accumulating into the residual). With the
  sampling: 1.35 -> 0.49 s per encoder deformable layer.
- **Swin backbone**: our forward of transformers' ``SwinBackbone`` modules (4.x and 5.x
  layouts): one gather into (shifted, padded) window order and one back instead of six
  pad / roll / partition copies, q/k/v as one product, chunked MLP: 2.26 -> 1.74 s.
- **Two-stage proposals:** the 3-layer box MLP runs on the ``num_queries`` selected tokens,
  not on all 20k (a per-row MLP: exact).
- **Text once per prompt:** :meth:`FastGroundingDino.encode_text` returns the BERT features and
  masks, reusable for any number of images (``text_features=``).

Precision modes (``precision=``, as the SAM core has): ``"fp32"`` (default, exact to float
rounding), ``"int8"`` (CPU: dynamic int8 for the Swin, encoder and decoder linear layers, on a
copy of the model), ``"bf16"`` / ``"fp16"`` (``torch.autocast``; for GPUs, and bf16 on CPUs
with AMX). Their measured effect on boxes is in ``docs/grounding-dino-speed.md``.

Configurations this code does not implement (checked field by field in
:func:`unsupported_features`) raise :class:`UnsupportedGroundingDinoError` from
:meth:`FastGroundingDino.from_hf`; :func:`fast_model` then falls back to running the
transformers model itself behind the same interface (``fallback=True``, default) or re-raises.
A backbone other than transformers' Swin runs through transformers' own code. Inference only:
dropout and drop-path are ignored (as in ``eval()``), and no gradients flow.
"""

from __future__ import annotations

import copy
import functools
import logging
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from grounded_sam.errors import InputError
from grounded_sam.model import _fused
from grounded_sam.model._fused import gelu_, linear_add
from grounded_sam.model.precision import PRECISIONS, check_precision

__all__ = [
    "FastGroundingDino",
    "FastGroundingDinoOutput",
    "HFGroundingDinoRunner",
    "TextFeatures",
    "UnsupportedGroundingDinoError",
    "fast_model",
    "phrase_attention_mask",
    "unsupported_features",
]

_LOG = logging.getLogger(__name__)
_AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}
_ACTIVATIONS = ("relu", "gelu")
# Tokens per FFN chunk: 2048 x 2048 floats (16 MiB) of activation. Measured on 2 cores, FFN of
# 20k tokens: chunks of 128 -> 0.144 s, 1024 -> 0.123 s (0.109 s with the fused oneDNN ops),
# 4096 -> 0.147 s, unchunked 0.151 s; on one core 1024 and 2048 tie (0.49 s per layer with
# the sampling), and 2048 halves the number of parallel regions, whose thread hand-offs cost
# milliseconds each when other processes share the two cores.
_CHUNK = 2048
# Tokens per deformable-sampling pass. Chunks of 4096 and whole layers (20k tokens) tie on one
# core (0.49 s per layer); one pass per layer has 5x fewer parallel regions (see above).
_SAMPLE_CHUNK = 1 << 30
# Tokens per Swin attention pass (whole windows) and MLP chunk.
_SWIN_CHUNK = 8192


class UnsupportedGroundingDinoError(InputError):
    """The Hugging Face model uses a feature :class:`FastGroundingDino` does not implement."""


# --------------------------------------------------------------------------- config checks
def unsupported_features(hf_model: nn.Module) -> list[str]:
    """Why :class:`FastGroundingDino` cannot reproduce ``hf_model`` (empty list: it can).

    Checks the config fields that change the computation (position embedding type, activation,
    query dimension, feature levels, head divisibility, query initialisation) and the module
    layout this code reads weights from (attribute names of transformers 4.46-5.x).
    Fields that only matter for training (dropouts, drop-path, losses, init) are ignored, and
    ``disable_custom_kernels`` is irrelevant: this code runs standard PyTorch operators only.
    """
    cfg = getattr(hf_model, "config", None)
    if cfg is None or getattr(cfg, "model_type", None) != "grounding-dino":
        return [f"not a Grounding DINO model (model_type {getattr(cfg, 'model_type', None)!r})"]
    problems = []
    if cfg.position_embedding_type != "sine":
        problems.append(
            f"position_embedding_type={cfg.position_embedding_type!r} (only 'sine' is implemented)"
        )
    if cfg.activation_function not in _ACTIVATIONS:
        problems.append(
            f"activation_function={cfg.activation_function!r} (implemented: {', '.join(_ACTIVATIONS)})"
        )
    if cfg.query_dim != 4:
        problems.append(f"query_dim={cfg.query_dim} (only 4, box reference points, is implemented)")
    if not cfg.embedding_init_target:
        # Queries gathered from the proposals: transformers 4.46-5.x build no
        # query_position_embeddings for it yet read them in forward, so it has no reference.
        problems.append("embedding_init_target=False (transformers itself cannot run it)")
    if cfg.d_model % cfg.encoder_attention_heads or cfg.d_model % cfg.decoder_attention_heads:
        problems.append("d_model not divisible by the attention heads")
    fusion_heads = cfg.encoder_attention_heads // 2
    if fusion_heads < 1 or (cfg.encoder_ffn_dim // 2) % fusion_heads:
        problems.append("encoder_ffn_dim // 2 not divisible by encoder_attention_heads // 2")
    needed = [
        "model.backbone.conv_encoder",
        "model.input_proj_vision",
        "model.level_embed",
        "model.text_backbone",
        "model.text_projection",
        "model.encoder.layers",
        "model.decoder.layers",
        "model.decoder.layer_norm",
        "model.decoder.reference_points_head",
        "bbox_embed",
        "class_embed",
    ]
    if cfg.two_stage:
        needed += ["model.enc_output", "model.enc_output_norm", "model.encoder_output_bbox_embed"]
    else:
        needed += ["model.reference_points"]
    needed += ["model.query_position_embeddings"]
    for path in needed:
        obj: Any = hf_model
        for part in path.split("."):
            obj = getattr(obj, part, None)
        if obj is None:
            problems.append(f"the model has no {path} (an unknown transformers layout)")
    if problems:
        return problems
    channels = getattr(hf_model.model.backbone.conv_encoder, "intermediate_channel_sizes", None)
    if channels is None or len(channels) > cfg.num_feature_levels:
        problems.append(
            f"num_feature_levels={cfg.num_feature_levels} below the backbone's "
            f"{None if channels is None else len(channels)} feature maps"
        )
    layer = hf_model.model.encoder.layers[0]
    for path in (
        "fusion_layer.attn.vision_proj",
        "text_enhancer_layer.self_attn.query",
        "deformable_layer.self_attn.sampling_offsets",
        "deformable_layer.fc1",
    ):
        obj = layer
        for part in path.split("."):
            obj = getattr(obj, part, None)
        if obj is None:
            problems.append(f"encoder layer has no {path} (an unknown transformers layout)")
    return problems


# --------------------------------------------------------------------------- text features
@dataclass(frozen=True)
class TextFeatures:
    """A prompt's encoded text, reusable across images (:meth:`FastGroundingDino.encode_text`).

    Attributes (``B`` prompts, ``T`` tokens, ``D`` = ``config.d_model``):
        input_ids: ``(B, T)`` int64 token ids (specials included).
        token_mask: ``(B, T)`` bool, True for real tokens (the tokenizer's attention mask).
        token_type_ids: ``(B, T)`` int64.
        features: ``(B, T, D)`` float32, BERT's last hidden state through ``text_projection``
            (None from :class:`HFGroundingDinoRunner`, which re-encodes per call).
        self_mask: ``(B, T, T)`` bool, True where token i may attend to token j (same phrase).
        position_embedding: ``(B, T, D)`` float32, sine embedding of the in-phrase positions.
    """

    input_ids: Tensor
    token_mask: Tensor
    token_type_ids: Tensor
    features: Tensor | None = None
    self_mask: Tensor | None = None
    position_embedding: Tensor | None = None

    def expand(self, batch: int) -> TextFeatures:
        """The same prompt for ``batch`` images (from a batch of 1; views, no copies)."""
        if self.input_ids.shape[0] == batch:
            return self
        if self.input_ids.shape[0] != 1:
            raise ValueError(
                f"text features hold {self.input_ids.shape[0]} prompts for {batch} images; pass "
                "one prompt (shared by every image) or one per image"
            )
        return self._map(lambda t: t.expand(batch, *t.shape[1:]))

    def to(self, device: torch.device | str) -> TextFeatures:
        """The same features on ``device``."""
        return self._map(lambda t: t.to(device))

    def _map(self, fn: Any) -> TextFeatures:
        names = (
            "input_ids",
            "token_mask",
            "token_type_ids",
            "features",
            "self_mask",
            "position_embedding",
        )
        values = [getattr(self, name) for name in names]
        return TextFeatures(*(None if v is None else fn(v) for v in values))


@dataclass
class FastGroundingDinoOutput:
    """What ``post_process_grounded_object_detection`` reads from transformers' output.

    Attributes:
        logits: ``(B, num_queries, max_text_len)`` float32 token logits; ``-inf`` at padding
            tokens and past the prompt.
        pred_boxes: ``(B, num_queries, 4)`` float32 boxes (cx, cy, w, h) in [0, 1], relative to
            the padded ``pixel_values``.
        input_ids: ``(B, T)`` the prompt's token ids.
    """

    logits: Tensor
    pred_boxes: Tensor
    input_ids: Tensor

    def __getitem__(self, key: str) -> Tensor:
        return getattr(self, key)


def phrase_attention_mask(input_ids: Tensor, special_ids: Tensor) -> tuple[Tensor, Tensor]:
    """Grounding DINO's text self-attention mask and in-phrase position ids.

    Special tokens (``[CLS]``, ``[SEP]``, ``.``, ``?`` for BERT) close phrases: the tokens after
    one special token up to and including the next one form a phrase and attend to each other;
    a phrase closed by the first or last token of the row, or never closed, is not one (its
    tokens attend only to themselves). Position ids count from 0 within each phrase, else 0.

    Args:
        input_ids: ``(B, T)`` int64.
        special_ids: ``(K,)`` int64 ids of the closing tokens.

    Returns:
        ``(B, T, T)`` bool mask (True: may attend) and ``(B, T)`` int64 position ids.
    """
    batch, length = input_ids.shape
    pos = torch.arange(length, device=input_ids.device).expand(batch, length)
    special = torch.isin(input_ids, special_ids)
    # Index of the special token closing each position's phrase (``length`` if none).
    closing = torch.where(special, pos, length).flip(1).cummin(1).values.flip(1)
    # Index of the last special token strictly before each position (-1 if none).
    before = torch.where(special, pos, -1).cummax(1).values
    before = torch.cat([before.new_full((batch, 1), -1), before[:, :-1]], 1)
    in_phrase = (closing > 0) & (closing < length - 1)
    mask = (closing[:, :, None] == closing[:, None, :]) & in_phrase[:, None, :]
    mask |= torch.eye(length, dtype=torch.bool, device=input_ids.device)
    positions = torch.where(in_phrase, pos - before - 1, 0).clamp_min(0)
    return mask, positions


def _sine_embedding(coords: Tensor, dim: int, temperature: float = 10000.0) -> Tensor:
    """Sine embedding of coordinates in [0, 1]: ``(..., K) -> (..., K * dim)``.

    Per coordinate, channel ``2i`` is ``sin(2 pi c / temperature^(2i/dim))`` and ``2i+1`` the
    cosine at the same frequency. With K >= 2 the first two coordinates are swapped (DETR's
    ``[y, x, w, h]`` order).
    """
    freq = torch.arange(dim, dtype=torch.float32, device=coords.device)
    freq = temperature ** (2 * torch.div(freq, 2, rounding_mode="floor") / dim)
    angles = coords.float()[..., None] * (2 * math.pi) / freq  # (..., K, dim)
    emb = torch.stack((angles[..., 0::2].sin(), angles[..., 1::2].cos()), -1).flatten(-2)
    if coords.shape[-1] >= 2:
        emb = torch.cat([emb[..., 1:2, :], emb[..., 0:1, :], emb[..., 2:, :]], -2)
    return emb.flatten(-2).to(coords.dtype)


# --------------------------------------------------------------------------- fused helpers
@functools.cache
def _pointwise_available() -> bool:
    """``_fused`` checks oneDNN's linear + GELU / + add once per process; this checks the same
    operator's plain and ReLU variants once, the same way (any failure: the plain ops)."""
    if not _fused.fusion_available():
        return False
    try:
        gen = torch.Generator().manual_seed(0)
        x, w, b = (torch.randn(*s, generator=gen) for s in ((3, 8), (6, 8), (6,)))
        with torch.no_grad():
            ref = F.linear(x, w, b)
            plain = torch.ops.mkldnn._linear_pointwise(x, w, b, "none", [None], "none")
            relu = torch.ops.mkldnn._linear_pointwise(x, w, b, "relu", [None], "none")
            return bool(
                torch.allclose(plain, ref, rtol=1e-4, atol=1e-5)
                and torch.allclose(relu, F.relu(ref), rtol=1e-4, atol=1e-5)
            )
    except Exception as exc:  # private operator: any failure means "use the plain ops"
        _LOG.debug("oneDNN linear (plain / relu) unavailable (%s); using unfused ops", exc)
        return False


def _onednn(linear: nn.Module, x: Tensor, fused: bool) -> bool:
    return (
        fused
        and type(linear) is nn.Linear
        and _fused._fast(x, linear.weight)
        and _pointwise_available()
    )


def _linear(linear: nn.Module, x: Tensor, fused: bool) -> Tensor:
    """``linear(x)``, through oneDNN when ``fused`` allows it (fp32 CPU, autograd off).

    Same result as MKL's ``addmm`` (equal speed on a quiet machine: 0.086 s for 20k x 256 x
    2048 on 2 cores), but it degrades far less when other processes share the cores: an FFN
    layer took 3.4 s through ``addmm`` and 1.8 s through oneDNN at load average 14.
    """
    if _onednn(linear, x, fused):
        return torch.ops.mkldnn._linear_pointwise(
            x, linear.weight, linear.bias, "none", [None], "none"
        )
    return linear(x)


def _linear_act(linear: nn.Module, x: Tensor, activation: str, fused: bool) -> Tensor:
    """``act(linear(x))`` for act in relu/gelu; oneDNN post-op when ``fused`` allows it."""
    if activation == "gelu":
        return _fused.linear_gelu(linear, x) if fused else gelu_(linear(x))
    if _onednn(linear, x, fused):
        return torch.ops.mkldnn._linear_pointwise(
            x, linear.weight, linear.bias, "relu", [None], "none"
        )
    y = linear(x)
    return F.relu(y) if torch.is_grad_enabled() else y.relu_()


def _add_linear(linear: nn.Module, x: Tensor, residual: Tensor, fused: bool) -> Tensor:
    """``residual + linear(x)`` (a new tensor)."""
    if fused:
        return linear_add(linear, x, residual)
    y = linear(x)
    return (
        y.add_(residual)
        if y.dtype == torch.promote_types(y.dtype, residual.dtype)
        else y + residual
    )


def _layer_norm(norm: nn.LayerNorm, x: Tensor) -> Tensor:
    return F.layer_norm(x, norm.normalized_shape, norm.weight, norm.bias, norm.eps)


def _ffn(
    fc1: nn.Module,
    fc2: nn.Module,
    x: Tensor,
    activation: str,
    fused: bool,
    norm: nn.LayerNorm | None = None,
    chunk_size: int | None = None,
) -> Tensor:
    """``x + fc2(act(fc1(norm(x))))`` (``norm`` optional) for ``x`` ``(n, D)``, in chunks of
    ``chunk_size`` (default :data:`_CHUNK`) tokens so the ``(chunk, ffn_dim)`` activation
    stays in cache; activation and residual fused into the two products on CPU."""
    n = x.shape[0]
    size = chunk_size or _CHUNK
    if n <= size:
        hidden = _linear_act(fc1, x if norm is None else _layer_norm(norm, x), activation, fused)
        return _add_linear(fc2, hidden, x, fused)
    parts = []
    for s in range(0, n, size):
        chunk = x[s : s + size]
        inner = chunk if norm is None else _layer_norm(norm, chunk)
        parts.append(_add_linear(fc2, _linear_act(fc1, inner, activation, fused), chunk, fused))
    return torch.cat(parts)


# --------------------------------------------------------------------------- Swin backbone
class _WindowGeometry:
    """Index maps of one Swin stage's (shifted) window partition, built once per pass.

    transformers pads the normalised tokens to whole windows, rolls them by ``-shift``,
    partitions into windows (six copies per block with the reverse path); here one gather
    (``part``) goes from image order to window order, pad positions zeroed afterwards, and
    one gather (``inv``) back, roll and crop included.
    """

    def __init__(self, height: int, width: int, window: int, shift: int, device: torch.device):
        hp, wp = -(-height // window) * window, -(-width // window) * window
        nh, nw = hp // window, wp // window
        rows = ((torch.arange(hp, device=device) + shift) % hp).view(nh, 1, window, 1)
        cols = ((torch.arange(wp, device=device) + shift) % wp).view(1, nw, 1, window)
        rows, cols = rows.expand(nh, nw, window, window), cols.expand(nh, nw, window, window)
        inside = ((rows < height) & (cols < width)).reshape(-1)
        self.windows = nh * nw
        self.part = torch.where(inside, (rows * width + cols).reshape(-1), 0)
        self.pad = None if bool(inside.all()) else (~inside).nonzero().view(-1)
        position = torch.empty(hp * wp, dtype=torch.long, device=device)
        position[(rows * wp + cols).reshape(-1)] = torch.arange(hp * wp, device=device)
        image = torch.arange(height, device=device).view(-1, 1) * wp + torch.arange(
            width, device=device
        )
        self.inv = position[image.reshape(-1)]
        self.mask = None
        if shift > 0:  # -100 between tokens that the roll brought from different regions
            hr = torch.arange(hp, device=device)
            wr = torch.arange(wp, device=device)
            hr = (hr >= hp - window).long() + (hr >= hp - shift).long()
            wr = (wr >= wp - window).long() + (wr >= wp - shift).long()
            label = (hr.view(-1, 1) * 3 + wr.view(1, -1)).view(nh, window, nw, window)
            label = label.transpose(1, 2).reshape(self.windows, window * window)
            same = label[:, None, :] == label[:, :, None]
            self.mask = torch.zeros(same.shape, device=device).masked_fill_(~same, -100.0)


class _SwinBlock(nn.Module):
    """One Swin block on transformers' weights (both the 4.x and 5.x module layouts).

    q/k/v are copied into one linear layer (one matrix product; 0.1-2.4 MB per block, so
    rebuild after changing weights); everything else is shared.
    """

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        attn = layer.attention
        if hasattr(attn, "q_proj"):  # transformers 5
            q, k, v, self.o_proj = attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj
            bias = attn.relative_position_bias
            self.table, index = bias.relative_position_bias_table, bias.relative_position_index
            self.fc1, self.fc2 = layer.mlp.fc1, layer.mlp.fc2
            self.heads = int(attn.num_attention_heads)
        else:  # transformers 4
            q, k, v = attn.self.query, attn.self.key, attn.self.value
            self.o_proj = attn.output.dense
            self.table, index = (
                attn.self.relative_position_bias_table,
                attn.self.relative_position_index,
            )
            self.fc1, self.fc2 = layer.intermediate.dense, layer.output.dense
            self.heads = int(attn.self.num_attention_heads)
        self.register_buffer("index", index.detach().reshape(-1).clone(), persistent=False)
        self.norm1, self.norm2 = layer.layernorm_before, layer.layernorm_after
        self.window, self.shift = int(layer.window_size), int(layer.shift_size)
        dim = q.weight.shape[1]
        with torch.no_grad():
            weight = torch.cat([q.weight, k.weight, v.weight])
            bias_qkv = None if q.bias is None else torch.cat([q.bias, k.bias, v.bias])
        self.qkv = nn.Linear(dim, 3 * dim, bias=bias_qkv is not None, device=weight.device)
        self.qkv.to(weight.dtype).requires_grad_(False)
        with torch.no_grad():
            self.qkv.weight.copy_(weight)
            if bias_qkv is not None:
                self.qkv.bias.copy_(bias_qkv)

    def forward(self, x: Tensor, geo: _WindowGeometry, fused: bool) -> Tensor:
        """``x`` ``(B, H*W, C)`` -> the block's output, same shape."""
        b, _, c = x.shape
        n = self.window * self.window
        windows = _layer_norm(self.norm1, x.index_select(1, geo.part))  # (B, nW*N, C)
        if geo.pad is not None:
            windows.index_fill_(1, geo.pad, 0.0)
        bias = self.table[self.index].view(n, n, -1).permute(2, 0, 1)[None]  # (1, h, N, N)
        mask = bias + geo.mask[:, None] if geo.mask is not None else None
        ctx = torch.empty_like(windows)
        per = max(1, _SWIN_CHUNK // n)  # windows per pass
        src = windows.view(b, geo.windows, n, c)
        dst = ctx.view(b, geo.windows, n, self.heads, c // self.heads)
        for i in range(b):
            for s in range(0, geo.windows, per):
                e = min(geo.windows, s + per)
                qkv = _linear(self.qkv, src[i, s:e], fused).view(e - s, n, 3, self.heads, -1)
                q, k, v = qkv.permute(2, 0, 3, 1, 4)
                m = bias if mask is None else mask[s:e]
                out = F.scaled_dot_product_attention(q, k, v, m.to(q.dtype))
                dst[i, s:e].copy_(out.transpose(1, 2))
        x = _add_linear(self.o_proj, ctx.index_select(1, geo.inv), x, fused)
        mlp = _ffn(self.fc1, self.fc2, x.view(-1, c), "gelu", fused, self.norm2, _SWIN_CHUNK)
        return mlp.view(b, -1, c)


def _swin_body(backbone: nn.Module) -> nn.Module:
    """The module holding ``embeddings`` and ``encoder``: ``backbone.swin`` in transformers
    5.x, the ``SwinBackbone`` itself in 4.x."""
    return getattr(backbone, "swin", backbone)


def _swin_supported(backbone: nn.Module) -> bool:
    cfg = getattr(backbone, "config", None)
    try:
        return (
            type(backbone).__name__ == "SwinBackbone"
            and cfg.hidden_act == "gelu"
            and _swin_body(backbone).embeddings.position_embeddings is None
            and all(
                hasattr(layer, "layernorm_before")
                and (hasattr(layer.attention, "q_proj") or hasattr(layer.attention, "self"))
                for stage in _swin_body(backbone).encoder.layers
                for layer in stage.blocks
            )
        )
    except AttributeError:
        return False


class _FastSwin(nn.Module):
    """transformers' ``SwinBackbone`` forward (always-partitioned windows, feature maps
    before downsampling through ``hidden_states_norms``), with fewer layout copies: 1.74 vs
    2.26 s of CPU time for Swin-T at 800x1202 on one core."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        swin = _swin_body(backbone)
        self.patch = swin.embeddings.patch_embeddings.projection
        self.patch_size = tuple(swin.embeddings.patch_embeddings.patch_size)
        self.embed_norm = swin.embeddings.norm
        self.stages = nn.ModuleList(
            nn.ModuleList(_SwinBlock(layer) for layer in stage.blocks)
            for stage in swin.encoder.layers
        )
        self.merges = nn.ModuleList(
            nn.Identity() if stage.downsample is None else stage.downsample
            for stage in swin.encoder.layers
        )
        self.norms = backbone.hidden_states_norms
        self.names = list(backbone.stage_names[1:])
        self.out_features = set(backbone.out_features)

    def forward(self, pixel_values: Tensor, fused: bool) -> list[Tensor]:
        """``(B, 3, H, W)`` -> the ``out_features`` maps, each ``(B, C, H_s, W_s)``."""
        ph, pw = self.patch_size
        height, width = pixel_values.shape[-2:]
        pixels = F.pad(pixel_values, (0, (-width) % pw, 0, (-height) % ph))
        x = self.patch(pixels)
        b, _, h, w = x.shape
        x = _layer_norm(self.embed_norm, x.flatten(2).transpose(1, 2))
        maps = []
        for name, blocks, merge in zip(self.names, self.stages, self.merges, strict=True):
            geometry: dict[tuple[int, int], _WindowGeometry] = {}
            for block in blocks:
                key = (block.window, block.shift)
                if key not in geometry:
                    geometry[key] = _WindowGeometry(h, w, *key, x.device)
                x = block(x, geometry[key], fused)
            if name in self.out_features:
                f = _layer_norm(self.norms[name], x)
                maps.append(f.view(b, h, w, -1).permute(0, 3, 1, 2).contiguous())
            if not isinstance(merge, nn.Identity):
                c = x.shape[-1]
                grid = x.view(b, h, w, c)
                if h % 2 or w % 2:
                    grid = F.pad(grid, (0, 0, 0, w % 2, 0, h % 2))
                # transformers' channel order: (even row, even col), (odd, even), (even, odd), ...
                grid = torch.cat([grid[:, r::2, q::2] for q in range(2) for r in range(2)], -1)
                h, w = (h + 1) // 2, (w + 1) // 2
                x = merge.reduction(_layer_norm(merge.norm, grid.view(b, h * w, 4 * c)))
        return maps


# --------------------------------------------------------------------------- deformable sampling
@dataclass(frozen=True)
class _SampleConstants:
    """Per-(head, level, point) constants of the sampler, each ``(H*L*P,)`` contiguous so the
    elementwise passes broadcast them over queries only (inner loops of H*L*P, vectorised;
    broadcasting a per-level value inside the last dims made those passes 5x slower)."""

    zero: Tensor  # () float 0
    upper_x: Tensor  # float W + 1: last padded column of the level
    upper_y: Tensor  # float H + 1
    row0: Tensor  # int32 first table row of the level for this head: start * heads + head
    stride: Tensor  # int32 table rows per padded image row: (W + 2) * heads


@dataclass(frozen=True)
class _Levels:
    """Geometry of the multi-scale token sequence of one forward pass.

    Each level's values are stored with a one-pixel zero border, ``(H+2) x (W+2)`` tokens, and
    the table ends with ``max(W) + 3`` zero tokens. Sampling coordinates are clamped to the
    border, so every bilinear corner outside the map reads a zero (``grid_sample``'s zero
    padding with ``align_corners=False``) without validity masks; a corner one step past a
    clamped coordinate gets weight 0 and stays inside the table.
    """

    shapes: tuple[tuple[int, int], ...]  # (H, W) per level
    starts: tuple[int, ...]  # first token of each level in the unpadded sequence
    padded_starts: tuple[int, ...]  # first token of each level in the padded table
    padded_len: int  # tokens in the padded table, zero tail included
    size_xy: Tensor  # (L, 2) float (W, H)
    _constants: dict = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def build(cls, shapes: Sequence[tuple[int, int]], device: torch.device) -> _Levels:
        starts, padded_starts, s, p = [], [], 0, 0
        for h, w in shapes:
            starts.append(s)
            padded_starts.append(p)
            s += h * w
            p += (h + 2) * (w + 2)
        p += max(w for _, w in shapes) + 3
        size = torch.tensor([[w, h] for h, w in shapes], dtype=torch.float32, device=device)
        return cls(tuple(shapes), tuple(starts), tuple(padded_starts), p, size)

    def constants(self, heads: int, points: int) -> _SampleConstants:
        """The sampler's constants for ``heads`` x levels x ``points`` (built once per pass)."""
        key = (heads, points)
        if key not in self._constants:
            device = self.size_xy.device
            n_levels = len(self.shapes)

            def per_hlp(per_level: list[int], dtype: torch.dtype) -> Tensor:
                t = torch.tensor(per_level, dtype=dtype, device=device).view(1, n_levels, 1)
                return t.expand(heads, n_levels, points).contiguous().view(-1)

            head = torch.arange(heads, dtype=torch.int32, device=device).view(heads, 1, 1)
            starts = per_hlp(list(self.padded_starts), torch.int32).view(heads, n_levels, points)
            self._constants[key] = _SampleConstants(
                zero=torch.zeros((), device=device),
                upper_x=per_hlp([w + 1 for _, w in self.shapes], torch.float32),
                upper_y=per_hlp([h + 1 for h, _ in self.shapes], torch.float32),
                row0=(starts * heads + head).view(-1),
                stride=per_hlp([(w + 2) * heads for _, w in self.shapes], torch.int32),
            )
        return self._constants[key]

    def fill(self, table: Tensor, values: Tensor, valid: Tensor | None) -> None:
        """Write ``values`` ``(S, C)`` (one image, unpadded order) into the interior of
        ``table`` ``(padded_len, C)``, zeroing tokens where ``valid`` ``(S,)`` is False."""
        channels = values.shape[-1]
        for (h, w), s, p in zip(self.shapes, self.starts, self.padded_starts, strict=True):
            grid = table[p : p + (h + 2) * (w + 2)].view(h + 2, w + 2, channels)
            grid[1:-1, 1:-1].copy_(values[s : s + h * w].view(h, w, channels))
            if valid is not None:
                keep = valid[s : s + h * w].view(h, w, 1)
                grid[1:-1, 1:-1].mul_(keep.to(table.dtype))

    def expand(self, xy: Tensor, heads: int, points: int) -> tuple[Tensor, Tensor]:
        """``(..., L, 2)`` per-level (x, y) values -> x and y ``(..., H*L*P)`` contiguous."""
        shape = (*xy.shape[:-2], heads, len(self.shapes), points)
        x = xy[..., None, :, None, 0].expand(shape).reshape(*xy.shape[:-2], -1)
        y = xy[..., None, :, None, 1].expand(shape).reshape(*xy.shape[:-2], -1)
        return x, y


def _sample(
    table: Tensor,
    consts: _SampleConstants,
    heads: int,
    offsets: Tensor,
    weights: Tensor,
    base: tuple[Tensor, Tensor],
    scale: tuple[Tensor, Tensor] | None,
) -> Tensor:
    """Multi-scale deformable attention of ``n`` queries on one image, as one weighted gather.

    Args:
        table: ``(padded_len * heads, head_dim)`` values, row ``token * heads + head``, in the
            padded layout of :class:`_Levels`.
        offsets: ``(n, 2, H*L*P)`` sampling offsets, x block then y block, in pixels of each
            level once multiplied by ``scale``.
        weights: ``(n, H, L*P)`` attention weights (softmaxed over L*P).
        base: x and y ``(n, H*L*P)`` float32 sampling origins in padded-pixel coordinates
            (``x * W + 0.5`` for a normalised x: pixel centres at +0.5, +1 for the border).
        scale: ``None`` or x and y ``(n, H*L*P)`` factors applied to ``offsets``.

    Returns:
        ``(n, H * head_dim)``: per query and head, the bilinearly interpolated values at every
        point, weighted and summed (``grid_sample`` semantics, zero padding).
    """
    n = offsets.shape[0]
    lp = weights.shape[-1]

    def corner(axis: int, upper: Tensor) -> tuple[Tensor, Tensor]:
        off = offsets[:, axis].float()
        if scale is None:
            g = off + base[axis]
        else:
            g = torch.addcmul(base[axis], off, scale[axis])
        g.clamp_(min=consts.zero, max=upper)  # >= 0, so truncation is floor
        low = g.to(torch.int32)
        return low.view(n, heads, lp), g.sub_(low).view(n, heads, lp)

    x0, fx = corner(0, consts.upper_x)
    y0, fy = corner(1, consts.upper_y)
    # Table rows of the 4 corners, written straight into the (n, H, 4 corners, L*P) bags.
    index = torch.empty((n, heads, 4, lp), dtype=torch.int32, device=table.device)
    stride = consts.stride.view(heads, lp)
    r00 = torch.mul(y0, stride, out=index[:, :, 0])
    r00.add_(consts.row0.view(heads, lp)).add_(x0.mul_(heads))
    torch.add(r00, heads, out=index[:, :, 1])
    torch.add(r00, stride, out=index[:, :, 2])
    torch.add(index[:, :, 2], heads, out=index[:, :, 3])
    w = torch.empty((n, heads, 4, lp), dtype=table.dtype, device=table.device)
    wy1 = weights.float() * fy
    wy0 = weights.float() - wy1
    torch.mul(wy0, fx, out=w[:, :, 1])
    torch.sub(wy0, w[:, :, 1], out=w[:, :, 0])
    torch.mul(wy1, fx, out=w[:, :, 3])
    torch.sub(wy1, w[:, :, 3], out=w[:, :, 2])
    out = F.embedding_bag(
        index.view(n * heads, -1), table, per_sample_weights=w.view(n * heads, -1), mode="sum"
    )
    return out.view(n, -1)


class _DeformableAttention(nn.Module):
    """Multi-scale deformable attention on transformers' weights.

    ``value_proj`` and ``output_proj`` are transformers' layers (shared). The sampling-offset
    and attention-weight projections are copied into one linear layer at construction, rows
    reordered so its output is [x offsets | y offsets | attention logits], each (head, level,
    point)-major: one matrix product instead of two, and contiguous x / y blocks for the
    sampler (an exact permutation; 0.4 MB per layer; rebuild after changing the weights).
    """

    def __init__(self, hf_attn: nn.Module) -> None:
        super().__init__()
        self.value_proj = hf_attn.value_proj
        self.output_proj = hf_attn.output_proj
        self.heads = int(hf_attn.n_heads)
        self.levels = int(hf_attn.n_levels)
        self.points = int(hf_attn.n_points)
        offsets, logits = hf_attn.sampling_offsets, hf_attn.attention_weights
        hlp = self.heads * self.levels * self.points
        with torch.no_grad():
            w_off = offsets.weight.view(hlp, 2, -1).transpose(0, 1).reshape(2 * hlp, -1)
            b_off = offsets.bias.view(hlp, 2).t().reshape(-1)
            weight = torch.cat((w_off, logits.weight), 0)
            bias = torch.cat((b_off, logits.bias), 0)
        self.offsets_logits = nn.Linear(weight.shape[1], weight.shape[0], device=weight.device)
        self.offsets_logits.to(weight.dtype)
        with torch.no_grad():
            self.offsets_logits.weight.copy_(weight)
            self.offsets_logits.bias.copy_(bias)
        self.offsets_logits.requires_grad_(False)

    def value_table(
        self, x: Tensor, valid: Tensor | None, levels: _Levels, out: Tensor, fused: bool
    ) -> Tensor:
        """Project ``x`` ``(S, D)`` (one image) to values, written into ``out``
        ``(padded_len, D)`` (its zero border kept); returns ``out`` as ``(rows, head_dim)``."""
        levels.fill(out, _linear(self.value_proj, x, fused), valid)
        return out.view(-1, out.shape[-1] // self.heads)

    def sample(
        self,
        query: Tensor,
        table: Tensor,
        base: tuple[Tensor, Tensor],
        scale: tuple[Tensor, Tensor] | None,
        levels: _Levels,
        fused: bool,
    ) -> Tensor:
        """Sampled values ``(n, D)`` (before ``output_proj``) for ``query`` ``(n, D)``."""
        n = query.shape[0]
        h, lp = self.heads, self.levels * self.points
        proj = _linear(self.offsets_logits, query, fused)  # (n, 3 * H*L*P)
        offsets = proj[:, : 2 * h * lp].view(n, 2, h * lp)
        weights = proj[:, 2 * h * lp :].float().view(n, h, lp).softmax(-1)
        consts = levels.constants(h, self.points)
        return _sample(table, consts, h, offsets, weights, base, scale)


# --------------------------------------------------------------------------- encoder
class _EncoderLayer(nn.Module):
    """Image-text fusion, text enhancer, then deformable self-attention + FFN on image tokens."""

    def __init__(self, hf_layer: nn.Module, activation: str) -> None:
        super().__init__()
        fusion = hf_layer.fusion_layer
        attn = fusion.attn
        self.fuse_norm_v = fusion.layer_norm_vision
        self.fuse_norm_t = fusion.layer_norm_text
        self.fuse_gamma_v = fusion.vision_param
        self.fuse_gamma_t = fusion.text_param
        self.q_v = attn.vision_proj
        self.k_t = attn.text_proj
        self.v_v = attn.values_vision_proj
        self.v_t = attn.values_text_proj
        self.o_v = attn.out_vision_proj
        self.o_t = attn.out_text_proj
        self.fusion_heads = int(attn.num_heads)
        self.fusion_scale = float(attn.scale)

        text = hf_layer.text_enhancer_layer
        self.t_attn = text.self_attn
        self.t_heads = int(text.self_attn.num_attention_heads)
        self.t_fc1, self.t_fc2 = text.fc1, text.fc2
        self.t_norm1, self.t_norm2 = text.layer_norm_before, text.layer_norm_after

        deform = hf_layer.deformable_layer
        self.attn = _DeformableAttention(deform.self_attn)
        self.norm1 = deform.self_attn_layer_norm
        self.fc1, self.fc2 = deform.fc1, deform.fc2
        self.norm2 = deform.final_layer_norm
        self.activation = activation

    # -- fusion ------------------------------------------------------------------------------
    def fuse(
        self, vision: Tensor, text: Tensor, vision_pad: Tensor | None, text_pad: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        """Bi-directional image-text attention, reformulated around the short text side.

        ``vision`` ``(B, N, D)``, ``text`` ``(B, T, D)``; ``*_pad`` bool, True at padding.
        Returns the updated (vision, text), both after the pre-attention LayerNorms plus the
        layer-scaled attention outputs (as transformers' fusion layer).
        """
        b, t_len, _ = text.shape
        heads, scale = self.fusion_heads, self.fusion_scale
        v = _layer_norm(self.fuse_norm_v, vision)
        t = _layer_norm(self.fuse_norm_t, text)
        dim = self.q_v.weight.shape[0] // heads
        wq = self.q_v.weight.view(heads, dim, -1)  # (H, hd, D)
        k = self.k_t(t).view(b, t_len, heads, dim).transpose(1, 2)  # (B, H, T, hd)
        # scores_bnht = v_bn . (Wq_h^T k_ht) * scale + bq_h . k_ht * scale
        proj = torch.einsum("hdc,bhtd->bcht", wq, k).mul_(scale).flatten(2)  # (B, D, H*T)
        bias = torch.einsum("hd,bhtd->bht", self.q_v.bias.view(heads, dim), k).mul_(scale)
        scores = torch.baddbmm(bias.flatten(1)[:, None, :], v, proj)  # (B, N, H*T)

        # Image side: softmax over text tokens; output sum_h P_h (t Wvt_h^T + b) Wo_h^T + bo.
        s4 = scores.view(b, -1, heads, t_len)
        if text_pad is not None and bool(text_pad.any()):
            s4 = s4.masked_fill(text_pad[:, None, None, :], float("-inf"))
        probs = s4.softmax(-1).view(b, -1, heads * t_len)
        vt = self.v_t(t).view(b, t_len, heads, dim).transpose(1, 2)  # (B, H, T, hd)
        wo = self.o_v.weight.view(-1, heads, dim)  # (D, H, hd)
        gamma_v = self.fuse_gamma_v
        mix = torch.einsum("bhtd,chd->bhtc", vt, wo).mul_(gamma_v).flatten(1, 2)  # (B, H*T, D)

        # Text side: softmax over image tokens; (softmax v) Wvv_h^T + bvv_h (rows sum to 1).
        st = scores.transpose(1, 2)  # (B, H*T, N)
        if vision_pad is not None and bool(vision_pad.any()):
            st = st.masked_fill(vision_pad[:, None, :], float("-inf"))
        pooled = torch.bmm(st.softmax(-1), v).view(b, heads, t_len, -1)  # (B, H, T, D)
        wvv = self.v_v.weight.view(heads, dim, -1)  # (H, hd, D)
        text_ctx = torch.einsum("bhtc,hdc->bthd", pooled, wvv).flatten(2) + self.v_v.bias
        text_out = torch.addcmul(t, self.o_t(text_ctx), self.fuse_gamma_t)

        vision_out = torch.baddbmm(v, probs, mix.to(v.dtype))
        vision_out.add_(self.o_v.bias * gamma_v)
        return vision_out, text_out

    # -- text enhancer ----------------------------------------------------------------------
    def enhance_text(self, text: Tensor, self_mask: Tensor, pos: Tensor) -> Tensor:
        """Text self-attention (phrase-block mask) + FFN, post-norm. ``(B, T, D)``."""
        attn = self.t_attn
        b, t_len, d = text.shape
        heads = self.t_heads
        qk = text + pos

        def split(x: Tensor) -> Tensor:
            return x.view(b, t_len, heads, -1).transpose(1, 2)

        ctx = F.scaled_dot_product_attention(
            split(attn.query(qk)), split(attn.key(qk)), split(attn.value(text)), self_mask[:, None]
        )
        ctx = ctx.transpose(1, 2).reshape(b, t_len, d)
        text = _layer_norm(self.t_norm1, text + attn.out_proj(ctx))
        hidden = _linear_act(self.t_fc1, text, self.activation, fused=False)
        return _layer_norm(self.t_norm2, text + self.t_fc2(hidden))

    # -- deformable self-attention + FFN ----------------------------------------------------
    def deformable_ffn(
        self,
        vision: Tensor,
        pos: Tensor,
        valid: Tensor | None,
        base: tuple[Tensor, Tensor],
        levels: _Levels,
        table: Tensor,
        fused: bool,
    ) -> Tensor:
        """``vision`` ``(B, N, D)`` -> the layer's output, in chunks of :data:`_SAMPLE_CHUNK`
        tokens for the sampling and :data:`_CHUNK` tokens for the FFN.

        ``base``: x and y ``(B, N, H*L*P)``, each token's reference point in padded pixels.
        ``table``: ``(B, padded_len, D)`` scratch buffer with a zero border.
        """
        b, n, _ = vision.shape
        out = None if b == 1 and n <= _SAMPLE_CHUNK else torch.empty_like(vision)
        for i in range(b):
            values = self.attn.value_table(
                vision[i], None if valid is None else valid[i], levels, table[i], fused
            )
            for s in range(0, n, _SAMPLE_CHUNK):
                e = min(n, s + _SAMPLE_CHUNK)
                x = vision[i, s:e]
                origin = (base[0][i, s:e], base[1][i, s:e])
                sampled = self.attn.sample(x + pos[i, s:e], values, origin, None, levels, fused)
                x = _layer_norm(self.norm1, _add_linear(self.attn.output_proj, sampled, x, fused))
                y = _ffn(self.fc1, self.fc2, x, self.activation, fused)
                result = _layer_norm(self.norm2, y)
                if out is None:  # one image, one chunk: no copy into a batch tensor
                    return result[None]
                out[i, s:e] = result
        return out


# --------------------------------------------------------------------------- decoder
def _mha(
    attn: nn.Module, heads: int, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None
) -> Tensor:
    """transformers' ``GroundingDinoMultiheadAttention`` (query/key/value/out_proj) via SDPA."""
    b, nq, d = q.shape

    def split(x: Tensor) -> Tensor:
        return x.view(b, x.shape[1], heads, -1).transpose(1, 2)

    ctx = F.scaled_dot_product_attention(
        split(attn.query(q)), split(attn.key(k)), split(attn.value(v)), mask
    )
    return attn.out_proj(ctx.transpose(1, 2).reshape(b, nq, d))


class _DecoderLayer(nn.Module):
    def __init__(self, hf_layer: nn.Module, heads: int, activation: str) -> None:
        super().__init__()
        self.self_attn = hf_layer.self_attn
        self.norm1 = hf_layer.self_attn_layer_norm
        self.text_attn = hf_layer.encoder_attn_text
        self.norm2 = hf_layer.encoder_attn_text_layer_norm
        self.attn = _DeformableAttention(hf_layer.encoder_attn)
        self.norm3 = hf_layer.encoder_attn_layer_norm
        self.fc1, self.fc2 = hf_layer.fc1, hf_layer.fc2
        self.norm4 = hf_layer.final_layer_norm
        self.heads = heads
        self.activation = activation

    def forward(
        self,
        h: Tensor,
        pos: Tensor,
        text: Tensor,
        text_mask: Tensor,
        memory: Tensor,
        valid: Tensor | None,
        base: tuple[Tensor, Tensor],
        scale: tuple[Tensor, Tensor],
        levels: _Levels,
        table: Tensor,
        fused: bool,
    ) -> Tensor:
        """``h`` ``(B, Q, D)`` queries; ``memory`` ``(B, S, D)`` encoder image tokens;
        ``text_mask`` ``(B, 1, 1, T)`` bool (True: real token); ``base``/``scale``
        x and y ``(B, Q, H*L*P)`` sampling geometry."""
        qk = h + pos
        h = _layer_norm(self.norm1, h + _mha(self.self_attn, self.heads, qk, qk, h, None))
        h = _layer_norm(
            self.norm2, h + _mha(self.text_attn, self.heads, h + pos, text, text, text_mask)
        )
        out = torch.empty_like(h)
        for i in range(h.shape[0]):
            values = self.attn.value_table(
                memory[i], None if valid is None else valid[i], levels, table[i], fused
            )
            origin, factor = (base[0][i], base[1][i]), (scale[0][i], scale[1][i])
            sampled = self.attn.sample(h[i] + pos[i], values, origin, factor, levels, fused)
            x = _layer_norm(self.norm3, _add_linear(self.attn.output_proj, sampled, h[i], fused))
            out[i] = _layer_norm(self.norm4, _ffn(self.fc1, self.fc2, x, self.activation, fused))
        return out


# --------------------------------------------------------------------------- the model
class FastGroundingDino(nn.Module):
    """transformers' ``GroundingDinoForObjectDetection`` forward pass, faster, same outputs.

    Build with :meth:`from_hf` (or :func:`fast_model`). The Swin backbone, BERT text encoder,
    input projections and prediction heads are transformers' own modules (shared, so weights
    are not duplicated in fp32 and bf16/fp16 modes); the encoder and decoder run this module's
    code on the same parameters.
    """

    def __init__(self, hf_model: nn.Module, precision: str = "fp32") -> None:
        super().__init__()
        problems = unsupported_features(hf_model)
        if problems:
            raise UnsupportedGroundingDinoError(
                "FastGroundingDino cannot reproduce this Grounding DINO: "
                + "; ".join(problems)
                + ". Run the transformers model itself (fast_model(..., fallback=True) does)"
            )
        self.precision = check_precision(precision)
        cfg = hf_model.config
        self.config = cfg
        m = hf_model.model
        act = cfg.activation_function
        self.d_model = int(cfg.d_model)
        self.max_text_len = int(cfg.max_text_len)
        self.num_queries = int(cfg.num_queries)
        self.two_stage = bool(cfg.two_stage)
        self.pos_temperature = float(cfg.positional_embedding_temperature)
        self.num_levels = int(cfg.num_feature_levels)

        self.text_backbone = m.text_backbone
        self.text_projection = m.text_projection
        self.conv_encoder = m.backbone.conv_encoder
        # Our Swin forward when the backbone is transformers' SwinBackbone, else theirs.
        backbone = self.conv_encoder.model
        self.swin = _FastSwin(backbone) if _swin_supported(backbone) else None
        self.input_proj = m.input_proj_vision
        self.level_embed = m.level_embed
        self.encoder_layers = nn.ModuleList(_EncoderLayer(layer, act) for layer in m.encoder.layers)
        self.decoder_layers = nn.ModuleList(
            _DecoderLayer(layer, int(cfg.decoder_attention_heads), act)
            for layer in m.decoder.layers
        )
        self.decoder_norm = m.decoder.layer_norm
        self.query_pos_head = m.decoder.reference_points_head
        self.refine_heads = m.decoder.bbox_embed  # None: no iterative box refinement
        self.box_heads = hf_model.bbox_embed
        self.query_embed = getattr(m, "query_position_embeddings", None)
        if self.two_stage:
            self.enc_output = m.enc_output
            self.enc_output_norm = m.enc_output_norm
            self.enc_box_head = m.encoder_output_bbox_embed
        else:
            self.reference_points = m.reference_points
        self.register_buffer("special_ids", _special_token_ids(hf_model), persistent=False)

    @classmethod
    def from_hf(cls, hf_model: nn.Module, precision: str = "fp32") -> FastGroundingDino:
        """Wrap a loaded transformers ``GroundingDinoForObjectDetection``.

        ``"fp32"``, ``"bf16"``, ``"fp16"`` share ``hf_model``'s parameters (load or move the
        weights before, or through, either model). ``"int8"`` (CPU only) quantises a deep copy,
        leaving ``hf_model`` as it is.

        Raises:
            UnsupportedGroundingDinoError: a config feature or module layout this code does not
                implement (the message lists them).
            ValueError: an unknown precision, or int8 on a non-CPU model.
        """
        device = next(hf_model.parameters()).device
        check_precision(precision, device)
        if precision == "int8":
            problems = unsupported_features(hf_model)
            if problems:  # before the copy: same error as below, without copying 700 MB
                return cls(hf_model, precision)
            hf_model = copy.deepcopy(hf_model)
        fast = cls(hf_model, precision).eval()
        if precision == "int8":
            fast._quantize()
        return fast

    def _quantize(self) -> None:
        """Dynamic int8 (per-call activation scales) for the Swin backbone's linear layers and
        the encoder's and decoder's image-token linear layers. The fusion projections stay
        fp32: this code reads their weight matrices directly (and they are cheap here)."""
        try:
            from torch.ao.quantization import quantize_dynamic
        except ImportError as e:  # pragma: no cover - depends on the PyTorch build
            raise RuntimeError(
                f"precision='int8' needs torch.ao.quantization.quantize_dynamic, which PyTorch "
                f"{torch.__version__} does not have; use precision='fp32'"
            ) from e
        with warnings.catch_warnings():
            # PyTorch >= 2.10 marks its quantized-tensor API as deprecated; it still works.
            for category in (UserWarning, DeprecationWarning, FutureWarning):
                warnings.simplefilter("ignore", category)
            # Our Swin blocks hold their own references to the linear layers: quantise those.
            backbone = self.conv_encoder if self.swin is None else self.swin
            quantize_dynamic(backbone, {nn.Linear}, dtype=torch.qint8, inplace=True)
            for layer in (*self.encoder_layers, *self.decoder_layers):
                quantize_dynamic(layer, {"attn", "fc1", "fc2"}, dtype=torch.qint8, inplace=True)

    # ------------------------------------------------------------------------------ text
    @torch.inference_mode()
    def encode_text(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
    ) -> TextFeatures:
        """Run BERT and the text projection once for a prompt (or a batch of prompts).

        Args:
            input_ids: ``(B, T)`` int64 token ids from the processor/tokenizer, ``T <=
                config.max_text_len``.
            attention_mask: ``(B, T)`` 1 for real tokens (default: all).
            token_type_ids: ``(B, T)`` (default: zeros).

        Returns:
            :class:`TextFeatures`, for ``forward(..., text_features=...)`` on any number of
            images (a batch-1 prompt is shared by every image of a batch).
        """
        device = self.special_ids.device
        input_ids = input_ids.to(device)
        if input_ids.ndim != 2:
            raise InputError(
                f"input_ids must be (batch, tokens), got shape {tuple(input_ids.shape)}"
            )
        if input_ids.shape[1] > self.max_text_len:
            raise InputError(
                f"the prompt has {input_ids.shape[1]} tokens, more than this model's "
                f"max_text_len={self.max_text_len}; split it into shorter prompts"
            )
        attention_mask = (
            torch.ones_like(input_ids) if attention_mask is None else attention_mask.to(device)
        )
        token_type_ids = (
            torch.zeros_like(input_ids) if token_type_ids is None else token_type_ids.to(device)
        )
        self_mask, positions = phrase_attention_mask(input_ids, self.special_ids)
        with self._autocast(input_ids.device):
            hidden = self.text_backbone(
                input_ids=input_ids,
                # transformers 5 hands BERT a (B, 1, T, T) mask, 4.x a (B, T, T) one.
                attention_mask=self_mask[:, None] if _transformers_major() >= 5 else self_mask,
                token_type_ids=token_type_ids,
                position_ids=positions,
                return_dict=True,
            ).last_hidden_state
            features = self.text_projection(hidden).float()
        pos = _sine_embedding(positions[..., None].float(), self.d_model)
        return TextFeatures(
            input_ids=input_ids,
            token_mask=attention_mask.bool(),
            token_type_ids=token_type_ids,
            features=features,
            self_mask=self_mask,
            position_embedding=pos,
        )

    # ------------------------------------------------------------------------------ forward
    def _autocast(self, device: torch.device) -> Any:
        dtype = _AUTOCAST.get(self.precision)
        if dtype is None:
            return torch.autocast(device.type, enabled=False)
        return torch.autocast(device.type, dtype=dtype)

    @torch.inference_mode()
    def forward(
        self,
        pixel_values: Tensor,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        pixel_mask: Tensor | None = None,
        text_features: TextFeatures | None = None,
    ) -> FastGroundingDinoOutput:
        """Detect: the outputs transformers' model gives for the same inputs.

        Args:
            pixel_values: ``(B, 3, H, W)`` float, normalised as the processor does; a batch of
                differently sized images is zero-padded to one size with ``pixel_mask``.
            input_ids, attention_mask, token_type_ids: the prompt's tokens ``(1 or B, T)``, as
                the processor returns them; optional when ``text_features`` is given (if given
                too, ``input_ids`` must equal the ids the features were computed from).
            pixel_mask: ``(B, H, W)`` 1 for real pixels, 0 for padding (default: all real).
            text_features: from :meth:`encode_text`, to skip the text encoder.

        Returns:
            :class:`FastGroundingDinoOutput` (``logits``, ``pred_boxes``, ``input_ids``), float32.
        """
        if text_features is None:
            if input_ids is None:
                raise InputError("pass input_ids (the tokenised prompt) or text_features")
            text_features = self.encode_text(input_ids, attention_mask, token_type_ids)
        elif text_features.features is None:
            raise InputError(
                "text_features hold no encoded text (made by HFGroundingDinoRunner.encode_text); "
                "use this model's encode_text"
            )
        elif input_ids is not None:
            ids = input_ids.to(text_features.input_ids.device)
            if ids.shape[-1] != text_features.input_ids.shape[-1] or not bool(
                (ids == text_features.input_ids).all()
            ):
                raise InputError(
                    "input_ids differ from the ids text_features were computed from; call "
                    "encode_text(...) for this prompt"
                )
        batch = pixel_values.shape[0]
        text = text_features.expand(batch)
        with self._autocast(pixel_values.device):
            logits, boxes = self._detect(pixel_values, pixel_mask, text)
        return FastGroundingDinoOutput(logits.float(), boxes.float(), text.input_ids)

    def _image_tokens(
        self, pixel_values: Tensor, pixel_mask: Tensor | None, fused: bool
    ) -> tuple[Tensor, Tensor, Tensor | None, list[tuple[int, int]], list[Tensor]]:
        """Backbone + input projections, flattened: tokens ``(B, S, D)``, position + level
        embedding ``(B, S, D)``, validity ``(B, S)`` bool (None: no padding), level shapes,
        per-level masks ``(B, H_l, W_l)`` bool."""
        b, _, height, width = pixel_values.shape
        device = pixel_values.device
        if pixel_mask is None:
            pixel_mask = torch.ones((b, height, width), dtype=torch.long, device=device)
        if self.swin is not None:
            features = []
            for f in self.swin(pixel_values, fused):
                mask = F.interpolate(pixel_mask[None].float(), size=f.shape[-2:]).to(torch.bool)[0]
                features.append((f, mask))
        else:
            features = self.conv_encoder(pixel_values, pixel_mask)
        maps = [proj(f) for proj, (f, _) in zip(self.input_proj, features, strict=False)]
        masks = [mask for _, mask in features]
        for level in range(len(maps), self.num_levels):
            source = features[-1][0] if level == len(features) else maps[-1]
            maps.append(self.input_proj[level](source))
            size = maps[-1].shape[-2:]
            masks.append(F.interpolate(pixel_mask[None].float(), size=size).to(torch.bool)[0])
        shapes = [(int(f.shape[-2]), int(f.shape[-1])) for f in maps]
        total = sum(h * w for h, w in shapes)
        dim = self.d_model
        tokens = torch.empty((b, total, dim), dtype=maps[0].dtype, device=device)
        pos = torch.empty((b, total, dim), dtype=maps[0].dtype, device=device)
        start = 0
        for level, (f, mask) in enumerate(zip(maps, masks, strict=True)):
            h, w = shapes[level]
            tokens[:, start : start + h * w].view(b, h, w, dim).copy_(f.permute(0, 2, 3, 1))
            emb = self._pixel_position(mask).add_(self.level_embed[level].to(pos.dtype))
            pos[:, start : start + h * w].view(b, h, w, dim).copy_(emb)
            start += h * w
        padded = not all(bool(m.all()) for m in masks)
        valid = torch.cat([m.flatten(1) for m in masks], 1) if padded else None
        return tokens, pos, valid, shapes, masks

    def _pixel_position(self, mask: Tensor) -> Tensor:
        """Sine position embedding of a feature map, ``(B, H, W, D)`` float32, from its
        validity mask ``(B, H, W)``: cumulative valid rows / columns normalised to (0, 2 pi]."""
        half = self.d_model // 2
        m = mask.float()
        y = m.cumsum(1)
        x = m.cumsum(2)
        y = y / (y[:, -1:, :] + 1e-6) * (2 * math.pi)
        x = x / (x[:, :, -1:] + 1e-6) * (2 * math.pi)
        freq = torch.arange(half, dtype=torch.float32, device=mask.device)
        freq = self.pos_temperature ** (2 * torch.div(freq, 2, rounding_mode="floor") / half)

        def embed(c: Tensor) -> Tensor:
            a = c[..., None] / freq
            return torch.stack((a[..., 0::2].sin(), a[..., 1::2].cos()), -1).flatten(-2)

        return torch.cat((embed(y), embed(x)), -1)

    def _detect(
        self, pixel_values: Tensor, pixel_mask: Tensor | None, text: TextFeatures
    ) -> tuple[Tensor, Tensor]:
        fused = self.precision == "fp32"
        tokens, pos, valid, shapes, masks = self._image_tokens(pixel_values, pixel_mask, fused)
        b, s, dim = tokens.shape
        device = tokens.device
        levels = _Levels.build(shapes, device)
        ratios = torch.stack([_valid_ratio(m) for m in masks], 1)  # (B, L, 2) (w, h)

        # Encoder reference points: token centres normalised by the valid size, times the
        # valid ratio of each level; as padded-pixel coordinates of every level.
        ref = []
        for level, (h, w) in enumerate(shapes):
            ys = torch.linspace(0.5, h - 0.5, h, device=device)
            xs = torch.linspace(0.5, w - 0.5, w, device=device)
            gy, gx = torch.meshgrid(ys, xs, indexing="ij")
            rx = gx.reshape(-1)[None] / (ratios[:, None, level, 0] * w)
            ry = gy.reshape(-1)[None] / (ratios[:, None, level, 1] * h)
            ref.append(torch.stack((rx, ry), -1))
        ref_points = torch.cat(ref, 1)[:, :, None] * ratios[:, None]  # (B, S, L, 2)
        attn0 = self.encoder_layers[0].attn
        enc_base = levels.expand(ref_points * levels.size_xy + 0.5, attn0.heads, attn0.points)

        table = torch.zeros((b, levels.padded_len, dim), dtype=tokens.dtype, device=device)
        vision_pad = None if valid is None else ~valid
        text_pad = ~text.token_mask
        vision, txt = tokens, text.features
        for layer in self.encoder_layers:
            vision, txt = layer.fuse(vision, txt, vision_pad, text_pad)
            txt = layer.enhance_text(txt, text.self_mask, text.position_embedding)
            table = table.to(vision.dtype)
            vision = layer.deformable_ffn(vision, pos, valid, enc_base, levels, table, fused)

        target, reference = self._queries(vision, valid, txt, text.token_mask, levels)
        return self._decode(target, reference, vision, valid, txt, text, ratios, levels, fused)

    def _queries(
        self,
        memory: Tensor,
        valid: Tensor | None,
        text: Tensor,
        token_mask: Tensor,
        levels: _Levels,
    ) -> tuple[Tensor, Tensor]:
        """Decoder queries ``(B, Q, D)`` and reference boxes ``(B, Q, 4)`` (sigmoid space)."""
        b = memory.shape[0]
        if not self.two_stage:
            reference = self.reference_points.weight.sigmoid()[None].expand(b, -1, -1)
            return self.query_embed.weight[None].expand(b, -1, -1), reference
        # Two-stage: every image token proposes a box around itself; keep the num_queries
        # tokens whose best text-token logit is highest.
        proposals = []
        for level, (h, w) in enumerate(levels.shapes):
            if valid is None:
                vh = torch.full((b,), h, device=memory.device)
                vw = torch.full((b,), w, device=memory.device)
            else:
                start = levels.starts[level]
                m = valid[:, start : start + h * w].view(b, h, w)
                vh, vw = m[:, :, 0].sum(1), m[:, 0, :].sum(1)
            gy, gx = torch.meshgrid(
                torch.linspace(0, h - 1, h, device=memory.device),
                torch.linspace(0, w - 1, w, device=memory.device),
                indexing="ij",
            )
            scale = torch.stack((vw, vh), -1).view(b, 1, 1, 2)
            xy = (torch.stack((gx, gy), -1)[None] + 0.5) / scale
            wh = torch.full_like(xy, 0.05 * 2.0**level)
            proposals.append(torch.cat((xy, wh), -1).view(b, -1, 4))
        prop = torch.cat(proposals, 1)
        usable = ((prop > 0.01) & (prop < 0.99)).all(-1, keepdim=True)
        if valid is not None:
            usable &= valid[..., None]
        prop = torch.log(prop / (1 - prop)).masked_fill(~usable, float("inf"))
        query = memory.masked_fill(~usable, 0.0)
        query = _layer_norm(self.enc_output_norm, self.enc_output(query))
        logits = query @ text.transpose(1, 2)  # (B, S, T)
        logits = logits.masked_fill(~token_mask[:, None, :], float("-inf"))
        top = logits.max(-1).values.topk(self.num_queries, dim=1).indices  # (B, Q)
        picked = torch.gather(query, 1, top[..., None].expand(-1, -1, query.shape[-1]))
        coords = self.enc_box_head(picked) + torch.gather(prop, 1, top[..., None].expand(-1, -1, 4))
        return self.query_embed.weight[None].expand(b, -1, -1), coords.sigmoid()

    def _decode(
        self,
        h: Tensor,
        reference: Tensor,
        memory: Tensor,
        valid: Tensor | None,
        text: Tensor,
        prompt: TextFeatures,
        ratios: Tensor,
        levels: _Levels,
        fused: bool,
    ) -> tuple[Tensor, Tensor]:
        b = h.shape[0]
        text_mask = prompt.token_mask[:, None, None, :]
        table = torch.zeros(
            (b, levels.padded_len, self.d_model), dtype=memory.dtype, device=h.device
        )
        ratios4 = torch.cat((ratios, ratios), -1)[:, None]  # (B, 1, L, 4)
        size = levels.size_xy
        layer_input = reference
        for idx, layer in enumerate(self.decoder_layers):
            ref_in = reference[:, :, None] * ratios4  # (B, Q, L, 4)
            pos = self.query_pos_head(_sine_embedding(ref_in[:, :, 0], self.d_model // 2))
            heads, points = layer.attn.heads, layer.attn.points
            # Sampling at (x, y) + offset / points * (w, h) / 2, in padded pixels of each level.
            base = levels.expand(ref_in[..., :2] * size + 0.5, heads, points)
            scale = levels.expand(ref_in[..., 2:] * (0.5 / points) * size, heads, points)
            h = layer(h, pos, text, text_mask, memory, valid, base, scale, levels, table, fused)
            layer_input = reference
            if self.refine_heads is not None:
                delta = self.refine_heads[idx](h)
                reference = (delta + torch.special.logit(reference, eps=1e-5)).sigmoid()
        hidden = _layer_norm(self.decoder_norm, h)
        last = len(self.decoder_layers) - 1
        logits = hidden @ text.transpose(1, 2).to(hidden.dtype)  # (B, Q, T)
        logits = logits.float().masked_fill(~prompt.token_mask[:, None, :], float("-inf"))
        full = logits.new_full((*logits.shape[:-1], self.max_text_len), float("-inf"))
        full[..., : logits.shape[-1]] = logits
        delta = self.box_heads[last](hidden)
        boxes = (delta.float() + torch.special.logit(layer_input.float(), eps=1e-5)).sigmoid()
        return full, boxes


@functools.cache
def _transformers_major() -> int:
    import transformers

    return int(transformers.__version__.split(".")[0])


def _valid_ratio(mask: Tensor) -> Tensor:
    """``(B, H, W)`` bool -> ``(B, 2)`` float32 (valid width / W, valid height / H)."""
    _, h, w = mask.shape
    vh = mask[:, :, 0].sum(1, dtype=torch.float32) / h
    vw = mask[:, 0, :].sum(1, dtype=torch.float32) / w
    return torch.stack((vw, vh), -1)


def _special_token_ids(hf_model: nn.Module) -> Tensor:
    """The phrase-closing token ids the transformers model uses (a buffer in 5.x, a module
    constant in 4.x)."""
    ids = getattr(hf_model.model, "special_tokens", None)
    if isinstance(ids, Tensor):
        return ids.detach().clone().long()
    import importlib

    module = importlib.import_module(type(hf_model).__module__)
    constant = getattr(module, "SPECIAL_TOKENS", None)
    if constant is None:
        raise UnsupportedGroundingDinoError(
            "cannot find the phrase-closing token ids of this transformers version "
            "(model.special_tokens or SPECIAL_TOKENS); run the transformers model itself"
        )
    device = next(hf_model.parameters()).device
    return torch.tensor(list(constant), dtype=torch.long, device=device)


# --------------------------------------------------------------------------- fallback + entry
class HFGroundingDinoRunner(nn.Module):
    """transformers' model behind :class:`FastGroundingDino`'s interface (the fallback).

    ``encode_text`` only records the tokens (the model re-encodes them per call); ``precision``
    bf16/fp16 runs under autocast, int8 quantises a copy's linear layers dynamically.
    """

    def __init__(self, hf_model: nn.Module, precision: str = "fp32") -> None:
        super().__init__()
        device = next(hf_model.parameters()).device
        self.precision = check_precision(precision, device)
        if precision == "int8":
            from torch.ao.quantization import quantize_dynamic

            with warnings.catch_warnings():
                for category in (UserWarning, DeprecationWarning, FutureWarning):
                    warnings.simplefilter("ignore", category)
                hf_model = quantize_dynamic(copy.deepcopy(hf_model), {nn.Linear}, dtype=torch.qint8)
        self.hf_model = hf_model

    def encode_text(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
    ) -> TextFeatures:
        """Only records the tokens: transformers' model encodes the text on every call."""
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        types = torch.zeros_like(input_ids) if token_type_ids is None else token_type_ids
        return TextFeatures(input_ids, mask.bool(), types)

    @torch.inference_mode()
    def forward(
        self,
        pixel_values: Tensor,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        pixel_mask: Tensor | None = None,
        text_features: TextFeatures | None = None,
    ) -> Any:
        if text_features is not None:
            batch = pixel_values.shape[0]
            text = text_features.expand(batch)
            input_ids, token_type_ids = text.input_ids, text.token_type_ids
            attention_mask = text.token_mask.long()
        dtype = _AUTOCAST.get(self.precision)
        with torch.autocast(pixel_values.device.type, dtype=dtype, enabled=dtype is not None):
            out = self.hf_model(
                pixel_values=pixel_values,
                input_ids=input_ids,
                attention_mask=attention_mask,
                token_type_ids=token_type_ids,
                pixel_mask=pixel_mask,
            )
        return FastGroundingDinoOutput(out.logits.float(), out.pred_boxes.float(), input_ids)


def fast_model(
    hf_model: nn.Module, precision: str = "fp32", *, fallback: bool = True
) -> FastGroundingDino | HFGroundingDinoRunner:
    """The fast Grounding DINO for a loaded transformers model, or the model itself.

    Args:
        hf_model: ``GroundingDinoForObjectDetection`` (``AutoModelForZeroShotObjectDetection``),
            weights loaded, on its final device, ``eval()``.
        precision: one of :data:`grounded_sam.model.precision.PRECISIONS`.
        fallback: when the config uses a feature :class:`FastGroundingDino` does not implement,
            log a warning naming it and return :class:`HFGroundingDinoRunner` (same interface,
            transformers' speed); ``False``: raise :class:`UnsupportedGroundingDinoError`.

    Both returned kinds take ``encode_text(input_ids, attention_mask, token_type_ids)`` and
    ``model(pixel_values, input_ids=..., attention_mask=..., token_type_ids=...,
    pixel_mask=..., text_features=...)`` and return ``.logits`` / ``.pred_boxes``.
    """
    if precision not in PRECISIONS:
        check_precision(precision)
    try:
        return FastGroundingDino.from_hf(hf_model, precision)
    except UnsupportedGroundingDinoError as e:
        if not fallback:
            raise
        _LOG.warning("%s; using the transformers model (slower)", e)
        return HFGroundingDinoRunner(hf_model, precision)
