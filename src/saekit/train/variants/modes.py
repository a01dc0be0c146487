"""The inference modes a saved SAE is evaluated in: the one home of their names.

A variant says which modes it has (`Activation.modes`) and computes codes in each
(`Activation.code_in`); evaluation, dashboards and recipes only ever ask it.
"""

from __future__ import annotations

INFERENCE = "inference"  # each token on its own
THRESHOLD = "threshold"  # batch-dependent variants: learnt inference thresholds, token by token
BATCH = "batch"  # batch-dependent variants: the training-time selection over a batch
GRAD = "grad"  # g-SAE: selection with the clean model's gradient (it sees the next token)
PLAIN = "plain"  # g-SAE without gradients: TopK on z, or on each latent's learnt gain times z
PLAIN_UNCORRECTED = "plain-uncorrected"  # g-SAE with augmented values, without the gains

USES_GRADIENTS = frozenset({GRAD})
BATCH_DEPENDENT = frozenset({BATCH})

DESCRIPTIONS = {
    INFERENCE: "each token on its own",
    THRESHOLD: "learnt inference thresholds",
    BATCH: "the training-time selection over batches of the training size",
    GRAD: "g-SAE selection with the clean-model gradient (it sees the next token)",
    PLAIN: (
        "g-SAE without gradients (TopK on the pre-activations, scaled by each latent's learnt "
        "gain for augmented values)"
    ),
    PLAIN_UNCORRECTED: "augmented g-SAE without gradients and without the learnt gains (β = 0)",
}
