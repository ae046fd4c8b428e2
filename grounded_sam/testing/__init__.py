"""Test helpers, public so tests, benchmarks and plugin authors share them.

- :mod:`grounded_sam.testing.sam_refs`: Meta's ``segment_anything`` / ultralytics reference
  SAM models with every tensor perturbed, and checkpoint writers in the official formats.
- :mod:`grounded_sam.testing.detectors`: tiny random Grounding DINO / YOLO-seg / CLIP models
  saved in their libraries' formats.
- :mod:`grounded_sam.testing.pipeline`: process-cached tiny models, stub detectors, call
  counters and CLI runners for pipeline and CLI tests.
- :mod:`grounded_sam.testing.eval_data`: a small COCO-format dataset from real photos and
  detector / predictor stand-ins.

The reference libraries (``segment_anything``, ``scikit-image``) are development
dependencies (``pip install -e ".[dev]"``); they are imported only when a helper needs them.
Nothing here runs at import time.
"""
