"""Evaluation of pretrained encoders: the linear probe on frozen features."""

from fmicl_engine.eval.linear_probe import ProbeData, extract_features, fit_and_score, label_subset, linear_probe

__all__ = ["ProbeData", "extract_features", "fit_and_score", "label_subset", "linear_probe"]
