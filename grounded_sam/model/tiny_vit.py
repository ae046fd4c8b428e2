"""TinyViT, MobileSAM's image encoder (about 5M parameters in the encoder proper).

The module tree and parameter names follow MobileSAM's ``mobile_sam.pt`` (the keys under its
``image_encoder.`` prefix, which are also those of ultralytics' ``build_mobile_sam()``), so an
official checkpoint loads with ``strict=True``. That includes the ImageNet classification head
(``norm_head``, ``head``) MobileSAM keeps but never uses, and the SAM ``neck``.

Layout of the network for a (B, 3, 1024, 1024) input::

    patch_embed   two stride-2 3x3 Conv+BN (GELU between)    -> (B, 64, 256, 256)
    layers[0]     MBConv blocks, then PatchMerging (stride 2) -> (B, 128, 128, 128)
    layers[1]     TinyViT blocks (window 7), PatchMerging (2)  -> (B, 160, 64, 64)
    layers[2]     TinyViT blocks (window 14), PatchMerging (1) -> (B, 320, 64, 64)
    layers[3]     TinyViT blocks (window 7)                    -> (B, 320, 64, 64)
    neck          1x1 conv, LayerNorm2d, 3x3 conv, LayerNorm2d -> (B, 256, 64, 64)

A TinyViT block is windowed self-attention (zero-padded to whole windows, the padding taking part
as keys exactly as in the official model, with a learned per-head bias indexed by the absolute
(dy, dx) offset between two tokens), a residual, a depthwise Conv+BN ("local conv", no residual)
and a residual MLP. Attention runs through ``F.scaled_dot_product_attention`` with the bias as an
additive mask.

Every convolution that is followed by BatchNorm is a :class:`Conv2dBN` holding the two modules
separately (checkpoint names ``c`` and ``bn``), so :meth:`TinyViT.fuse` can fold the BatchNorm
into the convolution after loading. The forward pass runs channels-last; transformer stages keep
their tokens as (B, H, W, C), the memory layout of a channels-last (B, C, H, W) tensor, so
moving between convolutions and token-wise layers needs no copies.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from grounded_sam.model._fused import (
    add_,
    conv2d_add,
    conv2d_gelu,
    gelu_,
    linear_add,
    linear_gelu,
)
from grounded_sam.model.common import LayerNorm2d

__all__ = ["Conv2dBN", "TinyViT", "tiny_vit_5m"]


def _drop_path(x: torch.Tensor, rate: float, training: bool) -> torch.Tensor:
    """Stochastic depth: zero whole samples of a residual branch with probability ``rate``."""
    if rate == 0.0 or not training:
        return x
    keep = 1.0 - rate
    mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
    return x * mask / keep


class Conv2dBN(nn.Module):
    """``Conv2d`` without bias followed by ``BatchNorm2d``, foldable into one conv by :meth:`fuse`.

    Padding is ``kernel_size // 2`` (same-size output at stride 1).
    State-dict keys: ``c.weight``, ``bn.weight``, ``bn.bias``, ``bn.running_mean``,
    ``bn.running_var``, ``bn.num_batches_tracked``; after :meth:`fuse`: ``c.weight``, ``c.bias``.

    Input (B, in_chans, H, W) float, output (B, out_chans, ceil(H / stride), ceil(W / stride)).
    """

    def __init__(
        self,
        in_chans: int,
        out_chans: int,
        kernel_size: int = 1,
        *,
        stride: int = 1,
        groups: int = 1,
    ) -> None:
        super().__init__()
        self.c = nn.Conv2d(
            in_chans,
            out_chans,
            kernel_size,
            stride=stride,
            padding=kernel_size // 2,
            groups=groups,
            bias=False,
        )
        self.bn: nn.Module = nn.BatchNorm2d(out_chans)

    @property
    def is_fused(self) -> bool:
        """True once :meth:`fuse` has folded the BatchNorm into the convolution."""
        return isinstance(self.bn, nn.Identity)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.c(x))

    def forward_gelu(self, x: torch.Tensor) -> torch.Tensor:
        """``F.gelu(self(x))``, with the GELU fused into the convolution once BN is folded."""
        if self.is_fused:
            return conv2d_gelu(self.c, x)
        return gelu_(self(x))

    def forward_add(self, x: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        """``self(x) + other``, with the add fused into the convolution once BN is folded."""
        if self.is_fused:
            return conv2d_add(self.c, x, other)
        return add_(self(x), other)

    @torch.no_grad()
    def fuse(self) -> None:
        """Fold the BatchNorm's running statistics and affine into the convolution, in place.

        Exact for inference (eval-mode BatchNorm is an affine map per channel); afterwards the
        module computes the same function with one convolution and the BatchNorm is gone, so
        training statistics are no longer updated. A second call does nothing. Raises
        ``RuntimeError`` in training mode, whose batch statistics cannot be folded.
        """
        if self.is_fused:
            return
        if self.training:
            raise RuntimeError(
                "Conv2dBN.fuse() folds BatchNorm running statistics, which only eval mode uses; "
                "call .eval() first"
            )
        conv, bn = self.c, self.bn
        assert isinstance(bn, nn.BatchNorm2d)
        # Fold in float64, then cast back, so fusion adds no rounding of its own.
        weight = conv.weight.double()
        scale = bn.weight.double() * torch.rsqrt(bn.running_var.double() + bn.eps)
        fused = nn.Conv2d(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            stride=conv.stride,
            padding=conv.padding,
            dilation=conv.dilation,
            groups=conv.groups,
            bias=True,
            device=conv.weight.device,
            dtype=conv.weight.dtype,
        )
        fused.weight.copy_(weight * scale[:, None, None, None])
        fused.bias.copy_(bn.bias.double() - bn.running_mean.double() * scale)
        fused.train(self.training)
        self.c = fused
        self.bn = nn.Identity()


class _PatchEmbed(nn.Module):
    """Two stride-2 3x3 Conv+BN with a GELU between: (B, C_in, H, W) -> (B, D, H/4, W/4).

    Keys ``seq.0.*`` and ``seq.2.*`` (``seq.1`` is the parameter-free GELU).
    """

    def __init__(self, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.seq = nn.Sequential(
            Conv2dBN(in_chans, embed_dim // 2, 3, stride=2),
            nn.GELU(),
            Conv2dBN(embed_dim // 2, embed_dim, 3, stride=2),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        first, _, second = self.seq
        return second(first.forward_gelu(x))


# Working-set budget of one stripe of an MBConv block's hidden activation (see _MBConv).
_STRIPE_BYTES = 4 << 20


class _MBConv(nn.Module):
    """Inverted bottleneck (1x1 expand, 3x3 depthwise, 1x1 project) with a residual.

    (B, C, H, W) -> (B, C, H, W); GELU after each of the first two convs and after the sum.

    For CPU inference the block runs in horizontal stripes of rows, each with its one-row halo
    for the depthwise conv, so the 4x-expanded hidden activation (64 MiB for one MobileSAM image)
    never exists in full: each stripe's stays in cache and reuses the allocator's memory. The
    outputs are the same (every output pixel sees the same inputs and weights).
    """

    def __init__(self, dim: int, expand_ratio: float, drop_path: float) -> None:
        super().__init__()
        hidden = int(dim * expand_ratio)
        self.conv1 = Conv2dBN(dim, hidden, 1)
        self.conv2 = Conv2dBN(hidden, hidden, 3, groups=hidden)
        self.conv3 = Conv2dBN(hidden, dim, 1)
        self.drop_path = drop_path

    def _forward_rows(self, x: torch.Tensor, rows: slice | None = None) -> torch.Tensor:
        """The block's output for ``rows`` of ``x`` (all rows when None)."""
        if rows is None:
            y = self.conv2.forward_gelu(self.conv1.forward_gelu(x))
            return gelu_(self.conv3.forward_add(y, x))
        start, stop = rows.start, rows.stop
        lo, hi = max(start - 1, 0), min(stop + 1, x.shape[2])
        y = self.conv2.forward_gelu(self.conv1.forward_gelu(x[:, :, lo:hi]))
        y = y[:, :, start - lo : stop - lo]  # drop the halo rows (padded wrongly at the cut)
        return gelu_(self.conv3.forward_add(y, x[:, :, start:stop]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and self.drop_path > 0.0:
            y = self.conv2.forward_gelu(self.conv1.forward_gelu(x))
            return F.gelu(x + _drop_path(self.conv3(y), self.drop_path, self.training))
        b, _, h, w = x.shape
        hidden = self.conv1.c.out_channels
        rows = max(2, _STRIPE_BYTES // max(1, b * w * hidden * x.element_size()) - 2)
        if x.device.type != "cpu" or torch.is_grad_enabled() or rows >= h:
            return self._forward_rows(x)
        out = torch.empty_like(x)
        for start in range(0, h, rows):
            stop = min(start + rows, h)
            out[:, :, start:stop] = self._forward_rows(x, slice(start, stop))
        return out


class _PatchMerging(nn.Module):
    """1x1 Conv+BN, depthwise 3x3 Conv+BN at ``stride``, 1x1 Conv+BN (GELU after the first two).

    (B, C, H, W) -> (B, C_out, ceil(H / stride), ceil(W / stride)).
    """

    def __init__(self, dim: int, out_dim: int, stride: int) -> None:
        super().__init__()
        self.conv1 = Conv2dBN(dim, out_dim, 1)
        self.conv2 = Conv2dBN(out_dim, out_dim, 3, stride=stride, groups=out_dim)
        self.conv3 = Conv2dBN(out_dim, out_dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv3(self.conv2.forward_gelu(self.conv1.forward_gelu(x)))


class _Mlp(nn.Module):
    """Pre-norm feed-forward: ``fc2(gelu(fc1(norm(x))))`` on (..., C) tokens.

    ``forward(x, residual)`` adds ``residual`` to the output (fused into ``fc2`` where possible).
    """

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        hidden = linear_gelu(self.fc1, self.norm(x))
        return self.fc2(hidden) if residual is None else linear_add(self.fc2, hidden, residual)


def _window_offset_index(window_size: int) -> torch.Tensor:
    """(N, N) int64 index of the attention bias for each query/key pair of a window, N = ws^2.

    Tokens are numbered row-major; the pair (i, j) gets ``|dy| * ws + |dx|``, which is the order
    in which the official implementation first meets each absolute offset, so the
    ``attention_biases`` columns of a checkpoint line up with it.
    """
    coords = torch.arange(window_size)
    ys = coords.repeat_interleave(window_size)
    xs = coords.repeat(window_size)
    dy = (ys[:, None] - ys[None, :]).abs()
    dx = (xs[:, None] - xs[None, :]).abs()
    return dy * window_size + dx


class _WindowAttention(nn.Module):
    """Pre-norm multi-head self-attention over the tokens of one window, with a learned bias.

    Input/output (B_windows, ws * ws, C). ``qkv`` emits, for each head in turn, that head's
    query, key and value (the official layout, not Meta's ViT one). ``attention_biases`` is
    (num_heads, ws * ws): one learned logit offset per head and absolute (dy, dx); the
    non-persistent buffer ``attention_bias_idxs`` (N, N) expands it to a full (heads, N, N) bias.
    """

    def __init__(self, dim: int, num_heads: int, window_size: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.window_size = window_size
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, window_size * window_size))
        self.register_buffer(
            "attention_bias_idxs", _window_offset_index(window_size), persistent=False
        )

        self._bias_cache: tuple[tuple, torch.Tensor] | None = None

    def attention_bias(self) -> torch.Tensor:
        """The additive (num_heads, N, N) attention bias, N = window_size ** 2.

        With autograd off (``no_grad``/``inference_mode``) the gathered bias is cached until ``attention_biases``
        changes (any in-place update, ``load_state_dict`` included, bumps its version) or moves.
        """
        table = self.attention_biases
        if torch.is_grad_enabled() or table.is_inference():
            return table[:, self.attention_bias_idxs]
        key = (table._version, table.data_ptr(), table.device, table.dtype)
        if self._bias_cache is None or self._bias_cache[0] != key:
            with torch.no_grad():
                self._bias_cache = (key, table[:, self.attention_bias_idxs])
        return self._bias_cache[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(self.norm(x)).view(b, n, self.num_heads, 3, self.head_dim)
        q, k, v = qkv.permute(3, 0, 2, 1, 4).unbind(0)  # each (b, heads, n, head_dim)
        # A 4-D (1, heads, n, n) mask: with a 3-D one PyTorch's CPU dispatch falls back from the
        # fused (flash) kernel to the unfused math path, about 5x slower here.
        bias = self.attention_bias().to(q.dtype)[None]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class _TinyViTBlock(nn.Module):
    """Windowed attention + residual, depthwise local Conv+BN, MLP + residual.

    Input/output (B, H, W, C) tokens. The map is zero-padded at the bottom/right to whole
    windows before the attention's LayerNorm; padded tokens act as keys (as in the official
    model) and are cropped from the output.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window_size: int,
        mlp_ratio: float,
        local_conv_size: int,
        drop_path: float,
    ) -> None:
        super().__init__()
        self.window_size = window_size
        self.attn = _WindowAttention(dim, num_heads, window_size)
        self.mlp = _Mlp(dim, int(dim * mlp_ratio))
        self.local_conv = Conv2dBN(dim, dim, local_conv_size, groups=dim)
        self.drop_path = drop_path

    def _windowed_attention(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        ws = self.window_size
        pad_b, pad_r = (-h) % ws, (-w) % ws
        if pad_b or pad_r:
            x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))
        hp, wp = h + pad_b, w + pad_r
        nh, nw = hp // ws, wp // ws
        windows = x.reshape(b, nh, ws, nw, ws, c).transpose(2, 3).reshape(b * nh * nw, ws * ws, c)
        out = self.attn(windows)
        out = out.view(b, nh, nw, ws, ws, c).transpose(2, 3).reshape(b, hp, wp, c)
        if pad_b or pad_r:
            out = out[:, :h, :w]
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and self.drop_path > 0.0:
            x = x + _drop_path(self._windowed_attention(x), self.drop_path, self.training)
            x = self.local_conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
            return x + _drop_path(self.mlp(x), self.drop_path, self.training)
        x = add_(self._windowed_attention(x), x)  # a fresh tensor: add the residual in place
        x = self.local_conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return self.mlp(x, residual=x)


class _ConvStage(nn.Module):
    """Stage 0: MBConv blocks then an optional PatchMerging; (B, C, H, W) in and out."""

    def __init__(
        self,
        dim: int,
        depth: int,
        expand_ratio: float,
        drop_paths: Sequence[float],
        downsample: _PatchMerging | None,
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(_MBConv(dim, expand_ratio, drop_paths[i]) for i in range(depth))
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x if self.downsample is None else self.downsample(x)


class _AttentionStage(nn.Module):
    """Stages 1+: TinyViT blocks on (B, H, W, C) tokens then an optional PatchMerging.

    Input and output are (B, C, H, W); the tokens are a permuted view of it.
    """

    def __init__(
        self,
        dim: int,
        depth: int,
        num_heads: int,
        window_size: int,
        mlp_ratio: float,
        local_conv_size: int,
        drop_paths: Sequence[float],
        downsample: _PatchMerging | None,
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            _TinyViTBlock(dim, num_heads, window_size, mlp_ratio, local_conv_size, drop_paths[i])
            for i in range(depth)
        )
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = x.permute(0, 2, 3, 1)
        for block in self.blocks:
            tokens = block(tokens)
        x = tokens.permute(0, 3, 1, 2)
        return x if self.downsample is None else self.downsample(x)


def _as_tuple(name: str, value: Sequence[int] | Sequence[float], length: int) -> tuple:
    values = tuple(value)
    if len(values) != length:
        raise ValueError(
            f"TinyViT: {name} needs one entry per stage ({length}, from len(depths)); "
            f"got {len(values)}: {values}"
        )
    return values


class TinyViT(nn.Module):
    """TinyViT image encoder with SAM's neck: (B, 3, S, S) -> (B, out_chans, S / 16, S / 16).

    With the default (MobileSAM) configuration, S = 1024: input a batch normalised with SAM's
    pixel mean/std and zero-padded to 1024x1024 (as ``Sam.preprocess`` makes), output the
    (B, 256, 64, 64) float image embedding, like Meta's ViT encoder.

    Args (all keyword-only):
        img_size: side S of the square input; a multiple of 4 * prod(merge_strides).
        in_chans: input channels.
        num_classes: size of the unused ImageNet ``head`` kept for checkpoint compatibility
            (0 makes it an ``Identity`` with no keys).
        embed_dims: channels of each stage.
        depths: blocks per stage; stage 0 is MBConv, the others TinyViT blocks.
        num_heads: attention heads per stage (entry 0 is unused: stage 0 has no attention).
        window_sizes: attention window side per stage (entry 0 unused).
        mlp_ratio: MLP hidden size / channels in TinyViT blocks.
        mbconv_expand_ratio: hidden size / channels in MBConv blocks.
        local_conv_size: kernel of the depthwise conv in TinyViT blocks (odd).
        merge_strides: stride of the PatchMerging after each stage but the last
            (MobileSAM: 2, 2, 1 so the last two stages both run at S / 16).
        out_chans: channels of the neck (SAM's prompt embedding size).
        drop_path_rate: stochastic-depth rate of the last block, rising linearly from 0 over
            all blocks; active only in training mode.
    """

    def __init__(
        self,
        *,
        img_size: int = 1024,
        in_chans: int = 3,
        num_classes: int = 1000,
        embed_dims: Sequence[int] = (64, 128, 160, 320),
        depths: Sequence[int] = (2, 2, 6, 2),
        num_heads: Sequence[int] = (2, 4, 5, 10),
        window_sizes: Sequence[int] = (7, 7, 14, 7),
        mlp_ratio: float = 4.0,
        mbconv_expand_ratio: float = 4.0,
        local_conv_size: int = 3,
        merge_strides: Sequence[int] = (2, 2, 1),
        out_chans: int = 256,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        depths = tuple(depths)
        n_stages = len(depths)
        if n_stages < 2:
            raise ValueError(
                f"TinyViT needs at least 2 stages (an MBConv stage and a TinyViT stage); "
                f"got depths={depths}"
            )
        embed_dims = _as_tuple("embed_dims", embed_dims, n_stages)
        num_heads = _as_tuple("num_heads", num_heads, n_stages)
        window_sizes = _as_tuple("window_sizes", window_sizes, n_stages)
        merge_strides = _as_tuple("merge_strides", merge_strides, n_stages - 1)
        for i in range(1, n_stages):
            if embed_dims[i] % num_heads[i] != 0:
                raise ValueError(
                    f"TinyViT: embed_dims[{i}]={embed_dims[i]} is not divisible by "
                    f"num_heads[{i}]={num_heads[i]}"
                )
            if window_sizes[i] < 1:
                raise ValueError(f"TinyViT: window_sizes[{i}] must be >= 1, got {window_sizes[i]}")
        if local_conv_size < 1 or local_conv_size % 2 == 0:
            raise ValueError(
                f"TinyViT: local_conv_size must be odd and >= 1, got {local_conv_size}"
            )
        if any(s not in (1, 2) for s in merge_strides):
            raise ValueError(f"TinyViT: merge_strides must each be 1 or 2, got {merge_strides}")
        total_stride = 4
        for s in merge_strides:
            total_stride *= s
        if img_size < total_stride or img_size % total_stride != 0:
            raise ValueError(
                f"TinyViT: img_size must be a positive multiple of {total_stride} "
                f"(4 * prod(merge_strides={merge_strides})); got {img_size}"
            )
        if not 0.0 <= drop_path_rate < 1.0:
            raise ValueError(f"TinyViT: drop_path_rate must be in [0, 1), got {drop_path_rate}")

        self.img_size = img_size
        self.in_chans = in_chans
        self.out_chans = out_chans
        self.embed_dims = embed_dims
        self.depths = depths
        self.num_heads = num_heads
        self.window_sizes = window_sizes
        self.merge_strides = merge_strides
        self.embedding_size = img_size // total_stride

        n_blocks = sum(depths)
        rates = [drop_path_rate * i / max(n_blocks - 1, 1) for i in range(n_blocks)]
        self.patch_embed = _PatchEmbed(in_chans, embed_dims[0])
        self.layers = nn.ModuleList()
        start = 0
        for i, depth in enumerate(depths):
            stage_rates = rates[start : start + depth]
            start += depth
            downsample = (
                _PatchMerging(embed_dims[i], embed_dims[i + 1], merge_strides[i])
                if i < n_stages - 1
                else None
            )
            if i == 0:
                stage: nn.Module = _ConvStage(
                    embed_dims[0], depth, mbconv_expand_ratio, stage_rates, downsample
                )
            else:
                stage = _AttentionStage(
                    embed_dims[i],
                    depth,
                    num_heads[i],
                    window_sizes[i],
                    mlp_ratio,
                    local_conv_size,
                    stage_rates,
                    downsample,
                )
            self.layers.append(stage)

        # ImageNet classifier of the TinyViT backbone: unused by SAM, kept for the checkpoint keys.
        self.norm_head = nn.LayerNorm(embed_dims[-1])
        self.head: nn.Module = (
            nn.Linear(embed_dims[-1], num_classes) if num_classes > 0 else nn.Identity()
        )
        self.neck = nn.Sequential(
            nn.Conv2d(embed_dims[-1], out_chans, kernel_size=1, bias=False),
            LayerNorm2d(out_chans),
            nn.Conv2d(out_chans, out_chans, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(out_chans),
        )

    @property
    def is_fused(self) -> bool:
        """True once :meth:`fuse` has folded every BatchNorm into its convolution."""
        return all(m.is_fused for m in self.modules() if isinstance(m, Conv2dBN))

    @torch.no_grad()
    def fuse(self) -> TinyViT:
        """Fold every BatchNorm into the preceding convolution, in place; returns ``self``.

        For inference after the weights are loaded: the outputs stay the same up to float
        rounding, the BatchNorm keys disappear from the state dict (each ``c`` gains a bias), so
        load checkpoints before fusing. Raises ``RuntimeError`` in training mode, where
        BatchNorm uses batch statistics that cannot be folded.
        """
        if self.training:
            raise RuntimeError(
                "TinyViT.fuse() folds BatchNorm running statistics, which only eval mode uses; "
                "call model.eval() before model.fuse()"
            )
        for module in self.modules():
            if isinstance(module, Conv2dBN):
                module.fuse()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Encode a preprocessed batch.

        Args:
            x: (B, in_chans, img_size, img_size) float tensor, normalised with SAM's pixel
                mean/std and zero-padded at the bottom/right to img_size.

        Returns:
            (B, out_chans, img_size / 16, img_size / 16) image embedding, in x's dtype.
        """
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"TinyViT expects a torch.Tensor, got {type(x).__name__}")
        expected = (self.in_chans, self.img_size, self.img_size)
        if x.ndim != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(
                f"TinyViT expects a (B, {self.in_chans}, {self.img_size}, {self.img_size}) batch "
                f"normalised with SAM's pixel mean/std and padded to {self.img_size}x"
                f"{self.img_size}; got shape {tuple(x.shape)}"
            )
        if not x.is_floating_point():
            raise TypeError(
                f"TinyViT expects a floating-point batch (normalise the uint8 image first); "
                f"got dtype {x.dtype}"
            )
        # Channels-last throughout: the oneDNN/cuDNN convolutions run faster on it, and the
        # attention stages' (B, H, W, C) tokens are then free views of the (B, C, H, W) maps.
        x = self.patch_embed(x.contiguous(memory_format=torch.channels_last))
        for layer in self.layers:
            x = layer(x)
        return self.neck(x).contiguous()


def tiny_vit_5m(**overrides: object) -> TinyViT:
    """MobileSAM's TinyViT-5M encoder (1024x1024 input, (B, 256, 64, 64) output).

    Keyword ``overrides`` replace single hyperparameters of :class:`TinyViT` (for example
    ``img_size=256`` for small tests); an unknown name raises ``TypeError``.
    """
    config: dict[str, object] = {
        "img_size": 1024,
        "in_chans": 3,
        "num_classes": 1000,
        "embed_dims": (64, 128, 160, 320),
        "depths": (2, 2, 6, 2),
        "num_heads": (2, 4, 5, 10),
        "window_sizes": (7, 7, 14, 7),
        "mlp_ratio": 4.0,
        "mbconv_expand_ratio": 4.0,
        "local_conv_size": 3,
        "merge_strides": (2, 2, 1),
        "out_chans": 256,
        "drop_path_rate": 0.0,
    }
    unknown = sorted(set(overrides) - set(config))
    if unknown:
        raise TypeError(
            f"tiny_vit_5m() got unknown hyperparameters {unknown}; valid names: {sorted(config)}"
        )
    config.update(overrides)
    return TinyViT(**config)  # type: ignore[arg-type]
