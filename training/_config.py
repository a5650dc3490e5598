"""TrainConfig: the one typed description of a training run, with named presets."""
from __future__ import annotations

import types
import typing
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from model import TTA_MODES

# A JSON number: an int or a float, kept as given (to_dict writes 1 as 1, as the records written before did),
# never a bool, never nan or infinity.
Number = int | float


class ConfigError(ValueError):
    """A setting that cannot be (of a TrainConfig or an ExperimentConfig), said in one line: `field` names it,
    `value` is what was given."""

    def __init__(self, message: str, field: str | None = None, value: Any = None):
        super().__init__(message)
        self.field, self.value = field, value


def _rule(default: Any, says: str, **bounds: Any) -> Any:
    """A field that pydantic holds to `bounds` (ge, gt, le, lt; or to its Literal choices); a value outside
    them is refused as `says`, then the value."""
    return Field(default, description=says, **bounds)


class TrainConfig(BaseModel):
    """Everything that decides a training run (recorded in the artifact's meta.training).

    Made, each value is checked (its type, its range, its choices; pydantic); a bad one is a ConfigError
    naming it. `validate()` then checks what depends on this process: the loss is registered and takes the
    options given, and the device is on this machine (a config read back from a record need not pass that)."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True, validate_default=True, allow_inf_nan=False)

    model: str = "hybrid1"
    arch_kwargs: dict[str, Any] = Field(default_factory=dict)  # create_model kwargs: stride, act, widths, norm...
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
    teachers: list[str] = Field(default_factory=list)
    # What the teachers embed: "clean" (each training image once, unaugmented, before the first epoch) or
    # "augmented" (every batch as the student sees it: consistent, and one teacher forward pass per step).
    distill_views: Literal["clean", "augmented"] = _rule("clean", "distill views must be clean or augmented")
    distill_weight: Number = _rule(1.0, "distill weight must be at least 0", ge=0)
    distill_temperature: Number = _rule(0.1, "distill temperature must be positive", gt=0)
    # Soft labels as well (Hinton's knowledge distillation): the student's cross-entropy head learns the teachers'
    # class distributions at this temperature, weighted by this (0: off). Needs teachers with a cross-entropy
    # head for the same classes and a loss with one ("ce", "ce+ms").
    distill_logits_weight: Number = _rule(0.0, "distill logits weight must be at least 0", ge=0)
    distill_logits_temperature: Number = _rule(4.0, "distill logits temperature must be positive", gt=0)
    embed_dim: int = _rule(256, "embed_dim must be at least 1", ge=1)
    loss: str = "ce+ms"
    loss_kwargs: dict[str, Any] = Field(default_factory=dict)  # e.g. ce_weight, ms_weight, alpha, beta, epsilon
    epochs: int = _rule(30, "epochs must be at least 1", ge=1)
    batch_size: int = _rule(128, "batch size must be at least 2", ge=2)
    # class-balanced batches (pml MPerClassSampler) for pair losses
    m_per_class: int = _rule(8, "m_per_class must be at least 2 (images of a class in a batch)", ge=2)
    optimizer: Literal["adam", "adamw"] = _rule("adamw", "optimizer must be adam or adamw")
    lr: Number = _rule(2e-3, "learning rate must be positive", gt=0)
    weight_decay: Number = _rule(0.02, "weight decay must be at least 0", ge=0)
    # "none", "cosine" (per step, with warmup) or "step"
    schedule: Literal["none", "cosine", "step"] = _rule("cosine", "schedule must be none, cosine or step")
    warmup_epochs: Number = _rule(1.0, "warmup_epochs must be at least 0", ge=0)
    # epochs between x0.1 steps for schedule="step"
    step_size: int = _rule(10, "step_size must be at least 1 (epochs)", ge=1)
    augment: bool = True  # random crop with padding (+ horizontal flip where it makes sense)
    crop_padding: int = _rule(4, "crop_padding must be at least 0 (pixels; 0: no crop)", ge=0)
    hflip: bool | None = None  # None: on, except for digit datasets (class names 0..9)
    # Extra augmentation, off by default: random rotation by up to `rotate` degrees and scaling by up to
    # +-`scale` (kornia RandomAffine; suits digits), and random erasing of one rectangle with
    # probability `erase` (kornia RandomErasing, i.e. cutout; suits photos and clothing).
    rotate: Number = _rule(0.0, "rotate must be in [0, 180] degrees", ge=0, le=180)
    scale: Number = _rule(0.0, "scale must be in [0, 1)", ge=0, lt=1)
    erase: Number = _rule(0.0, "erase is a probability in [0, 1]", ge=0, le=1)
    label_smoothing: Number = _rule(0.0, "label_smoothing must be in [0, 1]", ge=0, le=1)
    # Test-time augmentation stored in the artifact and used by validation, the test scores, the indexer and
    # the service (model.embed_tensor): "none" or "hflip" (average with the mirrored image's embedding; twice the
    # compute). None: "hflip" when the run trains with horizontal flips, else "none".
    tta: Literal[TTA_MODES] | None = _rule(None, f"tta must be {' or '.join(TTA_MODES)}")
    # Decay of an exponential moving average of the weights (embedding network and heads), updated every
    # step; 0 turns it off. When on, the average is what is validated, kept as the best epoch and shipped.
    ema: Number = _rule(0.0, "ema is a decay in [0, 1)", ge=0, lt=1)
    # Take this share of the training images' mean embedding off every embedding, folded into the embedding
    # layer's bias (training/_centre.py): cosine similarity then weighs what tells images apart more. None:
    # the share (0, 0.25, 0.5, 0.75 or 1) with the best precision@1 on the validation split; 0 without one.
    centre: Number | None = _rule(None, "centre is a share of the mean embedding in [0, 1]", ge=0, le=1)
    # Held out of train to pick the best epoch by precision@1; 0 keeps the last. A dataset with a validation
    # folder of its own (train/, val/, test/) is validated on that instead, whatever the share (but 0).
    val_fraction: Number = _rule(0.1, "val fraction must be in [0, 1)", ge=0, lt=1)
    # a negative max norm would turn every gradient around (torch scales them by max_norm / norm)
    grad_clip: Number | None = _rule(5.0, "grad_clip must be at least 0 (0 or null: no clipping)", ge=0)
    seed: int = _rule(0, "seed must be in [0, 2**32 - 1]", ge=0, le=2**32 - 1)   # numpy's range
    # torch.set_num_threads; None leaves torch's default
    threads: int | None = _rule(None, "threads must be at least 1", ge=1)
    device: str | None = None  # None: cuda when present, else cpu
    amp: bool = True  # mixed precision on CUDA only
    # ImageFolder decoding: channels (default 3) and size (default 32)
    in_chans: int | None = _rule(None, "in_chans must be 1 (grey) or 3 (colour)")
    image_size: int | None = _rule(None, "image_size must be at least 1", ge=1)
    # for class-folder trees without train/ and test/
    test_fraction: Number = _rule(0.2, "test_fraction must be in (0, 1)", gt=0, lt=1)
    # use at most this many training images (seeded, stratified), for quick runs
    max_train: int | None = _rule(None, "max_train must be at least 1 (leave it out for every image)", ge=1)
    # evaluate on at most this many test images (seeded, stratified)
    max_test: int | None = _rule(None, "max_test must be at least 1 (leave it out for every image)", ge=1)
    # evaluation's MS loss: batches of this size with M per class (see docs/training.md), two classes at least
    eval_ms_batch: int = _rule(64, "eval_ms_batch must be at least 4", ge=4)
    eval_ms_m: int = _rule(8, "eval_ms_m must be at least 2 (images of a class in a batch)", ge=2)

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise _refusal(exc, values) from None

    @field_validator("in_chans")
    @classmethod
    def _grey_or_colour(cls, value: int | None) -> int | None:
        if value not in (None, 1, 3):
            raise ValueError("in_chans")   # said as the field's rule
        return value

    @model_validator(mode="after")
    def _teachers_for_soft_labels(self) -> "TrainConfig":
        if self.distill_logits_weight and not self.teachers:
            raise ConfigError("distill logits weight needs a teacher (teachers is empty)", "teachers",
                              self.teachers)
        return self

    @model_validator(mode="after")
    def _two_classes_an_ms_batch(self) -> "TrainConfig":
        if self.eval_ms_batch < 2 * self.eval_ms_m:
            raise ConfigError(f"eval_ms_batch {self.eval_ms_batch} must hold two classes of eval_ms_m="
                              f"{self.eval_ms_m} (at least {2 * self.eval_ms_m}): the MS loss needs negative pairs",
                              "eval_ms_batch", self.eval_ms_batch)
        return self

    def to_dict(self) -> dict[str, Any]:
        """Every field, in declaration order, as JSON-ready values (what artifacts and checkpoints record)."""
        return self.model_dump()

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        """The config a to_dict() recorded (fields added since then take their defaults)."""
        return cls(**d)

    def replace(self, **changes: Any) -> "TrainConfig":
        """A copy with `changes`, checked as a new config is."""
        return type(self)(**{**dict(self), **changes})

    @classmethod
    def model_validate(cls, obj: Any, **kwargs: Any) -> "TrainConfig":
        """pydantic's, refused as a new config is: a ConfigError naming the field (not a ValidationError)."""
        try:
            return super().model_validate(obj, **kwargs)
        except ValidationError as exc:
            raise _refusal(exc, dict(obj) if isinstance(obj, dict) else {}) from None

    def model_copy(self, *, update: dict[str, Any] | None = None, deep: bool = False) -> "TrainConfig":
        """A copy; with `update`, checked as replace() checks (pydantic's own takes any value unchecked)."""
        return self.replace(**update) if update else super().model_copy(deep=deep)

    def validate(self) -> "TrainConfig":
        """Raise ValueError for what this process cannot run: a model or a loss it does not know, options the loss
        does not take (a user's loss: one it cannot make), a device it does not have. Returns the config."""
        from ._losses import check_loss_options, is_builtin_loss

        options = {"label_smoothing": self.label_smoothing, **self.loss_kwargs}
        check_loss_options(self.loss, options)
        self._check_model()
        if not is_builtin_loss(self.loss):
            self._check_loss_builds(options)
        self._check_device()
        return self

    def _check_model(self) -> None:
        """ConfigError for a model name no architecture is registered under in this process, naming the nearest."""
        import difflib

        import model as zoo

        if zoo.is_model(self.model):
            return
        near = difflib.get_close_matches(self.model, zoo.list_models(), n=3, cutoff=0.6)
        raise ConfigError(f"unknown model {self.model!r}" + (f" (nearest: {', '.join(near)})" if near else "")
                          + f"; known: {', '.join(zoo.list_models())} (an architecture of your own: register it with "
                          "model.register_model, or import the module that does: model.import_models, or for the "
                          "simsearch command SIMSEARCH_MODEL_MODULES)", "model", self.model)

    def _check_loss_builds(self, options: dict[str, Any]) -> None:
        """ConfigError naming the loss when a user's factory cannot make it with these options (whatever it raises,
        or a result that is no MetricLoss), made once for two classes with torch's random stream left as it was:
        said before any data is read."""
        import torch

        from ._losses import create_loss

        try:
            with torch.random.fork_rng(devices=[]):
                create_loss(self.loss, self.embed_dim, 2, **options)
        except Exception as exc:  # noqa: BLE001  (a user's factory: whatever it raises says why)
            raise ConfigError(f"loss {self.loss!r} cannot be made: {type(exc).__name__}: {exc}", "loss",
                              self.loss) from None

    def _check_device(self) -> None:
        """ConfigError for a device torch does not know, or a GPU this machine does not have."""
        if self.device is None:
            return
        import torch

        unknown = ConfigError(f"device must be cpu, cuda or cuda:N, got {self.device!r}", "device", self.device)
        try:
            dev = torch.device(self.device)
        except RuntimeError:
            raise unknown from None
        if dev.type == "cpu":
            return
        if dev.type == "cuda":
            count = torch.cuda.device_count() if torch.cuda.is_available() else 0
            if count == 0:
                raise ConfigError(f"device {self.device!r}: no CUDA GPU is available here (give cpu, or leave "
                                       "it out)", "device", self.device)
            if dev.index is not None and dev.index >= count:
                raise ConfigError(f"device {self.device!r}: there {'is' if count == 1 else 'are'} {count} CUDA "
                                       f"GPU{'s' if count != 1 else ''} here (cuda:0 .. cuda:{count - 1})",
                                       "device", self.device)
            return
        if dev.type == "mps" and torch.backends.mps.is_available():
            return
        raise unknown


# How a refusal names the kind of value a field takes.
_KINDS = {int: "an integer", bool: "true or false", str: "a string", dict: "a JSON object", list: "a list of strings"}
# pydantic's error types for a value of the right kind outside a field's rule (its bounds, its choices)
_RULE_BROKEN = {"greater_than", "greater_than_equal", "less_than", "less_than_equal", "literal_error", "value_error"}


def _refusal(exc: ValidationError, given: dict[str, Any]) -> ConfigError:
    """pydantic's first complaint about a TrainConfig as one line naming the field and the value given."""
    errors = exc.errors()
    unknown = sorted(str(e["loc"][0]) for e in errors if e["type"] == "extra_forbidden")
    if unknown:
        return ConfigError(f"unknown TrainConfig fields: {unknown}", unknown[0], given[unknown[0]])
    error = errors[0]
    if not error["loc"]:   # a rule between fields, raised as a ConfigError
        return error["ctx"]["error"]
    name = str(error["loc"][0])
    info = TrainConfig.model_fields[name]
    value = given.get(name, info.get_default(call_default_factory=True))
    if info.description and error["type"] in _RULE_BROKEN:
        return ConfigError(f"{info.description}, got {value!r}", name, value)
    union = typing.get_origin(info.annotation) in (typing.Union, types.UnionType)
    arms = set(typing.get_args(info.annotation)) if union else {info.annotation}
    optional = " or null" if type(None) in arms else ""
    kind = "a number" if float in arms else \
        next(_KINDS.get(typing.get_origin(a) or a, "valid") for a in arms if a is not type(None))
    return ConfigError(f"{name} must be {kind}{optional}, got {value!r}", name, value)


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
