"""The training engine: one loop at every world size, and what wraps it.

Owns: ``train`` (the loop and its plan), ``loss``, ``sampler`` (the data order),
``parallel`` (DDP/FSDP, compile, activation checkpointing, the compute dtype),
``distributed`` (the process group), ``resume`` (mid-cell checkpoints), ``device_memory``.
May import: ``common``, ``models``. Never the store, reports, the CLI or the suite schema:
the loop is given its settings and a logging hook, and knows nothing of where results go.
"""
