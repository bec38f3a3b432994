"""Measurement: the latency protocol, FLOPs accounting, MFU, GPU-hour costs, and the recorded
environment of every run.

Owns: ``latency``, ``flops``, ``mfu``, ``cost``, ``environment``.
May import: ``common``, ``engine``, ``config``, ``store``, ``models``. Never ``report``: a
measurement is stored, and reading it back is the store's job.

Not yet held: ``latency`` still reads its rows through ``report.dashboard.stored_latency``
(issue 35 moves that SQL into the store).
"""
