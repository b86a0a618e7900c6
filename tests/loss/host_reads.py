"""Record every read of a tensor's value on the host (on a GPU, a host-device sync).

``host_reads()``: the Python-level reads: the Tensor methods and torch functions below are wrapped
for the block, in every thread (so a Python ``backward`` is seen too).

``native_reads()``: the reads made by ATen ops, also from inside C++ (a custom op's own
``item()``): the block runs under the profiler, which sees every dispatched op in every thread,
nested ones included. C++ that reads a tensor's memory without an ATen op (``data_ptr``) is not
seen; on a GPU, ``torch.cuda.set_sync_debug_mode("error")`` catches that too.
"""

from __future__ import annotations

import contextlib
import functools
import sys

import torch
from torch.profiler import ProfilerActivity, profile

READS = {
    torch.Tensor: ("item", "tolist", "numpy", "cpu", "nonzero", "argwhere", "masked_select", "unique",
                   "__bool__", "__int__", "__float__", "__index__", "__format__"),
    torch: ("nonzero", "argwhere", "masked_select", "unique", "is_nonzero", "equal", "allclose"),
    torch.linalg: ("cholesky", "inv"),  # they check the result on the host (an error for a singular input)
}


def _spy(owner, name: str, reads: list[str]):
    original = getattr(owner, name)

    @functools.wraps(original)
    def read(*args, **kwargs):
        caller = sys._getframe(1)
        reads.append(f"{getattr(owner, '__name__', owner)}.{name} at {caller.f_code.co_filename}:{caller.f_lineno}")
        return original(*args, **kwargs)

    return read


@contextlib.contextmanager
def host_reads():
    """Within the block, append 'what at file:line' to the yielded list for each read (which still happens)."""
    reads: list[str] = []
    saved = [(owner, name, vars(owner).get(name)) for owner, names in READS.items() for name in names]
    for owner, name, _ in saved:
        setattr(owner, name, _spy(owner, name, reads))
    try:
        yield reads
    finally:
        for owner, name, own in saved:
            if own is None:
                delattr(owner, name)  # inherited (torch.Tensor's from TensorBase): inherit it again
            else:
                setattr(owner, name, own)


# The ATen ops that read a value on the host: item() and bool() end in _local_scalar_dense, the
# others size their output (or answer) from the data.
NATIVE_READS = ("aten::_local_scalar_dense", "aten::nonzero", "aten::masked_select", "aten::unique",
                "aten::_unique", "aten::_unique2", "aten::unique_dim", "aten::unique_consecutive", "aten::equal")


@contextlib.contextmanager
def native_reads():
    """Yield a list, filled when the block ends with 'op (in outer op < ...)' for each native read."""
    reads: list[str] = []
    with profile(activities=[ProfilerActivity.CPU]) as recorded:
        yield reads
    for event in recorded.events():
        if event.name in NATIVE_READS:
            outer, parent = [], event.cpu_parent
            while parent is not None:
                outer.append(parent.name)
                parent = parent.cpu_parent
            reads.append(f"{event.name} (in {' < '.join(outer) or 'Python'})")
