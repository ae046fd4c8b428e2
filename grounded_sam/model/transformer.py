"""SAM's two-way transformer: prompt tokens and image tokens attend to each other.

Parameter names match the ``mask_decoder.transformer.`` prefix of the official checkpoints.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from grounded_sam.model.common import MLPBlock
from grounded_sam.model.memo import memoized

__all__ = ["TwoWayTransformer", "Attention"]


class TwoWayTransformer(nn.Module):
    def __init__(
        self,
        *,
        depth: int = 2,
        embedding_dim: int = 256,
        num_heads: int = 8,
        mlp_dim: int = 2048,
        attention_downsample_rate: int = 2,
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            TwoWayAttentionBlock(
                embedding_dim=embedding_dim,
                num_heads=num_heads,
                mlp_dim=mlp_dim,
                attention_downsample_rate=attention_downsample_rate,
                skip_first_layer_pe=(i == 0),
            )
            for i in range(depth)
        )
        self.final_attn_token_to_image = Attention(
            embedding_dim, num_heads, downsample_rate=attention_downsample_rate
        )
        self.norm_final_attn = nn.LayerNorm(embedding_dim)

    def forward(
        self, image_embedding: torch.Tensor, image_pe: torch.Tensor, point_embedding: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """
        Args:
            image_embedding: (B, C, H, W); B may be 1 and is then shared by all the prompts
                (computed once, never copied B times).
            image_pe: (1 or B, C, H, W) positional encoding of the image grid.
            point_embedding: (B, N, C) prompt tokens.
        Returns:
            queries (B, N, C) and keys (B, H*W, C).
        """
        keys, key_pe = _tokens(image_embedding), _tokens(image_pe)
        queries = point_embedding
        # A single (1, C, H, W) image embedding is shared by all B prompts: the image-side
        # projections of the first block run once (see Attention), and the keys become
        # per-prompt only after the first image->token update.
        for i, layer in enumerate(self.layers):
            # the first layer's keys are the image tokens: their projections are per image
            queries, keys = layer(queries, keys, point_embedding, key_pe, image_keys=i == 0)
        if keys.shape[0] != queries.shape[0]:  # no layers: keys still shared
            keys = keys.expand(queries.shape[0], -1, -1)
        attn_out = self.final_attn_token_to_image(
            q=queries + point_embedding, k=keys + key_pe, v=keys
        )
        queries = self.norm_final_attn(queries + attn_out)
        return queries, keys

    def prepare(self, image_embedding: torch.Tensor, image_pe: torch.Tensor) -> None:
        """Compute the first layer's projections of these image tokens now (kept for the
        calls that follow on the same image; see :mod:`grounded_sam.model.memo`)."""
        if self.layers:
            self.layers[0].image_side(_tokens(image_embedding), _tokens(image_pe))


def _tokens(grid: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, H*W, C) (a view where the layout allows)."""
    return grid.flatten(2).transpose(1, 2)


class TwoWayAttentionBlock(nn.Module):
    """Self-attention of tokens, token->image cross-attention, MLP, image->token cross-attention."""

    def __init__(
        self,
        *,
        embedding_dim: int,
        num_heads: int,
        mlp_dim: int,
        attention_downsample_rate: int,
        skip_first_layer_pe: bool,
    ) -> None:
        super().__init__()
        self.self_attn = Attention(embedding_dim, num_heads)
        self.norm1 = nn.LayerNorm(embedding_dim)
        self.cross_attn_token_to_image = Attention(
            embedding_dim, num_heads, downsample_rate=attention_downsample_rate
        )
        self.norm2 = nn.LayerNorm(embedding_dim)
        self.mlp = MLPBlock(embedding_dim, mlp_dim, act=nn.ReLU)
        self.norm3 = nn.LayerNorm(embedding_dim)
        self.norm4 = nn.LayerNorm(embedding_dim)
        self.cross_attn_image_to_token = Attention(
            embedding_dim, num_heads, downsample_rate=attention_downsample_rate
        )
        self.skip_first_layer_pe = skip_first_layer_pe

    def forward(
        self,
        queries: torch.Tensor,
        keys: torch.Tensor,
        query_pe: torch.Tensor,
        key_pe: torch.Tensor,
        image_keys: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``image_keys``: ``keys`` depend on the image alone (the first layer), so their
        projections are kept between calls on the same image (see :mod:`..memo`)."""
        if self.skip_first_layer_pe:
            queries = self.self_attn(q=queries, k=queries, v=queries)
        else:
            q = queries + query_pe
            queries = queries + self.self_attn(q=q, k=q, v=queries)
        queries = self.norm1(queries)

        t2i, i2t = self.cross_attn_token_to_image, self.cross_attn_image_to_token
        if image_keys:
            k, t2i_done, i2t_done = self.image_side(keys, key_pe)
        else:
            k, t2i_done, i2t_done = keys + key_pe, None, None
        queries = self.norm2(queries + t2i(q=queries + query_pe, k=k, v=keys, projected=t2i_done))
        queries = self.norm3(queries + self.mlp(queries))

        q = queries + query_pe
        keys = self.norm4(keys + i2t(q=k, k=q, v=queries, projected=i2t_done))
        return queries, keys

    def image_side(
        self, keys: torch.Tensor, key_pe: torch.Tensor
    ) -> tuple[torch.Tensor, dict, dict]:
        """For keys that depend on the image alone: ``keys + key_pe`` and the projections of
        the image tokens both cross-attentions make (``projected`` arguments), kept between
        calls on the same image (see :mod:`grounded_sam.model.memo`)."""
        t2i, i2t = self.cross_attn_token_to_image, self.cross_attn_image_to_token

        def compute() -> tuple[torch.Tensor, dict, dict]:
            k = keys + key_pe
            return k, {"k": t2i.k_proj(k), "v": t2i.v_proj(keys)}, {"q": i2t.q_proj(k)}

        weights = (t2i.k_proj, t2i.v_proj, i2t.q_proj)
        inputs = (keys, key_pe, *(p for m in weights for p in (m.weight, m.bias)))
        return memoized(self, "image_side", inputs, compute)


class Attention(nn.Module):
    """Multi-head attention with an optional down-projection of the embedding (q/k/v/out proj)."""

    def __init__(self, embedding_dim: int, num_heads: int, downsample_rate: int = 1) -> None:
        super().__init__()
        self.embedding_dim = embedding_dim
        self.internal_dim = embedding_dim // downsample_rate
        self.num_heads = num_heads
        if self.internal_dim % num_heads != 0:
            raise ValueError(
                f"num_heads ({num_heads}) must divide the internal dim ({self.internal_dim})"
            )
        self.q_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.k_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.v_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.out_proj = nn.Linear(self.internal_dim, embedding_dim)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        return x.reshape(b, n, self.num_heads, c // self.num_heads).transpose(1, 2)

    def project(self, which: str, x: torch.Tensor, projected: dict | None) -> torch.Tensor:
        """``{q,k,v}_proj(x)``, or ``projected[which]`` when the caller has it already."""
        if projected is not None and which in projected:
            return projected[which]
        return getattr(self, f"{which}_proj")(x)

    def forward(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, projected: dict | None = None
    ) -> torch.Tensor:
        """(Bq, Nq, C) queries attend to (Bk, Nk, C) keys/values -> (B, Nq, C).

        Batches broadcast: a batch of 1 on either side is shared by all B of the other,
        and its projections are computed once. Shared keys are handled by stacking the
        B query sets into one sequence (softmax is per query, so this is exact).

        ``projected``: ``{"q"|"k"|"v": tensor}`` projections already computed (what
        ``q_proj(q)`` etc. return), used instead of computing them again.
        """
        bq, bk = q.shape[0], k.shape[0]
        if v.shape[0] != bk:
            raise ValueError(f"k and v batches differ: {bk} != {v.shape[0]}")
        q = self.project("q", q, projected)
        k = self._heads(self.project("k", k, projected))
        v = self._heads(self.project("v", v, projected))
        if bk == 1 and bq > 1:
            nq = q.shape[1]
            out = F.scaled_dot_product_attention(self._heads(q.reshape(1, bq * nq, -1)), k, v)
            out = out.transpose(1, 2).reshape(bq, nq, self.internal_dim)
            return self.out_proj(out)
        q = self._heads(q)
        if bq == 1 and bk > 1:
            q = q.expand(bk, -1, -1, -1)
        out = F.scaled_dot_product_attention(q, k, v)
        b, _, n, _ = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(b, n, self.internal_dim))
