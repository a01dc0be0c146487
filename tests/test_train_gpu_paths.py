"""The training step as a GPU runs it: no host syncs, no atomic accumulation, same results.

On a CPU, `host_syncs` counts what would stall a GPU or add in a run-dependent order (see
there), and `devices.host_reads_are_free` is patched to say False, so the code paths a GPU takes
run here. Tests marked `cuda` check the same on a GPU where there is one: torch's sync debug
mode raises on any sync, and repeated runs must agree bit for bit.
"""

from __future__ import annotations

import pytest
import torch

from host_syncs import host_syncs
from saekit.base import devices
from saekit.cache_format import Batch
from saekit.cache_format.schema import ACTIVATIONS, GRADIENTS, hook_field
from saekit.train.losses import ResidualAux
from saekit.train.member import Member, RunReads
from saekit.train.schedule import Plan
from saekit.train.sparse import SparsePattern, segment_sum
from saekit.train.spec import parse_spec
from saekit.train.trainer import Cadence, Observer, Trainer
from train_helpers import ALL_VARIANTS

D, BATCH = 16, 64
# Every variant, both auxiliary losses, Zipf capacities, and the sparse auxiliary decode
# (k_aux / F <= 1/16); dead_tokens of one batch so that AuxK has dead latents from step 2 on.
SPECS = [
    f"{text},dead_tokens={BATCH}"
    for text in [
        *ALL_VARIANTS,
        "topk:k=4,latents=96,aux=zipf",
        "batchtopk:k=4,latents=96,aux=zipf",
        "feature-choice:k=1,latents=96,capacities=zipf,aux=auxk",
        "gsae:k=4,latents=96,beta_eff=0.3,beta_tracking=true",
        "relu:latents=96,decoder=unit",
        "topk:k=4,latents=8192",
    ]
]
GPU_CHECK_SPECS = ["topk:k=4,latents=96", "gsae:k=4,latents=96", "batchtopk:k=4,latents=96"]
GPU_CHECK_SPECS += ["feature-choice:k=4,latents=96"]


@pytest.fixture
def gpu_paths(monkeypatch):
    """Take the code paths of a GPU, where reading a value on the host is never free."""
    monkeypatch.setattr(devices, "host_reads_are_free", lambda device: False)


def member(text: str, device: str = "cpu", steps: int = 8, seed: int = 0) -> Member:
    spec = parse_spec(text).resolve(D)
    sae = spec.build(D)
    sae.init_weights_(torch.Generator().manual_seed(seed), sae.activation.decoder_init_norm, None)
    plan = Plan.make(steps * BATCH, BATCH, train_rows=100_000, warmup=0.1, decay=0.2)
    return Member(spec, sae.to(device), plan, grad_clip=1.0)


def batches(n: int, device: str = "cpu", seed: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [
        (
            torch.randn(BATCH, D, generator=g).to(device),
            torch.randn(BATCH, D, generator=g).to(device),
        )
        for _ in range(n)
    ]


def adam_step_of(members: list[Member]):
    """Whether a tensor is one of Adam's step counts: CPU tensors on every device, so reading
    them never syncs a GPU."""

    def is_step(tensor: torch.Tensor) -> bool:
        steps = (state["step"] for m in members for state in m.optimizer.state.values())
        return any(tensor is step for step in steps)

    return is_step


def test_the_counter_sees_syncs_and_atomics():
    x = torch.randn(16)
    with host_syncs() as events:
        x[x > 0]
        x.sum().item()
        bool(x.any())
        torch.nonzero(x)
        torch.bincount(torch.tensor([0, 2, 2]))
        torch.zeros(3).index_add_(0, torch.tensor([0, 0, 1]), torch.ones(3))
    assert events["sync: boolean mask aten.index.Tensor"] == 1
    assert events["sync: Tensor.item"] == 1 and events["sync: Tensor.__bool__"] == 1
    assert events["sync: aten.nonzero.default"] == 1
    assert events["sync: aten.bincount.default"] == 1
    assert events["atomic: aten.index_add_.default"] == 1
    with host_syncs() as events:
        x.masked_fill(x > 0, 0).sum()
        segment_sum(x, torch.tensor([0, 5, 16]))
    assert not events


@pytest.mark.parametrize("text", SPECS)
def test_a_training_step_never_syncs_nor_adds_atomically(gpu_paths, text):
    trained = member(text)
    data = batches(5)
    for step, (x, g) in enumerate(data[:2]):  # the first steps build per-batch-size caches
        trained.step(x, g, step)
    with host_syncs(free=adam_step_of([trained])) as events:
        for step, (x, g) in enumerate(data[2:], start=2):
            trained.step(x, g, step)
    assert not events, dict(events)
    if any(isinstance(term, ResidualAux) for term in trained.terms):
        assert trained.usage.dead_F().any(), "the auxiliary loss had candidates"
    assert trained.take_metrics()["l0"] > 0


def test_the_trainer_loop_never_syncs_between_logging_steps(gpu_paths, tmp_path):
    """The whole trainer step adds no sync: the non-finite policy reads what the loader found on
    the CPU, and the loop around the SAEs' steps (metrics, schedule, checkpoint cadence) keeps
    its numbers on the device until logging."""
    steps = 6
    members = [member(text, steps=steps) for text in GPU_CHECK_SPECS]

    class Tally(Observer):
        def __init__(self, events):
            self.events, self.after_step = events, []

        def stepped(self, step, epoch):
            self.after_step.append(sum(self.events.values()))

    (hook,) = members[0].sae.shape.hooks
    reads = RunReads((hook,), (hook,))
    fields = (hook_field(ACTIVATIONS, hook), hook_field(GRADIENTS, hook))
    data = [Batch(dict(zip(fields, pair, strict=True)), epoch=0) for pair in batches(steps)]
    trainer = Trainer(members, members[0].plan, Cadence(1000, 0), reads, {hook: 1.0}, tmp_path)
    with host_syncs(free=adam_step_of(members)) as events:
        trainer.observer = tally = Tally(events)
        trainer.run(iter(data))
    per_step = [b - a for a, b in zip(tally.after_step, tally.after_step[1:], strict=False)]
    assert per_step == [0] * (steps - 1), per_step  # after the first step, which builds caches
    assert (tmp_path / "metrics.jsonl").read_text().count("\n") == len(members), "logged at end"


@pytest.mark.parametrize("text", ["topk:k=4,latents=96", "batchtopk:k=1,latents=96"])
def test_gpu_and_cpu_paths_train_bit_identical_saes(monkeypatch, text):
    """The CPU's shortcuts (skip AuxK without dead latents, bounded batch search) change the
    work, not the result: the SAE trained on either path is the same, bit for bit."""
    text += f",dead_tokens={2 * BATCH}"  # no dead latent in the first steps, then some
    data = batches(6)
    trained = {}
    for free in (True, False):
        monkeypatch.setattr(devices, "host_reads_are_free", lambda device, free=free: free)
        trained[free] = member(text, steps=6)
        for step, (x, g) in enumerate(data):
            trained[free].step(x, g, step)
    assert trained[True].usage.dead_F().any()
    cpu, gpu = (trained[free].sae.state_dict() for free in (True, False))
    for name, value in cpu.items():
        assert torch.equal(value, gpu[name]), name


def test_segment_sums_add_in_order_like_index_add_on_the_cpu():
    g = torch.Generator().manual_seed(3)
    latent_N = torch.randint(0, 50, (5000,), generator=g)  # about 100 collisions per latent
    values_N = torch.randn(5000, generator=g)
    pattern = SparsePattern.from_flat_indices(
        torch.arange(5000) * 50 + latent_N, n_rows=5000, n_latents=50
    )
    expected = torch.zeros(50).index_add_(0, latent_N, values_N)
    assert torch.equal(pattern.sum_by_latent(values_N), expected)
    assert torch.equal(pattern.sum_by_row(values_N), values_N), "one entry per row"


# -- on a GPU -----------------------------------------------------------------------------------


@pytest.mark.cuda
@pytest.mark.parametrize("text", SPECS)
def test_cuda_training_steps_never_sync(text):
    trained = member(text, device="cuda")
    data = batches(5, device="cuda")
    for step, (x, g) in enumerate(data[:2]):
        trained.step(x, g, step)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for step, (x, g) in enumerate(data[2:], start=2):
            trained.step(x, g, step)
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.cuda
def test_cuda_training_is_bit_reproducible():
    data = batches(6, device="cuda")
    states = []
    for _ in range(2):
        members = [member(text, device="cuda", steps=6) for text in SPECS]
        for m in members:
            for step, (x, g) in enumerate(data):
                m.step(x, g, step)
        states.append([m.sae.state_dict() for m in members])
    for first, second, text in zip(*states, SPECS, strict=True):
        for name, value in first.items():
            assert torch.equal(value, second[name]), f"{text}: {name}"


@pytest.mark.cuda
def test_cuda_segment_sums_are_deterministic():
    g = torch.Generator().manual_seed(3)
    latent_N = torch.randint(0, 50, (200_000,), generator=g)
    values_N = torch.randn(200_000, generator=g)
    pattern = SparsePattern.from_flat_indices(
        torch.arange(200_000) * 50 + latent_N, n_rows=200_000, n_latents=50
    )
    on_gpu = SparsePattern(
        pattern.crow.cuda(), pattern.latent_N.cuda(), pattern.row_N.cuda(), 200_000, 50
    )
    sums = [on_gpu.sum_by_latent(values_N.cuda()) for _ in range(5)]
    assert all(torch.equal(s, sums[0]) for s in sums)
    torch.testing.assert_close(sums[0].cpu(), pattern.sum_by_latent(values_N))
