"""Fine-tuning learns: from random weights in Meta's layout (a stand-in for a pretrained model
that has never seen such shapes), decoder training on generated rings / crosses / L-shapes /
bars / two-part objects raises held-out box-prompt mIoU above the starting model and the
filled box, and lowers NoC@85 (benchmarks/finetune_shapes.py with fewer held-out images: about 390 decoder steps)."""

from __future__ import annotations

import pytest

from grounded_sam.train.run import finetune


@pytest.mark.slow
def test_learns_generated_shapes_beyond_start_and_fill_the_box(tiny, tiny_checkpoint, tmp_path):
    from grounded_sam.train.synthetic import write_shapes_dataset

    ds = write_shapes_dataset(tmp_path / "data", n_train=24, n_val=4, size=128, seed=0)
    res = finetune(ds.train, ds.images, tmp_path / "run", sam=tiny,
                   sam_checkpoint=tiny_checkpoint, val_annotations=ds.val, device="cpu",
                   max_clicks=8, show_progress=False, epochs=30, batch_size=4,
                   correction_clicks=1, refine_rounds=0, lr=1e-3)  # fmt: skip
    before, after = res.metrics["before"], res.metrics["after"]
    assert after["box_mIoU"] > before["box_mIoU"] + 0.2, (before, after)
    assert after["box_mIoU"] > after["fill_box_mIoU"] + 0.05, (before, after)
    assert after["NoC@85"] < before["NoC@85"], (before, after)
    assert after["mIoU@1"] > before["mIoU@1"], (before, after)
