"""The pieces of SAM's training recipe: prompt simulation, losses, LoRA."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from grounded_sam.train.lora import LoRALinear, add_lora, lora_parameters, merged_state_dict
from grounded_sam.train.losses import (
    LossWeights,
    dice_loss,
    mask_iou,
    sam_loss,
    sigmoid_focal_loss,
)
from grounded_sam.train.prompts import (
    jitter_box,
    lowres_target,
    round_plan,
    sample_correction,
    sample_point,
)


# ----------------------------------------------------------------------------- prompts
def test_jitter_box_within_ten_percent_capped_at_20px():
    rng = np.random.default_rng(0)
    box = np.array([100.0, 50.0, 400.0, 90.0])  # 300 wide (10% = 30 -> cap 20), 40 high (4)
    got = np.stack([jitter_box(box, (500, 500), rng) for _ in range(2000)])
    d = got - box
    assert np.abs(d[:, [0, 2]]).max() <= 20 + 1e-9 and np.abs(d[:, [0, 2]]).max() > 18
    assert np.abs(d[:, [1, 3]]).max() <= 4 + 1e-9 and np.abs(d[:, [1, 3]]).max() > 3.5
    # clipped to the image, never degenerate
    edge = np.stack([jitter_box(np.array([0, 0, 2, 2.0]), (10, 10), rng) for _ in range(200)])
    assert (edge >= 0).all() and (edge[:, 2] - edge[:, 0] >= 1).all()
    assert (edge[:, 3] - edge[:, 1] >= 1).all()


def test_sample_point_inside_mask():
    m = np.zeros((30, 40), bool)
    m[5:9, 20:23] = True
    rng = np.random.default_rng(1)
    for _ in range(50):
        x, y = sample_point(m, rng)
        assert m[int(y), int(x)]


def test_lowres_target_is_the_mask_in_the_padded_logit_frame():
    # a 128x64 (HxW) image: SAM's letterbox puts it in the top-left 1024x512 of the input
    m = np.zeros((128, 64), bool)
    m[32:64, 16:48] = True  # rows 32..63, cols 16..47
    target, weight = lowres_target(m, (1024, 512), 1024, 256)
    assert target.shape == weight.shape == (1, 256, 256)
    # weight: 1 on the image's 256 x 128 cells, 0 on the padding
    assert weight[0, :, :128].min() == 1 and weight[0, :, 128:].max() == 0
    # 8x upscale then /4: rows 32..63 -> cells 64..127, cols 16..47 -> cells 32..95
    inside = target[0, 66:126, 34:94]
    assert inside.min() > 0.99
    assert target[0, :62].max() < 0.01 and target[0, :, 98:].max() < 0.01
    assert abs(float(target.sum()) - 64 * 64) < 64  # area preserved up to the soft edge


def test_sample_correction_labels_and_frame():
    target = torch.zeros(3, 8, 8)
    target[:, 2:6, 2:6] = 1
    weight = torch.ones(3, 8, 8)
    logits = torch.full((3, 8, 8), -5.0)
    logits[1] = torch.where(target[1] > 0, 5.0, -5.0)  # perfect: no click
    logits[2] = 5.0  # everything foreground: only false positives
    coords, labels = sample_correction(logits, target, weight, np.random.default_rng(0), 32)
    assert labels.tolist() == [1, -1, 0]
    # model frame: 4 model px per cell, cell centre = 4 * i + 1.5
    cx, cy = coords[0]
    i, j = (cy - 1.5) / 4, (cx - 1.5) / 4
    assert i == int(i) and j == int(j) and target[0, int(i), int(j)] == 1
    cx, cy = coords[2]
    assert target[2, int((cy - 1.5) / 4), int((cx - 1.5) / 4)] == 0


def test_round_plan():
    rng = np.random.default_rng(3)
    plan = round_plan(8, 2, rng)
    assert plan[0] == "prompt" and plan[-1] == "refine" and len(plan) == 11
    assert plan.count("click") == 8 and plan.count("refine") == 2
    assert plan[1] == "click" or plan.index("refine") > 1  # never a refine before any click
    assert round_plan(0, 0, rng) == ["prompt"]


# ----------------------------------------------------------------------------- losses
def test_focal_and_dice_values():
    target = torch.tensor([[[[1.0, 0.0], [1.0, 0.0]]]])
    weight = torch.ones(1, 1, 2, 2)
    logits = torch.tensor([[[[2.0, -1.0], [0.5, 3.0]]]])
    p = torch.sigmoid(logits)
    ce = -(target * p.log() + (1 - target) * (1 - p).log())
    p_t = p * target + (1 - p) * (1 - target)
    a_t = 0.25 * target + 0.75 * (1 - target)
    expected = (a_t * ce * (1 - p_t) ** 2).mean()
    assert torch.allclose(sigmoid_focal_loss(logits, target, weight)[0, 0], expected)
    dice = 1 - (2 * (p * target).sum() + 1) / (p.sum() + target.sum() + 1)
    assert torch.allclose(dice_loss(logits, target, weight)[0, 0], dice)
    # padding (weight 0) does not count
    w = torch.tensor([[[[1.0, 0.0], [1.0, 0.0]]]])
    assert torch.allclose(mask_iou(logits, target, w), torch.tensor([[1.0]]))
    assert torch.allclose(mask_iou(logits, target, weight), torch.tensor([[2 / 3]]))


def test_multimask_backpropagates_only_the_lowest_loss():
    target = torch.zeros(1, 1, 4, 4)
    target[..., :2, :] = 1
    weight = torch.ones(1, 1, 4, 4)
    good = torch.where(target > 0, 6.0, -6.0)[0, 0]
    logits = torch.stack([-good, good, torch.zeros(4, 4)])[None].requires_grad_(True)
    iou_pred = torch.tensor([[0.2, 0.9, 0.5]], requires_grad=True)
    loss = sam_loss(logits, iou_pred, target, weight, LossWeights())
    assert loss.chosen.tolist() == [1]
    loss.total.backward()
    g = logits.grad[0].abs().sum((-2, -1))
    assert g[1] > 0 and g[0] == 0 and g[2] == 0
    # the IoU head is supervised on all three outputs, against their real IoU
    assert torch.allclose(loss.real_iou, torch.tensor([[0.0, 1.0, 0.0]]))
    assert (iou_pred.grad != 0).all()


# ----------------------------------------------------------------------------- LoRA
class _Attn(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.qkv = nn.Linear(8, 24)
        self.proj = nn.Linear(8, 8)

    def forward(self, x):
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        return self.proj(torch.softmax(q @ k.transpose(-1, -2), -1) @ v)


class _Enc(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([nn.ModuleDict({"attn": _Attn()}) for _ in range(2)])
        self.proj = nn.Linear(8, 8)  # not an attention projection: no adapter

    def forward(self, x):
        for b in self.blocks:
            x = x + b["attn"](x)
        return self.proj(x)


def test_lora_starts_exact_and_merges_into_the_plain_layout():
    torch.manual_seed(0)
    enc = _Enc()
    plain_keys = list(enc.state_dict())
    x = torch.randn(2, 5, 8)
    before = enc(x)
    names = add_lora(enc, rank=2)
    assert names == ["blocks.0.attn.qkv", "blocks.0.attn.proj",
                     "blocks.1.attn.qkv", "blocks.1.attn.proj"]  # fmt: skip
    assert torch.equal(enc(x), before)  # B = 0: the loaded model, exactly
    assert len(lora_parameters(enc)) == 8
    with torch.no_grad():
        for p in lora_parameters(enc):
            p.normal_(0, 0.3)
    tuned = enc(x)
    assert not torch.allclose(tuned, before)
    merged = merged_state_dict(enc)
    assert list(merged) == plain_keys
    fresh = _Enc()
    fresh.load_state_dict(merged, strict=True)
    assert torch.allclose(fresh(x), tuned, atol=1e-5)
    assert isinstance(enc.blocks[0]["attn"].qkv, LoRALinear)
    with pytest.raises(ValueError, match="no attention module"):
        add_lora(nn.Sequential(nn.Linear(2, 2)))
