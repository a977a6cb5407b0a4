from grpo_ctrl.data.metrics import (
    METRICS,
    anls,
    exact_match,
    extract_answer,
    get_metric,
    normalize_answer,
    vqa_accuracy,
)
from grpo_ctrl.data.source import SPLITS, DataError, Split, VQASample, VQASource
from grpo_ctrl.data.synthetic import QUESTION_TYPES, GridVQA, vocabulary

__all__ = ["METRICS", "QUESTION_TYPES", "SPLITS", "DataError", "GridVQA", "Split", "VQASample", "VQASource", "anls",
           "exact_match", "extract_answer", "get_metric", "normalize_answer", "vocabulary", "vqa_accuracy"]
