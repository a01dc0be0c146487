"""The model's tokenizer, checked against the store, and token ids turned into display strings."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from saekit.base.errors import SaekitError
from saekit.cache_format import ActivationStore
from saekit.lm.model import tokenizer_fingerprint


def load_tokenizer(model: str, store: ActivationStore, check: bool = True) -> Any:
    """The tokenizer of `model`, normalised as the harvest's TransformerBridge normalises it, and
    refused when its fingerprint differs from the one recorded in the store (unless `check` is
    False: the caller checks it, with `provenance.check_model_files`)."""
    from transformer_lens.model_bridge.sources._hf_format import setup_tokenizer
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    try:
        tokenizer = setup_tokenizer(AutoTokenizer.from_pretrained(model))
    except Exception as error:  # HF raises OSError, ValueError, ... for a bad model
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise SaekitError(f"cannot load the tokenizer of model {model}: {reason}") from None
    recorded = store.spec.identity.get("tokenizer_fingerprint")
    if check and recorded and tokenizer_fingerprint(tokenizer) != recorded:
        raise SaekitError(
            f"the tokenizer of {model} is not the one store {store.location} was harvested "
            "with; give the store's model with --model"
        )
    return tokenizer


def token_strings(tokenizer: Any, ids: Iterable[int]) -> dict[int, str]:
    """Each id decoded on its own (a partial UTF-8 character shows as �); unknown ids as <id>."""
    size = len(tokenizer)
    return {
        i: tokenizer.decode([i], clean_up_tokenization_spaces=False) if 0 <= i < size else f"<{i}>"
        for i in sorted(set(ids))
    }
