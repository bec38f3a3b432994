"""Measurement: the latency protocol, FLOPs accounting, MFU, GPU-hour costs, and the recorded
environment of every run.

Owns: ``latency``, ``flops``, ``mfu``, ``cost``, ``environment``.
May import: ``common``, ``engine``, ``config``, ``store``, ``models``. Never ``report``: a
measurement is stored, and reading it back is the store's job.
"""
