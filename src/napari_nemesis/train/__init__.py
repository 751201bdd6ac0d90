"""Training loops and whole-scan inference (no Qt): pretraining, probing, evaluation, reconstruction.

The CLI and the napari widgets call these same functions; each takes a ``progress`` callable
(event dicts) and a ``cancel`` check, and never prints.
"""

from .evaluate import evaluate, evaluate_reconstruction, format_table
from .events import JsonlLog, check_cancel, emit, fan_out
from .inference import InferResult, ReconMetrics, infer_scan, reconstruct_scan, write_infer_outputs
from .metrics import presence_metrics
from .pretrain import PretrainOptions, learning_rate, pretrain
from .probe import ProbeHead, ProbeModel, ProbeOptions, extract_features, load_probe, run_probe, save_probe

__all__ = [
    "PretrainOptions", "pretrain", "learning_rate",
    "ProbeOptions", "ProbeHead", "ProbeModel", "run_probe", "extract_features", "save_probe", "load_probe",
    "evaluate", "evaluate_reconstruction", "format_table",
    "infer_scan", "write_infer_outputs", "reconstruct_scan", "InferResult", "ReconMetrics",
    "presence_metrics",
    "JsonlLog", "emit", "check_cancel", "fan_out",
]
