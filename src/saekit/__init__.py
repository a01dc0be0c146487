"""saekit: harvest LM activations and loss gradients into Zarr stores, train and evaluate SAEs."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("saekit")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"
