"""The ARC domain: grids and tasks (``data``), invertible augmentations (``augment``), the official metric
(``scoring``), ``submission.json`` (``submission``) and candidate files (``candidates``).

The bottom of the package: pure functions on numpy grids and atomic file writes. Imports nothing of the package
outside ``arc``.
"""
