"""A team's registry of SAEs: `sae publish` copies saved SAEs (with their card, report rows and
dashboards) under any fsspec URL, atomically; `sae ls` lists the stores and SAEs there. Reading a
published SAE (`load_sae`, `sae eval`, `sae inspect` given its URL) needs only
`saekit.train`; the protocol is `saekit.base.published`."""

from saekit.registry.card import model_card
from saekit.registry.listing import listing
from saekit.registry.publish import PublishRequest, publish_saes

__all__ = ["PublishRequest", "listing", "model_card", "publish_saes"]
