"""`sae finetune` on the tiny LM: the KL term against a hand-written splice into the plain HF
model, a weak SAE's held-out KL lowered, resumption (interrupted, or killed with -9) to the same
bits, the new SAEs beside the trained ones, and bad input refused in one line."""

import json
import random
import shutil
import subprocess

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from transformers import GPT2LMHeadModel

from helpers import assert_one_line_error, harvest_small_store, small_corpus, snapshot
from kill_switch import KILLED, child_command, count_events
from saekit.cache_format import ActivationStore, HookSpec
from saekit.cache_format.synthetic import synthetic_spec, write_synthetic_store
from saekit.evaluate import EvalRequest, evaluate
from saekit.finetune import FinetuneRequest, finetune, state_directory
from saekit.finetune.data import StoreContexts, TextContexts
from saekit.harvest import resolve_source
from saekit.recipes.training import _complete
from saekit.train import (
    Checkpoints,
    TrainRequest,
    TrainSettings,
    load_sae,
    parse_spec,
    read_metrics,
    train,
    trained_saes,
)
from saekit.train.metrics import TIMING_KEYS

HOOK, MLP_IN, MLP_OUT = "blocks.1.hook_resid_post", "blocks.1.mlp.hook_in", "blocks.1.hook_mlp_out"
CONTEXT = 32  # the store's context size
SAE = "topk-k4-128"
TRANSCODER = "transcoder"
SPECS = (
    "topk:k=4,latents=128",
    f"topk:k=4,latents=128,hooks={MLP_IN},target={MLP_OUT},name={TRANSCODER}",
)


@pytest.fixture(scope="module")
def store(tiny_lm, corpus, tmp_path_factory):
    """The tiny LM at block 1's residual stream and its MLP's input and output (float32)."""
    out = tmp_path_factory.mktemp("finetune") / "store.zarr"
    return harvest_small_store(tiny_lm, corpus, out, hooks=(HOOK, MLP_IN, MLP_OUT), dtype="float32")


def train_run(store, out, specs=SPECS, resume=False):
    """Weak dictionaries: four steps of sae train."""
    settings = TrainSettings(tokens=1024, batch_size=256, device="cpu", log_every=2)
    specs = [parse_spec(text) for text in specs]
    train(TrainRequest(str(store), HOOK, out, specs, settings, resume))
    return out


@pytest.fixture(scope="module")
def trained(store, tmp_path_factory):
    """A run of a weak TopK SAE and a weak TopK transcoder; tests fine-tune copies of it."""
    return train_run(store, tmp_path_factory.mktemp("trained") / "run")


@pytest.fixture
def run(trained, tmp_path):
    return shutil.copytree(trained, tmp_path / "run")


def request(run, **overrides):
    settings = dict(run=str(run), tokens=4 * CONTEXT, batch_size=4, device="cpu", lr=3e-3)
    return FinetuneRequest(**{**settings, **overrides})


def weights(directory):
    return load_file(directory / "sae.safetensors")


# -- the contexts ----------------------------------------------------------------------------


def all_contexts(store, split):
    """Every context of a split, rebuilt by hand from its rows: {sequence: token ids}."""
    ((start, stop),) = store.ranges(split)
    rows = store.read(["tokens", "sequence", "position"], start, stop)
    contexts = {}
    for token, sequence, position in zip(*rows.values(), strict=True):
        contexts.setdefault(int(sequence), [0] * CONTEXT)[int(position)] = int(token)
    return contexts


def stream(source, first_step, batch_size, steps):
    batches = source.batches(first_step, batch_size)
    return [tuple(row) for _ in range(steps) for row in next(batches).tolist()]


def test_the_stores_contexts_come_once_per_epoch_in_a_seeded_order(store):
    """An epoch is every training context once (none held out); the order is the seed's; a
    resumed stream is the tail of the whole one, across an epoch's end."""
    store = ActivationStore.open(store)
    training = all_contexts(store, "train")
    held_out = {tuple(c) for c in all_contexts(store, "holdout").values()}
    source = StoreContexts(store, CONTEXT, seed=0)
    assert source.total == len(training) == 120
    epoch = stream(source, 0, 1, source.total)
    assert sorted(epoch) == sorted(tuple(c) for c in training.values())
    assert not held_out & set(epoch)
    assert stream(StoreContexts(store, CONTEXT, seed=0), 0, 1, source.total) == epoch
    assert stream(StoreContexts(store, CONTEXT, seed=1), 0, 1, source.total) != epoch
    whole = stream(source, 0, 7, 25)  # 175 contexts: into the second epoch
    assert whole[:120] == epoch and whole[120:] != epoch[:55], "each epoch its own order"
    assert stream(source, 20, 7, 5) == whole[140:]


def test_text_of_the_stores_own_dataset_starts_after_its_held_out_contexts(
    store, tiny_lm, corpus, tmp_path
):
    """The store's own dataset is packed as the harvest packed it: its first contexts are the
    store's first training contexts, in order (no held-out text); another dataset is shuffled
    with the fine-tune's seed."""
    from transformers import AutoTokenizer

    store = ActivationStore.open(store)
    tokenizer = AutoTokenizer.from_pretrained(tiny_lm)
    own = TextContexts(resolve_source(str(corpus)), store, tokenizer, CONTEXT, seed=7)
    assert (
        own.identity()["stores_own_dataset"] and own.identity()["held_out_contexts_skipped"] == 30
    )
    training = all_contexts(store, "train")
    assert stream(own, 0, 4, 3) == [tuple(training[30 + i]) for i in range(12)]
    assert stream(own, 2, 4, 1) == [tuple(training[38 + i]) for i in range(4)]
    other = small_corpus(corpus, tmp_path / "other.txt", documents=40)
    first, second = (
        TextContexts(resolve_source(str(other)), store, tokenizer, CONTEXT, seed=seed)
        for seed in (0, 1)
    )
    assert not first.identity()["stores_own_dataset"]
    assert stream(first, 0, 4, 2) != stream(second, 0, 4, 2)


# -- the loss --------------------------------------------------------------------------------

# Where each hook of the store is in the plain HF GPT-2 of block 1: (module, read its input?).
HF_MODULES = {HOOK: ("block", False), MLP_IN: ("mlp", True), MLP_OUT: ("mlp", False)}


def hf_run(hf, tokens_BT, replaced=None, gradient_at=None):
    """(logits, {hook: [B, T, D]} of the store's hooks, the gradient of the summed next-token
    CE at `gradient_at`) of the HF model, the output of each module in `replaced` swapped for
    the given tensor at positions 1 onwards."""
    seen, replaced = {}, replaced or {}

    def hook(name):
        module_name, reads_input = HF_MODULES[name]

        def capture(module, args, output):
            tensor = output[0] if isinstance(output, tuple) else output
            seen[name] = args[0] if reads_input else tensor
            if name == gradient_at:
                seen[name].retain_grad()
            if name not in replaced:
                return None
            new = torch.cat([tensor[:, :1], replaced[name][:, 1:]], dim=1)
            return (new, *output[1:]) if isinstance(output, tuple) else new

        module = hf.transformer.h[1] if module_name == "block" else hf.transformer.h[1].mlp
        return module.register_forward_hook(capture)

    handles = [hook(name) for name in HF_MODULES]
    with torch.set_grad_enabled(gradient_at is not None):
        logits_BTV = hf(tokens_BT).logits
    for handle in handles:
        handle.remove()
    gradient = None
    if gradient_at is not None:
        ce = F.cross_entropy(
            logits_BTV[:, :-1].flatten(0, 1), tokens_BT[:, 1:].flatten(), reduction="sum"
        )
        ce.backward()
        gradient = seen[gradient_at].grad
    return logits_BTV.detach(), {k: v.detach() for k, v in seen.items()}, gradient


def by_hand(tiny_lm, sae, tokens_BT, code):
    """KL(clean ‖ spliced) over positions 1 .. T − 2 and the NMSE of the reconstruction, with
    the plain HF model: every target of the saved dictionary replaced at positions 1 onwards by
    its reconstruction from the clean sources (raw activations), its codes `code(sae, x, g)`
    (g: the gradient of the summed CE at its first target, for a g-SAE)."""
    hf = GPT2LMHeadModel.from_pretrained(tiny_lm).eval()
    shape = sae.shape
    gradient_at = shape.target_hooks[0] if sae.activation.needs_gradients else None
    clean_BTV, clean, g_BTD = hf_run(hf, tokens_BT, gradient_at=gradient_at)

    def rows(by_hook, hooks):
        return torch.cat([by_hook[h][:, 1:].reshape(-1, by_hook[h].shape[-1]) for h in hooks], 1)

    x, y = rows(clean, shape.source_hooks), rows(clean, shape.target_hooks)
    g = None if g_BTD is None else g_BTD[:, 1:].reshape(-1, g_BTD.shape[-1])
    with torch.no_grad():
        y_hat = sae.output(x, code(sae, x, g))
    b, t = tokens_BT.shape
    replaced = {
        hook: torch.cat([clean[hook][:, :1], part.view(b, t - 1, -1)], dim=1)
        for hook, part in shape.split_targets(y_hat).items()
    }
    with torch.no_grad():
        spliced_BTV = hf_run(hf, tokens_BT, replaced)[0]
    log_p = F.log_softmax(clean_BTV[:, 1:-1], dim=-1)
    log_q = F.log_softmax(spliced_BTV[:, 1:-1], dim=-1)
    kl = float((log_p.exp() * (log_p - log_q)).sum(-1).mean())
    nmse = float((y - y_hat).pow(2).sum() / (y - y.mean(0)).pow(2).sum())
    return kl, nmse


def per_token(sae, x, g):
    return sae.encode(x, g)


def over_the_batch(sae, x, g):
    return sae.encode_batch(x)


def first_step(run, name, suffix="kl128"):
    (line,) = read_metrics(state_directory(run, f"{name}-{suffix}") / "metrics.jsonl")
    assert line["step"] == 1 and line["loss/kl"] > 1e-4
    return line


def first_batch(store):
    return next(StoreContexts(ActivationStore.open(store), CONTEXT, seed=0).batches(0, 4))


def test_the_kl_term_is_the_kl_of_the_plain_hf_model_with_the_splice(store, run, tiny_lm):
    """One step, logged before the update: the KL term is KL(clean ‖ spliced) of the HF model
    with the SAE (at the block's output) or the transcoder (in place of the MLP's output, from
    its input) spliced in by hand, the reconstruction term the batch's NMSE, α their ratio and
    the loss ½(R + α·KL) = R."""
    finetune(request(run, tokens=4 * CONTEXT, log_every=1))
    for name in (SAE, TRANSCODER):
        kl, nmse = by_hand(tiny_lm, load_sae(run / "saes" / name), first_batch(store), per_token)
        line = first_step(run, name)
        assert line["loss/kl"] == pytest.approx(kl, rel=1e-4), name
        assert line["loss/nmse"] == pytest.approx(nmse, rel=1e-5), name
        assert line["alpha"] == pytest.approx(nmse / kl, rel=1e-4)
        assert line["loss"] == pytest.approx(line["loss/nmse"], rel=1e-5)


VARIANTS = {  # spec -> how its training codes are computed by hand, the name of its R
    "relu:latents=128,l1=0.1": (per_token, "mse"),
    "gated:latents=128,l1=0.1": (per_token, "mse"),
    "jumprelu:latents=128,l0=0.1": (per_token, "mse"),
    "batchtopk:k=4,latents=128": (over_the_batch, "nmse"),
    "matryoshka:k=4,latents=128,groups=32+96": (over_the_batch, "matryoshka"),
    "gsae:k=4,latents=128": (per_token, "nmse"),
    f"topk:k=4,latents=128,hooks={MLP_OUT}+{HOOK},name=crosscoder": (per_token, "nmse"),
}


@pytest.mark.slow  # seven dictionaries trained, fine-tuned a step and spliced by hand
def test_every_variant_and_a_crosscoder_is_fine_tuned_on_the_kl_of_its_splice(
    store, tmp_path, tiny_lm
):
    """Each variant's own training-time codes (batch selections over the batch's rows, the
    g-SAE's key with the clean gradient), a crosscoder's targets replaced at once: the KL term
    is the HF model's, α = R / KL, and the loss ½(R + α·KL) + the other terms ≥ R."""
    run = train_run(store, tmp_path / "run", tuple(VARIANTS))
    finetune(request(run, tokens=4 * CONTEXT, log_every=1))
    for directory in sorted((run / "saes").iterdir()):
        if "-kl" in directory.name:
            continue
        sae = load_sae(directory)
        spec = next(spec for spec in VARIANTS if parse_spec(spec).resolve(64).name == sae.cfg.name)
        code, reconstruction = VARIANTS[spec]
        kl, _ = by_hand(tiny_lm, sae, first_batch(store), code)
        line = first_step(run, sae.cfg.name)
        r = line[f"loss/{reconstruction}"]
        assert line["loss/kl"] == pytest.approx(kl, rel=1e-4), spec
        assert line["alpha"] == pytest.approx(r / kl, rel=1e-4), spec
        assert line["loss"] >= r * (1 - 1e-6), spec
        assert "loss/auxk" not in line, "AuxK is left out"


# -- what it does ----------------------------------------------------------------------------


def online_rows(run, out):
    evaluate(EvalRequest(runs=(str(run),), out=str(out), device="cpu"))
    report = json.loads((out / "report.json").read_text())
    return {row["name"]: row for row in report["rows"]}


@pytest.mark.slow  # fifteen steps of two dictionaries through the LM, then sae eval of four
def test_finetuning_a_weak_sae_lowers_its_kl_on_held_out_tokens(run, tmp_path):
    tokens = 15 * 8 * CONTEXT
    result = finetune(request(run, tokens=tokens, batch_size=8, lr=1e-2))
    assert result.sources == {f"{SAE}-kl3840": SAE, f"{TRANSCODER}-kl3840": TRANSCODER}
    rows = online_rows(run, tmp_path / "report")
    for name in (SAE, TRANSCODER):
        before, after = rows[name], rows[f"{name}-kl3840"]
        assert after["online"]["kl"] < 0.8 * before["online"]["kl"], name
        assert after["online"]["ce_recovered_zero"] > before["online"]["ce_recovered_zero"]
        assert after["finetune"]["from"] == name and after["finetune"]["tokens"] == tokens
        assert after["finetune"]["terms"] == {
            "reconstruction": "nmse", "kept": [], "left_out": ["auxk"]
        }  # fmt: skip
        assert after["offline"]["l0"] == pytest.approx(4.0), "TopK keeps its sparsity"


# -- resuming --------------------------------------------------------------------------------

RESUMED = dict(tokens=4 * 2 * CONTEXT, batch_size=2, checkpoint_every=2 * 2 * CONTEXT)


class Interrupt:
    """An observer that stops the fine-tune (as Ctrl-C would) once `at` steps are done."""

    def __init__(self, at):
        self.at = at

    def started(self, plan, start_step, contexts_per_step):
        self.start = start_step

    def stepped(self, step):
        if step == self.at:
            raise KeyboardInterrupt

    def logged(self, step, records):
        pass


def outcome(run, name):
    metrics = [
        {key: value for key, value in line.items() if key not in TIMING_KEYS}
        for line in read_metrics(state_directory(run, name) / "metrics.jsonl")
    ]
    return weights(run / "saes" / name), metrics


def assert_same(a, b):
    (weights_a, metrics_a), (weights_b, metrics_b) = a, b
    assert metrics_a == metrics_b
    assert weights_a.keys() == weights_b.keys()
    for key, value in weights_a.items():
        assert torch.equal(value, weights_b[key]), key


def test_an_interrupted_finetune_resumes_to_the_same_bits(trained, tmp_path):
    """Interrupted after step 3 (its last checkpoint at step 2), the same command continues
    from step 2: the same SAE, bit for bit, and the same metrics, as without interruption."""
    reference = shutil.copytree(trained, tmp_path / "reference")
    finetune(request(reference, saes=(SAE,), log_every=1, **RESUMED))
    interrupted = shutil.copytree(trained, tmp_path / "interrupted")
    with pytest.raises(KeyboardInterrupt):
        finetune(request(interrupted, saes=(SAE,), log_every=1, **RESUMED), Interrupt(3))
    assert not (interrupted / "saes" / f"{SAE}-kl256").exists()
    resumed = Interrupt(None)
    finetune(request(interrupted, saes=(SAE,), log_every=1, **RESUMED), resumed)
    assert resumed.start == 2
    assert_same(outcome(interrupted, f"{SAE}-kl256"), outcome(reference, f"{SAE}-kl256"))


@pytest.mark.parametrize("log_every", [1, 10])
def test_a_diverging_finetune_stops_with_its_last_finite_checkpoint(
    trained, tmp_path, monkeypatch, log_every
):
    """A NaN in the SAE from its third step on: the fine-tune stops with one error naming the
    way out, at the step's metric line or, between two (the default of a line every 10 steps),
    at the checkpoint after it; it saves no SAE and keeps the finite checkpoint of step 2."""
    from saekit.base.errors import SaekitError
    from saekit.finetune.objective import Finetuning

    original = Finetuning.step

    def poisoned(self, model, clean, step):
        if step == 2:
            with torch.no_grad():
                self.sae.b_dec[0] = float("nan")
        return original(self, model, clean, step)

    monkeypatch.setattr(Finetuning, "step", poisoned)
    run = shutil.copytree(trained, tmp_path / "run")
    settings = {**RESUMED, "tokens": 6 * 2 * CONTEXT}
    stopped_at = 3 if log_every == 1 else 4
    with pytest.raises(SaekitError, match=f"diverged by step {stopped_at}") as refused:
        finetune(request(run, saes=(SAE,), log_every=log_every, **settings))
    assert "--suffix" in str(refused.value) and "\n" not in str(refused.value)
    assert not (run / "saes" / f"{SAE}-kl384").exists()
    checkpoint = Checkpoints(state_directory(run, f"{SAE}-kl384")).load([f"{SAE}-kl384"])
    assert checkpoint.step == 2 and not checkpoint.complete
    weights = checkpoint.members[f"{SAE}-kl384"]["sae"].values()
    assert all(torch.isfinite(tensor).all() for tensor in weights)


def finetune_args(run):
    return ["finetune", run, "--tokens", RESUMED["tokens"], "--batch-size", 2, "--lr", 3e-3,
            "--checkpoint-every", RESUMED["checkpoint_every"], "--device", "cpu"]  # fmt: skip


def events_left(run, scratch, run_cli):
    """The events (steps and crash-safe files) that running the fine-tune of `run` to its end
    makes from where it stands, counted on a copy of it."""
    with count_events() as events:
        assert run_cli(*finetune_args(shutil.copytree(run, scratch))).exit_code == 0
    return len(events)


@pytest.mark.slow  # kill -9 of `sae finetune` child processes at random points, then resumes
def test_a_finetune_killed_with_kill_9_resumes_to_the_same_bits(trained, tmp_path, run_cli):
    """Killed mid-way, then killed again mid-way through the resumed run (each kill point drawn
    from the events that run has left, so both die on any machine), the third run finishes it:
    the same SAEs, bit for bit, and the same metrics, as an uninterrupted fine-tune."""
    reference = tmp_path / "reference"
    code = "from saekit.cli import main; main(sys.argv[1:])"
    killed, rng = shutil.copytree(trained, tmp_path / "killed"), random.Random(0)
    for trial in range(2):  # kill the first run, then the resumed one, mid-way
        left = events_left(killed, reference if trial == 0 else tmp_path / "scratch", run_cli)
        kill_at = rng.randint(max(1, left // 4), 3 * left // 4)
        command = child_command(kill_at, code, *finetune_args(killed))
        assert subprocess.run(command, capture_output=True).returncode == KILLED, trial
    checkpointed = [
        Checkpoints(state_directory(killed, f"{n}-kl256")).latest() for n in (SAE, TRANSCODER)
    ]
    assert any(checkpointed), "killed after a checkpoint: the rerun resumes from it"
    assert run_cli(*finetune_args(killed)).exit_code == 0
    for name in (SAE, TRANSCODER):
        assert_same(outcome(killed, f"{name}-kl256"), outcome(reference, f"{name}-kl256"))


# -- beside the trained SAEs -----------------------------------------------------------------


def test_finetuned_saes_are_new_saes_of_the_run_beside_the_trained_ones(store, run, run_cli):
    """A fine-tuned SAE loads like any other and says what it came from; the run's training
    can still be resumed (its own SAEs only) and a recipe still finds its run complete;
    re-running the fine-tune saves the same SAE again; a different one into its name is
    refused."""
    dataset = ActivationStore.open(store).spec.identity["dataset"]
    args = ["finetune", run, "--tokens", 2 * CONTEXT, "--batch-size", 2, "--sae", SAE,
            "--dataset", dataset, "--device", "cpu"]  # fmt: skip
    assert run_cli(*args).exit_code == 0
    new = run / "saes" / f"{SAE}-kl64"
    sae = load_sae(new)
    assert sae.cfg.name == f"{SAE}-kl64" and sae.cfg.finetune["from"] == SAE
    assert sae.cfg.finetune["data"]["stores_own_dataset"] is True
    assert sae.cfg.finetune["model"]["name"] == ActivationStore.open(store).spec.identity["model"]
    assert json.loads((new / "exports.json").read_text())["saelens"] == "saelens"
    assert [p.name for p in trained_saes(run)] == [SAE, TRANSCODER]
    assert _complete(run, [SAE, TRANSCODER])

    before = snapshot(new)
    result = run_cli(*args)
    assert result.exit_code == 0 and "already complete" in result.stdout
    assert train_run(store, run, resume=True) == run, "its training resumes (finished already)"
    assert snapshot(new) == before

    assert_one_line_error(run_cli(*args, "--lr", "1e-5"), "holds a different fine-tune", "lr")
    on_the_store = [arg for arg in args if arg not in ("--dataset", dataset)]
    assert_one_line_error(run_cli(*on_the_store), "holds a different fine-tune", "data")
    assert snapshot(new) == before


# -- bad input -------------------------------------------------------------------------------


def test_bad_input_is_one_line_and_writes_nothing(store, trained, corpus, tmp_path, run_cli):
    """A model that is not the store's (another tiny LM of the same shape), a store that names
    no model, an unknown SAE, a cross-layer transcoder, a name the run already uses, numbers out
    of range, a missing run: exit 2, one line, and nothing written."""
    from saekit.demo import build_tiny_lm, generate_documents

    run = shutil.copytree(trained, tmp_path / "run")
    other_lm = build_tiny_lm(
        tmp_path / "other-lm", generate_documents(100, seed=9), vocab_size=300, seed=3
    )
    clt = train_run(store, tmp_path / "clt", ("clt:k=2,latents=16,layers=1,reads=mlp.hook_in",))
    synthetic = tmp_path / "synthetic.zarr"
    write_synthetic_store(
        synthetic, synthetic_spec(2048, holdout_rows=256, hooks={HOOK: HookSpec(d=64)})
    )
    no_model = train_run(synthetic, tmp_path / "no-model", ("topk:k=4,latents=128",))
    other_store = harvest_small_store(
        other_lm, corpus, tmp_path / "other.zarr", hooks=(HOOK, MLP_IN, MLP_OUT), dtype="float32"
    )
    taken = shutil.copytree(trained, tmp_path / "taken")
    shutil.copytree(taken / "saes" / SAE, taken / "saes" / f"{SAE}-kl64")
    before = snapshot(tmp_path)

    def refused(where, *args, fragments):
        base = ["finetune", where, "--tokens", 2 * CONTEXT, "--batch-size", 2, "--device", "cpu"]
        assert_one_line_error(run_cli(*base, *args), *fragments)

    refused(
        run,
        "--model",
        other_lm,
        fragments=("is not the model store", "weights_fingerprint", "tokenizer"),
    )
    refused(no_model, fragments=("names no model", "--model"))
    refused(
        run,
        "--store",
        other_store,
        fragments=("another model than store", "weights_fingerprint", "give the store it was"),
    )
    refused(run, "--sae", "nope", fragments=("has no SAE named nope", SAE, TRANSCODER))
    refused(clt, fragments=("cross-layer transcoder", "--sae"))
    refused(taken, "--sae", SAE, fragments=(f"already holds an SAE named {SAE}-kl64", "--suffix"))
    refused(run, "--tokens", 0, fragments=("--tokens must be positive",))
    refused(run, "--tokens", CONTEXT, fragments=("does not fill one step", "--batch-size"))
    refused(run, "--batch-size", 0, fragments=("--batch-size must be positive",))
    refused(run, "--lr", -1, fragments=("--lr must be positive",))
    refused(run, "--suffix", "a/b", fragments=("--suffix",))
    refused(run, "--dataset", tmp_path / "missing.txt", fragments=("does not exist",))
    refused(tmp_path / "missing", fragments=("is not a directory",))
    assert snapshot(tmp_path) == before
    outside = tmp_path / "outside"
    outside.mkdir()
    linked = shutil.copytree(trained, tmp_path / "linked")
    (linked / "finetunes").symlink_to(outside)
    before_link = snapshot(tmp_path)
    refused(linked, fragments=("is a symbolic link", "finetunes"))
    assert snapshot(tmp_path) == before_link and not any(outside.iterdir())
    assert not (run / "finetunes").exists()


# -- tracking --------------------------------------------------------------------------------


@pytest.mark.slow  # a fine-tune with the LM in the loop, read back from TensorBoard's files
def test_a_finetune_is_tracked_in_tensorboard_as_its_metrics_lines(run, tmp_path, run_cli):
    """--tensorboard DIR: every number of the fine-tune's metrics lines, per SAE, at its step,
    in TensorBoard's own reader; the tracked run is named after the run and the suffix."""
    accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    board = tmp_path / "board"
    args = ["finetune", run, "--tokens", 24 * CONTEXT, "--batch-size", 2, "--device", "cpu"]
    result = run_cli(*args, "--sae", SAE, "--tensorboard", board)
    assert result.exit_code == 0, result.stderr
    events = accumulator.EventAccumulator(
        str(board / f"{run.name}-kl768"), size_guidance={"scalars": 0}
    )
    events.Reload()
    records = read_metrics(state_directory(run, f"{SAE}-kl768") / "metrics.jsonl")
    assert len(records) >= 2
    for record in records:
        for key, value in record.items():
            if key in ("sae", "step") or not isinstance(value, float | int):
                continue
            points = {e.step: e.value for e in events.Scalars(f"{record['sae']}/{key}")}
            assert points[record["step"]] == pytest.approx(value, rel=1e-6), key
