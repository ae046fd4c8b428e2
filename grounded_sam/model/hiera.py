"""SAM 2's image encoder: the Hiera trunk (hierarchical ViT) and the FPN neck.

Parameter names match the ``image_encoder.`` prefix of Meta's ``sam2.1_hiera_*.pt``
checkpoints (``trunk.patch_embed.proj``, ``trunk.pos_embed``, ``trunk.pos_embed_window``,
``trunk.blocks.N.{norm1,attn.qkv,attn.proj,norm2,mlp.layers.0,mlp.layers.1,proj}``,
``neck.convs.N.conv``).

Hiera (https://arxiv.org/abs/2306.00989, SAM 2's "hieradet" flavour) works on a
(B, H, W, C) channels-last token grid at stride 4 (256x256 for a 1024 input) and halves the
grid at each of its three stage changes by max-pooling the *queries* of the first block of
the new stage ("Q-pooling") and the shortcut. Blocks attend within non-overlapping windows,
except a few global-attention blocks in the third stage. Position embeddings are
"windowed" (https://arxiv.org/abs/2311.05613): a small background table resized bicubically
to the grid, plus a window-sized table tiled over it.

Everything runs on channels-last tokens; see :class:`HieraBlock` for what the inference
path does differently from a literal transcription (same values, fewer passes over memory).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from grounded_sam.model._fused import linear, linear_add, linear_gelu

__all__ = ["FpnNeck", "Hiera", "HieraBlock", "HieraImageEncoder", "Mlp", "add_nearest_2x_"]


class Mlp(nn.Module):
    """Two linear layers with an activation between them, named ``layers.0`` / ``layers.1``
    (SAM 2's checkpoints; SAM 1's equivalent is :class:`~grounded_sam.model.common.MLPBlock`
    with ``lin1`` / ``lin2``). Acts on the last dimension."""

    def __init__(self, dim: int, hidden: int, act: type[nn.Module] = nn.GELU) -> None:
        super().__init__()
        self.layers = nn.ModuleList([nn.Linear(dim, hidden), nn.Linear(hidden, dim)])
        self.act = act()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers[1](self.act(self.layers[0](x)))

    def forward_residual(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """``residual + self(x)``; with an exact GELU, the activation and the add are fused into
        the linear layers where :mod:`grounded_sam.model._fused` allows."""
        if isinstance(self.act, nn.GELU) and self.act.approximate == "none":
            return linear_add(self.layers[1], linear_gelu(self.layers[0], x), residual)
        return residual + self(x)


def _pool2x2(x: torch.Tensor) -> torch.Tensor:
    """2x2 / stride-2 max pooling of a (B, H, W, C) grid (floor mode, as ``nn.MaxPool2d``)."""
    b, h, w, c = x.shape
    if h % 2 or w % 2:
        x = x[:, : h - h % 2, : w - w % 2]
    v = x.reshape(b, h // 2, 2, w // 2, 2, c)
    return _max4(v[:, :, 0, :, 0], v[:, :, 0, :, 1], v[:, :, 1, :, 0], v[:, :, 1, :, 1])


def _max4(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """Elementwise maximum of four same-shaped tensors (any strides; NaN propagates)."""
    if torch.is_grad_enabled():
        return torch.maximum(torch.maximum(a, b), torch.maximum(c, d))
    # Three elementwise passes over strided views: much faster than a reduction over a
    # non-innermost dimension, and no copy of the inputs.
    out = torch.maximum(a, b)
    torch.maximum(out, c, out=out)
    return torch.maximum(out, d, out=out)


class HieraAttention(nn.Module):
    """Multi-head self-attention over a (B, H, W, C) grid, windowed or global, with optional
    2x2 max-pooling of the queries (the output grid is then halved)."""

    def __init__(self, dim: int, dim_out: int, num_heads: int) -> None:
        super().__init__()
        if dim_out % num_heads:
            raise ValueError(f"num_heads ({num_heads}) must divide dim_out ({dim_out})")
        self.num_heads = num_heads
        self.dim_out = dim_out
        self.qkv = nn.Linear(dim, 3 * dim_out)
        self.proj = nn.Linear(dim_out, dim_out)

    def attend(self, x: torch.Tensor, window_size: int, q_pool: bool) -> torch.Tensor:
        """Attention *before* the output projection: (B, H, W, dim) -> (B, H', W', dim_out), with
        (H', W') = (H, W), or (H // 2, W // 2) when ``q_pool``.

        ``window_size > 0``: attention within non-overlapping windows of that size; the grid
        is zero-padded to a multiple of it *before* the projection (the padding tokens' q/k/v
        are the projection of zero, keys of the windows they fall in, as in Meta's
        ``window_partition``); with ``q_pool`` the 2x2-pooled queries of a window attend to the
        keys of that window. ``window_size == 0``: global attention.
        """
        b, h, w, c_in = x.shape
        nh, c = self.num_heads, self.dim_out
        hd = c // nh
        ws = window_size
        if ws == 0:
            qkv = linear(self.qkv, x).view(b, h, w, 3, nh, hd)
            if q_pool:
                q = _pool2x2(qkv[..., 0, :, :].reshape(b, h, w, c))
                hq, wq = q.shape[1:3]
                q = q.view(b, hq * wq, nh, hd)
            else:
                hq, wq = h, w
                q = qkv[..., 0, :, :].reshape(b, h * w, nh, hd)
            k = qkv[..., 1, :, :].reshape(b, h * w, nh, hd)
            v = qkv[..., 2, :, :].reshape(b, h * w, nh, hd)
            out = F.scaled_dot_product_attention(
                q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
            )
            return out.transpose(1, 2).reshape(b, hq, wq, c)
        hp, wp = -(-h // ws) * ws, -(-w // ws) * ws
        if (hp, wp) != (h, w):
            x = F.pad(x, (0, 0, 0, wp - w, 0, hp - h))
        nwh, nww = hp // ws, wp // ws
        n = b * nwh * nww
        # windows as rows: one copy of the (narrower) input rather than of q, k and v
        xw = x.view(b, nwh, ws, nww, ws, c_in).permute(0, 1, 3, 2, 4, 5).reshape(n, ws * ws, c_in)
        qkv = linear(self.qkv, xw).view(n, ws, ws, 3, nh, hd)
        if q_pool:
            wq = ws // 2
            q = _pool2x2(qkv[..., 0, :, :].reshape(n, ws, ws, c)).view(n, wq * wq, nh, hd)
        else:
            wq = ws
            q = qkv[..., 0, :, :].reshape(n, ws * ws, nh, hd)
        k = qkv[..., 1, :, :].reshape(n, ws * ws, nh, hd)
        v = qkv[..., 2, :, :].reshape(n, ws * ws, nh, hd)
        out = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        )
        out = (
            out.view(b, nwh, nww, nh, wq, wq, hd)
            .permute(0, 1, 4, 2, 5, 3, 6)  # (B, nWh, wq, nWw, wq, nH, hd)
            .reshape(b, nwh * wq, nww * wq, c)
        )
        ho, wo = (h // 2, w // 2) if q_pool else (h, w)
        if out.shape[1:3] != (ho, wo):
            out = out[:, :ho, :wo]
        return out

    def attend_unrolled(self, x: torch.Tensor, q_pool: bool) -> torch.Tensor:
        """Attention within windows laid out as rows: (N windows, L tokens, dim) -> (N, L', dim_out).

        With ``q_pool`` the queries are max-pooled over the four leading quarters of each
        window's tokens (the unrolled order puts the 2x2 pooling offsets outermost), L' = L/4.
        """
        n, length, _ = x.shape
        nh, c = self.num_heads, self.dim_out
        hd = c // nh
        q, k, v = linear(self.qkv, x).view(n, length, 3, nh, hd).unbind(2)  # (N, L, nH, hd) views
        if q_pool:
            length //= 4
            qq = q.reshape(n, 4, length, c)
            q = _max4(qq[:, 0], qq[:, 1], qq[:, 2], qq[:, 3]).view(n, length, nh, hd)
        out = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        )
        return out.transpose(1, 2).reshape(n, length, c)

    def forward(self, x: torch.Tensor, window_size: int = 0, q_pool: bool = False) -> torch.Tensor:
        return self.proj(self.attend(x, window_size, q_pool))


class HieraBlock(nn.Module):
    """One Hiera block (pre-norm attention + MLP), optionally changing the width and pooling.

    ``y = shortcut + proj(attn(norm1(x)))``, ``out = y + mlp(norm2(y))``, where the shortcut is
    ``x``, or ``maxpool(proj_in(norm1(x)))`` when the block widens the tokens (first block of
    a stage, ``dim != dim_out``), and the attention pools its queries when ``q_stride``.

    Inference fast path (autograd off, CPU float32; the same values up to float rounding):
    the output projection carries the residual add, and the MLP runs in chunks of tokens with
    its GELU and residual add fused into the linear layers (see ``_fused``).
    """

    def __init__(
        self,
        *,
        dim: int,
        dim_out: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        q_stride: tuple[int, int] | None = None,
        window_size: int = 0,
    ) -> None:
        super().__init__()
        if q_stride is not None and tuple(q_stride) != (2, 2):
            raise ValueError(f"only q_stride (2, 2) is supported, got {q_stride}")
        self.dim, self.dim_out = dim, dim_out
        self.window_size = window_size
        self.q_stride = q_stride
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = HieraAttention(dim, dim_out, num_heads)
        self.norm2 = nn.LayerNorm(dim_out, eps=1e-6)
        self.mlp = Mlp(dim_out, int(dim_out * mlp_ratio))
        if dim != dim_out:
            self.proj = nn.Linear(dim, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, H, W, dim) -> (B, H', W', dim_out); H' = H // 2 with ``q_stride``."""
        pool = self.q_stride is not None
        y = self.norm1(x)
        if self.dim != self.dim_out:
            shortcut = linear(self.proj, y)
            x = _pool2x2(shortcut) if pool else shortcut
        # The attention's windows are those of the input grid; with Q-pooling the output
        # windows are half as big (Meta's window_unpartition with window_size // 2).
        a = self.attn.attend(y, self.window_size, pool)
        del y
        return self._finish(a, x)

    # Tokens per step of the CPU inference path of :meth:`forward_unrolled`. The unrolled
    # blocks are stages 1-2 at 256x256 / 128x128 tokens, where a whole-grid step allocates
    # 25-150 MB intermediates (the qkv of the first stage-2 block alone is 150 MB): buffers
    # above glibc's 32 MB mmap threshold are page-faulted afresh on every call (about 1 us
    # per 4 KiB page under this VM: a fresh 65536x288 product took 52 ms, 26 ms into an
    # existing buffer), and none of them stays in cache. In steps of 2048 tokens every
    # intermediate is at most ~9 MB. Measured on Hiera-T (1 thread, thread CPU time, best of
    # 5 interleaved runs): blocks 0-3 214/290/139/202 ms whole, 167/218/129/174 ms in steps
    # of 2048 tokens (4096: 166/233/126/173; 8192: 166/237/130/200).
    _UNROLLED_STEP_TOKENS = 2048

    def forward_unrolled(self, x: torch.Tensor) -> torch.Tensor:
        """The block on windows laid out as rows: (N windows, L tokens, dim) -> (N, L', dim_out),
        each row one ``window_size`` window; with ``q_stride`` the pooling offsets are the four
        leading quarters of a row (see :meth:`Hiera.features`), and L' = L / 4.

        Every window is computed independently of the others, so the CPU inference path runs
        the whole block on a few windows at a time (see ``_UNROLLED_STEP_TOKENS``)."""
        n, length, _ = x.shape
        step = max(1, self._UNROLLED_STEP_TOKENS // length)
        if torch.is_grad_enabled() or x.device.type != "cpu" or step >= n:
            return self._unrolled(x)
        out = None
        for i in range(0, n, step):
            part = self._unrolled(x[i : i + step])
            if out is None:  # the first step fixes the dtype (lower under autocast)
                out = part.new_empty(n, *part.shape[1:])
            out[i : i + step] = part
        return out

    def _unrolled(self, x: torch.Tensor) -> torch.Tensor:
        pool = self.q_stride is not None
        y = self.norm1(x)
        if self.dim != self.dim_out:
            shortcut = linear(self.proj, y)
            if pool:
                n, length, c = shortcut.shape
                sc = shortcut.view(n, 4, length // 4, c)
                shortcut = _max4(sc[:, 0], sc[:, 1], sc[:, 2], sc[:, 3])
            x = shortcut
        a = self.attn.attend_unrolled(y, pool)
        del y
        return self._finish(a, x)

    def _finish(self, a: torch.Tensor, shortcut: torch.Tensor) -> torch.Tensor:
        """``x = shortcut + proj(a)``, then ``x + mlp(norm2(x))``."""
        if torch.is_grad_enabled() or a.device.type != "cpu":
            x = shortcut + self.attn.proj(a)
            return x + self.mlp(self.norm2(x))
        x = linear_add(self.attn.proj, a, shortcut)
        del a
        return self._mlp_chunked(x)

    # Bytes of (tokens, 4C) hidden activations per step of the CPU MLP path: small enough to
    # stay in cache between the two linear layers, large enough that a step is not dominated
    # by per-call overhead (few steps also matter when other processes share the cores).
    _MLP_CHUNK_BYTES = 6 << 20

    def _mlp_chunked(self, x: torch.Tensor) -> torch.Tensor:
        """``x + mlp(norm2(x))`` for a (.., C) tensor ``x`` the caller owns (written in place)."""
        c = x.shape[-1]
        x2d = x.view(-1, c)
        hidden = self.mlp.layers[0].out_features
        rows = max(64, self._MLP_CHUNK_BYTES // (hidden * x.element_size()))
        for i in range(0, x2d.shape[0], rows):
            part = x2d[i : i + rows]
            part.copy_(self.mlp.forward_residual(self.norm2(part), part))
        return x


def _unroll_dims(k: int, d: int) -> tuple[list[int], list[int]]:
    """Axis orders of the unrolled layout after ``d`` of ``k`` poolings (see ``Hiera.features``).

    The unrolled view of a grid is (B, nWh, nWw, [s_y, s_x] * (k - d), P, P, C): window
    indices, then the 2x2 offsets of the pools still to come (the next one first), then the
    position in the final P x P window. Returns the permutation taking that view to the spatial
    order (B, nWh, P, s_y..., nWw, P, s_x..., C), the later offsets being the coarser ones.
    """
    n_s = k - d
    sy = [3 + 2 * j for j in range(n_s)]
    sx = [4 + 2 * j for j in range(n_s)]
    py, px, ch = 3 + 2 * n_s, 4 + 2 * n_s, 5 + 2 * n_s
    to_spatial = [0, 1, py, *sy[::-1], 2, px, *sx[::-1], ch]
    return to_spatial, [to_spatial.index(i) for i in range(len(to_spatial))]


def _unrolled_view_shape(b: int, nw: tuple[int, int], p: int, n_s: int, c: int) -> list[int]:
    return [b, nw[0], nw[1], *([2, 2] * n_s), p, p, c]


def _spatial_view_shape(b: int, nw: tuple[int, int], p: int, n_s: int, c: int) -> list[int]:
    return [b, nw[0], p, *([2] * n_s), nw[1], p, *([2] * n_s), c]


class Hiera(nn.Module):
    """Hiera trunk: (B, 3, S, S) normalised image -> one (B, H_i, W_i, C_i) channels-last
    feature grid per stage (strides 4, 8, 16, 32; widths ``embed_dim * 2**i``).

    Args follow Meta's ``Hiera``: ``stages`` blocks per stage; ``global_att_blocks`` indices
    of the blocks with global attention; ``window_spec`` window size per stage (the first
    block of a stage keeps the previous stage's window, as Meta's does); ``q_pool`` number of
    stage changes that pool.
    """

    def __init__(
        self,
        *,
        embed_dim: int = 96,
        num_heads: int = 1,
        stages: Sequence[int] = (2, 3, 16, 3),
        global_att_blocks: Sequence[int] = (12, 16, 20),
        window_pos_embed_bkg_spatial_size: tuple[int, int] = (14, 14),
        window_spec: Sequence[int] = (8, 4, 14, 7),
        q_pool: int = 3,
        dim_mul: float = 2.0,
        head_mul: float = 2.0,
        mlp_ratio: float = 4.0,
    ) -> None:
        super().__init__()
        if len(stages) != len(window_spec):
            raise ValueError(f"stages {stages} and window_spec {window_spec} differ in length")
        self.stage_ends = [sum(stages[: i + 1]) - 1 for i in range(len(stages))]
        if not 0 <= q_pool <= len(stages) - 1:
            raise ValueError(f"q_pool must be in [0, {len(stages) - 1}], got {q_pool}")
        q_pool_blocks = {end + 1 for end in self.stage_ends[:-1][:q_pool]}
        self.patch_embed = PatchEmbed(embed_dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, embed_dim, *window_pos_embed_bkg_spatial_size))
        self.pos_embed_window = nn.Parameter(
            torch.zeros(1, embed_dim, window_spec[0], window_spec[0])
        )
        self.blocks = nn.ModuleList()
        dim, heads, stage = embed_dim, num_heads, 0
        for i in range(sum(stages)):
            # The first block of a stage still uses the previous stage's window size.
            window = 0 if i in global_att_blocks else window_spec[stage]
            dim_out = dim
            if i - 1 in self.stage_ends:
                dim_out, heads = int(dim * dim_mul), int(heads * head_mul)
                stage += 1
            self.blocks.append(
                HieraBlock(
                    dim=dim,
                    dim_out=dim_out,
                    num_heads=heads,
                    mlp_ratio=mlp_ratio,
                    q_stride=(2, 2) if i in q_pool_blocks else None,
                    window_size=window,
                )
            )
            dim = dim_out
        # Widths of the stage outputs, lowest resolution first (Meta's ``channel_list``).
        self.channel_list = [self.blocks[i].dim_out for i in self.stage_ends[::-1]]
        self.unroll = True  # take the unrolled path where it applies (see ``features``)

    def pos_embed_grid(self, size: tuple[int, int]) -> torch.Tensor:
        """The (1, C, H, W) position embedding of an (H, W) token grid: the background table
        resized bicubically, plus the window table tiled."""
        h, w = size
        pos = F.interpolate(self.pos_embed, size=(h, w), mode="bicubic")
        win = self.pos_embed_window
        return pos + win.tile([1, 1, h // win.shape[-2], w // win.shape[-1]])

    def _pos_embed_for(self, size: tuple[int, int]) -> torch.Tensor:
        """:meth:`pos_embed_grid`, computed once per grid size and reused while the two small
        tables hold the same values (compared in full on every call: ~11k numbers, however
        they were changed); recomputed each call when autograd is on."""
        tables = (self.pos_embed, self.pos_embed_window)
        if torch.is_grad_enabled():
            return self.pos_embed_grid(size)
        cached = self.__dict__.get("_pos_cache")
        if (
            cached is not None
            and cached[0] == tuple(size)
            and all(
                a.shape == b.shape
                and a.dtype == b.dtype
                and a.device == b.device
                and torch.equal(a, b)
                for a, b in zip(cached[1], tables, strict=True)
            )
        ):
            return cached[2]
        # kept channels-last, as the patch embedding's output (see ``features``)
        pos = self.pos_embed_grid(size).contiguous(memory_format=torch.channels_last)
        self.__dict__["_pos_cache"] = (tuple(size), tuple(t.detach().clone() for t in tables), pos)
        return pos

    def _unrolled_plan(self, size: tuple[int, int]) -> tuple[int, int]:
        """(number of leading blocks run unrolled, number k of poolings among them); (0, 0)
        when the unrolled path does not apply.

        The leading blocks can run on windows laid out as rows when the first block's window
        ``ws`` tiles the grid and each following block uses ``ws / 2**j`` after ``j``
        poolings (Hiera's window specs 8, 4 do); the run ends with the k-th pooling block.
        """
        ws = self.blocks[0].window_size
        if not self.unroll or ws <= 0 or size[0] % ws or size[1] % ws:
            return 0, 0
        pools, last = 0, 0
        for i, blk in enumerate(self.blocks):
            if blk.window_size != ws >> pools or (ws >> pools) << pools != ws:
                break
            if blk.q_stride is not None:
                if (ws >> pools) % 2:
                    break
                pools += 1
                last = i + 1
        return (last, pools) if pools else (0, 0)

    def features(self, x: torch.Tensor) -> list[tuple[torch.Tensor, Callable]]:
        """Stage outputs as ``(tokens, to_spatial)`` pairs, highest resolution first.

        ``tokens`` is (B, H*W, C) in some order of the grid's cells and ``to_spatial(t)`` maps
        any (B, H*W, C') tensor in that order (e.g. ``tokens`` after a per-token linear map)
        to the (B, H, W, C') grid. Callers that apply per-token maps first save moving the
        wide features around.

        Unrolled path: the leading blocks (see :meth:`_unrolled_plan`) run on tokens laid out
        window by window, the offsets of the 2x2 poolings still to come outermost within a
        window, so that windowed attention reads each window as a row and Q-pooling is an
        elementwise maximum of four contiguous quarters of it (as Hiera's own "unroll"); no
        per-block partitioning or padding copies. The values are those of the spatial path.
        """
        # The convolution runs on a channels-last input, so its (B, C, H, W) output is laid
        # out (B, H, W, C) in memory: laying the tokens out below then moves whole C-vectors
        # (patch embedding + position embedding into the unrolled layout: 34 -> 25 ms for
        # Hiera-T, 1 thread).
        pe = self.patch_embed.proj(x.contiguous(memory_format=torch.channels_last))
        b, c, h, w = pe.shape
        pos = self._pos_embed_for((h, w))
        n_unrolled, k = self._unrolled_plan((h, w))
        ends = set(self.stage_ends)
        outputs: list[tuple[torch.Tensor, Callable]] = []
        if n_unrolled:
            ws = self.blocks[0].window_size
            p, nw = ws >> k, (h // ws, w // ws)
            _, to_unrolled = _unroll_dims(k, 0)
            spatial = _spatial_view_shape(b, nw, p, k, c)

            def unrolled(t: torch.Tensor) -> torch.Tensor:
                """(N, C, H, W) -> the unrolled view of its tokens (a view when channels-last)."""
                t = t.permute(0, 2, 3, 1).reshape(t.shape[0], *spatial[1:])
                return t.permute(to_unrolled)

            # One pass adds the position embedding and lays the tokens out unrolled.
            tokens, pos_u = unrolled(pe), unrolled(pos)
            if torch.is_grad_enabled():  # no out= with autograd
                t = (tokens + pos_u).contiguous()
            else:
                out = pe.new_empty(_unrolled_view_shape(b, nw, p, k, c))
                t = torch.add(tokens, pos_u, out=out)
            t = t.view(b * nw[0] * nw[1], ws * ws, c)
            pools = 0
            for i in range(n_unrolled):
                t = self.blocks[i].forward_unrolled(t)
                pools += self.blocks[i].q_stride is not None
                if i in ends:
                    outputs.append((t.view(b, -1, t.shape[-1]), _restorer(b, nw, p, k, pools)))
            xs = _restorer(b, nw, p, k, k)(t.view(b, -1, t.shape[-1]))
            start = n_unrolled
        else:
            tokens, pos_s = pe.permute(0, 2, 3, 1), pos.permute(0, 2, 3, 1)
            if torch.is_grad_enabled():
                xs = (tokens + pos_s).contiguous()
            else:
                xs = torch.add(tokens, pos_s, out=pe.new_empty(b, h, w, c))
            start = 0
        for i in range(start, len(self.blocks)):
            xs = self.blocks[i](xs)
            if i in ends:
                hh, ww = xs.shape[1:3]
                outputs.append((xs.view(b, hh * ww, -1), _spatial_restorer(b, hh, ww)))
        return outputs

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(B, 3, S, S) -> one (B, H_i, W_i, C_i) grid per stage, highest resolution first."""
        return [to_spatial(t) for t, to_spatial in self.features(x)]


def _restorer(b: int, nw: tuple[int, int], p: int, k: int, d: int) -> Callable:
    """``to_spatial`` for unrolled tokens after ``d`` of ``k`` poolings."""
    to_spatial, _ = _unroll_dims(k, d)
    side = (p << (k - d), p << (k - d))  # window side at this level

    def restore(t: torch.Tensor) -> torch.Tensor:
        c = t.shape[-1]
        v = t.reshape(_unrolled_view_shape(b, nw, p, k - d, c)).permute(to_spatial)
        return v.reshape(b, nw[0] * side[0], nw[1] * side[1], c)

    return restore


def _spatial_restorer(b: int, h: int, w: int) -> Callable:
    def restore(t: torch.Tensor) -> torch.Tensor:
        return t.reshape(b, h, w, t.shape[-1])

    return restore


class PatchEmbed(nn.Module):
    """7x7 / stride-4 convolution -> (B, H/4, W/4, C) channels-last tokens."""

    def __init__(self, embed_dim: int, in_chans: int = 3) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=7, stride=4, padding=3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.proj(x).permute(0, 2, 3, 1)
        return y.contiguous()


class FpnNeck(nn.Module):
    """SAM 2's feature pyramid: a 1x1 convolution to ``d_model`` per stage, and a top-down
    path (nearest 2x upsampling, summed) into the levels in ``fpn_top_down_levels``.

    Levels are numbered from the highest resolution (0, stride 4) to the lowest. No position
    encodings: SAM 2's image path does not use them (only its video memory does).
    """

    def __init__(
        self,
        *,
        d_model: int = 256,
        backbone_channel_list: Sequence[int] = (768, 384, 192, 96),
        fpn_top_down_levels: Sequence[int] = (2, 3),
    ) -> None:
        super().__init__()
        self.d_model = d_model
        self.backbone_channel_list = list(backbone_channel_list)
        self.fpn_top_down_levels = list(fpn_top_down_levels)
        # convs[0] is for the lowest-resolution level (Meta's order).
        self.convs = nn.ModuleList(_LateralConv(c, d_model) for c in backbone_channel_list)

    def lateral(self, level: int, x: torch.Tensor, then: nn.Conv2d | None = None) -> torch.Tensor:
        """1x1 lateral convolution of level ``level`` on (B, H, W, C) tokens -> (B, H, W, d).

        With ``then`` (a 1x1 ``nn.Conv2d``), returns ``then(lateral(x))`` computed as one
        linear map with the two weight matrices multiplied first (fewer FLOPs, and no
        ``d_model``-wide intermediate at that resolution).
        """
        conv = self.convs[len(self.convs) - 1 - level].conv
        weight, bias = conv.weight.flatten(1), conv.bias
        if then is not None:
            w2 = then.weight.flatten(1)
            weight, bias = w2 @ weight, torch.addmv(then.bias, w2, bias)
        return F.linear(x, weight, bias)

    def forward(self, xs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Trunk outputs (highest resolution first, (B, H_i, W_i, C_i)) -> one (B, H_i, W_i, d)
        channels-last tensor per level."""
        if len(xs) != len(self.convs):
            raise ValueError(f"expected {len(self.convs)} feature levels, got {len(xs)}")
        out: list[torch.Tensor] = [xs[0]] * len(xs)
        prev = None
        for level in range(len(xs) - 1, -1, -1):
            lat = self.lateral(level, xs[level])
            if level in self.fpn_top_down_levels and prev is not None:
                lat = add_nearest_2x_(lat, prev)
            out[level] = prev = lat
        return out


class _LateralConv(nn.Module):
    """Holds one ``conv`` (Meta's ``convs.N.conv`` keys)."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel_size=1)


def add_nearest_2x_(x: torch.Tensor, low: torch.Tensor) -> torch.Tensor:
    """``x + nearest_upsample_2x(low)`` on channels-last grids (B, 2H, 2W, C) and (B, H, W, C),
    in place into ``x`` when autograd is off (``x`` must be a fresh tensor the caller owns)."""
    b, h, w, c = low.shape
    up = low.view(b, h, 1, w, 1, c)
    if torch.is_grad_enabled():
        return (x.view(b, h, 2, w, 2, c) + up).view(x.shape)
    x.view(b, h, 2, w, 2, c).add_(up)
    return x


class HieraImageEncoder(nn.Module):
    """Hiera trunk + FPN neck (Meta's ``ImageEncoder`` with ``scalp=1``).

    :meth:`forward` returns the neck's levels kept by SAM 2's image path, highest resolution
    first, as channels-last (B, H, W, d) tensors: strides 4, 8 and 16 (the stride-32 level
    only feeds the top-down path).
    """

    def __init__(self, trunk: Hiera, neck: FpnNeck, img_size: int = 1024, scalp: int = 1) -> None:
        super().__init__()
        if trunk.channel_list != neck.backbone_channel_list:
            raise ValueError(
                f"trunk widths {trunk.channel_list} != neck inputs {neck.backbone_channel_list}"
            )
        self.trunk = trunk
        self.neck = neck
        self.img_size = img_size
        self.scalp = scalp

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = self.neck(self.trunk(x))
        return feats[: len(feats) - self.scalp]
