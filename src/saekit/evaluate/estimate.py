"""The loss a dictionary adds, estimated from the store alone (no LM run).

The store keeps, for every token t, the gradient g_t = ∂(Σ_{t'} CE_{t'})/∂x_t of the context's
summed next-token loss on the clean model (docs/cache-format.md, "gradient convention"). Splicing
the reconstruction x̂_t in place of x_t at every position but 0 changes that sum by

    ΔL ≈ Σ_t g_tᵀ δ_t + ½ Σ_t (g_tᵀ δ_t)²,        δ_t = x̂_t − x_t,

per context. The first term is the first-order change. The second approximates the curvature term
½ δᵀHδ by the empirical Fisher, H ≈ g gᵀ: for a softmax cross-entropy the expected outer product
of the loss gradient over next tokens drawn from the model equals the Gauss–Newton part of the
Hessian, so ½ (gᵀδ)² is in expectation the KL of the spliced prediction from the clean one (to
second order). Divided by the number of predictions `sae eval` averages its online loss added over
(positions 1 to T − 2 of each context: the last has no next token, and its gradient is 0), these
are `loss_added_first_order`, `kl_estimate` (the second term) and `loss_added_estimate` (both).
docs/cli.md says when the estimate can be trusted.
"""

from __future__ import annotations

from torch import Tensor


class LossAddedEstimate:
    """Running sums of gᵀδ and (gᵀδ)² over held-out rows, and the predictions they cover."""

    def __init__(self, last_position: int) -> None:
        self.last_position = last_position  # T − 1: the position with no next token
        self.first_order = self.squared = 0.0
        self.predictions = 0

    def update(self, g_BE: Tensor, y_BE: Tensor, y_hat_BE: Tensor, position_B: Tensor) -> None:
        change_B = (g_BE.double() * (y_hat_BE.double() - y_BE.double())).sum(dim=1)
        self.first_order += float(change_B.sum())
        self.squared += float(change_B.pow(2).sum())
        self.predictions += int((position_B < self.last_position).sum())

    def result(self) -> dict[str, float]:
        n = max(self.predictions, 1)
        first, kl = self.first_order / n, self.squared / (2 * n)
        return {
            "loss_added_first_order": first,
            "kl_estimate": kl,
            "loss_added_estimate": first + kl,
        }
