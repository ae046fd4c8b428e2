"""SAM's ViT image encoder (ViT-B/L/H): windowed + global attention, decomposed rel-pos, conv neck.

Parameter names match Meta's ``sam_vit_*.pth`` checkpoints under the ``image_encoder.`` prefix.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from grounded_sam.model.common import LayerNorm2d, MLPBlock

__all__ = ["ImageEncoderViT"]


class ImageEncoderViT(nn.Module):
    """ViT backbone + neck.

    Input: (B, 3, img_size, img_size) float, normalised with SAM's pixel mean/std and padded.
    Output: (B, out_chans, img_size/patch_size, img_size/patch_size) image embedding.
    """

    def __init__(
        self,
        *,
        img_size: int = 1024,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        out_chans: int = 256,
        qkv_bias: bool = True,
        use_abs_pos: bool = True,
        use_rel_pos: bool = True,
        window_size: int = 14,
        global_attn_indexes: tuple[int, ...] = (),
    ) -> None:
        super().__init__()
        self.img_size = img_size
        grid = img_size // patch_size
        self.patch_embed = PatchEmbed(patch_size=patch_size, in_chans=in_chans, embed_dim=embed_dim)
        self.pos_embed: nn.Parameter | None = None
        if use_abs_pos:
            self.pos_embed = nn.Parameter(torch.zeros(1, grid, grid, embed_dim))
        self.blocks = nn.ModuleList(
            Block(
                dim=embed_dim,
                num_heads=num_heads,
                mlp_ratio=mlp_ratio,
                qkv_bias=qkv_bias,
                use_rel_pos=use_rel_pos,
                window_size=0 if i in global_attn_indexes else window_size,
                input_size=(grid, grid),
            )
            for i in range(depth)
        )
        self.neck = nn.Sequential(
            nn.Conv2d(embed_dim, out_chans, kernel_size=1, bias=False),
            LayerNorm2d(out_chans),
            nn.Conv2d(out_chans, out_chans, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(out_chans),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != 3 or x.shape[-2:] != (self.img_size, self.img_size):
            raise ValueError(
                f"image encoder expects a (B, 3, {self.img_size}, {self.img_size}) preprocessed batch, "
                f"got shape {tuple(x.shape)}; use Sam.preprocess() or SamPredictor.set_image()"
            )
        x = self.patch_embed(x)  # B, H, W, C
        if self.pos_embed is not None:
            x = x + self.pos_embed
        for blk in self.blocks:
            x = blk(x)
        return self.neck(x.permute(0, 3, 1, 2))


class PatchEmbed(nn.Module):
    """Non-overlapping patches -> (B, H/p, W/p, C) channels-last tokens."""

    def __init__(self, *, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).permute(0, 2, 3, 1)


class Block(nn.Module):
    """Pre-norm transformer block; windowed attention when ``window_size > 0``, else global."""

    def __init__(
        self,
        *,
        dim: int,
        num_heads: int,
        mlp_ratio: float,
        qkv_bias: bool,
        use_rel_pos: bool,
        window_size: int,
        input_size: tuple[int, int],
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        attn_size = (window_size, window_size) if window_size > 0 else input_size
        self.attn = Attention(
            dim=dim,
            num_heads=num_heads,
            qkv_bias=qkv_bias,
            use_rel_pos=use_rel_pos,
            input_size=attn_size,
        )
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = MLPBlock(dim, int(dim * mlp_ratio), act=nn.GELU)
        self.window_size = window_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.norm1(x)
        if self.window_size > 0:
            x = self.attn.forward_windows(x, self.window_size)
        else:
            x = self.attn(x)
        if x.device.type != "cpu":
            x = shortcut + x
            return x + self.mlp(self.norm2(x))
        return self._residual_mlp_chunked(shortcut, x)

    # Tokens per step of the CPU MLP path: the (tokens, 4C) hidden activations stay in
    # cache, so the bias, GELU, norm and residual passes do not stream through memory.
    _MLP_CHUNK = 512

    def _residual_mlp_chunked(self, shortcut: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
        """``y = shortcut + attn; y + mlp(norm2(y))``, row by row in chunks of tokens."""
        c = shortcut.shape[-1]
        s2d, a2d = shortcut.reshape(-1, c), attn.reshape(-1, c)
        out = torch.empty_like(s2d)
        for i in range(0, s2d.shape[0], self._MLP_CHUNK):
            sl = slice(i, i + self._MLP_CHUNK)
            y = s2d[sl] + a2d[sl]
            out[sl] = self.mlp.forward_residual(self.norm2(y), y)
        return out.view(shortcut.shape)


class Attention(nn.Module):
    """Multi-head attention over a (B, H, W, C) grid with decomposed relative-position bias.

    The relative-position terms are passed to ``scaled_dot_product_attention`` as an
    additive bias, which is exactly ``softmax(q k^T * scale + rel_h + rel_w) v``.
    """

    def __init__(
        self,
        *,
        dim: int,
        num_heads: int,
        qkv_bias: bool,
        use_rel_pos: bool,
        input_size: tuple[int, int],
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.scale = head_dim**-0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.use_rel_pos = use_rel_pos
        if use_rel_pos:
            self.rel_pos_h = nn.Parameter(torch.zeros(2 * input_size[0] - 1, head_dim))
            self.rel_pos_w = nn.Parameter(torch.zeros(2 * input_size[1] - 1, head_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Attention over the whole (B, H, W, C) grid -> (B, H, W, C)."""
        b, h, w, c = x.shape
        nh = self.num_heads
        qkv = self.qkv(x).reshape(b, h * w, 3, nh, c // nh).permute(2, 0, 3, 1, 4).contiguous()
        out = self._attend(*qkv.unbind(0), (h, w))  # q, k, v each (B, nH, HW, hd)
        return self.proj(out.transpose(1, 2).reshape(b, h, w, c))

    def forward_windows(self, x: torch.Tensor, window_size: int) -> torch.Tensor:
        """Attention within non-overlapping ``window_size`` windows: (B, H, W, C) -> same.

        Equal to ``window_partition`` -> :meth:`forward` -> ``window_unpartition`` (SAM's
        windowed blocks), but the q/k/v and output projections run on the H*W real tokens
        only: a zero-padded token's q/k/v is exactly the qkv bias, so the padding is filled
        with it after the projection, and padded outputs are cropped before ``proj``.
        """
        b, h, w, c = x.shape
        nh, ws = self.num_heads, window_size
        pad_h, pad_w = (ws - h % ws) % ws, (ws - w % ws) % ws
        hp, wp = h + pad_h, w + pad_w
        qkv = self.qkv(x)  # (B, H, W, 3C)
        if pad_h or pad_w:
            padded = qkv.new_empty(b, hp, wp, 3 * c)
            padded[:, :h, :w] = qkv
            # qkv of a zero token: exactly the bias for nn.Linear, and right for replaced
            # (e.g. quantized) layers too.
            fill = self.qkv(qkv.new_zeros(1, c))[0]
            padded[:, h:] = fill
            padded[:, :h, w:] = fill
            qkv = padded
        nwh, nww = hp // ws, wp // ws
        qkv = (
            qkv.view(b, nwh, ws, nww, ws, 3, nh, c // nh)
            .permute(5, 0, 1, 3, 6, 2, 4, 7)  # (3, B, nWh, nWw, nH, ws, ws, hd)
            .reshape(3, b * nwh * nww, nh, ws * ws, c // nh)
        )
        out = self._attend(*qkv.unbind(0), (ws, ws))  # (B * nW, nH, ws*ws, hd)
        out = (
            out.view(b, nwh, nww, nh, ws, ws, c // nh)
            .permute(0, 1, 4, 2, 5, 3, 6)  # (B, nWh, ws, nWw, ws, nH, hd)
            .reshape(b, hp, wp, c)
        )
        if hp > h or wp > w:
            out = out[:, :h, :w]
        return self.proj(out)

    def _attend(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, size: tuple[int, int]
    ) -> torch.Tensor:
        if self.use_rel_pos:
            return rel_pos_attention(q, k, v, self.rel_pos_h, self.rel_pos_w, size, self.scale)
        return F.scaled_dot_product_attention(q, k, v, scale=self.scale)


# Largest slice of the additive bias (elements) built at once. Global attention over a 64x64
# grid would need B * nH * 4096 * 4096 floats (805 MB for ViT-B); on CPU, slices of one head
# and a few query rows that stay in cache measured fastest (about 2x less attention time
# than the full bias), on GPUs one large call is better.
_MAX_BIAS_ELEMENTS = {"cpu": 1 << 21, "cuda": 1 << 28}


def rel_pos_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    rel_pos_h: torch.Tensor,
    rel_pos_w: torch.Tensor,
    size: tuple[int, int],
    scale: float,
    max_bias_elements: int | None = None,
) -> torch.Tensor:
    """``softmax(q k^T * scale + rel_h + rel_w) v`` without materialising the whole bias.

    Exactly the attention of SAM's ViT with decomposed relative positions (the same terms
    added to the same logits). When the full (B, nH, HW, HW) bias would exceed
    ``max_bias_elements`` (default: by device, see ``_MAX_BIAS_ELEMENTS``), it is built and
    used in slices of heads and whole grid rows of queries, so memory stays bounded.

    Args:
        q, k, v: (B, nH, H*W, hd) queries (unscaled), keys and values over an (H, W) grid.
        rel_pos_h, rel_pos_w: (2H-1, hd) and (2W-1, hd) relative-position tables.
        size: the grid (H, W).
    Returns:
        (B, nH, H*W, hd) attention output.
    """
    h, w = size
    b, nh, n, _ = q.shape
    if max_bias_elements is None:
        max_bias_elements = _MAX_BIAS_ELEMENTS.get(q.device.type, 1 << 28)
    rel_h, rel_w = rel_pos_terms(q, rel_pos_h, rel_pos_w, size, size)
    per_head_row = b * w * n  # bias elements for one head and one grid row of queries
    rows = max(1, min(h, max_bias_elements // per_head_row))
    heads = max(1, min(nh, max_bias_elements // (h * per_head_row))) if rows == h else 1
    if rows == h and heads == nh:
        bias = (rel_h.unsqueeze(-1) + rel_w.unsqueeze(-2)).reshape(b, nh, n, n)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=scale)
    out = q.new_empty(b, nh, n, v.shape[-1])
    step = rows * w
    for j in range(0, nh, heads):
        hs = slice(j, min(j + heads, nh))
        k_j, v_j = k[:, hs], v[:, hs]
        for i in range(0, n, step):
            sl = slice(i, min(i + step, n))
            bias = rel_h[:, hs, sl].unsqueeze(-1) + rel_w[:, hs, sl].unsqueeze(-2)
            out[:, hs, sl] = F.scaled_dot_product_attention(
                q[:, hs, sl], k_j, v_j, attn_mask=bias.flatten(-2), scale=scale
            )
    return out


def window_partition(x: torch.Tensor, window_size: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """(B, H, W, C) -> (B * nWindows, ws, ws, C), zero-padding H and W up to multiples of ws."""
    b, h, w, c = x.shape
    pad_h = (window_size - h % window_size) % window_size
    pad_w = (window_size - w % window_size) % window_size
    if pad_h or pad_w:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    hp, wp = h + pad_h, w + pad_w
    x = x.view(b, hp // window_size, window_size, wp // window_size, window_size, c)
    windows = x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window_size, window_size, c)
    return windows, (hp, wp)


def window_unpartition(
    windows: torch.Tensor, window_size: int, padded_hw: tuple[int, int], hw: tuple[int, int]
) -> torch.Tensor:
    """Inverse of :func:`window_partition`, cropping the padding: -> (B, H, W, C)."""
    hp, wp = padded_hw
    h, w = hw
    b = windows.shape[0] // ((hp // window_size) * (wp // window_size))
    x = windows.view(b, hp // window_size, wp // window_size, window_size, window_size, -1)
    x = x.permute(0, 1, 3, 2, 4, 5).reshape(b, hp, wp, -1)
    if hp > h or wp > w:
        x = x[:, :h, :w, :]
    return x


def get_rel_pos(q_size: int, k_size: int, rel_pos: torch.Tensor) -> torch.Tensor:
    """Relative positional embeddings for every (query, key) pair: (q_size, k_size, C).

    ``rel_pos`` is (2 * max(q_size, k_size) - 1, C); a table of another length is linearly
    resized first (as SAM does for other input sizes).
    """
    max_rel_dist = 2 * max(q_size, k_size) - 1
    if rel_pos.shape[0] != max_rel_dist:
        rel_pos = (
            F.interpolate(rel_pos.t().unsqueeze(0), size=max_rel_dist, mode="linear").squeeze(0).t()
        )
    q_ratio = max(k_size / q_size, 1.0)
    k_ratio = max(q_size / k_size, 1.0)
    q_coords = torch.arange(q_size, device=rel_pos.device)[:, None] * q_ratio
    k_coords = torch.arange(k_size, device=rel_pos.device)[None, :] * k_ratio
    relative = (q_coords - k_coords) + (k_size - 1) * k_ratio
    return rel_pos[relative.long()]


def rel_pos_terms(
    q: torch.Tensor,
    rel_pos_h: torch.Tensor,
    rel_pos_w: torch.Tensor,
    q_size: tuple[int, int],
    k_size: tuple[int, int],
) -> tuple[torch.Tensor, torch.Tensor]:
    """The two factors of the decomposed relative-position bias (MViTv2).

    Args:
        q: (B, nH, q_h * q_w, C) unscaled queries.
    Returns:
        rel_h (B, nH, q_h * q_w, k_h) and rel_w (B, nH, q_h * q_w, k_w): the bias of query
        ``i`` and key ``(kh, kw)`` is ``rel_h[..., i, kh] + rel_w[..., i, kw]``.
    """
    q_h, q_w = q_size
    k_h, k_w = k_size
    r_h = get_rel_pos(q_h, k_h, rel_pos_h).to(q.dtype)  # (q_h, k_h, C)
    r_w = get_rel_pos(q_w, k_w, rel_pos_w).to(q.dtype)
    b, nh, _, c = q.shape
    r_q = q.reshape(b, nh, q_h, q_w, c)
    rel_h = torch.einsum("bnhwc,hkc->bnhwk", r_q, r_h)  # (B, nH, q_h, q_w, k_h)
    rel_w = torch.einsum("bnhwc,wkc->bnhwk", r_q, r_w)  # (B, nH, q_h, q_w, k_w)
    return rel_h.reshape(b, nh, q_h * q_w, k_h), rel_w.reshape(b, nh, q_h * q_w, k_w)


def rel_pos_bias(
    q: torch.Tensor,
    rel_pos_h: torch.Tensor,
    rel_pos_w: torch.Tensor,
    q_size: tuple[int, int],
    k_size: tuple[int, int],
) -> torch.Tensor:
    """Decomposed relative-position bias (MViTv2) as an additive attention mask.

    Args:
        q: (B, nH, q_h * q_w, C) unscaled queries.
    Returns:
        (B, nH, q_h * q_w, k_h * k_w) bias to add to the attention logits.
    """
    rel_h, rel_w = rel_pos_terms(q, rel_pos_h, rel_pos_w, q_size, k_size)
    b, nh, n, _ = rel_h.shape
    return (rel_h.unsqueeze(-1) + rel_w.unsqueeze(-2)).reshape(b, nh, n, -1)
