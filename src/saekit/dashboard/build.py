"""`sae inspect`: latent dashboards of saved SAEs, built from a store, as a static site.

Every input is checked before anything is written; the site appears at the end, whole.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from saekit.base.devices import resolve_device
from saekit.base.errors import SaekitError
from saekit.base.outputs import check_output_dir
from saekit.cache_format import SPLITS, ActivationStore, Split
from saekit.evaluate import DENSE_THRESHOLD, report_head
from saekit.lm import (
    Readout,
    load_readout,
    load_tokenizer,
    recorded_model,
    token_strings,
    top_logit_effects,
)
from saekit.train import recorded_store, run_of, sae_directories

from .accumulators import BINS_PER_DECADE, LOWEST_DECADE, N_BINS
from .contexts import encode_windows, find_windows
from .pages import LogitEffects, SaeData, context_request, sae_data
from .scan import DECILES, ScanSettings, hook_groups, rows_to_scan, scan
from .site import is_site, write_site
from .subjects import Subject, load_subjects


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
        vocabulary = token_strings(self.tokenizer, token_ids)
        manifest = _manifest(request, store, self.model, self.readout, self.device)
        return write_site(Path(request.out), manifest, saes, vocabulary, progress.advance)


def prepare_dashboard(request: InspectRequest) -> Dashboard:
    """Check every input and load what the build needs (SAEs, tokenizer, final norm and
    unembedding); raise `SaekitError` on bad input. Writes nothing."""
    _check_settings(request)
    store = ActivationStore.open(_store_location(request), request.storage_options)
    _check_out(request)
    if store.n_rows(request.split) == 0:
        other = "train" if request.split == "holdout" else "holdout"
        raise SaekitError(
            f"store {store.location} has no {request.split} rows; choose --split {other}"
        )
    device = resolve_device(request.device)
    subjects = load_subjects(
        list(request.saes), store, request.latents, device, request.storage_options
    )
    model = request.model or recorded_model(store)
    tokenizer = load_tokenizer(model, store)
    readout = load_readout(model, device)
    return Dashboard(request, store, subjects, model, tokenizer, readout, device)


def _logit_effects(readout: Readout | None, subject: Subject, k: int) -> LogitEffects | None:
    """Logit effects of what each latent writes to its dictionary's last target, where that is
    the residual stream's width (an SAE on the stream, a transcoder's MLP output, a CLT's last
    layer)."""
    last = subject.sae.shape.targets[-1]
    if readout is None or last.d != readout.d_model:
        return None
    directions_EF = subject.sae.decoder_at(last.hook)
    return LogitEffects(*top_logit_effects(readout, directions_EF, subject.latents_S, k))


def _check_settings(request: InspectRequest) -> None:
    if request.tokens is not None and request.tokens <= 0:
        raise SaekitError(f"--tokens must be positive, not {request.tokens}")
    if request.split not in SPLITS:
        raise SaekitError(f"--split must be one of {', '.join(SPLITS)}, not {request.split!r}")
    for name in ("batch_size", "top", "logit_tokens"):
        if getattr(request, name) <= 0:
            raise SaekitError(f"--{name.replace('_', '-')} must be positive")
    for name in ("per_band", "before", "after"):
        if getattr(request, name) < 0:
            raise SaekitError(f"--{name.replace('_', '-')} must be 0 or more")


def _store_location(request: InspectRequest) -> str:
    if request.store:
        return request.store
    return recorded_store(sae_directories(request.saes[0], request.storage_options)[0])


def _check_out(request: InspectRequest) -> None:
    runs = [
        run_of(directory) or directory
        for path in request.saes
        for directory in sae_directories(path, request.storage_options)
    ]
    check_output_dir(request.out, runs, "inspect", "an inspect site", is_site)


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
