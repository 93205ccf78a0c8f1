"""Everything that touches a model: the text format (``format``), TTT examples (``ttt_data``), the LoRA trainer
(``train``), decoding (``decode`` with its vLLM/transformers backends, DFS and isolation), candidate scoring
(``score_candidates``), model preparation and the GPU memory planner (``model_prep``, ``memory``), and the models
the kit builds itself (``tinymodel``, ``realshape``).

May import ``arc``; never ``selection``, ``programs``, ``run`` or ``kaggle``.
"""
