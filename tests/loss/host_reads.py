"""``host_reads()``: record every read of a tensor's value on the host (on a GPU, a host-device sync).

Python-level reads only: the Tensor methods and torch functions below are wrapped for the block, in
every thread (so a Python ``backward`` is seen too). A read inside C++ (an op's own ``item()``) is
not seen; on a GPU, ``torch.cuda.set_sync_debug_mode("error")`` catches those.
"""

from __future__ import annotations

import contextlib
import functools
import sys

import torch

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
