"""The eval stage: offline metrics on held-out rows, online splicing into the LM, reports."""

from saekit.evaluate.runner import EvalRequest, evaluate

__all__ = ["EvalRequest", "evaluate"]
