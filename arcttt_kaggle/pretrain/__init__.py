"""Pretraining: the stage before Kaggle that makes a model speak ARC in one format profile.

``corpus`` reads Kaggle-format task files, drops what must stay held out (by id and by content) and streams
length-bucketed batches of augmented leave-one-out sequences; ``shapes`` names the model shapes and builds a new
model folder over a profile's reduced vocabulary; ``loop`` trains it (full parameters, AdamW, warmup + cosine,
atomic checkpoints, resume) and records the run. ``build_submission.py pretrain`` is its command line.

May import ``arc`` and ``engines``; beside ``run``, imports neither it nor ``kaggle``.
"""
