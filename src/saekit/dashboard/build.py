"""`sae inspect`: latent dashboards of saved SAEs, built from a store, as a static site.

Every input is checked before anything is written; the site appears at the end, whole.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from saekit.base.devices import device_memory, resolve_device
from saekit.base.errors import IntegrityError, SaekitError
from saekit.base.outputs import INSPECT_SITE, check_output_dir
from saekit.base.units import human_bytes
from saekit.cache_format import SPLITS, ActivationStore, Split
from saekit.evaluate import DENSE_THRESHOLD, report_head, trained_store
from saekit.lm import (
    Readout,
    check_model_files,
    load_readout,
    load_tokenizer,
    recorded_model,
    token_strings,
    top_logit_effects,
)
from saekit.train import run_of, sae_directories

from .accumulators import BINS_PER_DECADE, LOWEST_DECADE, N_BINS
from .contexts import encode_windows, find_windows
from .pages import LogitEffects, SaeData, context_request, sae_data
from .scan import DECILES, ScanSettings, hook_groups, rows_to_scan, scan
from .site import is_unmarked_site, write_site
from .subjects import Subject, load_subjects

KEPT_FIRING_BYTES = 20  # the key, row and value of a kept firing (`KeptRows`)
CONTEXT_PLACE_BYTES = 40  # the row, token, position, key and value of a place of its context


@dataclass(frozen=True)
class InspectRequest:
    """Everything `sae inspect` takes."""

    saes: tuple[str, ...]  # runs or SAE directories
    out: str
    store: str | None = None  # default: the store the first SAE was trained on
    storage_options: dict[str, Any] | None = None
    latents: str = "all"  # all | N (the first N) | i,j,k
    tokens: int | None = None  # rows to read at most (default: the whole split)
    split: Split = "holdout"
    model: str | None = None  # default: the model named in the store
    device: str = "auto"
    batch_size: int = 4096  # rows per SAE encode
    top: int = 20  # top activations shown per latent
    per_band: int = 3  # random firings shown per decile band
    before: int = 16  # tokens shown before the firing token
    after: int = 4  # and after it
    logit_tokens: int = 10  # promoted and suppressed tokens listed per latent
    seed: int = 0
    # inspect SAEs of another model than the store's, or with another model's tokenizer and
    # unembedding (the site's inspect.json and the command's output then say so)
    allow_other_model: bool = False


class Progress(Protocol):
    def stage(self, description: str, total: int | None) -> None: ...

    def advance(self, n: int) -> None: ...


class _Silent:
    def stage(self, description: str, total: int | None) -> None:
        pass

    def advance(self, n: int) -> None:
        pass


def build_dashboard(request: InspectRequest, progress: Progress | None = None) -> Path:
    """Inspect every SAE of the request; write the site into `request.out`; return index.html."""
    return prepare_dashboard(request).build(progress or _Silent())


@dataclass
class Dashboard:
    """A checked request with everything loaded: building it reads the store and writes the
    site, and nothing before that writes anything."""

    request: InspectRequest
    store: ActivationStore
    subjects: list[Subject]
    model: str
    tokenizer: Any
    readout: Readout | None
    device: torch.device
    warnings: list[str]

    def build(self, progress: Progress) -> Path:
        """The streaming pass, the contexts, the logit effects, then the site; its index.html."""
        request, store, subjects = self.request, self.store, self.subjects
        settings = ScanSettings(
            request.split, request.tokens, request.batch_size, request.top, request.per_band,
            request.seed,
        )  # fmt: skip
        progress.stage("latent statistics", rows_to_scan(store, subjects, settings))
        records = scan(store, subjects, settings, self.device, progress.advance)
        requests = [context_request(s, r) for s, r in zip(subjects, records, strict=True)]
        centres = np.concatenate([r.centers_Q for r in requests])
        progress.stage("finding contexts", None)
        windows = find_windows(store, request.split, centres, request.before, request.after)
        progress.stage("encoding contexts", windows.rows_to_encode * len(hook_groups(subjects)))
        encode_windows(store, windows, requests, self.device, request.batch_size, progress.advance)
        progress.stage("logit effects", len(subjects))
        saes: list[SaeData] = []
        for subject, record, wanted in zip(subjects, records, requests, strict=True):
            effects = _logit_effects(self.readout, subject, request.logit_tokens)
            saes.append(sae_data(subject, record, wanted, windows, effects))
            progress.advance(1)
        progress.stage("writing the site", sum(len(sae.latents) for sae in saes))
        token_ids = set().union(*(sae.token_ids for sae in saes))
        _check_token_ids(token_ids, self.tokenizer, store, self.model)
        vocabulary = token_strings(self.tokenizer, token_ids)
        manifest = _manifest(request, store, self.model, self.readout, self.device)
        manifest["warnings"] = self.warnings
        return write_site(Path(request.out), manifest, saes, vocabulary, progress.advance)


def prepare_dashboard(request: InspectRequest) -> Dashboard:
    """Check every input and load what the build needs (SAEs, tokenizer, final norm and
    unembedding); raise `SaekitError` on bad input. Writes nothing."""
    _check_settings(request)
    store = ActivationStore.open(_store_location(request), request.storage_options)
    store.check_split()
    _check_out(request)
    if store.n_rows(request.split) == 0:
        other = "train" if request.split == "holdout" else "holdout"
        raise SaekitError(
            f"store {store.location} has no {request.split} rows; choose --split {other}"
        )
    device = resolve_device(request.device)
    warnings: list[str] = []
    subjects = load_subjects(
        list(request.saes),
        store,
        request.latents,
        device,
        request.allow_other_model,
        warnings,
        request.storage_options,
    )
    _check_memory(request, subjects, device)
    model = request.model or recorded_model(store)
    try:
        tokenizer = load_tokenizer(model, store, check=False)
    except SaekitError as error:
        if request.model:
            raise
        raise SaekitError(f"{error} (the store names this model; give it with --model)") from None
    warnings += check_model_files(
        store, model, tokenizer, request.allow_other_model, "token strings and logit effects use"
    )
    readout = load_readout(model, device)
    return Dashboard(request, store, subjects, model, tokenizer, readout, device, warnings)


def _logit_effects(readout: Readout | None, subject: Subject, k: int) -> LogitEffects | None:
    """Logit effects of what each latent writes to its dictionary's last target, where that is
    the residual stream's width (an SAE on the stream, a transcoder's MLP output, a CLT's last
    layer)."""
    last = subject.sae.shape.targets[-1]
    if readout is None or last.d != readout.d_model:
        return None
    directions_EF = subject.sae.decoder_at(last.hook)
    return LogitEffects(*top_logit_effects(readout, directions_EF, subject.latents_S, k))


def _check_memory(request: InspectRequest, subjects: list[Subject], device: torch.device) -> None:
    """Refuse settings whose kept firings and their contexts cannot fit in memory."""
    kept = request.top + DECILES * request.per_band
    window = request.before + request.after + 1
    latents = sum(subject.n_slots for subject in subjects)
    need = latents * kept * (KEPT_FIRING_BYTES + window * CONTEXT_PLACE_BYTES)
    have = min(device_memory(device), device_memory(torch.device("cpu")))
    if need > have:
        raise SaekitError(
            f"--top {request.top}, --per-band {request.per_band} and contexts of {window} "
            f"tokens for {latents:,} latents would need about {human_bytes(need)} of memory, "
            f"more than the {human_bytes(have)} here; lower --top, --per-band, --before, "
            "--after or --latents"
        )


def _check_token_ids(
    token_ids: set[int], tokenizer: Any, store: ActivationStore, model: str
) -> None:
    """Refuse token ids that the tokenizer cannot show (a damaged store, or another model)."""
    outside = sorted(i for i in token_ids if not 0 <= i < len(tokenizer))
    if outside:
        raise IntegrityError(
            f"store {store.location} holds token id {outside[0]}, outside the vocabulary of "
            f"{len(tokenizer)} tokens of model {model}'s tokenizer; the store is damaged (run "
            "sae verify on it) or --model is not its model; no site was written"
        )


def _check_settings(request: InspectRequest) -> None:
    if request.tokens is not None and request.tokens <= 0:
        raise SaekitError(f"--tokens must be positive, not {request.tokens}")
    if request.split not in SPLITS:
        raise SaekitError(f"--split must be one of {', '.join(SPLITS)}, not {request.split!r}")
    for name in ("batch_size", "top", "logit_tokens"):
        if getattr(request, name) <= 0:
            raise SaekitError(f"--{name.replace('_', '-')} must be positive")
    for name in ("per_band", "before", "after", "seed"):
        if getattr(request, name) < 0:
            raise SaekitError(
                f"--{name.replace('_', '-')} must be 0 or more, not {getattr(request, name)}"
            )


def _store_location(request: InspectRequest) -> str:
    if request.store:
        return request.store
    return trained_store(
        [
            directory
            for path in request.saes
            for directory in sae_directories(path, request.storage_options)
        ]
    )


def _check_out(request: InspectRequest) -> None:
    runs = [
        run_of(directory) or directory
        for path in request.saes
        for directory in sae_directories(path, request.storage_options)
    ]
    check_output_dir(request.out, runs, "inspect", INSPECT_SITE, is_unmarked_site)


def _manifest(
    request: InspectRequest,
    store: ActivationStore,
    model: str,
    readout: Readout | None,
    device: torch.device,
) -> dict:
    settings = asdict(request)
    for key in ("saes", "out", "store", "storage_options", "model", "device"):
        settings.pop(key)
    return {
        **report_head(store),
        "model": model,
        "logit_effects": readout is not None,
        "settings": {
            **settings,
            "deciles": DECILES,
            "bins": {"count": N_BINS, "per_decade": BINS_PER_DECADE, "lowest": LOWEST_DECADE},
            "dense_threshold": DENSE_THRESHOLD,
        },
        "device": str(device),
    }
