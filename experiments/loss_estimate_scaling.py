"""Why the store-only estimate fails for large errors: scale an SAE's error, x + α(x̂ − x), and
compare the spliced model's KL and loss added with the estimate, whose first-order term scales
as α and whose Fisher term as α² (a quadratic model of the loss):

    .venv/bin/python experiments/loss_estimate_scaling.py STORE SAE_DIR [SAE_DIR ...]
        [--alphas 0.125 0.25 0.5 1] [--tokens 8192]

For each SAE and α: the online KL and loss added, KL / α² (constant if the KL is quadratic in
the error) and the estimate at α (first order · α + Fisher term · α², from the store).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from saekit.cache_format import ActivationStore
from saekit.evaluate import EvalSettings, Evaluation, targets_of
from saekit.evaluate.heldout import heldout_contexts
from saekit.lm import edited_logits, load_model_for_store, next_token_stats
from saekit.train import load_sae


def scaled_error_edit(target, alpha: float):
    """x + α (x̂ − x) at every position but 0."""

    def edit(x_BTD: torch.Tensor) -> torch.Tensor:
        b, t, d = x_BTD.shape
        _, x_hat = target.reconstruct(x_BTD[:, 1:].reshape(-1, d).float())
        x_hat_BTD = x_hat.view(b, t - 1, d).to(x_BTD.dtype)
        return torch.cat([x_BTD[:, :1], x_BTD[:, 1:] + alpha * (x_hat_BTD - x_BTD[:, 1:])], 1)

    return edit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("store")
    parser.add_argument("saes", nargs="+", type=Path)
    parser.add_argument("--alphas", type=float, nargs="+", default=[0.125, 0.25, 0.5, 1.0])
    parser.add_argument("--tokens", type=int, default=8192)
    parser.add_argument("--batch", type=int, default=16)
    args = parser.parse_args()
    store = ActivationStore.open(args.store)
    device = torch.device("cpu")
    evaluation = Evaluation(store, device, EvalSettings(offline_tokens=None))
    contexts = heldout_contexts(store, args.tokens)
    for sae_dir in args.saes:
        sae = load_sae(sae_dir)
        target = targets_of(sae_dir.parent.parent.name, sae)[0]
        (row,) = evaluation.rows([target])
        first, fisher = row["offline"]["loss_added_first_order"], row["offline"]["kl_estimate"]
        model = load_model_for_store(store, [sae.cfg.hook], device).model.bridge
        print(f"{sae.cfg.name} [{target.mode}]: NMSE {row['offline']['nmse']:.3f}")
        for alpha in args.alphas:
            kl_sum = added_sum = count = 0.0
            for start in range(0, len(contexts), args.batch):
                tokens_BT = contexts[start : start + args.batch]
                clean_BTV = edited_logits(model, tokens_BT, {})
                ce_clean, _ = next_token_stats(clean_BTV, tokens_BT)
                spliced_BTV = edited_logits(
                    model, tokens_BT, {sae.cfg.hook: scaled_error_edit(target, alpha)}
                )
                ce, kl = next_token_stats(spliced_BTV, tokens_BT, clean_BTV)
                kl_sum += float(kl.sum())
                added_sum += float((ce - ce_clean).sum())
                count += kl.numel()
            kl, added = kl_sum / count, added_sum / count
            estimate = alpha * first + alpha**2 * fisher
            print(
                f"  α {alpha:<6g} KL {kl:.5f}  KL/α² {kl / alpha**2:.5f} (Fisher term "
                f"{fisher:.5f})  loss added {added:.5f}  estimate {estimate:.5f}"
            )


if __name__ == "__main__":
    main()
