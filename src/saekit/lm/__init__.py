"""The language model: loading it through TransformerLens' bridge, its hooks and widths, running
batches with hooks (activations, loss, gradients), splicing replacements at several hooks at
once, its readout (final norm and unembedding) and its shape, read from the model itself."""

from saekit.lm.forward import GRADIENT_CONVENTION, BatchOutput, next_token_loss, run_batch
from saekit.lm.model import LanguageModel, load_model, tokenizer_fingerprint, weights_fingerprint
from saekit.lm.provenance import (
    CheckedModel,
    check_hooks_match,
    check_model_files,
    check_token_ids,
    identity_differences,
    load_model_for_store,
    recorded_model,
)
from saekit.lm.readout import (
    Readout,
    direction_logits,
    load_readout,
    reads_residual_stream,
    top_logit_effects,
)
from saekit.lm.shape import ModelShape
from saekit.lm.splice import (
    Edit,
    added_at_last_position,
    after_first_position,
    edited_logits,
    edited_logits_with_grad,
    next_token_stats,
    rows_after_first_position,
)
from saekit.lm.tokens import load_tokenizer, token_strings

__all__ = [
    "GRADIENT_CONVENTION",
    "BatchOutput",
    "CheckedModel",
    "Edit",
    "LanguageModel",
    "ModelShape",
    "Readout",
    "added_at_last_position",
    "after_first_position",
    "check_hooks_match",
    "check_model_files",
    "check_token_ids",
    "direction_logits",
    "edited_logits",
    "edited_logits_with_grad",
    "identity_differences",
    "load_model",
    "load_model_for_store",
    "load_readout",
    "load_tokenizer",
    "next_token_loss",
    "next_token_stats",
    "reads_residual_stream",
    "recorded_model",
    "rows_after_first_position",
    "run_batch",
    "token_strings",
    "tokenizer_fingerprint",
    "top_logit_effects",
    "weights_fingerprint",
]
