"""``python -m grounded_sam`` == ``grounded-sam``."""

import sys

from grounded_sam.cli import main

if __name__ == "__main__":
    sys.exit(main())
