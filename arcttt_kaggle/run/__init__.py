"""The time-budgeted run: the config tree and presets (``config``), the deadline and cost model (``budget``,
``planning``), the preflight (``preflight``), the joint test-time stage (``joint``: the pretraining loop on every
test task's demonstrations), the scheduler and its GPU workers (``pipeline``, ``worker``) and what a run reports
(``report``, ``report_html``).

May import ``arc``, ``engines``, ``selection``, ``programs`` and ``pretrain``; never ``kaggle``.
"""
