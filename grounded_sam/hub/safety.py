"""Loading model files without running their code.

:func:`load_state_dict` loads torch checkpoints with ``weights_only=True``;
:func:`check_ultralytics_file` inspects an ultralytics pickle's referenced globals without
unpickling it.
"""

from __future__ import annotations

import builtins
import os
import pickle
import pickletools
import zipfile
from pathlib import Path

import torch

from grounded_sam.errors import WeightsError

__all__ = ["check_ultralytics_file", "load_state_dict"]


# Callables an ultralytics checkpoint never needs; their presence means tampering. This is a
# sanity check, not a security boundary: provenance (registry URL / mirror) is.
_DANGEROUS_MODULES = frozenset(
    {
        "os", "posix", "nt", "subprocess", "sys", "shutil", "socket", "importlib", "runpy",
        "pty", "ctypes", "code", "codeop", "pdb", "webbrowser", "multiprocessing", "asyncio",
        "signal", "tempfile", "urllib", "http", "requests", "pickle", "_pickle", "marshal",
        "dill", "cloudpickle", "platform", "threading", "io", "_io", "glob", "commands",
        "popen2", "operator", "inspect", "sysconfig",
    }
)  # fmt: skip
_DANGEROUS_BUILTINS = frozenset(
    {
        "eval", "exec", "compile", "open", "__import__", "getattr", "setattr", "delattr",
        "globals", "locals", "vars", "input", "breakpoint", "exit", "quit", "help",
        "memoryview", "classmethod", "staticmethod", "property", "super", "type", "object",
    }
)  # fmt: skip


_TORCH_BAD = ("torch.hub", "torch.utils.cpp_extension", "torch.jit", "torch.serialization")


def _pickle_globals(data: bytes) -> builtins.list[tuple[str, str]]:
    """(module, name) of every global a pickle references, without unpickling it."""
    found: builtins.list[tuple[str, str]] = []
    memo: dict[int, object] = {}
    recent: builtins.list[object] = []  # last pushed values, enough to resolve STACK_GLOBAL
    string_ops = {
        "SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "SHORT_BINSTRING",
        "BINSTRING", "STRING",
    }  # fmt: skip
    for op, arg, _pos in pickletools.genops(data):
        if op.name == "GLOBAL":
            module, _, name = str(arg).partition(" ")
            found.append((module, name))
            recent.append(None)
        elif op.name == "STACK_GLOBAL":
            if len(recent) < 2 or not all(isinstance(v, str) for v in recent[-2:]):
                raise ValueError("a global whose name cannot be resolved statically")
            found.append((str(recent[-2]), str(recent[-1])))
            recent.append(None)
        elif op.name in string_ops:
            recent.append(str(arg))
        elif op.name == "MEMOIZE":
            memo[len(memo)] = recent[-1] if recent else None
        elif op.name in ("PUT", "BINPUT", "LONG_BINPUT"):
            memo[int(arg)] = recent[-1] if recent else None
        elif op.name in ("GET", "BINGET", "LONG_BINGET"):
            recent.append(memo.get(int(arg)))
        else:
            recent.append(None)
        if len(recent) > 8:
            del recent[:-8]
    return found


def check_ultralytics_file(p: Path, source: str) -> None:
    """A torch zip archive whose pickle references ``ultralytics`` and nothing dangerous.

    Nothing is unpickled. Raises WeightsError otherwise.
    """
    try:
        with zipfile.ZipFile(p) as zf:
            pkls = [n for n in zf.namelist() if n == "data.pkl" or n.endswith("/data.pkl")]
            if len(pkls) != 1:
                raise WeightsError(
                    f"{source} is not a torch checkpoint archive (expected one data.pkl, "
                    f"found {len(pkls)})"
                )
            bad = zf.testzip()
            if bad is not None:
                raise WeightsError(f"{source} is corrupt (bad CRC in member {bad!r})")
            data = zf.read(pkls[0])
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise WeightsError(
            f"{source} is not a readable torch checkpoint (truncated or wrong format: {e})"
        ) from e
    try:
        refs = _pickle_globals(data)
    except Exception as e:  # noqa: BLE001 - any parse failure means a malformed pickle
        raise WeightsError(f"{source} holds a malformed pickle ({e})") from e
    for module, name in refs:
        root = module.split(".")[0]
        parts = name.split(".")
        if (
            root in _DANGEROUS_MODULES
            or len(parts) > 1  # attribute traversal (protocol 4), e.g. "Path.write_text"
            or (root in ("builtins", "__builtin__") and name in _DANGEROUS_BUILTINS)
            or (root == "types" and name != "SimpleNamespace")
            or (root == "torch" and (name in ("load", "save") or module.startswith(_TORCH_BAD)))
        ):
            raise WeightsError(
                f"refusing {source}: its pickle references {module}.{name}, which no "
                "ultralytics checkpoint needs (the file may be tampered with); nothing was run"
            )
    if not any(m.split(".")[0] == "ultralytics" for m, _ in refs):
        raise WeightsError(
            f"{source} is a torch pickle but not an ultralytics checkpoint (no ultralytics classes)"
        )


# A bad file may be the cache's (a broken download) or the user's own: advice for both.
_REFETCH = (
    "download it again (grounded-sam weights download NAME --force for a cached file), or "
    "save it again if you made it"
)

# first bytes of files often passed by mistake
_MAGIC = (
    (b"\x89PNG", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF8", "a GIF image"),
    (b"<!DOCTYPE", "an HTML page (a download that returned an error page?)"),
    (b"<html", "an HTML page (a download that returned an error page?)"),
    (b"version https://git-lfs", "a Git LFS pointer, not the file (run git lfs pull)"),
)


def _what_is(head: bytes) -> str:
    """Why a file that is neither a zip nor an old pickle is not a checkpoint, and the fix."""
    if head.startswith(b"PK"):
        return f"a zip archive cut short (truncated: an interrupted download or copy); {_REFETCH}"
    for magic, what in _MAGIC:
        if head.lower().startswith(magic.lower()):
            return f"it is {what}; pass the .pt/.pth checkpoint file"
    return f"it is not a zip archive nor a pickle (it starts with {head[:4]!r}); {_REFETCH}"


def load_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Load a checkpoint file safely on the CPU: ``torch.load(weights_only=True)``, or
    ``safetensors`` for ``.safetensors`` files.

    Accepts a plain state dict or a dict wrapping one under ``"model"`` or ``"state_dict"``.
    Pickled objects other than tensors/containers are refused by torch's restricted
    unpickler before any of their code runs.

    Returns:
        ``{key: tensor}`` with CPU tensors as stored (dtype unchanged).

    Raises:
        WeightsError: the file is missing or a directory, empty, truncated, not a torch
            checkpoint, or holds pickled objects other than tensors (their code is never run).
    """
    path = Path(path)
    if path.is_dir():
        inside = sorted(
            p.name for p in path.iterdir() if p.suffix in (".pt", ".pth", ".safetensors")
        )
        hint = f" (this folder holds {', '.join(inside[:5])})" if inside else ""
        raise WeightsError(
            f"checkpoint {str(path)!r} is a directory, expected a .pt/.pth file{hint}; pass "
            "the path of the checkpoint file itself"
        )
    if not path.is_file():
        raise WeightsError(f"checkpoint not found: {str(path)!r} (no such file); check the path")
    if path.stat().st_size == 0:
        raise WeightsError(f"checkpoint {str(path)!r} is empty (0 bytes); {_REFETCH}")
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file

            return dict(load_file(str(path), device="cpu"))
        except Exception as e:  # noqa: BLE001 - safetensors raises several types
            raise WeightsError(
                f"{str(path)!r} is not a readable safetensors file ({type(e).__name__}: "
                f"{str(e).splitlines()[0][:200] if str(e) else ''}); {_REFETCH}"
            ) from e
    with open(path, "rb") as f:
        head = f.read(32)
    # torch.save writes a zip archive (or, before torch 1.6, a pickle starting with PROTO 2)
    if not zipfile.is_zipfile(path) and head[:2] != b"\x80\x02":
        raise WeightsError(f"{str(path)!r} is not a readable torch checkpoint: {_what_is(head)}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        text = str(e)
        if "Weights only load failed" not in text:
            raise WeightsError(
                f"{str(path)!r} is not a readable torch checkpoint (corrupt pickle: "
                f"{text.splitlines()[0][:200]}); {_REFETCH}"
            ) from e
        detail = next(
            (
                ln.split("error:", 1)[1].strip()
                for ln in text.splitlines()
                if "Unpickler error:" in ln
            ),
            "",
        )
        detail = detail.split(". ")[0][:200]
        raise WeightsError(
            f"refusing to load {str(path)!r}: it contains pickled objects other than tensors, "
            f"which could run arbitrary code ({detail or 'weights_only=True refused it'}); "
            "nothing in it was run. Use an official checkpoint, or re-save the state dict with "
            "torch.save(model.state_dict(), path)"
        ) from e
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as e:
        raise WeightsError(
            f"{str(path)!r} is not a readable torch checkpoint (truncated or wrong format: "
            f"{str(e).splitlines()[0][:200]}); {_REFETCH}"
        ) from e
    if isinstance(obj, dict):
        for key in ("model", "state_dict"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(
            f"{str(path)!r} does not hold a state dict of tensors (got {type(obj).__name__}); "
            "expected a checkpoint saved with torch.save(model.state_dict(), path)"
        )
    return obj
