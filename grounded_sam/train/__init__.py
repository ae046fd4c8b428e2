"""Fine-tuning SAM on a team's own masks (the data engine's model-in-the-loop step).

    from grounded_sam.train import finetune

    result = finetune("train.json", "images/", "runs/ft1", sam="mobile_sam",
                      val_annotations="val.json", epochs=10)
    result.checkpoint  # runs/ft1/checkpoint.pt, the variant's official format

The CLI is ``grounded-sam finetune`` (``grounded_sam/cli/finetune.py``); the recipe and its
sources are in ``docs/finetune.md``. One job per module: ``data`` (COCO masks, checked),
``prompts`` (simulated boxes, points, correction clicks), ``losses``, ``lora``, ``loop``
(the steps), ``embeddings`` (on-disk cache), ``checkpoint`` (official formats), ``report``,
``run`` (:func:`finetune`), ``synthetic`` (a generated shapes dataset).

Names are resolved lazily: importing this package loads neither torch nor the model.
"""

from __future__ import annotations

from grounded_sam._lazy import lazy_exports

_EXPORTS = {
    "finetune": "grounded_sam.train.run",
    "FinetuneResult": "grounded_sam.train.run",
    "FinetuneConfig": "grounded_sam.train.loop",
    "LossWeights": "grounded_sam.train.losses",
    "load_instances": "grounded_sam.train.data",
    "write_shapes_dataset": "grounded_sam.train.synthetic",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
