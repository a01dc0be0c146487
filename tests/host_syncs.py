"""Count, on a CPU, what would make a GPU wait or add in a nondeterministic order.

On CUDA a host sync stalls the launch of every later kernel until the queue has drained: reading
a value from Python (`.item()`, `bool()`, `int()`, `float()`, `.tolist()`) or running an operator
whose output size depends on the data (`nonzero`, boolean-mask indexing, `bincount`, ...). Some
other operators add with atomics on CUDA, in whatever order the threads arrive, so their results
change from run to run (`index_add_`, `scatter_add_`, ...). Neither shows on a CPU, but both can
be seen there: the Python conversions by patching `torch.Tensor`, the operators with a
`TorchDispatchMode` that sees every aten call of this thread (composite operators decomposed).
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten

CONVERSIONS = ("item", "tolist", "__bool__", "__int__", "__float__", "__index__")

# Operators that wait for the GPU: a value read on the host, or an output sized by the data.
SYNCING = {
    aten._local_scalar_dense.default,  # .item() and everything built on it
    aten.nonzero.default,
    aten.nonzero_numpy.default,
    aten.masked_select.default,
    aten.bincount.default,
    aten.unique_consecutive.default,
    aten._unique2.default,
    aten.unique_dim.default,
    aten.equal.default,
    aten.is_nonzero.default,
    aten.segment_reduce.default,  # unless unsafe=True (checked below)
    aten.repeat_interleave.Tensor,  # unless output_size is given (checked below)
}
# Operators whose CUDA kernels accumulate with atomics (torch's list of nondeterministic ops).
ATOMIC = {
    aten.index_add.default,
    aten.index_add_.default,
    aten.scatter_add.default,
    aten.scatter_add_.default,
    aten.scatter_reduce.two,
    aten.scatter_reduce_.two,
    aten.put_.default,
    aten.index_copy.default,
    aten.index_copy_.default,
    aten.embedding_dense_backward.default,
    aten._embedding_bag_backward.default,
    aten.histc.default,
}
INDEXING = {aten.index.Tensor, aten.index_put.default, aten.index_put_.default}
INDEXING |= {aten._index_put_impl_.default}


def _mask_index(args: tuple) -> bool:
    indices = args[1] if len(args) > 1 else ()
    return any(i is not None and i.dtype in (torch.bool, torch.uint8) for i in indices)


class _Recorder(TorchDispatchMode):
    def __init__(self, events: collections.Counter, free: Callable[[torch.Tensor], bool]) -> None:
        super().__init__()
        self.events, self.free = events, free

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in SYNCING and not self._harmless(func, args, kwargs):
            self.events[f"sync: {func}"] += 1
        if func in INDEXING and _mask_index(args):
            self.events[f"sync: boolean mask {func}"] += 1
        if func in ATOMIC and not (func is aten.put_.default and not kwargs.get("accumulate")):
            self.events[f"atomic: {func}"] += 1
        return func(*args, **kwargs)

    def _harmless(self, func, args, kwargs) -> bool:
        if func is aten._local_scalar_dense.default:
            return self.free(args[0])
        if func is aten.segment_reduce.default:
            return kwargs.get("unsafe", False)
        if func is aten.repeat_interleave.Tensor:
            return kwargs.get("output_size") is not None
        return False


@contextmanager
def host_syncs(
    free: Callable[[torch.Tensor], bool] = lambda tensor: False,
) -> Iterator[collections.Counter]:
    """Count host syncs and atomic accumulations of this thread inside the block, by kind.

    `free(tensor)`: whether reading `tensor` is free on every device (it lives on the CPU even
    when training on a GPU, like Adam's step counts).
    """
    events: collections.Counter = collections.Counter()
    thread = threading.get_ident()
    originals = {name: getattr(torch.Tensor, name) for name in CONVERSIONS}

    def counting(name: str, original):
        def conversion(self, *args, **kwargs):
            if threading.get_ident() == thread and not free(self):
                events[f"sync: Tensor.{name}"] += 1
            return original(self, *args, **kwargs)

        return conversion

    for name, original in originals.items():
        setattr(torch.Tensor, name, counting(name, original))
    try:
        with _Recorder(events, free):
            yield events
    finally:
        for name, original in originals.items():
            setattr(torch.Tensor, name, original)
