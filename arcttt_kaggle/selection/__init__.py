"""From candidates to two attempts: voting (``vote``), product of experts and the program-expert rule
(``select``), spare-compute allocation (``allocate``), and synthetic candidate sets for tests and benchmarks
(``synthetic``). Pure functions on candidates.

May import ``arc``; beside ``engines`` and ``programs``, imports neither.
"""
