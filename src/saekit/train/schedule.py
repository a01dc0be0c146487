"""The training plan: how many steps, and the learning-rate schedule over them."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Plan:
    """Steps of one run: linear warm-up, constant, then linear decay to 0 over the last part."""

    steps: int
    batch_size: int
    train_rows: int  # eligible training rows per epoch (position 0 excluded)
    warmup_steps: int
    decay_start: int  # first step of the decay

    @classmethod
    def make(
        cls, tokens: int, batch_size: int, train_rows: int, warmup: float, decay: float
    ) -> Plan:
        steps = tokens // batch_size
        return cls(
            steps=steps,
            batch_size=batch_size,
            train_rows=train_rows,
            warmup_steps=max(1, round(warmup * steps)),
            decay_start=steps - round(decay * steps),
        )

    @property
    def tokens(self) -> int:
        return self.steps * self.batch_size

    @property
    def epochs(self) -> float:
        """Passes over the training rows this plan makes."""
        return self.tokens / self.train_rows

    def lr_factor(self, step: int) -> float:
        """Multiplier of the base learning rate at `step` (0-based)."""
        warm = min(1.0, (step + 1) / self.warmup_steps)
        if step < self.decay_start:
            return warm
        return warm * (self.steps - step) / (self.steps - self.decay_start)

    def progress(self, step: int) -> float:
        """Fraction of the steps done before `step`."""
        return step / self.steps
