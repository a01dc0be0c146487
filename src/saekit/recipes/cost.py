"""What a recipe will cost, estimated from FLOP counts before anything runs.

Nothing here is measured: the estimate counts the dominant matrix products (LM forward and
backward passes, SAE encoder and decoder products) and divides by an assumed sustained rate, so
a user can see the size of a `paper` run before starting it.
"""

from __future__ import annotations

from dataclasses import dataclass

from saekit.lm import ModelShape
from saekit.recipes.declarations import Recipe, Scope, StageInputs
from saekit.train import VARIANTS, parse_spec

ASSUMED_TFLOPS = 20.0  # sustained float32/TF32 rate of an A100-class GPU on these products
BACKWARD_FACTOR = 3  # a forward and a backward pass cost about three forward passes


@dataclass(frozen=True)
class Estimate:
    harvest_flops: float
    train_flops: float
    eval_flops: float
    saes: int
    finetune_flops: float = 0.0  # the declared KL fine-tunes (their SAEs are in `saes`)

    @property
    def gpu_hours(self) -> float:
        total = self.harvest_flops + self.train_flops + self.finetune_flops + self.eval_flops
        return total / (ASSUMED_TFLOPS * 1e12) / 3600

    def describe(self) -> str:
        finetune = (
            f"KL fine-tunes {self._hours(self.finetune_flops)}, " if self.finetune_flops else ""
        )
        return (
            f"{self.saes} SAEs; about {self.gpu_hours:.1f} GPU hours (estimated from FLOP counts "
            f"at {ASSUMED_TFLOPS:g} TFLOP/s sustained: harvest {self._hours(self.harvest_flops)}, "
            f"training {self._hours(self.train_flops)}, {finetune}"
            f"evaluation {self._hours(self.eval_flops)} h)"
        )

    @staticmethod
    def _hours(flops: float) -> str:
        return f"{flops / (ASSUMED_TFLOPS * 1e12) / 3600:.1f}"


def estimate(recipes: list[tuple[Recipe, Scope]], model: ModelShape, harvesting: bool) -> Estimate:
    """FLOPs of harvesting (if needed; a backward pass too where a recipe reads gradients),
    training every stage of every seed of each recipe at its scope, the declared KL fine-tunes
    (per token: a clean LM pass and, per SAE, a spliced pass with its backward pass), and
    evaluating (every SAE spliced in each of its modes, and the steering sweeps)."""
    preset = recipes[0][1].preset
    lm_token = model.forward_flops_per_token(preset.context_size)
    train = evaluate = finetune = 0.0
    saes = 0
    for recipe, scope in recipes:
        d_in = scope.d_in
        steer_per_sae = (
            preset.steering_latents
            * max(len(recipe.steering_alphas(scope)), 1)
            * preset.steering_contexts
            * preset.context_size
            * lm_token
        )
        for stage in recipe.training_stages(scope):
            for seed in stage.seeds(preset):
                for text in stage.specs(StageInputs(scope, seed)):
                    resolved = parse_spec(text).resolve(d_in)
                    variant = VARIANTS[resolved.variant]
                    per_row = 2 * d_in * resolved.latents  # one dense product
                    tokens = round(preset.train_tokens * stage.length)
                    train += tokens * variant.dense_products * per_row
                    modes = variant.modes(resolved.options, recipe.diagnostic_modes)
                    evaluate += len(modes) * preset.online_tokens * lm_token
                    steered = recipe.steers(scope, resolved.variant, resolved.options_dict())
                    if steered and stage.length == 1:
                        evaluate += steer_per_sae
                    saes += 1
                for declared, texts in stage.finetunes(StageInputs(scope, seed)):
                    tokens = declared.tokens(
                        round(preset.train_tokens * stage.length), preset.context_size
                    )
                    finetune += tokens * lm_token  # the clean pass, shared
                    for text in texts:
                        resolved = parse_spec(text).resolve(d_in)
                        variant = VARIANTS[resolved.variant]
                        per_row = 2 * d_in * resolved.latents
                        finetune += tokens * (
                            BACKWARD_FACTOR * lm_token + variant.dense_products * per_row
                        )
                        modes = variant.modes(resolved.options, recipe.diagnostic_modes)
                        evaluate += len(modes) * preset.online_tokens * lm_token
                        saes += 1
    passes = BACKWARD_FACTOR if any(recipe.needs_gradients for recipe, _ in recipes) else 1
    harvest = passes * lm_token * preset.harvest_tokens if harvesting else 0.0
    return Estimate(harvest, train, evaluate, saes, finetune)
