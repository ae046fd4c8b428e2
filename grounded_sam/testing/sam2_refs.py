"""Meta's ``sam2`` reference models with every tensor randomised, and checkpoint writers.

For the SAM 2.1 parity tests and benchmarks: :func:`meta_sam2` builds Meta's ``SAM2Base``
(through ``sam2.build_sam.build_sam2`` and its Hydra configs) for one of our variant names or
for a :class:`~grounded_sam.model.sam2.Sam2Config` (e.g. the reduced ``TEST_CONFIG``), and
adds noise to every floating tensor of its state dict: 57 of Hiera's tensors start at zero
(position embeddings, LayerNorm and linear biases) and would hide bugs behind zeros.
:func:`save_sam2_checkpoint` writes ``{"model": state_dict}`` as Meta's ``.pt`` files are.

Needs the ``sam2`` package (a development dependency); importing it initialises Hydra, so it
is imported only inside the helpers.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from grounded_sam.model.sam2 import (
    MEMORY_KEYS,
    SAM2_CONFIGS,
    TEST_CONFIG,
    Sam2,
    Sam2Config,
    build_sam2_model,
)
from grounded_sam.testing.sam_refs import _seeded, perturb_

__all__ = [
    "META_CONFIG_FILES",
    "hydra_overrides",
    "meta_image_predictor",
    "meta_sam2",
    "random_sam2",
    "random_sam2_checkpoint",
    "save_sam2_checkpoint",
]

# our variant name -> Meta's config file
META_CONFIG_FILES = {
    "sam2.1_hiera_tiny": "configs/sam2.1/sam2.1_hiera_t.yaml",
    "sam2.1_hiera_small": "configs/sam2.1/sam2.1_hiera_s.yaml",
    "sam2.1_hiera_base_plus": "configs/sam2.1/sam2.1_hiera_b+.yaml",
    "sam2.1_hiera_large": "configs/sam2.1/sam2.1_hiera_l.yaml",
}


def hydra_overrides(config: Sam2Config) -> list[str]:
    """Hydra overrides turning Meta's Hiera-T config into the trunk of ``config``."""

    def seq(values) -> str:
        return "[" + ",".join(str(int(v)) for v in values) + "]"

    trunk = "++model.image_encoder.trunk"
    return [
        f"{trunk}.embed_dim={config.embed_dim}",
        f"{trunk}.num_heads={config.num_heads}",
        f"{trunk}.stages={seq(config.stages)}",
        f"{trunk}.global_att_blocks={seq(config.global_att_blocks)}",
        f"{trunk}.window_pos_embed_bkg_spatial_size={seq(config.window_pos_embed_bkg_spatial_size)}",
        f"{trunk}.window_spec={seq(config.window_spec)}",
        f"++model.image_encoder.neck.backbone_channel_list={seq(config.channel_list)}",
    ]


def meta_sam2(
    config: str | Sam2Config = "sam2.1_hiera_tiny",
    *,
    seed: int = 0,
    scale: float = 0.05,
    dynamic_multimask_via_stability: bool = True,
) -> nn.Module:
    """Meta's ``SAM2Base`` for a variant name or a trunk config, every float tensor of its
    state dict perturbed (seeded: the same weights in every process), eval mode, CPU.

    ``dynamic_multimask_via_stability`` is Meta's ``apply_postprocessing`` of ``build_sam2``.
    """
    from sam2.build_sam import build_sam2

    if isinstance(config, str):
        if config not in META_CONFIG_FILES:
            raise ValueError(f"no Meta config for {config!r}; known: {sorted(META_CONFIG_FILES)}")
        file, overrides = META_CONFIG_FILES[config], []
    else:
        file, overrides = META_CONFIG_FILES["sam2.1_hiera_tiny"], hydra_overrides(config)
    with _seeded(seed):
        model = build_sam2(
            file,
            None,
            device="cpu",
            hydra_overrides_extra=overrides,
            apply_postprocessing=dynamic_multimask_via_stability,
        )
    return perturb_(model, scale=scale, seed=seed).eval()


def meta_image_predictor(model: nn.Module):
    """Meta's ``SAM2ImagePredictor`` around ``model`` (Meta's end-to-end image reference)."""
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    return SAM2ImagePredictor(model)


def save_sam2_checkpoint(model: nn.Module, path: Path) -> Path:
    """Save ``{"model": model.state_dict()}``, the layout of Meta's ``sam2.1_hiera_*.pt``."""
    torch.save({"model": model.state_dict()}, path)
    return path


def random_sam2(config: str | Sam2Config = TEST_CONFIG, *, seed: int = 0) -> Sam2:
    """Our ``Sam2`` with seeded random weights, every float tensor perturbed, eval, CPU; no
    ``sam2`` package needed. The default reduced Hiera (:data:`TEST_CONFIG`) keeps the real
    1024 input and every output shape: for fast pipeline, CLI and predictor tests."""
    with _seeded(seed):
        model = build_sam2_model(config)
    return perturb_(model, seed=seed).eval()


def random_sam2_checkpoint(name: str | Sam2Config, path: Path, *, seed: int = 0) -> Path:
    """A file in the format of Meta's ``<name>.pt`` (``{"model": state_dict}`` with the video
    modules' keys too) holding :func:`random_sam2` weights of a variant name or a config
    (e.g. :data:`TEST_CONFIG`); no ``sam2`` package needed."""
    state = dict(random_sam2(name, seed=seed).state_dict())
    g = torch.Generator().manual_seed(seed + 1)
    for key, shape in MEMORY_KEYS.items():
        state[key] = torch.randn(shape, generator=g) * 0.05
    torch.save({"model": state}, path)
    return path


assert set(META_CONFIG_FILES) == set(SAM2_CONFIGS)
