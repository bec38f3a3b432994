"""Live monitoring of running cells: the live curve, health flags, ``mixbench watch``, and the
tracker mirrors (TensorBoard, W&B).

Owns: ``live``, ``health``, ``watch``, ``loggers``.
May import: ``common``, ``engine`` (the logging hook's type), ``measure`` (cost estimates), ``store``.
Never ``report``.
"""
