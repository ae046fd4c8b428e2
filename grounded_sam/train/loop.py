"""The training loop: SAM's interactive training recipe on the mask decoder (+ LoRA).

One step takes ``batch_size`` ground-truth masks (a seeded permutation per epoch), simulates
their prompts (:mod:`grounded_sam.train.prompts`) and runs the decoder once per round: the
box or point, then correction clicks and refinement rounds, each fed the previous round's
low-resolution logits. Each round's loss (:mod:`grounded_sam.train.losses`) is averaged over
the rounds and back-propagated round by round (the previous logits enter the next round
detached), so memory holds one round's graph; then one AdamW update.

``decoder+lora``: the embeddings of the step's images are computed without gradients, the
rounds accumulate the gradient of the loss with respect to them, and the encoder is then run
again per image with gradients and back-propagated with that gradient, so memory holds one
image's encoder graph at a time (the price is a second encoder forward pass).

Determinism: every random draw of a step comes from ``numpy.random.default_rng([seed,
step])`` (and the epoch order from ``[seed, epoch]``), so a resumed run needs no RNG state:
restoring the trainable weights and the optimizer state gives, on the CPU, bit-identical
weights to an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np
import torch
from torch import nn

from grounded_sam.errors import InputError
from grounded_sam.train.data import InstanceSet
from grounded_sam.train.losses import LossWeights, sam_loss
from grounded_sam.train.prompts import (
    jitter_box,
    lowres_target,
    round_plan,
    sample_correction,
    sample_point,
)

__all__ = ["MODES", "FinetuneConfig", "Trainer"]

MODES = ("decoder", "decoder+lora")


@dataclass(frozen=True)
class FinetuneConfig:
    """Training settings (the CLI flags of ``grounded-sam finetune``).

    Attributes:
        train: ``"decoder"`` (the mask decoder; image and prompt encoders frozen, image
            embeddings cached on disk) or ``"decoder+lora"`` (plus low-rank adapters on the
            image encoder's attention projections, merged into the weights when saving).
        epochs: passes over the training masks.
        lr: peak learning rate of AdamW (linear warm-up, cosine decay to ``lr / 10``).
        batch_size: masks per step.
        seed: the only source of randomness (mask order, prompts, clicks, LoRA init).
        weight_decay: AdamW weight decay.
        warmup_steps: linear warm-up length; ``None``: 5% of the steps, at most 100.
        correction_clicks: correction clicks per mask and step after the first prompt (SAM
            paper: 8).
        refine_rounds: rounds with only the previous mask as prompt (SAM paper: 2).
        box_prob: probability that a step's first prompts are boxes (else one point).
        box_noise: box jitter as a fraction of the box side (0.1) ...
        box_noise_px: ... capped at this many pixels (20).
        lora_rank, lora_alpha: adapter rank and scale numerator (``alpha / rank``; ``None``:
            ``rank``).
        grad_clip: maximum gradient norm.
        amp: mixed precision (bf16 where the GPU supports it, else fp16 with loss scaling);
            CUDA only.
        save_every: steps between resumable saves (also at the end of every epoch).
        loss: the loss weights (SAM's focal 20 : dice 1, IoU MSE 1).
    """

    train: str = "decoder"
    epochs: int = 10
    lr: float = 1e-4
    batch_size: int = 8
    seed: int = 0
    weight_decay: float = 0.01
    warmup_steps: int | None = None
    correction_clicks: int = 8
    refine_rounds: int = 2
    box_prob: float = 0.5
    box_noise: float = 0.1
    box_noise_px: float = 20.0
    lora_rank: int = 4
    lora_alpha: float | None = None
    grad_clip: float = 1.0
    amp: bool = False
    save_every: int = 50
    loss: LossWeights = field(default_factory=LossWeights)

    def __post_init__(self) -> None:
        if self.train not in MODES:
            raise InputError(f"train must be one of {', '.join(MODES)}, got {self.train!r}")

        def integer(name: str, low: int) -> None:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise InputError(f"{name} must be an integer >= {low}, got {v!r}")

        def number(name: str, low: float, high: float = math.inf, low_open: bool = False) -> None:
            v = getattr(self, name)
            ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            if not ok or v > high or v < low or (low_open and v == low):
                side = ">" if low_open else ">="
                rng = f"{side} {low}" + (f" and <= {high}" if high != math.inf else "")
                raise InputError(f"{name} must be a number {rng}, got {v!r}")

        for name, low in (("epochs", 1), ("batch_size", 1), ("seed", 0), ("lora_rank", 1),
                          ("correction_clicks", 0), ("refine_rounds", 0), ("save_every", 1)):  # fmt: skip
            integer(name, low)
        if self.warmup_steps is not None:
            integer("warmup_steps", 0)
        number("lr", 0.0, low_open=True)
        number("weight_decay", 0.0)
        number("box_prob", 0.0, 1.0)
        number("box_noise", 0.0, 1.0)
        number("box_noise_px", 0.0)
        number("grad_clip", 0.0, low_open=True)
        if self.lora_alpha is not None:
            number("lora_alpha", 0.0, low_open=True)
        if not isinstance(self.loss, LossWeights):
            raise InputError(f"loss must be a LossWeights, got {type(self.loss).__name__}")

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _amp_dtype(device: torch.device) -> torch.dtype:
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


class Trainer:
    """Runs the steps of one fine-tuning run on ``model`` (changed in place).

    Args:
        model: a SAM model built with ``fuse=False``, on ``device``, its weights those of the
            starting checkpoint.
        config: the settings.
        data: the training masks.
        embedding: ``embedding(image_index) -> ImageEmbedding`` (CPU) of the starting
            encoder (``decoder`` mode).
        load_image: ``load_image(image_index) -> (H, W, 3) uint8`` (``decoder+lora`` mode).
    """

    def __init__(self, model: nn.Module, config: FinetuneConfig, data: InstanceSet,
                 embedding, load_image=None) -> None:  # fmt: skip
        self.model = model
        self.config = config
        self.data = data
        self.embedding = embedding
        self.load_image = load_image
        self.device = model.device
        self.lora = config.train == "decoder+lora"
        model.eval()
        model.requires_grad_(False)
        decoder = model.mask_decoder
        decoder.requires_grad_(True)
        # SAM 2's decoder skips its inference-only single-mask fallback in training mode
        # (as Meta's training); no module of the decoders has dropout or batch statistics.
        decoder.train()
        if hasattr(decoder, "_UPSCALE_CHUNK"):
            # SAM 1's decoder upsamples a few prompts at a time into a preallocated output
            # (out=...), which autograd refuses: one chunk for the whole batch instead.
            decoder._UPSCALE_CHUNK = 1 << 30
        if self.lora:
            from grounded_sam.train.lora import add_lora

            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(config.seed)
                add_lora(model.image_encoder, config.lora_rank, config.lora_alpha)
            model.to(self.device)
        self.names = [n for n, p in model.named_parameters() if p.requires_grad]
        self.params = [p for _, p in model.named_parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(
            self.params, lr=config.lr, betas=(0.9, 0.999), weight_decay=config.weight_decay
        )
        self.scaler = None
        self.amp_dtype = None
        if config.amp:
            if self.device.type != "cuda":
                raise InputError(
                    f"mixed precision (amp) runs on CUDA only, not on {self.device}; drop --amp"
                )
            self.amp_dtype = _amp_dtype(self.device)
            if self.amp_dtype == torch.float16:
                self.scaler = torch.amp.GradScaler("cuda")
        n = len(data.instances)
        self.steps_per_epoch = math.ceil(n / config.batch_size)
        self.total_steps = self.steps_per_epoch * config.epochs
        warm = config.warmup_steps
        self.warmup = min(100, self.total_steps // 20) if warm is None else warm

    # ------------------------------------------------------------------ schedule
    def lr_at(self, step: int) -> float:
        """Learning rate of step ``step`` (0-based): linear warm-up, then cosine to lr / 10."""
        lr = self.config.lr
        if step < self.warmup:
            return lr * (step + 1) / (self.warmup + 1)
        span = max(1, self.total_steps - self.warmup)
        t = min(1.0, (step - self.warmup) / span)
        return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))

    def batch(self, step: int) -> list[int]:
        """Instance indices of step ``step``: slices of a seeded permutation per epoch."""
        epoch, pos = divmod(step, self.steps_per_epoch)
        order = np.random.default_rng([self.config.seed, 1, epoch]).permutation(
            len(self.data.instances)
        )
        b = self.config.batch_size
        return [int(i) for i in order[pos * b : (pos + 1) * b]]

    # ------------------------------------------------------------------ state
    def state_dict(self, step: int) -> dict[str, Any]:
        """What a resumed run needs after ``step`` steps: trainable tensors, optimizer."""
        named = dict(self.model.named_parameters())
        return {
            "step": step,
            "trainable": {n: named[n].detach().cpu().clone() for n in self.names},
            "optimizer": self.optimizer.state_dict(),
            "scaler": None if self.scaler is None else self.scaler.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> int:
        """Restore :meth:`state_dict`; returns its step."""
        named = dict(self.model.named_parameters())
        got = state["trainable"]
        if sorted(got) != sorted(self.names):
            raise InputError(
                "the saved training state does not match this run's trainable weights "
                f"({len(got)} saved, {len(self.names)} expected); start a new --out"
            )
        with torch.no_grad():
            for n in self.names:
                named[n].copy_(got[n].to(named[n].device))
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scaler is not None and state.get("scaler") is not None:
            self.scaler.load_state_dict(state["scaler"])
        return int(state["step"])

    def trained_state_dict(self) -> dict[str, torch.Tensor]:
        """The model's full state dict in the official layout (adapters merged)."""
        if self.lora:
            from grounded_sam.train.lora import merged_state_dict

            return merged_state_dict(self.model)
        return dict(self.model.state_dict())

    # ------------------------------------------------------------------ one step
    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type="cuda", dtype=self.amp_dtype)

    def _backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def _features(self, images: list[int]):
        """Per distinct image: (features, high_res, original_size, input_size), without
        gradients; in LoRA mode also the model inputs (for the encoder's backward pass)."""
        out, inputs = [], []
        for i in images:
            if self.lora:
                image = self.load_image(i)
                x, input_size = self.model.prepare_image(image)
                with torch.no_grad(), self._autocast():
                    feats, high_res = self.model.encode(x)
                inputs.append(x)
                original = (int(image.shape[0]), int(image.shape[1]))
            else:
                emb = self.embedding(i)
                feats = emb.features.to(self.device)
                high_res = tuple(t.to(self.device) for t in emb.high_res)
                original, input_size = emb.original_size, emb.input_size
            out.append((feats, high_res, original, tuple(input_size)))
        return out, inputs

    def _encoder_backward(self, leaves: list[torch.Tensor], rows: list[int], inputs) -> None:
        """LoRA: back-propagate the gradients collected on the batch's embedding leaves
        (B, ...) through the encoder, recomputed with gradients one image at a time (the
        gradient of an image is the sum over its masks' rows)."""
        rows_t = torch.tensor(rows, device=self.device)
        for k, x in enumerate(inputs):
            sel = rows_t == k
            grads = [None if t.grad is None else t.grad[sel].sum(0, keepdim=True) for t in leaves]
            if all(g is None for g in grads):
                continue
            with self._autocast():
                ef, ehr = self.model.encode(x)
            outs = [o for o, g in zip([ef, *ehr], grads, strict=True) if g is not None]
            torch.autograd.backward(outs, [g for g in grads if g is not None])

    def step(self, step: int) -> dict[str, Any]:
        """Run step ``step`` (0-based) and update the weights; returns its log record."""
        t0 = time.perf_counter()
        cfg = self.config
        model = self.model
        rng = np.random.default_rng([cfg.seed, 2, step])
        insts = [self.data.instances[i] for i in self.batch(step)]
        images = list(dict.fromkeys(inst.image for inst in insts))
        feats, inputs = self._features(images)
        where = {img: k for k, img in enumerate(images)}
        rows = [where[inst.image] for inst in insts]
        sel = torch.tensor(rows, device=self.device)
        features = torch.cat([feats[r][0] for r in range(len(images))])[sel]
        n_hr = len(feats[0][1])
        high_res = tuple(
            torch.cat([feats[r][1][k] for r in range(len(images))])[sel] for k in range(n_hr)
        )
        if self.lora:  # leaves that collect d(loss)/d(embedding) over the rounds
            features = features.float().requires_grad_(True)
            high_res = tuple(t.float().requires_grad_(True) for t in high_res)
        img_size = model.img_size
        low = model.mask_input_size[0]
        targets, weights, box_list, point_list = [], [], [], []
        use_box = bool(rng.random() < cfg.box_prob)
        for inst, r in zip(insts, rows, strict=True):
            _, _, original, input_size = feats[r]
            mask = inst.mask()
            t, w = lowres_target(mask, input_size, img_size, low)
            targets.append(t)
            weights.append(w)
            if use_box:
                b = jitter_box(inst.box, original, rng, cfg.box_noise, cfg.box_noise_px)
                xy = torch.as_tensor(b, dtype=torch.float64).reshape(2, 2)
                box_list.append(model.transform_coords(xy, original, input_size).reshape(4))
            else:
                xy = torch.tensor([sample_point(mask, rng)], dtype=torch.float64)
                point_list.append(model.transform_coords(xy, original, input_size))
        target = torch.stack(targets).to(self.device)  # (B, 1, L, L)
        weight = torch.stack(weights).to(self.device)
        boxes = torch.stack(box_list).float().to(self.device) if use_box else None
        coords = None if use_box else torch.stack(point_list).float().to(self.device)
        labels = None if use_box else torch.ones(len(insts), 1, dtype=torch.int, device=self.device)
        plan = round_plan(cfg.correction_clicks, cfg.refine_rounds, rng)
        prev = None
        sums = {"loss": 0.0, "focal": 0.0, "dice": 0.0, "iou_mse": 0.0}
        first_iou = last_iou = 0.0
        b_rows = torch.arange(len(insts), device=self.device)
        for r, kind in enumerate(plan):
            if kind == "click":
                c, lab = sample_correction(prev[:, 0], target[:, 0], weight[:, 0], rng, img_size)
                c_t = torch.as_tensor(c, device=self.device)[:, None]
                l_t = torch.as_tensor(lab, dtype=torch.int, device=self.device)[:, None]
                coords = c_t if coords is None else torch.cat([coords, c_t], dim=1)
                labels = l_t if labels is None else torch.cat([labels, l_t], dim=1)
            multimask = r == 0 and not use_box  # one point: ambiguous
            with self._autocast():
                low_res, iou_pred = model.decode(
                    features, high_res, coords, labels, boxes, prev, multimask
                )
            loss = sam_loss(low_res, iou_pred, target, weight, cfg.loss)
            self._backward(loss.total / len(plan))
            sums["loss"] += float(loss.total.detach()) / len(plan)
            sums["focal"] += loss.focal / len(plan)
            sums["dice"] += loss.dice / len(plan)
            sums["iou_mse"] += loss.iou_mse / len(plan)
            best = iou_pred.detach().argmax(dim=1)
            prev = low_res.detach()[b_rows, best][:, None]
            chosen_iou = float(loss.real_iou[b_rows, best].mean())
            if r == 0:
                first_iou = chosen_iou
            last_iou = chosen_iou
        if self.lora:
            self._encoder_backward([features, *high_res], rows, inputs)
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.params, cfg.grad_clip))
        lr = self.lr_at(step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return {
            "step": step + 1,
            "epoch": step // self.steps_per_epoch + 1,
            **{k: round(v, 6) for k, v in sums.items()},
            "first_prompt": "box" if use_box else "point",
            "iou_first_round": round(first_iou, 4),
            "iou_last_round": round(last_iou, 4),
            "lr": lr,
            "grad_norm": round(grad_norm, 4),
            "seconds": round(time.perf_counter() - t0, 3),
        }
