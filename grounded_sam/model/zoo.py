"""The built-in SAM variants, each a :class:`~grounded_sam.model.registry.ModelConfig`.

Builders import their encoder modules when called, so listing the variants stays cheap.
"""

from __future__ import annotations

from torch import nn

from grounded_sam.model.registry import ModelConfig, register_model
from grounded_sam.model.sam import Sam

PROMPT_EMBED_DIM = 256
IMAGE_SIZE = 1024
EMBED_GRID = IMAGE_SIZE // 16  # 64


def _sam(image_encoder: nn.Module, name: str) -> Sam:
    from grounded_sam.model.mask_decoder import build_mask_decoder
    from grounded_sam.model.prompt_encoder import PromptEncoder

    return Sam(
        image_encoder=image_encoder,
        prompt_encoder=PromptEncoder(
            embed_dim=PROMPT_EMBED_DIM,
            image_embedding_size=(EMBED_GRID, EMBED_GRID),
            input_image_size=(IMAGE_SIZE, IMAGE_SIZE),
            mask_in_chans=16,
        ),
        mask_decoder=build_mask_decoder(PROMPT_EMBED_DIM),
        name=name,
    ).eval()


def _vit(
    name: str, embed_dim: int, depth: int, num_heads: int, global_attn_indexes: tuple[int, ...]
):
    def build() -> Sam:
        from grounded_sam.model.image_encoder import ImageEncoderViT

        encoder = ImageEncoderViT(
            img_size=IMAGE_SIZE,
            patch_size=16,
            embed_dim=embed_dim,
            depth=depth,
            num_heads=num_heads,
            mlp_ratio=4.0,
            out_chans=PROMPT_EMBED_DIM,
            qkv_bias=True,
            use_rel_pos=True,
            window_size=14,
            global_attn_indexes=global_attn_indexes,
        )
        return _sam(encoder, name)

    return build


def _mobile_sam() -> Sam:
    from grounded_sam.model.tiny_vit import tiny_vit_5m

    return _sam(tiny_vit_5m(img_size=IMAGE_SIZE), "mobile_sam")


register_model(
    ModelConfig(
        "vit_b",
        "sam",
        _vit("vit_b", 768, 12, 12, (2, 5, 8, 11)),
        weights="vit_b",
        description="SAM ViT-B (91M encoder parameters); Meta's sam_vit_b_01ec64.pth",
    )
)
register_model(
    ModelConfig(
        "vit_l",
        "sam",
        _vit("vit_l", 1024, 24, 16, (5, 11, 17, 23)),
        weights="vit_l",
        description="SAM ViT-L (308M); Meta's sam_vit_l_0b3195.pth",
    )
)
register_model(
    ModelConfig(
        "vit_h",
        "sam",
        _vit("vit_h", 1280, 32, 16, (7, 15, 23, 31)),
        weights="vit_h",
        description="SAM ViT-H (636M); Meta's sam_vit_h_4b8939.pth",
    )
)
register_model(
    ModelConfig(
        "mobile_sam",
        "sam",
        _mobile_sam,
        weights="mobile_sam",
        description="MobileSAM: TinyViT-5M encoder + SAM's decoder; mobile_sam.pt",
    )
)
