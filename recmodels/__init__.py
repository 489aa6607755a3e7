"""recmodels: the pure Python + PyTorch library behind recalign.

Data loading and reward labeling, the generative policy, the ranker reward model, the
post-training methods and the evaluation protocol. It never imports dagster or mlflow, so every
piece runs (and is tested) without the orchestration layer.
"""
