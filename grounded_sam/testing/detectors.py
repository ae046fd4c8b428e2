"""Builders of tiny random models saved in their official on-disk formats.

Plain functions (no pytest), for the tests, the benchmarks and your own offline checks:

    from grounded_sam.testing.detectors import make_clip_state_dict, make_grounding_dino_dir

Every parameter is perturbed (zero-initialised ones too) so no code path hides behind zeros.
"""

from __future__ import annotations

import inspect
import os
from pathlib import Path

import torch

__all__ = [
    "GDINO_WORDS",
    "TINY_CLIP_CFG",
    "make_clip_state_dict",
    "make_grounding_dino_dir",
    "make_yolo_seg_pt",
    "perturb_",
    "register_tiny_clip",
]

# In-test vocabulary for the tiny BERT tokenizer (lowercase words, sub-word pieces, punctuation).
GDINO_WORDS = [
    "a", "an", "the", "cat", "cats", "dog", "dogs", "person", "car", "tree", "sky", "grass",
    "red", "blue", "green", "big", "small", "of", "and", "on", "in", "with", "photo", "animal",
    "ear", "eye", "nose", "tail", "leg", "head", "sitting", "running", "black", "white",
    "##s", "##ing", "##ed", "##er", "striped", "fluffy", "kitten", "puppy", "bird", "table",
    ".", ",", "!", "?", "-",
]  # fmt: skip

# Smallest open_clip-compatible model config: fast on 2 CPU cores.
TINY_CLIP_CFG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "patch_size": 16, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


def perturb_(module: torch.nn.Module, seed: int = 0, scale: float = 0.02) -> torch.nn.Module:
    """Add small seeded noise to every floating parameter and buffer (zero-init ones too)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in list(module.named_parameters()) + list(module.named_buffers()):
            if not p.is_floating_point() or "running_var" in name:
                continue
            p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * scale)
    return module


def make_grounding_dino_dir(
    path: str | os.PathLike, *, max_text_len: int = 256, seed: int = 0
) -> Path:
    """Save a tiny random Grounding DINO (model + processor) with ``save_pretrained``.

    Tiny Swin backbone, 1-layer BERT text encoder, 2 decoder layers (the tied box heads need
    >= 2), 30 queries; the processor resizes images to at most 160 px. ``max_text_len`` is the
    model's text-token limit (small values exercise prompt chunking).

    Returns the directory, loadable by ``AutoProcessor`` / ``AutoModelForZeroShotObjectDetection``.
    """
    from transformers import (
        BertConfig,
        BertTokenizerFast,
        GroundingDinoConfig,
        GroundingDinoForObjectDetection,
        GroundingDinoImageProcessor,
        GroundingDinoProcessor,
        SwinConfig,
    )

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *GDINO_WORDS]
    vocab_file = path / "vocab.txt"
    vocab_file.write_text("\n".join(vocab) + "\n")
    if "vocab" in inspect.signature(BertTokenizerFast.__init__).parameters:  # transformers 5
        tokenizer = BertTokenizerFast(vocab=str(vocab_file), do_lower_case=True)
    else:  # transformers 4
        tokenizer = BertTokenizerFast(vocab_file=str(vocab_file), do_lower_case=True)
    tokenizer.model_max_length = max_text_len
    vocab_file.unlink()
    assert tokenizer.convert_tokens_to_ids("cat") == vocab.index("cat"), "tokenizer lost its vocab"

    backbone = SwinConfig(
        image_size=64,
        patch_size=4,
        embed_dim=8,
        depths=[1, 1, 1, 1],
        num_heads=[1, 1, 2, 2],
        window_size=4,
        out_features=["stage2", "stage3", "stage4"],
    )
    text = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=37,
        max_position_embeddings=max(max_text_len, 64),
    )
    config = GroundingDinoConfig(
        backbone_config=backbone,
        text_config=text,
        d_model=32,
        num_queries=30,
        encoder_layers=1,
        decoder_layers=2,
        encoder_ffn_dim=32,
        decoder_ffn_dim=32,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        num_feature_levels=4,
        encoder_n_points=2,
        decoder_n_points=2,
        max_text_len=max_text_len,
    )
    torch.manual_seed(seed)
    model = GroundingDinoForObjectDetection(config).eval()
    perturb_(model, seed=seed)
    with torch.no_grad():  # shrink the query features so token logits spread around 0
        model.model.decoder.layer_norm.weight.mul_(0.15)
        model.model.decoder.layer_norm.bias.mul_(0.15)
    image_processor = GroundingDinoImageProcessor(size={"shortest_edge": 96, "longest_edge": 160})
    processor = GroundingDinoProcessor(image_processor=image_processor, tokenizer=tokenizer)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


def make_yolo_seg_pt(
    path: str | os.PathLike, *, cfg: str = "yolov8n-seg.yaml", cls_bias: float = 1.0, seed: int = 0
) -> Path:
    """Save a random YOLOv8-seg checkpoint the way ultralytics does (``Model.save``).

    Built from ultralytics' bundled ``cfg`` (no download). The class biases start near the
    0.01 prior, so they are raised to ``cls_bias`` (mean) plus noise to get proposals.
    Returns the ``.pt`` path, loadable with ``ultralytics.YOLO(path)``.
    """
    from grounded_sam.detectors.yolo_clip import _import_ultralytics

    YOLO = _import_ultralytics().YOLO

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = YOLO(cfg, task="segment")
    net = model.model
    perturb_(net, seed=seed)
    head = net.model[-1]
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for seq in head.cv3:  # class branch: last conv per level
            bias = seq[-1].bias
            bias.copy_(cls_bias + 1.5 * torch.randn(bias.shape, generator=g))
    net.eval()
    model.save(str(path))
    return path


def register_tiny_clip(name: str = "gs-test-tiny-clip") -> str:
    """Register :data:`TINY_CLIP_CFG` with open_clip under ``name`` (idempotent); returns ``name``."""
    import hashlib
    import json
    import tempfile

    import open_clip

    if name not in open_clip.list_models():
        # One folder per user and config, reused by every process: open_clip rescans the
        # folders it was given on each registration, so the file must outlive this call (a
        # fresh temporary folder per process piled up in /tmp).
        text = json.dumps(TINY_CLIP_CFG)
        digest = hashlib.sha256(text.encode()).hexdigest()[:12]
        uid = os.getuid() if hasattr(os, "getuid") else 0
        cfg_dir = Path(tempfile.gettempdir()) / f"gs_clip_cfg_{uid}_{digest}"
        cfg_dir.mkdir(exist_ok=True)
        path = cfg_dir / f"{name}.json"
        if not path.exists() or path.read_text() != text:
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(text)
            os.replace(tmp, path)  # atomic: a concurrent process never reads half a file
        open_clip.add_model_config(cfg_dir)
    return name


def make_clip_state_dict(
    path: str | os.PathLike, *, model: str = "ViT-B-32", seed: int = 0
) -> Path:
    """Save the state dict of a random open_clip ``model`` (``pretrained=None``), perturbed.

    ``model="tiny"`` uses :data:`TINY_CLIP_CFG` (registered as ``gs-test-tiny-clip``; pass that
    name as the detector's ``clip``). Returns the ``.pt`` path of ``torch.save(state_dict)``.
    """
    import open_clip

    if model == "tiny":
        model = register_tiny_clip()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    net = open_clip.create_model(model, pretrained=None)
    perturb_(net, seed=seed)
    torch.save(net.state_dict(), path)
    return path
