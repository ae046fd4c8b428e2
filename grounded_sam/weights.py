"""Model weights: the public face of :mod:`grounded_sam.hub`.

``grounded_sam.weights`` is :mod:`grounded_sam.hub` (registry, cache, mirror, offline mode,
verified downloads, safe loading) with the SAM checkpoint check registered, so a SAM file
fetched through it is verified key by key against its variant::

    from grounded_sam import weights
    weights.list("sam"); weights.fetch("vit_b"); weights.get("mobile_sam").url

Environment variables (read at call time): ``GROUNDED_SAM_HOME`` (cache folder),
``GROUNDED_SAM_MIRROR`` (base URL for every file), ``GROUNDED_SAM_OFFLINE=1`` (never touch the
network, for every model, Grounding DINO and CLIP included); see :mod:`grounded_sam.hub.env`.
"""

import grounded_sam.model.registry  # noqa: F401  (registers the SAM checkpoint verifier)
from grounded_sam.hub import *  # noqa: F403
from grounded_sam.hub import __all__  # noqa: F401
