"""Configuration: a suite file validated into a grid of cells, each with its run key, and what
a cell asks of its data.

Owns: ``suite`` (the schema, the grid, run keys), ``launcher`` (the ``launcher:`` section),
``budget`` (the tokens each cell trains on).
May import: ``common``, ``data``, ``tasks``, ``engine`` (the training plan a budget follows), ``models``.
"""
