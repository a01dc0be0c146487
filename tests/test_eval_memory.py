"""`sae eval` online: peak memory per context of a batch stays near the logits of the clean run.

Measured in a child process as the growth of its peak resident memory (VmHWM, reset through
/proc/self/clear_refs) while `online_metrics` runs, with glibc told to return every large block
to the system when it is freed (MALLOC_MMAP_THRESHOLD_), so resident memory follows live tensors.
The LM has a 16384-token vocabulary and 1 small layer: full-vocabulary tensors dominate.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # measures peak memory of an online eval in a child process

CONTEXT, VOCAB = 64, 16384
LOGITS_PER_CONTEXT = CONTEXT * VOCAB * 4  # bytes of one context's float32 logits

CHILD = """
import json, sys, types, torch
torch.set_num_threads(1)
import saekit.evaluate.online as online
import saekit.lm.splice as splice
from saekit.lm.model import load_model
from saekit.train import Shape

splice.CHUNK_TOKENS = 256  # so that the batches below span several chunks
HOOK = "blocks.0.hook_resid_post"

def resident(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) * 1024

model = load_model(sys.argv[1], torch.device("cpu"))
contexts = torch.randint(0, 300, (32, {context}), generator=torch.Generator().manual_seed(0))
identity = types.SimpleNamespace(
    hook=HOOK, label="identity", needs_gradients=False, batch_dependent=False,
    shape=Shape.single(HOOK, 32), reconstruct=lambda x, g: (None, x),
)
peaks = {{}}
for batch in (8, 8, 16):  # the first run warms up
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = resident("VmRSS")
    online.online_metrics(
        model, contexts[:batch], [identity], {{HOOK: torch.zeros(32)}}, batch,
        torch.device("cpu"),
    )
    peaks[batch] = resident("VmHWM") - before
print(json.dumps(peaks))
"""


@pytest.fixture(scope="module")
def wide_vocabulary_lm(tiny_lm, tmp_path_factory):
    """One small layer with 16384 logits, and the tiny LM's tokenizer (its ids are < 300)."""
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast

    path = tmp_path_factory.mktemp("wide") / "model"
    config = GPT2Config(vocab_size=VOCAB, n_layer=1, n_embd=32, n_head=2, n_positions=CONTEXT)
    GPT2LMHeadModel(config).save_pretrained(path)
    GPT2TokenizerFast.from_pretrained(tiny_lm).save_pretrained(path)
    return path


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc")
def test_online_eval_peak_memory_per_context_is_about_two_logit_tensors(wide_vocabulary_lm):
    """Each context of a batch costs its clean logits, kept for the KL, plus their
    log-probabilities inside the clean forward (before: seven such tensors, ~1.2 GB per batch of
    8 at GPT-2's vocabulary); CE and KL of the spliced runs are reduced a few contexts at a time."""
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "HF_HUB_OFFLINE": "1"}
    child = subprocess.run(
        [sys.executable, "-c", CHILD.format(context=CONTEXT), str(wide_vocabulary_lm)],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    peaks = {int(k): v for k, v in json.loads(child.stdout.strip().splitlines()[-1]).items()}
    per_context = (peaks[16] - peaks[8]) / 8
    assert per_context > LOGITS_PER_CONTEXT, "the measurement sees the logits"
    assert per_context < 3 * LOGITS_PER_CONTEXT, f"{per_context / LOGITS_PER_CONTEXT:.1f} logits"
