"""model: pixels to vectors. The involution layer, the model zoo, the artifact format, the Embedder."""
from ._artifact import (TTA_MODES, Artifact, ArtifactError, ArtifactMeta, load_artifact, read_meta,
                        resave_artifact, save_artifact)
from ._embedder import Embedder, default_device, embed_tensor
from ._formats import AVIF_READABLE, DRAFT_FORMATS, HEIF_READABLE, IMAGE_EXTENSIONS
from ._involution import Involution
from ._preprocess import to_model_array
from ._registry import create_model, is_model, list_models, register_model
from . import _baselines, _hybrid  # noqa: F401  (registers the zoo)
from ._params import count_parameters, default_artifact_path
from ._pddm import PDDM

__all__ = [
    "AVIF_READABLE", "Artifact", "ArtifactError", "ArtifactMeta", "DRAFT_FORMATS", "Embedder", "HEIF_READABLE",
    "IMAGE_EXTENSIONS", "Involution", "PDDM", "TTA_MODES", "count_parameters",
    "create_model", "default_artifact_path", "default_device", "embed_tensor", "is_model", "list_models",
    "load_artifact", "read_meta", "register_model", "resave_artifact", "save_artifact", "to_model_array",
]
