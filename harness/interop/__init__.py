"""Interchange with Hugging Face: a Hub (or local) checkpoint imported as a run, a finished run
exported as a folder ``transformers`` loads.

Owns: ``hf_io``.
May import: ``common``, ``data``, ``config``, ``measure``, ``store``, ``models``.

Not yet held: ``hf_io`` still takes ``runner``'s cell helpers (issue 35 moves them to ``config``).
"""
