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


# SAM 2.1 (Hiera): the image path of Meta's sam2.1_hiera_*.pt; the builders and the checkpoint
# filter (which checks that what it drops is exactly the video modules) live in model/sam2.py.
def _sam2(name: str):
    def build(*, dynamic_multimask_via_stability: bool = True):
        from grounded_sam.model.sam2 import build_sam2_model

        model = build_sam2_model(
            name, dynamic_multimask_via_stability=dynamic_multimask_via_stability
        )
        return model.eval()

    return build


def _sam2_checkpoint(name: str):
    def convert(state_dict: dict, source: str) -> dict:
        from grounded_sam.model.sam2 import image_state_dict

        return image_state_dict(name, state_dict, source)

    return convert


for _name, _what in (
    ("sam2.1_hiera_tiny", "Hiera-T, 27M encoder parameters"),
    ("sam2.1_hiera_small", "Hiera-S, 34M"),
    ("sam2.1_hiera_base_plus", "Hiera-B+, 69M"),
    ("sam2.1_hiera_large", "Hiera-L, 213M"),
):
    register_model(
        ModelConfig(
            _name,
            "sam2",
            _sam2(_name),
            weights=_name,
            description=f"SAM 2.1 {_what}; Meta's {_name}.pt (image path)",
            # Meta's build_sam2 turns the single-mask stability fallback on
            options={"dynamic_multimask_via_stability": True},
            convert_checkpoint=_sam2_checkpoint(_name),
        )
    )
