"""How often each latent fires during training: dead latents and under-used latents."""

from __future__ import annotations

import torch
from torch import Tensor

from saekit.train.zipf import zipf_expectation

UNDERUSE_RATIO = 0.5  # under-used: density below half of its Zipf expectation


class LatentUsage:
    """Per-latent firing statistics, counted in tokens.

    - dead: not fired (kept with a value > 0) in the last `dead_tokens` tokens;
    - density: an EMA of the fraction of tokens a latent fires on, with a horizon of
      `dead_tokens` tokens, starting at 0 (a uniform bias that the Zipf comparison, made
      relative to the total, does not see).
    """

    def __init__(self, n_latents: int, dead_tokens: int, device: torch.device) -> None:
        self.dead_tokens = dead_tokens
        self.tokens_since_fired_F = torch.zeros(n_latents, dtype=torch.long, device=device)
        self.density_F = torch.zeros(n_latents, device=device)

    @torch.no_grad()
    def update(self, fire_counts_F: Tensor, n_tokens: int) -> None:
        """Record a batch of `n_tokens` tokens in which latent i fired `fire_counts_F[i]` times."""
        self.tokens_since_fired_F += n_tokens
        self.tokens_since_fired_F.masked_fill_(fire_counts_F > 0, 0)
        rate = min(1.0, n_tokens / self.dead_tokens)
        self.density_F.lerp_(fire_counts_F.to(self.density_F.dtype) / n_tokens, rate)

    def dead_F(self) -> Tensor:
        return self.tokens_since_fired_F >= self.dead_tokens

    def dead_fraction(self) -> float:
        return float(self.dead_F().float().mean())

    def underused_F(self) -> Tensor:
        """Dead latents and those firing less than half as often as the fitted Zipf law says."""
        expected_F = zipf_expectation(self.density_F)
        return self.dead_F() | (self.density_F < UNDERUSE_RATIO * expected_F)

    def state_dict(self) -> dict[str, Tensor]:
        return {"tokens_since_fired": self.tokens_since_fired_F, "density": self.density_F}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        self.tokens_since_fired_F.copy_(state["tokens_since_fired"])
        self.density_F.copy_(state["density"])
