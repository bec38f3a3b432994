"""Configuration: a suite file validated into a grid of cells, each with its run key, and what
a cell asks of its data.

Owns: ``suite`` (the schema, the grid, run keys), ``launcher`` (the ``launcher:`` section),
``budget`` (the tokens each cell trains on), ``cells`` (a cell's label, store row, resolved
data settings and model spec, for the runner, the launchers and the evaluators alike).
May import: ``common``, ``data``, ``tasks``, ``engine`` (the training plan a budget follows),
``store`` (a cell's row), ``models``.
"""
