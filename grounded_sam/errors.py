"""The one error hierarchy of grounded-sam.

Everything the user can fix raises a subclass of :class:`GroundedSAMError`; the CLI maps exactly
these to exit code 2 with one ``error: ...`` line. Any other exception is a bug in grounded-sam
(or in a library below it) and exits 1 with a short message and the ``--debug`` hint.

- :class:`InputError` (also a ``ValueError``): bad arguments, prompts, images, files, configs.
- :class:`WeightsError` (also a ``ValueError``): a model file is missing offline, fails to
  download, is truncated, of the wrong variant, or changed since it was verified.
- :class:`MissingDependency` (also an ``ImportError``): an optional library is not installed;
  the message carries the ``pip install`` line.

The built-in bases (``ValueError``, ``ImportError``) keep ``except ValueError`` code written
against earlier releases working.
"""

from __future__ import annotations

__all__ = ["GroundedSAMError", "InputError", "WeightsError", "MissingDependency", "require"]


class GroundedSAMError(Exception):
    """Base class of every error a user of grounded-sam can fix."""


class InputError(GroundedSAMError, ValueError):
    """Bad input: arguments, prompts, images, files or configuration. The message names the
    problem, the value received and what is expected."""


class WeightsError(GroundedSAMError, ValueError):
    """A weights problem the user can fix: unknown name, offline miss, failed, truncated or
    corrupt download, a checkpoint of another variant, or a cached file that changed since it
    was verified."""


class MissingDependency(GroundedSAMError, ImportError):
    """An optional library is not installed; the message says how to install it."""


def require(module: str, *, feature: str, install: str):
    """Import ``module`` or raise :class:`MissingDependency` naming ``feature`` and the
    ``install`` command (e.g. ``pip install "grounded-sam[ray]"``).

    Only a missing ``module`` itself is turned into ``MissingDependency``: an ``ImportError``
    raised inside an installed but broken library propagates unchanged (it is not the user's
    missing install).
    """
    import importlib

    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        root = module.split(".")[0]
        if e.name is not None and e.name.split(".")[0] != root:
            raise
        raise MissingDependency(f"{feature} needs {root}; install it with: {install}") from e
