"""Interchange with Hugging Face: a Hub (or local) checkpoint imported as a run, a finished run
exported as a folder ``transformers`` loads.

Owns: ``hf_io``.
May import: ``common``, ``data``, ``config``, ``engine`` (the backend label), ``measure``, ``store``, ``models``.
"""
