"""dreamdist3d.recipes: each one loop or one sequence of stages, readable top to bottom, callable from Python.

- learn.py: learn a prompt distribution against a Backbone (`learn(LearnConfig)`)
- lift3d.py: one text-to-3D run (`run_3d(cfg, backbone=None, mode="train"|"test"|"export")`)
- toy_train.py: train the toy world's backbone; toy_demo.py: the toy world end to end; toy_eval.py: its evaluation
  (toy_checks.py: its reader and backbone checks); toy_arms.py: sampling-mode experiments in the toy world

Recipes sit above every component package; only cli/commands/launch import them.
"""
