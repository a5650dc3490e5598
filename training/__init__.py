"""training: make model artifacts. Dataset readers, losses by name, the training loop, evaluation and
the experiment that regenerates the paper's tables.

    from training import TrainConfig, preset, train, evaluate_artifact, load_dataset
    result = train(preset("default", model="hybrid1", loss="ce+ms", epochs=30), "../shared/data/mnist", "m.safetensors")
"""
from ._faiss_params import keep_faiss_params

keep_faiss_params()   # before any pytorch-metric-learning import (_faiss_params.py says why)

from ._config import PRESETS, ConfigError, TrainConfig, preset
from ._data import Dataset, DatasetError, Split, cache_dir, download_dataset, load_dataset
from ._evaluate import evaluate_artifact, evaluate_embeddings, format_metrics, retrieval_metrics
from ._experiment import ExperimentConfig, run_experiment
from ._losses import MetricLoss, PairLoss, create_loss, list_losses, register_loss
from . import _pddm  # noqa: F401  (registers the "pddm" loss)
from ._files import RunLockedError, check_run, json_nulls, lock_run, unlock_run
from ._trainer import ModelArgumentError, TrainResult, check_processes, train

__all__ = [
    "PRESETS", "ConfigError", "Dataset", "DatasetError", "ExperimentConfig", "MetricLoss", "ModelArgumentError",
    "PairLoss", "RunLockedError", "Split", "TrainConfig", "TrainResult", "cache_dir", "check_processes", "check_run",
    "lock_run", "unlock_run", "json_nulls",
    "create_loss", "download_dataset", "evaluate_artifact", "evaluate_embeddings", "format_metrics",
    "list_losses", "load_dataset", "preset", "register_loss", "retrieval_metrics", "run_experiment", "train",
]
