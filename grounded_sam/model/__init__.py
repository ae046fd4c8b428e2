"""SAM core: pure ``torch.nn`` modules and their builders (no numpy, PIL or I/O)."""

from grounded_sam.model.build import build_sam, list_models
from grounded_sam.model.sam import Sam

__all__ = ["Sam", "build_sam", "list_models"]
