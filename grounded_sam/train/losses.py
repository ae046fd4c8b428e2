"""SAM's training loss: focal + dice on the mask logits (20:1), MSE of the IoU head against the
real IoU, and the minimum over the multimask outputs.

Sources: SAM paper (Kirillov et al. 2023, section 3 "Losses and training" and appendix A):
"We supervise mask prediction with the linear combination of focal loss and dice loss used
in [DETR/MaskFormer]... in a 20:1 ratio of focal loss to dice loss"; "The IoU prediction head
is trained with mean-square-error loss between the IoU prediction and the predicted mask's
IoU with the ground truth mask"; with ambiguous prompts "we only backpropagate from the
lowest loss" of the three masks. Focal loss parameters (alpha 0.25, gamma 2), the per-pixel
mean and supervising the IoU prediction of every multimask output follow SAM 2's training
code (``sam2/training/loss_fns.py``: ``sigmoid_focal_loss``, ``dice_loss``,
``MultiStepMultiMasksAndIous`` with ``supervise_all_iou``).

All functions work on low-resolution logits ``(B, C, h, w)`` against a soft target ``(B, 1,
h, w)`` in [0, 1] (the ground-truth mask resampled to that grid) and a pixel weight ``(B, 1,
h, w)`` that is 0 on the padding SAM adds around the image (never part of any output mask).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["LossWeights", "SamLoss", "dice_loss", "mask_iou", "sam_loss", "sigmoid_focal_loss"]


@dataclass(frozen=True)
class LossWeights:
    """Weights of the three terms (the SAM paper's: focal 20, dice 1, IoU MSE 1) and the
    focal-loss parameters."""

    focal: float = 20.0
    dice: float = 1.0
    iou: float = 1.0
    alpha: float = 0.25
    gamma: float = 2.0


def _wmean(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Weighted mean over the last two dims: (B, C, h, w), (B, 1, h, w) -> (B, C)."""
    return (x * weight).sum((-2, -1)) / weight.sum((-2, -1)).clamp_min(1e-6)


def sigmoid_focal_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor,
    alpha: float = 0.25,
    gamma: float = 2.0,
) -> torch.Tensor:
    """Focal loss (Lin et al. 2017) per mask, mean over the weighted pixels: (B, C)."""
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, target.expand_as(logits), reduction="none")
    p_t = p * target + (1 - p) * (1 - target)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * target + (1 - alpha) * (1 - target)) * loss
    return _wmean(loss, weight)


def dice_loss(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``1 - (2|P.T| + 1) / (|P| + |T| + 1)`` per mask on sigmoid probabilities: (B, C)."""
    p = torch.sigmoid(logits) * weight
    t = target * weight
    num = 2 * (p * t).sum((-2, -1)) + 1
    den = p.sum((-2, -1)) + t.sum((-2, -1)) + 1
    return 1 - num / den


@torch.no_grad()
def mask_iou(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """IoU of the binarised prediction (logit > 0) with the binarised target (> 0.5) over the
    weighted pixels: (B, C) float32; 1.0 when both are empty."""
    valid = weight > 0
    pred = (logits > 0) & valid
    gt = (target > 0.5) & valid
    inter = (pred & gt).sum((-2, -1)).float()
    union = (pred | gt).sum((-2, -1)).float()
    return torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union))


@dataclass
class SamLoss:
    """One decoder pass's loss.

    Attributes:
        total: scalar, mean over the batch of ``focal*w_f + dice*w_d + iou_mse*w_i``.
        focal, dice, iou_mse: batch means of the terms (of the chosen masks), detached.
        chosen: (B,) index of the output the mask loss was taken from (lowest loss).
        real_iou: (B, C) IoU of every output with the ground truth (the IoU head's target).
    """

    total: torch.Tensor
    focal: float
    dice: float
    iou_mse: float
    chosen: torch.Tensor
    real_iou: torch.Tensor


def sam_loss(
    logits: torch.Tensor,
    iou_pred: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor,
    weights: LossWeights = LossWeights(),
) -> SamLoss:
    """The SAM paper's loss for ``C`` outputs per prompt.

    Args:
        logits: (B, C, h, w) low-resolution mask logits (C = 3 multimask outputs or 1).
        iou_pred: (B, C) the IoU head's predictions.
        target: (B, 1, h, w) soft ground truth in [0, 1]; weight: (B, 1, h, w) pixel weights.

    With ``C > 1`` only the output with the lowest focal + dice loss contributes the mask
    loss (the ambiguity-aware loss); the IoU head is supervised on every output.
    """
    focal = sigmoid_focal_loss(logits, target, weight, weights.alpha, weights.gamma)
    dice = dice_loss(logits, target, weight)
    combo = weights.focal * focal + weights.dice * dice  # (B, C)
    chosen = combo.detach().argmin(dim=1)
    rows = torch.arange(logits.shape[0], device=logits.device)
    real = mask_iou(logits.detach(), target, weight)
    iou_mse = ((iou_pred.float() - real) ** 2).mean(dim=1)
    total = (combo[rows, chosen] + weights.iou * iou_mse).mean()
    return SamLoss(
        total=total,
        focal=float(focal.detach()[rows, chosen].mean()),
        dice=float(dice.detach()[rows, chosen].mean()),
        iou_mse=float(iou_mse.detach().mean()),
        chosen=chosen,
        real_iou=real,
    )
