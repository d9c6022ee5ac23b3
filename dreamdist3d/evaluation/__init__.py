"""Measure generated images (2D sets or 3D turntables) against reference images: `dreamdist3d eval`.

`metrics` (pure functions on feature arrays), `features` (local transformers image encoders, cached),
`report` (report.json / report.md / report.html). Only `metrics` is imported here; it needs numpy alone.
"""

from dreamdist3d.evaluation.metrics import diversity, frechet_distance, kernel_distance, mean_cosine, nearest, prdc

__all__ = ["diversity", "frechet_distance", "kernel_distance", "mean_cosine", "nearest", "prdc"]
