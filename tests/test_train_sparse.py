"""Sparse gather and sparse decode: same values and gradients as the dense computation."""

import pytest
import torch

import saekit.train.sparse as sparse_module
from saekit.train.sparse import DenseCode, SparseCode, SparsePattern, gather_pre_activations
from train_helpers import build


def random_problem(seed=0, B=6, F=10, D=5, k=3):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, D, generator=g, dtype=torch.float64, requires_grad=True)
    W_enc = torch.randn(F, D, generator=g, dtype=torch.float64, requires_grad=True)
    b_enc = torch.randn(F, generator=g, dtype=torch.float64, requires_grad=True)
    W_dec = torch.randn(F, D, generator=g, dtype=torch.float64).T.requires_grad_()
    indices = torch.stack([torch.randperm(F, generator=g)[:k] for _ in range(B)])
    return x, W_enc, b_enc, W_dec, indices


def grads(*tensors):
    out = [t.grad.clone() for t in tensors]
    for t in tensors:
        t.grad = None
    return out


def test_sparse_encode_decode_match_dense_values_and_gradients():
    x, W_enc, b_enc, W_dec, indices = random_problem()
    B, F = len(x), len(W_enc)
    mask = torch.zeros(B, F, dtype=torch.bool).scatter_(1, indices, True)
    upstream = torch.randn(B, x.shape[1], dtype=torch.float64)

    z = torch.nn.functional.linear(x, W_enc, b_enc)
    dense_out = torch.nn.functional.linear(z * mask, W_dec)
    (dense_out * upstream).sum().backward()
    dense_grads = grads(x, W_enc, b_enc, W_dec)

    pattern = SparsePattern.from_row_indices(indices, F)
    values = gather_pre_activations(x, W_enc, b_enc, z.detach(), pattern)
    sparse_out = SparseCode(pattern, values).decode(W_dec, None)
    (sparse_out * upstream).sum().backward()
    sparse_grads = grads(x, W_enc, b_enc, W_dec)

    torch.testing.assert_close(sparse_out, dense_out)
    names = ("x", "W_enc", "b_enc", "W_dec")
    for name, dense, sparse in zip(names, dense_grads, sparse_grads, strict=True):
        torch.testing.assert_close(sparse, dense, msg=f"gradient of {name}")


def test_patterns_from_flat_indices_and_masks_agree_and_are_row_sorted():
    keep = torch.tensor([[0, 1, 0, 1], [0, 0, 0, 0], [1, 1, 1, 0]], dtype=torch.bool)
    from_mask = SparsePattern.from_mask(keep)
    flat = keep.flatten().nonzero().squeeze(1)
    from_flat = SparsePattern.from_flat_indices(flat.flip(0), 3, 4)  # order does not matter
    for pattern in (from_mask, from_flat):
        assert pattern.crow.tolist() == [0, 2, 2, 5]
        assert pattern.latent_N.tolist() == [1, 3, 0, 1, 2]
        assert pattern.row_N.tolist() == [0, 0, 2, 2, 2]


def test_code_summaries_count_only_positive_values():
    pattern = SparsePattern.from_row_indices(torch.tensor([[2, 0], [1, 2]]), 4)
    code = SparseCode(pattern, torch.tensor([0.5, 0.0, 2.0, 3.0]))  # row 0: latent 0 -> 0.5
    dense = code.to_dense()
    assert dense.tolist() == [[0.5, 0, 0.0, 0], [0, 2.0, 3.0, 0]]
    assert code.l0_B().tolist() == [1, 2]
    assert code.fire_counts_F().tolist() == [1, 1, 1, 0]
    assert DenseCode(dense).l0_B().tolist() == [1, 2]
    assert DenseCode(dense).fire_counts_F().tolist() == [1, 1, 1, 0]


@pytest.mark.parametrize("text", ["topk:k=3,latents=12", "batchtopk:k=3,latents=12"])
def test_sparse_and_dense_training_paths_give_the_same_gradients(monkeypatch, text):
    x = torch.randn(16, 5, generator=torch.Generator().manual_seed(1))
    gradients = []
    for density in (1.0, 0.0):  # everything sparse, then everything dense
        monkeypatch.setattr(sparse_module, "SPARSE_MAX_DENSITY", density)
        sae = build(text, 5, seed=2)
        fwd = sae.training_forward(x)
        ((fwd.y_hat_BE - x).pow(2).sum() + fwd.code.values_N.sum()).backward()
        gradients.append({n: p.grad for n, p in sae.named_parameters()})
    for name, grad in gradients[0].items():
        torch.testing.assert_close(grad, gradients[1][name], msg=name)
