"""The seam between the engine and structured outputs: one matcher per constrained sequence.

The engine asks for the mask of allowed next tokens, samples within it and advances the
matcher with the chosen token; it never sees a grammar. `prepare` computes the next mask
ahead of time — the engine calls it on a worker thread while ONNX Runtime runs the decode step
(service/structured/ implements it over llguidance, which releases the GIL while it works).
"""

from __future__ import annotations

from typing import Protocol

import numpy as np


class Constraint(Protocol):
    def prepare(self) -> None:
        """Compute the mask for the next token (idempotent until `advance`)."""
        ...

    def allowed(self) -> np.ndarray:
        """Boolean mask [vocab] of the tokens allowed next (end-of-sequence only when complete)."""
        ...

    def advance(self, token: int) -> None:
        """The sequence took `token`."""
        ...

    @property
    def done(self) -> bool:
        """Nothing more can follow: the sequence ends here (finish reason `stop`)."""
        ...

    @property
    def error(self) -> str | None:
        """Why the matcher cannot go on (a grammar too complex mid-way): this sequence fails, alone."""
        ...
