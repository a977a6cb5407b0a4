from grpo_ctrl.data.metrics import exact_match, normalize_answer, vqa_score
from grpo_ctrl.data.synthetic import QUESTION_TYPES, GridVQA, VQASample, vocabulary

__all__ = ["GridVQA", "QUESTION_TYPES", "VQASample", "exact_match", "normalize_answer", "vocabulary", "vqa_score"]
