"""model: pixels to vectors. The involution layer, the model zoo, the artifact format, the Embedder.

Only the image handling (formats, regions, the model's input arrays, thumbnails) is imported with the
package: it needs Pillow and numpy, not torch. Everything else is imported on first use, so the HTTP
clients (`simsearch index upload`, `simsearch search --url`) that only need the list of image file
extensions, and the service answering /healthz while it loads, do not pay torch's second and hundreds of
MiB."""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._crop import Crop, crop_box, draft_size, parse_crop
from ._drafts import thumbnail_draft
from ._earlier import earlier_bundled
from ._formats import (AVIF_READABLE, DAMAGED_ARCHIVE_ERRORS, DRAFT_FORMATS, HEIF_READABLE, IMAGE_EXTENSIONS,
                       IMAGE_HEAD_BYTES, SPLIT_FOLDERS, TarListing, common_folder, file_head, files_under,
                       images_without_ending, list_tar, looks_like_image, member_head, readable_name,
                       unreadable_reason)
from ._preprocess import (DAMAGED_EXIF, DRAFTABLE_MODES, MAX_JPEG_HEADER_SEGMENTS, displayed_size, exif_notes,
                          jpeg_markers, make_thumbnail, open_image, to_model_array)
from ._runtimes import RUNTIMES, missing_onnx_packages

if TYPE_CHECKING:
    from ._artifact import (TTA_MODES, Artifact, ArtifactError, ArtifactMeta, bundled_artifact, bundled_artifacts,
                            find_artifact, load_artifact, read_meta, resave_artifact, save_artifact)
    from ._embedder import Embedder, default_device, embed_tensor
    from ._involution import Involution
    from ._normalize import PixelNormalize
    from ._onnx import INT8_HELD_OUT_FROM, OnnxUnavailable, export_onnx, to_onnx
    from ._params import count_parameters, default_artifact_path
    from ._pddm import PDDM
    from ._registry import (ModelModuleError, create_model, import_models, is_model, list_models, model_source,
                            register_model)

__all__ = [
    "AVIF_READABLE", "Artifact", "ArtifactError", "ArtifactMeta", "Crop", "DAMAGED_ARCHIVE_ERRORS", "DRAFT_FORMATS",
    "Embedder", "SPLIT_FOLDERS", "common_folder", "readable_name",
    "HEIF_READABLE", "IMAGE_EXTENSIONS", "Involution", "ModelModuleError", "OnnxUnavailable", "PDDM",
    "PixelNormalize", "RUNTIMES", "TTA_MODES", "TarListing", "bundled_artifact", "count_parameters", "create_model",
    "crop_box",
    "default_artifact_path", "default_device", "displayed_size", "draft_size", "earlier_bundled", "embed_tensor",
    "export_onnx",
    "files_under", "import_models", "list_tar", "is_model", "list_models", "load_artifact", "make_thumbnail",
    "missing_onnx_packages", "model_source", "parse_crop", "read_meta", "register_model", "resave_artifact",
    "save_artifact", "thumbnail_draft", "to_model_array", "to_onnx", "unreadable_reason", "INT8_HELD_OUT_FROM",
    "DAMAGED_EXIF", "IMAGE_HEAD_BYTES", "exif_notes", "images_without_ending", "looks_like_image", "open_image",
    "file_head", "member_head", "bundled_artifacts", "find_artifact", "DRAFTABLE_MODES", "MAX_JPEG_HEADER_SEGMENTS",
    "jpeg_markers",
]

# The module each torch-side name lives in. The zoo modules come along on the first of them, so that
# create_model and load_artifact always see every registered architecture.
_SOURCES = {
    "_artifact": ("TTA_MODES", "Artifact", "ArtifactError", "ArtifactMeta", "bundled_artifact", "bundled_artifacts",
                  "find_artifact", "load_artifact", "read_meta", "resave_artifact", "save_artifact"),
    "_embedder": ("Embedder", "default_device", "embed_tensor"),
    "_involution": ("Involution",),
    "_normalize": ("PixelNormalize",),
    "_onnx": ("INT8_HELD_OUT_FROM", "OnnxUnavailable", "export_onnx", "to_onnx"),
    "_registry": ("ModelModuleError", "create_model", "import_models", "is_model", "list_models", "model_source",
                  "register_model"),
    "_params": ("count_parameters", "default_artifact_path"),
    "_pddm": ("PDDM",),
}
_ZOO = ("_baselines", "_hybrid")


def __getattr__(name: str) -> Any:
    if not any(name in names for names in _SOURCES.values()):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    for module, names in _SOURCES.items():
        loaded = importlib.import_module(f"{__name__}.{module}")
        globals().update({n: getattr(loaded, n) for n in names})
    for module in _ZOO:
        importlib.import_module(f"{__name__}.{module}")
    return globals()[name]


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
