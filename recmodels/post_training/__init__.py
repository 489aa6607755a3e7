"""Post-training of the pretrained policy on logged feedback (docs/design.md §4): one shared loop, one module per method."""
from recmodels.post_training.loop import MethodContext, PostTrainConfig, PostTrainResult, post_train
from recmodels.post_training.registry import METHODS, PostTrainingMethod, get_method

__all__ = ["METHODS", "MethodContext", "PostTrainConfig", "PostTrainResult", "PostTrainingMethod", "get_method",
           "post_train"]
