"""Giving memory back after a failure, so one out-of-memory error does not fail what comes next.

After an exception the tensors its traceback held are only unreachable once the handler is
left, and reference cycles (frames, autograd graphs) wait for the garbage collector; the CUDA
caching allocator then still holds their blocks. ``free_memory`` collects and returns them.
"""

from __future__ import annotations

import gc

import torch


def free_memory(device: torch.device | None = None, collect: bool = False) -> None:
    """Return cached GPU memory; ``collect`` also breaks reference cycles (slow: after errors only).

    ``device`` None means "whatever this process used": the cache is emptied if CUDA is initialised.
    """
    if collect:
        gc.collect()
    on_cuda = device.type == "cuda" if device is not None else torch.cuda.is_initialized()
    if on_cuda:
        torch.cuda.empty_cache()
