"""Models cached by other libraries (Hugging Face hub, open_clip), resolved offline-aware."""

from __future__ import annotations

import os
from pathlib import Path

from grounded_sam.errors import MissingDependency, WeightsError
from grounded_sam.hub.registry import WeightEntry

__all__ = ["fetch_hub"]


def fetch_hub(entry: WeightEntry, *, offline: bool) -> Path:
    """Resolve a hub entry through its library's cache (download unless ``offline``)."""
    fetch_cmd = (
        f"grounded-sam weights download {entry.name}"
        if entry.name != entry.hub_id
        else f"hf download {entry.hub_id}"
    )
    hint = (
        f"run `{fetch_cmd}` on a machine with internet and copy its HF_HOME cache "
        "(or pass a local folder), or unset GROUNDED_SAM_OFFLINE/HF_HUB_OFFLINE"
    )
    if entry.kind == "hf":
        try:
            from huggingface_hub import snapshot_download
        except ImportError as e:  # pragma: no cover - a dependency of transformers
            raise MissingDependency(
                "Hugging Face models need huggingface_hub: pip install huggingface_hub"
            ) from e
        try:  # the cached copy first: no network round trips, no retries
            return Path(snapshot_download(entry.hub_id, local_files_only=True))
        except Exception as e:  # noqa: BLE001 - hub raises many types; report one clearly
            if offline:
                raise WeightsError(
                    f"weights {entry.name!r} ({entry.hub_id}) are not in the Hugging Face cache "
                    f"and offline mode forbids downloading from {entry.url}; {hint}"
                ) from e
        try:
            local = snapshot_download(entry.hub_id)
        except Exception as e:  # noqa: BLE001
            raise WeightsError(
                f"could not download {entry.hub_id} from the Hugging Face hub "
                f"({type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}); "
                f"{hint}"
            ) from e
        return Path(local)

    # open_clip
    model, _, tag = entry.hub_id.partition("/")
    try:
        from open_clip import pretrained as oc_pretrained
    except ImportError as e:
        raise MissingDependency("CLIP models need open_clip: pip install open_clip_torch") from e
    cfg = oc_pretrained.get_pretrained_cfg(model, tag)
    if not cfg:
        raise WeightsError(f"open_clip has no pretrained tag {tag!r} for model {model!r}")
    hf_hub = cfg.get("hf_hub", "")
    if hf_hub:
        from huggingface_hub import try_to_load_from_cache

        repo_id, filename = os.path.split(hf_hub)
        filename = filename or "open_clip_pytorch_model.bin"
        candidates = [filename]
        if filename.endswith((".bin", ".pth")):
            candidates.insert(
                0,
                "open_clip_model.safetensors"
                if filename == "open_clip_pytorch_model.bin"
                else filename[:-4] + ".safetensors",
            )
        for fn in candidates:
            hit = try_to_load_from_cache(repo_id, fn)
            if isinstance(hit, str):
                return Path(hit)
    if offline:
        raise WeightsError(
            f"weights {entry.name!r} (open_clip {model} {tag}) are not in the local cache and "
            f"offline mode forbids downloading from {entry.url}; {hint}"
        )
    try:
        target = oc_pretrained.download_pretrained(cfg)
    except Exception as e:  # noqa: BLE001
        raise WeightsError(f"could not download open_clip {model} {tag} ({e})") from e
    if not target:
        raise WeightsError(f"open_clip returned no file for {model} {tag}")
    return Path(target)
