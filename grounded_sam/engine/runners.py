"""Runners: how the per-image work of a labelling run is executed.

A runner receives the :class:`~grounded_sam.engine.labeler.Labeler` (whose ``config`` is
enough to rebuild it elsewhere), the images still to do, and ``commit``: the function that
makes one unit durable (:func:`~grounded_sam.engine.dataset.write_unit`) and reports
progress. It must call ``commit`` exactly once per task, in any order, from the calling
thread; everything else (listing, skipping done images, sharding, assembling) is the same for
every runner, so their outputs are identical.

- :class:`LocalRunner`: this process, ``batch_size`` images per detector / encoder call.
- ``--shard I/N`` is not a runner: it selects the tasks before any runner sees them.
- A distributed runner (Ray Data) builds one ``Labeler.from_config(labeler.config)`` per
  worker, maps ``label_batch`` over the tasks and commits the returned units in order of
  arrival.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any

from grounded_sam.engine.dataset import ImageUnit
from grounded_sam.engine.sources import ImageTask

__all__ = ["Runner", "LocalRunner"]


class Runner(ABC):
    """The interface every runner implements."""

    name: str = ""

    @abstractmethod
    def run(
        self,
        labeler: Any,
        tasks: Sequence[ImageTask],
        commit: Callable[[ImageUnit], None],
        *,
        store: Any = None,
    ) -> None:
        """Label every task and ``commit`` each unit (exactly once per task).

        Args:
            labeler: the :class:`~grounded_sam.engine.labeler.Labeler`.
            tasks: images still to label, sorted by ``file_name``.
            commit: makes a unit durable and reports it; call it from this thread.
            store: the dataset's :class:`~grounded_sam.engine.embeddings.EmbeddingStore`,
                for ``label_batch(..., store=store)``.
        """


class LocalRunner(Runner):
    """Label in this process, ``batch_size`` images at a time (``None``: the labeller's
    ``config.batch_size``). Memory holds one batch; each unit is committed and dropped before
    the next batch is read."""

    name = "local"

    def __init__(self, batch_size: int | None = None) -> None:
        self.batch_size = batch_size

    def run(self, labeler, tasks, commit, *, store=None) -> None:
        size = self.batch_size or labeler.config.batch_size
        for start in range(0, len(tasks), size):
            for unit in labeler.label_batch(tasks[start : start + size], store=store):
                commit(unit)
