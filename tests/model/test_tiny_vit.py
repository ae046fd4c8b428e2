"""TinyViT (MobileSAM encoder): checkpoint keys and numerical parity with ultralytics' TinyViT."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from grounded_sam.model.tiny_vit import Conv2dBN, TinyViT, tiny_vit_5m

PIXEL_MEAN = torch.tensor([123.675, 116.28, 103.53]).view(3, 1, 1)
PIXEL_STD = torch.tensor([58.395, 57.12, 57.375]).view(3, 1, 1)


def _reference_tiny_vit(img_size: int = 1024) -> torch.nn.Module:
    """Ultralytics' TinyViT with exactly the arguments of its ``build_mobile_sam()``."""
    from ultralytics.models.sam.modules.tiny_encoder import TinyViT as RefTinyViT

    return RefTinyViT(
        img_size=img_size,
        in_chans=3,
        num_classes=1000,
        embed_dims=[64, 128, 160, 320],
        depths=[2, 2, 6, 2],
        num_heads=[2, 4, 5, 10],
        window_sizes=[7, 7, 14, 7],
        mlp_ratio=4.0,
        drop_rate=0.0,
        drop_path_rate=0.0,
        use_checkpoint=False,
        mbconv_expand_ratio=4.0,
        local_conv_size=3,
        layer_lr_decay=0.8,
    )


@torch.no_grad()
def _perturb(model: torch.nn.Module, seed: int) -> None:
    """Add noise to every float parameter and buffer, zero/constant-initialised ones included.

    BatchNorm running variances are redrawn in [0.5, 2] so they stay positive.
    """
    gen = torch.Generator().manual_seed(seed)
    tensors = list(model.named_parameters()) + list(model.named_buffers())
    for name, t in tensors:
        if not t.is_floating_point():
            continue
        if name.endswith("running_var"):
            t.copy_(torch.rand(t.shape, generator=gen) * 1.5 + 0.5)
            continue
        std = t.std().item() if t.numel() > 1 else 0.0
        scale = 0.5 * std if std > 1e-6 else (1.0 if name.endswith("attention_biases") else 0.2)
        t.add_(torch.randn(t.shape, generator=gen) * scale)


@torch.no_grad()
def _calibrate_batchnorm(model: torch.nn.Module, x: torch.Tensor, seed: int) -> None:
    """Set BatchNorm running statistics near the real activation statistics on ``x``, then jitter.

    With arbitrary running statistics the BatchNorms of a random network wash the image out (the
    feature maps become nearly constant and attention weights stop mattering); trained networks
    have statistics that match their activations, which this imitates.
    """
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average: one batch gives its exact statistics
    model.train()
    model(x)
    gen = torch.Generator().manual_seed(seed)
    for bn in bns:
        bn.momentum = 0.1
        n = bn.running_mean.numel()
        bn.running_var.mul_(torch.rand(n, generator=gen) * 0.45 + 0.8)
        bn.running_mean.add_(torch.randn(n, generator=gen) * 0.1 * bn.running_var.sqrt())
    model.eval()


def _photo_batch(size: int) -> torch.Tensor:
    """skimage's chelsea photo, longest side resized to ``size``, normalised, zero-padded."""
    from skimage import data

    img = torch.from_numpy(np.ascontiguousarray(data.chelsea())).permute(2, 0, 1).float()
    h, w = img.shape[1:]
    scale = size / max(h, w)
    nh, nw = int(h * scale + 0.5), int(w * scale + 0.5)
    img = F.interpolate(img[None], size=(nh, nw), mode="bilinear", align_corners=False)[0]
    img = (img - PIXEL_MEAN) / PIXEL_STD
    return F.pad(img, (0, size - nw, 0, size - nh))[None]


def _rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


def _pair(img_size: int, seed: int) -> tuple[torch.nn.Module, TinyViT]:
    """Perturbed ultralytics TinyViT and ours with its state dict loaded strictly, both in eval.

    Weights are perturbed and BatchNorm-calibrated on a 256x256 model (state dicts do not
    depend on img_size), then loaded into both models of the requested size.
    """
    torch.manual_seed(seed)
    donor = _reference_tiny_vit(256)
    _perturb(donor, seed)
    _calibrate_batchnorm(donor, torch.cat([_photo_batch(256), torch.randn(1, 3, 256, 256)]), seed)
    state = donor.state_dict()
    ref = _reference_tiny_vit(img_size)
    ref.load_state_dict(state, strict=True)
    ref.eval()  # after loading: ultralytics caches the attention bias on eval()
    ours = tiny_vit_5m(img_size=img_size)
    ours.load_state_dict(state, strict=True)
    ours.eval()
    return ref, ours


@pytest.fixture(scope="module")
def full_size() -> dict[str, object]:
    """One 1024x1024 forward of each model on the photo (about 3 s each on 2 cores)."""
    ref, ours = _pair(1024, seed=0)
    x = _photo_batch(1024)
    with torch.no_grad():
        out_ref = ref(x)
        out_ours = ours(x)
    return {"ref": ref, "ours": ours, "x": x, "out_ref": out_ref, "out_ours": out_ours}


def test_state_dict_keys_and_shapes_match_mobile_sam() -> None:
    ref = _reference_tiny_vit(1024)
    ours = tiny_vit_5m()
    ref_sd, our_sd = ref.state_dict(), ours.state_dict()
    assert set(our_sd) == set(ref_sd)
    assert {k: tuple(v.shape) for k, v in our_sd.items()} == {
        k: tuple(v.shape) for k, v in ref_sd.items()
    }
    # Non-persistent in mobile_sam.pt too: not a checkpoint key, but the index must agree.
    assert not any("attention_bias_idxs" in k for k in our_sd)
    ref_idx = {k: v for k, v in ref.named_buffers() if k.endswith("attention_bias_idxs")}
    our_idx = {k: v for k, v in ours.named_buffers() if k.endswith("attention_bias_idxs")}
    assert set(ref_idx) == set(our_idx) and len(our_idx) == 10
    for k, v in ref_idx.items():
        assert torch.equal(our_idx[k], v), k


def test_full_size_parity_on_photo(full_size: dict[str, object]) -> None:
    out_ref, out_ours = full_size["out_ref"], full_size["out_ours"]
    assert isinstance(out_ours, torch.Tensor) and isinstance(out_ref, torch.Tensor)
    assert out_ours.shape == (1, 256, 64, 64) == out_ref.shape
    assert out_ours.dtype == torch.float32 and out_ours.is_contiguous()
    assert torch.isfinite(out_ours).all()
    assert out_ref.std() > 0.1  # a non-degenerate embedding, so the comparison means something
    assert _rel_diff(out_ours, out_ref) <= 5e-3


def test_full_size_fused_matches_unfused(full_size: dict[str, object]) -> None:
    ours = full_size["ours"]
    assert isinstance(ours, TinyViT)
    fused = tiny_vit_5m()
    fused.load_state_dict(ours.state_dict(), strict=True)
    fused.eval().fuse()
    assert fused.is_fused and not ours.is_fused
    with torch.no_grad():
        out = fused(full_size["x"])
    assert _rel_diff(out, full_size["out_ours"]) <= 1e-4


def test_small_size_parity_batch_and_sensitivity() -> None:
    # 256 input: stage maps 32/16/16, so every attention stage pads to whole windows.
    ref, ours = _pair(256, seed=1)
    x = torch.cat([_photo_batch(256), torch.randn(1, 3, 256, 256)])
    with torch.no_grad():
        out_ref = ref(x)
        out_ours = ours(x)
        single = ours(x[1:])
    assert out_ours.shape == (2, 256, 16, 16)
    assert _rel_diff(out_ours, out_ref) <= 5e-3
    # Windows of one sample never mix with another's.
    assert _rel_diff(single, out_ours[1:]) <= 1e-4
    # The comparison is sensitive to the learned attention bias, and the inference cache of the
    # gathered bias notices an in-place change of the table.
    with torch.no_grad():
        for block in ours.layers[2].blocks:
            block.attn.attention_biases.zero_()
        changed = ours(x)
    assert _rel_diff(changed, out_ref) > 5e-2


def test_fuse_small() -> None:
    model = tiny_vit_5m(img_size=128)
    _perturb(model, seed=2)
    x = torch.randn(1, 3, 128, 128)
    with pytest.raises(RuntimeError, match="eval"):
        model.fuse()
    with pytest.raises(RuntimeError, match="eval"):
        Conv2dBN(4, 8, 3).fuse()
    model.eval()
    with torch.no_grad():
        before = model(x)
        model.fuse()
        model.fuse()  # idempotent
        after = model(x)
    assert model.is_fused
    convbns = [m for m in model.modules() if isinstance(m, Conv2dBN)]
    assert convbns and all(m.c.bias is not None for m in convbns)
    assert not any("bn." in k for k in model.state_dict())
    assert _rel_diff(after, before) <= 1e-4


def test_train_mode_backward_reaches_every_parameter() -> None:
    model = tiny_vit_5m(img_size=64)
    _perturb(model, seed=3)
    model.train()
    out = model(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 256, 4, 4)
    out.square().mean().backward()
    unused = {"norm_head.weight", "norm_head.bias", "head.weight", "head.bias"}
    no_grad = [
        n
        for n, p in model.named_parameters()
        if n not in unused and (p.grad is None or not p.grad.any())
    ]
    assert no_grad == []


def test_drop_path_only_in_training() -> None:
    model = tiny_vit_5m(img_size=64, drop_path_rate=0.5)
    _perturb(model, seed=4)
    x = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        model.train()
        outs = []
        for seed in (0, 1):
            torch.manual_seed(seed)
            outs.append(model(x))
        model.eval()
        first, second = model(x), model(x)
    assert not torch.allclose(outs[0], outs[1])  # different blocks dropped
    assert torch.equal(first, second)  # eval: no stochastic depth


def test_builder_overrides_and_config_errors() -> None:
    small = tiny_vit_5m(img_size=256, num_classes=0)
    assert small.img_size == 256 and small.embedding_size == 16
    assert not any(k.startswith("head.") for k in small.state_dict())
    with pytest.raises(TypeError, match="unknown hyperparameters"):
        tiny_vit_5m(image_size=256)
    with pytest.raises(ValueError, match="multiple of 16"):
        tiny_vit_5m(img_size=1000)
    with pytest.raises(ValueError, match="divisible"):
        TinyViT(num_heads=(2, 3, 5, 10))
    with pytest.raises(ValueError, match="one entry per stage"):
        TinyViT(window_sizes=(7, 7, 14))
    with pytest.raises(ValueError, match="local_conv_size"):
        TinyViT(local_conv_size=4)


@pytest.mark.parametrize(
    ("bad", "error", "match"),
    [
        (np.zeros((1, 3, 64, 64), np.float32), TypeError, "torch.Tensor"),
        (torch.zeros(3, 64, 64), ValueError, r"\(B, 3, 64, 64\)"),
        (torch.zeros(1, 1, 64, 64), ValueError, r"got shape \(1, 1, 64, 64\)"),
        (torch.zeros(1, 3, 64, 48), ValueError, "padded to 64x64"),
        (torch.zeros(1, 3, 64, 64, dtype=torch.uint8), TypeError, "floating-point"),
    ],
)
def test_forward_rejects_bad_input(bad: object, error: type[Exception], match: str) -> None:
    model = tiny_vit_5m(img_size=64)
    with pytest.raises(error, match=match):
        model(bad)
