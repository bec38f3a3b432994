"""Small utilities every part may use: atomic file writes, progress bars, and the lifeline that
ends a process's children with it.

Owns: ``atomic_file``, ``progress``, ``lifeline``.
May import: nothing of mixbench (it sits below every other part).
"""
