"""Small utilities every part may use: atomic file writes, progress bars, the lifeline that
ends a process's children with it, errors as one line, and the names the store holds.

Owns: ``atomic_file``, ``progress``, ``lifeline``, ``errors`` (``one_line``), ``names`` (run and
latency statuses, the headline metric names).
May import: nothing of mixbench (it sits below every other part).
"""
