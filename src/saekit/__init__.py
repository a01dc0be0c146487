"""saekit: harvest LM activations and loss gradients into Zarr stores, train and evaluate SAEs.

The maths of every variant and metric, and which parts are reconstructions of the papers, are in
docs/algorithms.md. Tensor names end in their shape, one capital per dimension (`x_BD` is
[B, D]); each letter has one meaning (docs/algorithms.md §1, "Shape suffixes"):

    B  batch: rows (tokens) of an SAE batch; sequences of an LM batch when T follows
    C  contexts: whole token sequences outside an LM batch
    D  a dictionary's input width: d at a hook (d_in), or its source hooks' together
    E  a dictionary's output width: its target hooks' together (d_out; D for an SAE)
    F  latents (d_sae)
    G  the layers (latent groups) of a cross-layer transcoder
    H  histogram bins
    K  a fixed number kept per row (TopK's k, AuxK's k_aux, a dashboard's kept entries)
    L  a list of chosen latents (a sample or chunk of the F)
    M  Feature Choice capacity ranks
    N  entries of a flat list whose length depends on the data (a sparse pattern's
       (row, latent) entries, a batch's firings, rows gathered by index)
    O  candidate offsets of a Zipf fit
    P  (row, latent) values a dashboard request needs
    Q  contexts a dashboard request asks for
    R  rows of the activation store
    S  slots: the latents a dashboard pass inspects
    T  positions in a context
    U  distinct values of a list (unique)
    V  vocabulary
    W  places in a dashboard context window
    Y  bytes of a packed store row
    Z  head of the density ranks a Zipf law is fitted on
    1  a dimension of size 1, or a one-element tensor
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("saekit")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"
