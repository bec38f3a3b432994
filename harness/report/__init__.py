"""Reporting: the HTML dashboards (Plotly), their live panels, the reading of runs as points
over seeds, and the synthetic tasks' panels.

Owns: ``dashboard``, ``live_panels``, ``seeds``, ``tasks``, ``palette`` (one colour per line, in every panel).
May import: ``common``, ``tasks``, ``measure``, ``monitor`` (health flags), ``store``, ``models``.
"""
