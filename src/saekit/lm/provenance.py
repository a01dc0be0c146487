"""A model meeting a store: the model a store names, and the checks that the model loaded for a
store is the one it was harvested with (hooks, widths, weights, tokenizer, vocabulary)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from saekit.base.errors import SaekitError
from saekit.base.locations import is_local, local_path, resolve_recorded_path
from saekit.cache_format import ActivationStore
from saekit.lm.model import (
    LanguageModel,
    load_model,
    tokenizer_fingerprint,
    weights_fingerprint,
)

# what identifies the LM in a store's identity, compared with the model that is loaded for it
PROVENANCE_KEYS = ("weights_fingerprint", "tokenizer_fingerprint", "vocab_size")
OTHER_MODEL_ADVICE = (
    "give that model with --model, or pass --allow-other-model to evaluate with this one (the "
    "report then says so)"
)


def recorded_model(store: ActivationStore) -> str:
    """The model the store names (a relative local path of an older store is looked for beside
    the store)."""
    recorded = store.spec.identity.get("model")
    if not isinstance(recorded, str) or not recorded:
        raise SaekitError(f"store {store.location} names no model; give one with --model")
    if not is_local(store.location):
        return recorded
    return resolve_recorded_path(recorded, local_path(store.location))


def identity_differences(store: ActivationStore, model: LanguageModel) -> list[str]:
    """How the loaded model differs from the one the store recorded (where both are known)."""
    return _differences(store.spec.identity, model.identity)


def _differences(recorded: dict, loaded: dict) -> list[str]:
    return [
        f"{key} (store: {recorded[key]}, model: {loaded[key]})"
        for key in PROVENANCE_KEYS
        if recorded.get(key) and loaded.get(key) and recorded[key] != loaded[key]
    ]


def check_model_files(
    store: ActivationStore,
    name: str,
    tokenizer: Any | None = None,
    allow_other_model: bool = False,
    purpose: str = "the output uses",
) -> list[str]:
    """Check a model that is read without being loaded (its tokenizer, its unembedding, its
    shape) against the store: the fingerprints of its weight files and of `tokenizer` against
    those the store recorded, as `load_model_for_store` checks a loaded one. Another model is
    refused unless `allow_other_model`; then the warning a report must carry is returned."""
    loaded = {"weights_fingerprint": weights_fingerprint(name)}
    if tokenizer is not None:
        loaded["tokenizer_fingerprint"] = tokenizer_fingerprint(tokenizer)
    differences = _differences(store.spec.identity, loaded)
    if differences and not allow_other_model:
        raise SaekitError(
            f"model {name} is not the model store {store.location} was harvested with: "
            f"{'; '.join(differences)}; give that model with --model, or pass "
            "--allow-other-model to use this one (the output then says so)"
        )
    return [f"{purpose} {_other_model(name, differences)}"] if differences else []


def _other_model(name: str, differences: list[str]) -> str:
    return (
        f"model {name}, which differs from the store's: {'; '.join(differences)} "
        "(--allow-other-model)"
    )


@dataclass(frozen=True)
class CheckedModel:
    """A model loaded for a store, and the warning a report must carry when it is not the
    store's own (allowed with `--allow-other-model`)."""

    model: LanguageModel
    warnings: list[str]


def load_model_for_store(
    store: ActivationStore,
    hooks: list[str],
    device: torch.device,
    name: str | None = None,
    allow_other_model: bool = False,
    instead: str = OTHER_MODEL_ADVICE,
) -> CheckedModel:
    """The LM to run on the store's tokens (`name`, default the store's model), checked against
    the store: its hooks and widths always, its weights and tokenizer fingerprints unless
    `allow_other_model` (then a warning to report). `instead` ends the refusal of another
    model: what to do instead."""
    name = name or recorded_model(store)
    try:
        model = load_model(name, device)
    except SaekitError as error:
        raise SaekitError(
            f"{error} (the store names this model; override it with --model)"
        ) from None
    check_hooks_match(model, store, hooks)
    differences = identity_differences(store, model)
    if differences and not allow_other_model:
        raise SaekitError(
            f"model {name} is not the model store {store.location} was harvested with: "
            f"{'; '.join(differences)}; {instead}"
        )
    warnings = [f"online metrics use {_other_model(name, differences)}"]
    return CheckedModel(model, warnings if differences else [])


def check_hooks_match(model: LanguageModel, store: ActivationStore, hooks: list[str]) -> None:
    """The model has each hook, and gives there the width the store has."""
    model.check_hooks(hooks)
    for hook, width in model.hook_widths(hooks).items():
        if width != store.spec.hooks[hook].d:
            raise SaekitError(
                f"model {model.name} gives d={width} at {hook} but the store has "
                f"d={store.spec.hooks[hook].d}; give the store's model with --model"
            )


def check_token_ids(
    contexts_CT: torch.Tensor, model: LanguageModel, store: ActivationStore
) -> None:
    """Refuse token ids the model's vocabulary does not have."""
    if len(contexts_CT) and int(contexts_CT.min()) < 0:
        raise SaekitError(
            f"store {store.location} holds negative token ids; the store is damaged, run sae "
            "verify on it"
        )
    if len(contexts_CT) and int(contexts_CT.max()) >= model.d_vocab:
        raise SaekitError(
            f"store {store.location} holds token ids up to {int(contexts_CT.max())} but model "
            f"{model.name} has a vocabulary of {model.d_vocab}; give the store's model with --model"
        )
