"""Evaluation protocols: retrieval metrics (P@1, R-Precision, MAP@R), verification, identification."""
from .metrics import (identification_with_distractors, map_at_r, precision_at_1, r_precision,
                      retrieval_metrics, tpr_at_fpr, verification_accuracy)

__all__ = ["precision_at_1", "r_precision", "map_at_r", "retrieval_metrics", "verification_accuracy",
           "tpr_at_fpr", "identification_with_distractors"]
