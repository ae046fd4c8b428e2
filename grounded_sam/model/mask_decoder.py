"""SAM's mask decoder: two-way transformer, IoU token, mask tokens, hypernetwork MLPs.

Parameter names match the ``mask_decoder.`` prefix of the official checkpoints.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from grounded_sam.model.common import MLP, LayerNorm2d
from grounded_sam.model.memo import memoized
from grounded_sam.model.transformer import TwoWayTransformer

__all__ = ["MaskDecoder"]


class MaskDecoder(nn.Module):
    def __init__(
        self,
        *,
        transformer_dim: int = 256,
        transformer: nn.Module,
        num_multimask_outputs: int = 3,
        iou_head_depth: int = 3,
        iou_head_hidden_dim: int = 256,
    ) -> None:
        super().__init__()
        self.transformer_dim = transformer_dim
        self.transformer = transformer
        self.num_multimask_outputs = num_multimask_outputs
        self.iou_token = nn.Embedding(1, transformer_dim)
        self.num_mask_tokens = num_multimask_outputs + 1
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, transformer_dim)
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(transformer_dim, transformer_dim // 4, kernel_size=2, stride=2),
            LayerNorm2d(transformer_dim // 4),
            nn.GELU(),
            nn.ConvTranspose2d(transformer_dim // 4, transformer_dim // 8, kernel_size=2, stride=2),
            nn.GELU(),
        )
        self.output_hypernetworks_mlps = nn.ModuleList(
            MLP(transformer_dim, transformer_dim, transformer_dim // 8, 3)
            for _ in range(self.num_mask_tokens)
        )
        self.iou_prediction_head = MLP(
            transformer_dim, iou_head_hidden_dim, self.num_mask_tokens, iou_head_depth
        )

    def forward(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        multimask_output: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Predict masks for a batch of prompts on one image.

        Args:
            image_embeddings: (1, C, h, w) embedding of the image (broadcast over prompts), or
                (B, C, h, w) with one embedding per prompt.
            image_pe: (1, C, h, w) positional encoding.
            sparse_prompt_embeddings: (B, N, C).
            dense_prompt_embeddings: (B, C, h, w).
            multimask_output: return the 3 multimask outputs instead of the single one.
        Returns:
            masks (B, 3 or 1, 4h, 4w) low-resolution logits and iou_pred (B, 3 or 1).
        """
        sl = slice(1, None) if multimask_output else slice(0, 1)
        masks, iou_pred = self.predict_masks(
            image_embeddings,
            image_pe,
            sparse_prompt_embeddings,
            dense_prompt_embeddings,
            mask_tokens=sl,
        )
        return masks, iou_pred[:, sl]

    def predict_masks(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        mask_tokens: slice | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Masks (B, T, 4h, 4w) of the ``mask_tokens`` (default all 4) and iou_pred (B, 4)."""
        b = sparse_prompt_embeddings.shape[0]
        output_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        output_tokens = output_tokens.unsqueeze(0).expand(b, -1, -1)
        tokens = torch.cat([output_tokens, sparse_prompt_embeddings.to(output_tokens.dtype)], dim=1)

        if image_embeddings.shape[0] not in (1, b):
            raise ValueError(
                f"image_embeddings batch ({image_embeddings.shape[0]}) must be 1 or match the "
                f"number of prompts ({b})"
            )
        src = self.image_tokens(image_embeddings, dense_prompt_embeddings)
        c, h, w = src.shape[1:]

        hs, src = self.transformer(src, image_pe, tokens)
        iou_token_out = hs[:, 0, :]
        mask_tokens_out = hs[:, 1 : 1 + self.num_mask_tokens, :]

        token_ids = range(self.num_mask_tokens)[mask_tokens or slice(None)]
        hyper_in = torch.stack(
            [self.output_hypernetworks_mlps[i](mask_tokens_out[:, i, :]) for i in token_ids], dim=1
        )  # (B, T, C/8)
        masks = self._upscale_and_project(src, (h, w), hyper_in)
        iou_pred = self.iou_prediction_head(iou_token_out)
        return masks, iou_pred

    def image_tokens(
        self, image_embeddings: torch.Tensor, dense_prompt_embeddings: torch.Tensor
    ) -> torch.Tensor:
        """``image_embeddings + dense_prompt_embeddings`` (1 or B, C, h, w), computed once for
        all prompts when the dense embedding is the broadcast no-mask one, and kept between
        calls on the same image (see :mod:`grounded_sam.model.memo`)."""
        dense = dense_prompt_embeddings
        if image_embeddings.shape[0] == 1 and dense.shape[0] > 1 and dense.stride(0) == 0:
            # The broadcast no-mask embedding (an expanded view): image + dense is the same
            # for every prompt, so compute it once and let the transformer share it.
            dense = dense[:1]
        return memoized(self, "src", (image_embeddings, dense), lambda: image_embeddings + dense)

    def prepare(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        no_mask_dense: torch.Tensor,
        high_res_features: tuple[torch.Tensor, ...] = (),
    ) -> None:
        """Compute what depends on the image alone (the image tokens and the first
        transformer layer's projections of them) so that the first prompt on this image
        costs what later ones do; autograd off. See :mod:`grounded_sam.model.memo`."""
        src = self.image_tokens(image_embeddings, no_mask_dense)
        self.transformer.prepare(src, image_pe)

    _UPSCALE_CHUNK = 1  # prompts per step of the upscaling path

    def _upscale_and_project(
        self, src: torch.Tensor, size: tuple[int, int], hyper_in: torch.Tensor
    ) -> torch.Tensor:
        """``hyper_in @ output_upscaling(src)`` computed on channels-last tokens.

        Each 2x2-stride-2 transposed convolution is a linear map from one input pixel to
        its 2x2 output pixels, so both run as matrix products on (B, pixels, C) tokens
        (no NCHW transposes), with LayerNorm2d as a layer norm over the last dimension;
        the sub-pixel order is undone once, on the final (B, T, 4h, 4w) masks.

        Args:
            src: (B, h*w, C) image tokens from the transformer.
            hyper_in: (B, T, C/8) hypernetwork outputs of the wanted mask tokens.
        """
        up1, norm, act1, up2, act2 = self.output_upscaling
        h, w = size
        b = src.shape[0]

        def pixel_linear(x: torch.Tensor, conv: nn.ConvTranspose2d) -> torch.Tensor:
            c_in, c_out = conv.weight.shape[:2]
            weight = conv.weight.permute(0, 2, 3, 1).reshape(c_in, 4 * c_out)
            x2d = x.reshape(-1, c_in)
            if conv.bias is None:
                out = x2d @ weight
            else:  # (2, 2, c_out) per input pixel, bias added inside the product
                out = torch.addmm(conv.bias.repeat(4), x2d, weight)
            return out.view(*x.shape[:-1], 4, c_out)

        t = hyper_in.shape[1]
        masks: torch.Tensor | None = None
        # A few prompts at a time: the (hw*16, C/8) features of one prompt are 8 MB for a
        # 64x64 grid, so the chain stays in cache and peak memory stays flat in B.
        for i in range(0, b, self._UPSCALE_CHUNK):
            sl = slice(i, i + self._UPSCALE_CHUNK)
            x = pixel_linear(src[sl], up1)  # (b', hw, 4, C/4)
            x = act1(F.layer_norm(x, (x.shape[-1],), norm.weight, norm.bias, norm.eps))
            x = act2(pixel_linear(x.reshape(x.shape[0], h * w * 4, -1), up2))  # (b', hw*4, 4, C/8)
            lhs, rhs = x.reshape(x.shape[0], h * w * 16, -1), hyper_in[sl].transpose(1, 2)
            if masks is None:  # the first chunk fixes the dtype (lower under autocast)
                first = torch.matmul(lhs, rhs)
                if first.shape[0] == b:
                    masks = first
                    break
                masks = first.new_empty(b, h * w * 16, t)
                masks[sl] = first
            else:
                torch.matmul(lhs, rhs, out=masks[sl])
        if masks is None:  # no prompts
            masks = src.new_empty(b, h * w * 16, t)
        # pixel (i, j), first sub-pixel (dy, dx), second (dy2, dx2): y = 4i + 2dy + dy2
        masks = masks.view(b, h, w, 2, 2, 2, 2, t).permute(0, 7, 1, 3, 5, 2, 4, 6)
        return masks.reshape(b, t, 4 * h, 4 * w)


def build_mask_decoder(prompt_embed_dim: int = 256) -> MaskDecoder:
    """SAM's decoder configuration (shared by every variant)."""
    return MaskDecoder(
        transformer_dim=prompt_embed_dim,
        transformer=TwoWayTransformer(
            depth=2, embedding_dim=prompt_embed_dim, num_heads=8, mlp_dim=2048
        ),
        num_multimask_outputs=3,
        iou_head_depth=3,
        iou_head_hidden_dim=256,
    )
