"""A published SAE's model card: README.md with YAML front matter in the Hugging Face Hub's
layout (`library_name`, `tags`, `base_model`, `datasets`, `model-index` with the evaluation's
numbers), so that the published folder can be uploaded to the Hub unchanged, plus a `saekit`
block of the facts `sae ls` shows."""

from __future__ import annotations

import re
from typing import Any

import yaml

HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")
# the numbers a card shows per mode, with the Hub's metric names
CARD_METRICS = {
    "l0": "L0 (active latents per token)",
    "nmse": "NMSE (fraction of variance unexplained)",
    "variance_explained": "variance explained",
    "dead_fraction": "dead latents (never fire on the held-out tokens)",
    "loss_added": "LM loss added when spliced in (nats per token)",
    "ce_recovered_zero": "CE loss recovered (vs zero ablation)",
    "kl": "KL(clean || spliced)",
}


def hub_id(value: Any) -> str | None:
    """A Hub model or dataset id (`gpt2`, `org/name`), None for local paths and the like."""
    if isinstance(value, str) and HUB_ID.fullmatch(value) and not value.startswith("."):
        return value
    return None


def model_card(facts: dict[str, Any], url: str) -> str:
    """README.md for a published SAE whose facts are `facts` and whose URL is `url`."""
    front: dict[str, Any] = {
        "library_name": "saekit",
        "tags": ["saekit", "sparse-autoencoder", facts["variant"]],
    }
    if hub_id(facts["model"]):
        front["base_model"] = facts["model"]
    if hub_id(facts["dataset"]):
        front["datasets"] = [facts["dataset"]]
    results = [_result(facts, mode, numbers) for mode, numbers in facts["metrics"].items()]
    if results:
        front["model-index"] = [{"name": facts["name"], "results": results}]
    front["saekit"] = facts
    header = yaml.safe_dump(front, sort_keys=False, allow_unicode=True)
    return f"---\n{header}---\n\n{_body(facts, url)}"


def _result(facts: dict[str, Any], mode: str, numbers: dict[str, float]) -> dict[str, Any]:
    """One model-index result: a mode's held-out numbers on the store."""
    return {
        "task": {"type": "sparse-autoencoding", "name": f"{facts['hook']} ({mode})"},
        "dataset": {
            "name": f"held-out tokens of store {facts['store_fingerprint']}",
            "type": hub_id(facts["dataset"]) or "saekit-store",
        },
        "metrics": [
            {"type": key, "name": CARD_METRICS[key], "value": numbers[key]}
            for key in CARD_METRICS
            if numbers.get(key) is not None
        ],
    }


def _body(facts: dict[str, Any], url: str) -> str:
    lines = [
        f"# {facts['name']}",
        "",
        f"A `{facts['variant']}` dictionary with {facts['d_sae']:,} latents"
        + (f" (k = {facts['k']})" if facts.get("k") else "")
        + f" on `{facts['hook']}` of `{facts['model']}`, trained with saekit on "
        f"{facts['training_tokens']:,} tokens of store `{facts['store_fingerprint']}`.",
        "",
    ]
    if facts["metrics"]:
        names = [key for key in CARD_METRICS if any(key in m for m in facts["metrics"].values())]
        lines += [
            "| mode | " + " | ".join(names) + " |",
            "|---|" + "---:|" * len(names),
            *(
                f"| {mode} | " + " | ".join(_number(numbers.get(key)) for key in names) + " |"
                for mode, numbers in facts["metrics"].items()
            ),
            "",
            "Measured by `sae eval` on the store's held-out tokens (`report.json`).",
            "",
        ]
    lines += [
        "```python",
        "from saekit.train import load_sae",
        "",
        f'sae = load_sae("{url}")  # sae.cfg: variant, hooks, options, store',
        "```",
        "",
        "`cfg.json` and `sae.safetensors` are saekit's format; `saelens/` (where present) loads in "
        "SAELens; `training/` holds the run's config and this SAE's metrics, `inspect/` its "
        "latent dashboards (open `inspect/index.html`).",
        "",
    ]
    return "\n".join(lines)


def _number(value: Any) -> str:
    return "–" if value is None else f"{value:.4g}"
