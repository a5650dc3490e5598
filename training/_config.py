"""TrainConfig: the one typed description of a training run, with named presets."""
from __future__ import annotations

import dataclasses
import types
from dataclasses import dataclass, field
from typing import Any


@dataclass
class TrainConfig:
    """Everything that decides a training run (recorded in the artifact's meta.training)."""

    model: str = "hybrid1"
    arch_kwargs: dict[str, Any] = field(default_factory=dict)  # create_model kwargs: stride, act, widths, norm...
    # Train with BatchNorm after every convolution and before the embedding layer, and fold it into the
    # weights for the artifact, which keeps the plain architecture (arch_kwargs less norm/head_norm).
    fold_norm: bool = False
    # Start from the embedding network of this model artifact (fine-tuning) instead of random weights:
    # the architecture must be the one trained here; its normalisation statistics are kept. Heads start anew.
    init_from: str | None = None
    # Distil from these model artifacts (better, usually larger models for the same images; several are an
    # ensemble whose cosine similarity is the mean of theirs): beside `loss`, the student matches the teachers'
    # in-batch similarity distributions at `distill_temperature`, weighted by `distill_weight`
    # (training/_distill.py).
    teachers: list[str] = field(default_factory=list)
    # What the teachers embed: "clean" (each training image once, unaugmented, before the first epoch) or
    # "augmented" (every batch as the student sees it: consistent, and one teacher forward pass per step).
    distill_views: str = "clean"
    distill_weight: float = 1.0
    distill_temperature: float = 0.1
    # Soft labels as well (Hinton's knowledge distillation): the student's cross-entropy head learns the teachers'
    # class distributions at this temperature, weighted by this (0: off). Needs teachers with a cross-entropy
    # head for the same classes and a loss with one ("ce", "ce+ms").
    distill_logits_weight: float = 0.0
    distill_logits_temperature: float = 4.0
    embed_dim: int = 256
    loss: str = "ce+ms"
    loss_kwargs: dict[str, Any] = field(default_factory=dict)  # e.g. ce_weight, ms_weight, alpha, beta, epsilon
    epochs: int = 30
    batch_size: int = 128
    m_per_class: int = 8  # class-balanced batches (pml MPerClassSampler) for pair losses
    optimizer: str = "adamw"  # "adam" or "adamw"
    lr: float = 2e-3
    weight_decay: float = 0.02
    schedule: str = "cosine"  # "none", "cosine" (per step, with warmup) or "step"
    warmup_epochs: float = 1.0
    step_size: int = 10  # epochs between x0.1 steps for schedule="step"
    augment: bool = True  # random crop with padding (+ horizontal flip where it makes sense)
    crop_padding: int = 4
    hflip: bool | None = None  # None: on, except for digit datasets (class names 0..9)
    # Extra augmentation, off by default: random rotation by up to `rotate` degrees and scaling by up to
    # +-`scale` (kornia RandomAffine; suits digits), and random erasing of one rectangle with
    # probability `erase` (kornia RandomErasing, i.e. cutout; suits photos and clothing).
    rotate: float = 0.0
    scale: float = 0.0
    erase: float = 0.0
    label_smoothing: float = 0.0
    # Test-time augmentation stored in the artifact and used by validation, the test scores, the indexer and
    # the service (model.embed_tensor): "none" or "hflip" (average with the mirrored image's embedding; twice the
    # compute). None: "hflip" when the run trains with horizontal flips, else "none".
    tta: str | None = None
    # Decay of an exponential moving average of the weights (embedding network and heads), updated every
    # step; 0 turns it off. When on, the average is what is validated, kept as the best epoch and shipped.
    ema: float = 0.0
    # Take this share of the training images' mean embedding off every embedding, folded into the embedding
    # layer's bias (training/_centre.py): cosine similarity then weighs what tells images apart more. None:
    # the share (0, 0.25, 0.5, 0.75 or 1) with the best precision@1 on the validation split; 0 without one.
    centre: float | None = None
    # Held out of train to pick the best epoch by precision@1; 0 keeps the last. A dataset with a validation
    # folder of its own (train/, val/, test/) is validated on that instead, whatever the share (but 0).
    val_fraction: float = 0.1
    grad_clip: float | None = 5.0
    seed: int = 0
    threads: int | None = None  # torch.set_num_threads; None leaves torch's default
    device: str | None = None  # None: cuda when present, else cpu
    amp: bool = True  # mixed precision on CUDA only
    in_chans: int | None = None  # ImageFolder decoding: channels (default 3) and size (default 32)
    image_size: int | None = None
    test_fraction: float = 0.2  # for class-folder trees without train/ and test/
    max_train: int | None = None  # use at most this many training images (seeded, stratified), for quick runs
    max_test: int | None = None  # evaluate on at most this many test images (seeded, stratified)
    eval_ms_batch: int = 64  # evaluation's MS loss: batches of this size with M per class (see docs/training.md)
    eval_ms_m: int = 8

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown TrainConfig fields: {sorted(unknown)}")
        return cls(**d)

    def replace(self, **changes) -> "TrainConfig":
        return dataclasses.replace(self, **changes)

    def validate(self) -> "TrainConfig":  # noqa: C901 (one check a field; pydantic would replace it)
        """Raise ValueError naming the first impossible setting (a value of the wrong type included)."""
        from ._losses import check_loss_options

        self._check_types()
        check_loss_options(self.loss, {"label_smoothing": self.label_smoothing, **self.loss_kwargs}
                           if isinstance(self.loss_kwargs, dict) else self.loss_kwargs)
        if self.embed_dim < 1:
            raise ValueError(f"embed_dim must be at least 1, got {self.embed_dim}")
        if self.in_chans is not None and self.in_chans not in (1, 3):
            raise ValueError(f"in_chans must be 1 (grey) or 3 (colour), got {self.in_chans}")
        if self.image_size is not None and self.image_size < 1:
            raise ValueError(f"image_size must be at least 1, got {self.image_size}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be at least 1, got {self.threads}")
        for what in ("max_train", "max_test"):
            if getattr(self, what) is not None and getattr(self, what) < 1:
                raise ValueError(f"{what} must be at least 1 (leave it out for every image), got {getattr(self, what)}")
        if self.m_per_class < 2:
            raise ValueError(f"m_per_class must be at least 2 (images of a class in a batch), got {self.m_per_class}")
        if not 0 <= self.label_smoothing <= 1:
            raise ValueError(f"label_smoothing must be in [0, 1], got {self.label_smoothing}")
        self._check_device()
        if self.epochs < 1:
            raise ValueError(f"epochs must be at least 1, got {self.epochs}")
        if self.batch_size < 2:
            raise ValueError(f"batch size must be at least 2, got {self.batch_size}")
        if self.optimizer not in ("adam", "adamw"):
            raise ValueError(f"optimizer must be adam or adamw, got {self.optimizer!r}")
        if self.schedule not in ("none", "cosine", "step"):
            raise ValueError(f"schedule must be none, cosine or step, got {self.schedule!r}")
        if not 0 <= self.val_fraction < 1:
            raise ValueError(f"val fraction must be in [0, 1), got {self.val_fraction}")
        if not 0 <= self.rotate <= 180:
            raise ValueError(f"rotate must be in [0, 180] degrees, got {self.rotate}")
        if not 0 <= self.scale < 1:
            raise ValueError(f"scale must be in [0, 1), got {self.scale}")
        if not 0 <= self.erase <= 1:
            raise ValueError(f"erase is a probability in [0, 1], got {self.erase}")
        if not 0 <= self.ema < 1:
            raise ValueError(f"ema is a decay in [0, 1), got {self.ema}")
        from model import TTA_MODES

        if self.tta is not None and self.tta not in TTA_MODES:
            raise ValueError(f"tta must be {' or '.join(TTA_MODES)}, got {self.tta!r}")
        if self.distill_weight < 0:
            raise ValueError(f"distill weight must be at least 0, got {self.distill_weight}")
        if self.distill_temperature <= 0:
            raise ValueError(f"distill temperature must be positive, got {self.distill_temperature}")
        if self.distill_logits_weight < 0:
            raise ValueError(f"distill logits weight must be at least 0, got {self.distill_logits_weight}")
        if self.distill_logits_temperature <= 0:
            raise ValueError(f"distill logits temperature must be positive, got {self.distill_logits_temperature}")
        if self.distill_views not in ("clean", "augmented"):
            raise ValueError(f"distill views must be clean or augmented, got {self.distill_views!r}")
        if self.distill_logits_weight and not self.teachers:
            raise ValueError("distill logits weight needs a teacher (--teacher ARTIFACT)")
        if self.centre is not None and not 0 <= self.centre <= 1:
            raise ValueError(f"centre is a share of the mean embedding in [0, 1], got {self.centre}")
        if self.lr <= 0:
            raise ValueError(f"learning rate must be positive, got {self.lr}")
        return self

    def _check_types(self) -> None:
        """ValueError naming the first field whose value is not of its declared type (a number where a number
        belongs; an int is a float too, a bool is neither)."""
        import math
        import typing

        for name, hint in typing.get_type_hints(type(self)).items():
            value = getattr(self, name)
            kinds = set(typing.get_args(hint)) if typing.get_origin(hint) is types.UnionType else {hint}
            if value is None and type(None) in kinds:
                continue
            kind = next(k for k in kinds if k is not type(None))
            origin = typing.get_origin(kind) or kind
            if origin is float:
                ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
                what = "a number"
            elif origin is int:
                ok, what = isinstance(value, int) and not isinstance(value, bool), "an integer"
            elif origin is bool:
                ok, what = isinstance(value, bool), "true or false"
            elif origin is str:
                ok, what = isinstance(value, str), "a string"
            elif origin is dict:
                ok, what = isinstance(value, dict) and all(isinstance(k, str) for k in value), "a JSON object"
            elif origin is list:
                ok, what = isinstance(value, list) and all(isinstance(v, str) for v in value), "a list of strings"
            else:
                continue
            if not ok:
                raise ValueError(f"{name} must be {what}{' or null' if type(None) in kinds else ''}, got {value!r}")

    def _check_device(self) -> None:
        """ValueError for a device torch does not know, or a GPU this machine does not have."""
        if self.device is None:
            return
        import torch

        try:
            dev = torch.device(self.device)
        except RuntimeError:
            raise ValueError(f"device must be cpu, cuda or cuda:N, got {self.device!r}") from None
        if dev.type == "cpu":
            return
        if dev.type == "cuda":
            count = torch.cuda.device_count() if torch.cuda.is_available() else 0
            if count == 0:
                raise ValueError(f"device {self.device!r}: no CUDA GPU is available here (give cpu, or leave it out)")
            if dev.index is not None and dev.index >= count:
                raise ValueError(f"device {self.device!r}: there {'is' if count == 1 else 'are'} {count} CUDA "
                                 f"GPU{'s' if count != 1 else ''} here (cuda:0 .. cuda:{count - 1})")
            return
        if dev.type == "mps" and torch.backends.mps.is_available():
            return
        raise ValueError(f"device must be cpu, cuda or cuda:N, got {self.device!r}")


PRESETS: dict[str, dict[str, Any]] = {
    # The paper's plain recipe: Adam, lr 1e-3, no augmentation, no schedule, no weight decay, batch 64,
    # 20 epochs (25 on CIFAR-10: pass --epochs 25), the last epoch kept.
    "paper": dict(optimizer="adam", lr=1e-3, weight_decay=0.0, schedule="none", augment=False, batch_size=64,
                  epochs=20, val_fraction=0.0, grad_clip=None, warmup_epochs=0.0),
    # Our recipe: AdamW with weight decay, cosine schedule with a warm-up, crop/flip augmentation,
    # class-balanced batches of 128, best epoch on a 10% validation split.
    "default": dict(),
}


def preset(name: str, **overrides) -> TrainConfig:
    """The preset `name` ("paper" or "default") with `overrides` applied."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}")
    return TrainConfig(**{**PRESETS[name], **overrides})
