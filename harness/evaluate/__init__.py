"""Evaluation of a trained model: perplexity and loss by position on held-out blocks, a stored
run scored on another suite's data, and lm-eval tasks.

Owns: ``perplexity``, ``stored`` (``mixbench eval``), ``lm_eval_adapter`` (lm-eval's model
class and ``python -m harness.evaluate.lm_eval_adapter``).
May import: ``common``, ``data``, ``tasks``, ``engine``, ``config``, ``measure``, ``store``, ``models``.
"""
