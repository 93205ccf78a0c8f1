"""Pretraining: the stage before Kaggle that makes a model speak ARC in one format profile.

``corpus`` reads Kaggle-format task files, drops what must stay held out (by id and by content) and streams
length-bucketed batches of augmented leave-one-out sequences; ``shapes`` names the model shapes and builds a new
model folder over a profile's reduced vocabulary; ``loop`` trains it (full parameters, AdamW, warmup + cosine,
atomic checkpoints, resume) and records the run, data parallel under ``torchrun`` (``distributed``: the process
group, each rank's slice of a global batch, DDP or FSDP2, one writer); ``synthetic`` generates the curriculum's tasks from ARC-AGI-1
training rules. ``build_submission.py pretrain`` is its command line; the run's joint test-time stage
(``run.joint``) calls ``loop.train_tasks`` on the test tasks' demonstrations.

May import ``arc`` and ``engines``; never ``run`` (which imports it) or ``kaggle``.
"""
