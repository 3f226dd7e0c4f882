"""How long the training loop waits for its data loader (the stall an extra data stream would cause)."""
from __future__ import annotations

import time
from typing import Any, List


class TimedLoader:
    """Wraps nnU-Net's batch generator: ``next()`` as before, wall time spent inside it recorded.

    Everything else (``_finish``, ...) is forwarded to the wrapped generator.
    """

    def __init__(self, loader: Any):
        self._loader = loader
        self.waits: List[float] = []

    def __iter__(self):
        return self

    def __next__(self):
        t0 = time.perf_counter()
        item = next(self._loader)
        self.waits.append(time.perf_counter() - t0)
        return item

    def take(self) -> List[float]:
        """The waits recorded since the last call (seconds per ``next``)."""
        out, self.waits = self.waits, []
        return out

    def __getattr__(self, name: str):
        return getattr(self._loader, name)
