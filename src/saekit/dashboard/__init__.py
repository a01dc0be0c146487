"""`sae inspect`: what every latent means, as a static site built from the store.

A streaming pass over the store's rows keeps per-latent statistics in bounded memory; contexts are
rebuilt from the store's token ids and encoded by the SAE (the LM is not run); logit effects read
the decoder directions through the LM's final norm and unembedding alone. The package is called
`dashboard`, not `inspect`, so that it never reads like (or shadows) the standard library's
`inspect` module.
"""

from saekit.dashboard.build import Dashboard, InspectRequest, build_dashboard, prepare_dashboard
from saekit.dashboard.site import is_site, one_sae_site, read_data_script

__all__ = [
    "Dashboard",
    "InspectRequest",
    "build_dashboard",
    "is_site",
    "one_sae_site",
    "prepare_dashboard",
    "read_data_script",
]
