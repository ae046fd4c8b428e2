"""``python label_driver.py ARGS...``: ``grounded-sam ARGS...`` with the tiny test SAM
(``--sam tiny_vit_test``) and the ``content-boxes`` detector registered, for tests that need
a real separate process (kill -9 and resume)."""

from __future__ import annotations

import sys

from engine_helpers import ContentDetector, register_tiny_sam

from grounded_sam.cli import main
from grounded_sam.detectors import register_detector

if __name__ == "__main__":
    register_tiny_sam()
    register_detector(ContentDetector.name)(ContentDetector)
    sys.exit(main(sys.argv[1:]))
