"""Moving averages with a growing window, for values learnt during training and used at inference:
the thresholds of BatchTopK (one global θ) and Feature Choice (θ_j), an EMA of the smallest value
selected per training batch, and g-SAE's plain-mode gains.

The decay grows with the number of observations n: `decay_n = min(decay, 1 − 10/n)`, so an
average covers roughly the last tenth of the batches seen, and at most the last `1/(1 − decay)`
(1000 for the default 0.999). A fixed 0.999 would average the whole of a short run, early batches
included, when the codes' scale was still moving; the growing window follows the SAE as it
trains, and the first value is taken as is (no start-up bias to correct). A value with no
observation is +inf (a threshold that was never observed keeps its latent off at inference, as
it never fired in training).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

WINDOW_FRACTION = 10  # an average covers about the last 1/WINDOW_FRACTION of the batches seen


class WindowedEMA(nn.Module):
    """`shape` moving averages (() for one global value, (F,) for one per latent)."""

    def __init__(self, shape: tuple[int, ...], decay: float) -> None:
        super().__init__()
        self.decay = decay
        self.register_buffer("moment", torch.zeros(shape))
        self.register_buffer("observations", torch.zeros(shape, dtype=torch.long))

    @torch.no_grad()
    def update(self, smallest: Tensor, observed: Tensor) -> None:
        """Fold in this batch's values where `observed` is True."""
        n = (self.observations + 1).to(self.moment.dtype)
        decay = (1 - WINDOW_FRACTION / n).clamp(0, self.decay)
        blended = decay * self.moment + (1 - decay) * smallest
        self.moment.copy_(torch.where(observed, blended, self.moment))
        self.observations += observed.long()

    @property
    def value(self) -> Tensor:
        inf = torch.full_like(self.moment, float("inf"))
        return torch.where(self.observations > 0, self.moment, inf)
