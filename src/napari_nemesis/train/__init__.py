"""Training loops and whole-scan inference (no Qt): pretraining, probing, evaluation, reconstruction.

The CLI and the napari widgets call these same functions; each takes a ``progress`` callable
(event dicts) and a ``cancel`` check, and never prints.
"""

from .evaluate import evaluate, evaluate_reconstruction, format_table
from .events import JsonlLog, check_cancel, emit, fan_out
from .attention import AttentionMaps, SuperpatchAttention, attention_maps
from .inference import InferResult, ReconMetrics, infer_scan, recorded_spacing, write_infer_outputs
from .metrics import MEAN_CONVENTION, presence_metrics
from .patch_level import PatchInferResult, infer_patch_scan, run_patch_probe
from .pretrain import PretrainOptions, learning_rate, pretrain
from .probe import (
    ProbeHead,
    ProbeModel,
    ProbeOptions,
    check_probe_matches,
    encode_features,
    encoder_digest,
    extract_features,
    finetune_items,
    load_probe,
    probe_beside,
    probe_metadata,
    run_probe,
    save_probe,
)
from .scan import (
    PreparedScan,
    ScanReconstruction,
    SuperpatchReconstruction,
    iter_reconstruction,
    prepare_for_model,
    prepare_scan,
    reconstruct_scan,
)

__all__ = [
    "PretrainOptions", "pretrain", "learning_rate",
    "ProbeOptions", "ProbeHead", "ProbeModel", "run_probe", "extract_features", "save_probe", "load_probe",
    "encoder_digest", "check_probe_matches", "probe_metadata", "probe_beside", "encode_features", "finetune_items",
    "recorded_spacing", "MEAN_CONVENTION",
    "evaluate", "evaluate_reconstruction", "format_table",
    "infer_scan", "infer_patch_scan", "PatchInferResult", "run_patch_probe", "write_infer_outputs", "reconstruct_scan", "InferResult", "ReconMetrics",
    "presence_metrics",
    "PreparedScan", "prepare_scan", "prepare_for_model", "iter_reconstruction", "SuperpatchReconstruction",
    "ScanReconstruction", "AttentionMaps", "SuperpatchAttention", "attention_maps",
    "JsonlLog", "emit", "check_cancel", "fan_out",
]
