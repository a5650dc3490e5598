"""The training loop: any zoo model, any registered loss, CPU or CUDA (mixed precision there),
seeded, resumable from a per-epoch checkpoint, best epoch kept on a validation split."""
from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from ._centre import can_centre, choose_centre, fold_shift, mean_embedding
from ._config import TrainConfig
from ._data import Dataset, Split, load_dataset, stratified_split
from . import _distributed as dist_
from ._distill import AugmentedViewTeachers, LogitDistillation, SimilarityDistillation, teacher_embeddings
from ._evaluate import _nearest_neighbours, embed_images, evaluate_embeddings, format_metrics, retrieval_metrics
from ._mistakes import confident_mistakes
from ._files import check_run, json_nulls, lock_run, unlock_run, write_whole
from ._losses import MetricLoss, create_loss


@dataclass
class TrainResult:
    """What a run produced: the artifact path, its test metrics and the per-epoch history."""

    artifact: Path
    metrics: dict[str, Any]
    history: list[dict[str, Any]]
    metrics_path: Path


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


# The smallest batch a pair loss learns from: two classes of two images (a positive and a negative pair).
_SMALLEST_PAIR_BATCH = 4


def _batch_plan(cfg: TrainConfig, num_classes: int, needs_pairs: bool) -> tuple[int, int]:
    """(batch_size, m_per_class) for class-balanced batches; m=0 means plain shuffling. `num_classes`: the classes
    the training split holds (a class only test/ has cannot fill a batch: pml's sampler refuses the plan).
    A batch of a pair loss holds two classes at least (one class has no negative pair: the loss is 0 and nothing is
    learnt): m is lowered to half the batch when the batch holds fewer than two of m; a batch below 4 is refused
    (ValueError naming the smallest that works)."""
    if not needs_pairs:
        return cfg.batch_size, 0
    _check_pair_batch(cfg, needs_pairs)
    m = min(cfg.m_per_class, cfg.batch_size // 2)   # two classes a batch at least (_pair_batch_note says so)
    if m * num_classes < cfg.batch_size:  # too few classes to fill a batch with m of each: raise m
        m = max(2, cfg.batch_size // num_classes)
    # whole classes of m, and no more of them than the split has (pml's sampler refuses m * classes < batch):
    # 15 classes at batch 128 and m 8 is 120 = 15 x 8, not 128
    return max(m, min((cfg.batch_size // m) * m, m * num_classes)), m


def _check_pair_batch(cfg: TrainConfig, needs_pairs: bool | None = None) -> None:
    """ValueError when the batch of a pair loss cannot hold two classes of two images. `needs_pairs` None: asked of
    cfg.loss (built for two classes), so that the run is refused before its data is read."""
    if cfg.batch_size >= _SMALLEST_PAIR_BATCH:
        return
    if needs_pairs is None:
        needs_pairs = create_loss(cfg.loss, cfg.embed_dim, 2,
                                  **{"label_smoothing": cfg.label_smoothing, **cfg.loss_kwargs}).needs_pairs
    if needs_pairs:
        raise ValueError(f"batch size {cfg.batch_size} cannot hold two classes of two images, and loss {cfg.loss} "
                         f"learns from pairs of images of different classes: give a batch size of "
                         f"{_SMALLEST_PAIR_BATCH} or more")


def _pair_batch_note(cfg: TrainConfig, m: int) -> str | None:
    """A line saying that m_per_class was lowered so that a batch holds two classes (_batch_plan), or None."""
    if not m or cfg.batch_size // cfg.m_per_class >= 2:
        return None
    return (f"batch size {cfg.batch_size} would hold one class of m_per_class={cfg.m_per_class}, and loss {cfg.loss} "
            f"learns from pairs of images of different classes: {m} images of each class instead, "
            f"{cfg.batch_size // m} classes a batch (a batch size of {2 * cfg.m_per_class} or more keeps "
            f"m_per_class={cfg.m_per_class})")


def _classes_in(split: Split) -> int:
    """How many classes have images in `split`."""
    return int(torch.unique(split.labels).numel())


def _trains_with_flips(cfg: TrainConfig, ds: Dataset) -> bool:
    hflip = cfg.hflip if cfg.hflip is not None else ds.class_names != [str(i) for i in range(10)]
    return cfg.augment and hflip


def _augmenter(cfg: TrainConfig, ds: Dataset) -> nn.Module | None:
    """The random augmentation of a training batch: float (N, C, S, S) in [0, 1] in, the same out, every
    image drawn on its own. kornia's batched augmentations run on the training device in a few kernels per
    batch; torchvision's per-image transforms cost about 0.2 ms an image on the CPU, slower than training
    Hybrid-1 itself on a GPU. Their parameters are torchvision's (RandomErasing's scale and ratio).
    The crop is kornia's exact slice per image: its batched-warp mode measured no faster on an H200."""
    import kornia.augmentation as K

    if not cfg.augment:
        return None
    size = (ds.image_size, ds.image_size)
    steps: list[nn.Module] = []
    if cfg.crop_padding > 0:
        steps.append(K.RandomCrop(size, padding=cfg.crop_padding, padding_mode="reflect"))
    if _trains_with_flips(cfg, ds):
        steps.append(K.RandomHorizontalFlip())
    if cfg.rotate or cfg.scale:
        steps.append(K.RandomAffine(degrees=cfg.rotate, scale=(1 - cfg.scale, 1 + cfg.scale) if cfg.scale else None,
                                    padding_mode="zeros", p=1.0))  # kornia's default p is 0.5
    if cfg.erase:
        steps.append(K.RandomErasing(p=cfg.erase, scale=(0.02, 0.33), ratio=(0.3, 3.3), value=0.0))
    return nn.Sequential(*steps) if steps else None


def _resident(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """`t` moved to the training device once, when it takes under a quarter of the GPU's free memory
    (CIFAR-10's training images are 150 MB of uint8): then no batch is copied. Else it stays where it is and
    each batch is copied, as for a large ImageFolder on a small GPU."""
    if device.type != "cuda":
        return t
    free, _ = torch.cuda.mem_get_info(device)
    return t.to(device) if t.numel() * t.element_size() < free // 4 else t


def _init_from(net: nn.Module, cfg: TrainConfig, in_chans: int, image_size: int) -> tuple[list, list, str]:
    """Load the embedding weights of artifact cfg.init_from into `net`; returns the artifact's normalisation
    (mean, std), which the weights were trained with, and its model id. Raises ValueError naming what differs."""
    import model as zoo

    try:
        art = zoo.load_artifact(cfg.init_from)
    except zoo.ArtifactError as exc:
        raise ValueError(f"init_from: {exc}") from None
    meta = art.meta
    theirs = (meta.arch, meta.in_chans, meta.image_size, meta.embed_dim)
    ours = (cfg.model, in_chans, image_size, cfg.embed_dim)
    if theirs != ours:
        raise ValueError(f"init_from {cfg.init_from}: it is {meta.arch} for {meta.in_chans}x{meta.image_size}x"
                         f"{meta.image_size} images with {meta.embed_dim}-d embeddings; this run trains {cfg.model} "
                         f"for {in_chans}x{image_size}x{image_size} with {cfg.embed_dim}-d")
    # A plain model (the shipped ones) into the same one with BatchNorms (fold_norm, norm=true): the layers
    # behind them sit at other places, so they are copied layer by layer, each BatchNorm starting as the identity
    # (what the model computes is unchanged in eval mode: the first validation measures the start as it is).
    plain_into_normed = (callable(getattr(net, "load_plain", None)) and type(art.model) is type(net)
                         and not _has_norm(art.model) and _has_norm(net))
    if plain_into_normed:
        try:
            net.load_plain(art.model)
        except ValueError as exc:
            raise ValueError(f"init_from {cfg.init_from}: {exc}") from None
        return list(meta.mean), list(meta.std), art.model_id
    # Otherwise by name; BatchNorms this run adds that the artifact lacks start fresh, every other weight must be there.
    norm_keys = {f"{name}.{k}" for name, mod in net.named_modules() if isinstance(mod, _BATCH_NORMS)
                 for k in mod.state_dict()}
    try:
        missing, unexpected = net.load_state_dict(art.model.state_dict(), strict=False)
    except RuntimeError as exc:  # same names, other shapes (widths, kernel size)
        raise ValueError(f"init_from {cfg.init_from}: its weights do not fit {cfg.model} with "
                         f"{cfg.arch_kwargs or 'default arguments'}{' and fold_norm' if cfg.fold_norm else ''}: "
                         f"{str(exc).splitlines()[-1].strip()}") from None
    if unexpected or set(missing) - norm_keys:
        raise ValueError(f"init_from {cfg.init_from}: its architecture ({meta.arch_kwargs or 'default arguments'}) "
                         f"is not the one trained here ({cfg.arch_kwargs or 'default arguments'}): "
                         f"missing {sorted(set(missing) - norm_keys)[:4]}, unexpected {sorted(unexpected)[:4]}")
    return list(meta.mean), list(meta.std), art.model_id


def _has_norm(net: nn.Module) -> bool:
    config = getattr(net, "config", {})
    return bool(config.get("norm") or config.get("head_norm"))


def _checkpoint_path(out: Path) -> Path:
    return out.with_name(out.name + ".ckpt")


def _lr_lambda(cfg: TrainConfig, steps_per_epoch: int) -> Callable[[int], float]:
    total = cfg.epochs * steps_per_epoch
    warm = int(cfg.warmup_epochs * steps_per_epoch)

    def f(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        if cfg.schedule == "cosine":
            p = (step - warm) / max(1, total - warm)
            return 0.5 * (1 + math.cos(math.pi * min(1.0, p)))
        if cfg.schedule == "step":
            return 0.1 ** ((step // steps_per_epoch) // cfg.step_size)
        return 1.0
    return f


def run_splits(cfg: TrainConfig, ds: Dataset) -> tuple[Split, Split | None, Split]:
    """The (train, validation or None, test) splits a run with `cfg` uses on `ds`: seeded and stratified, so the
    same configuration always gets the same images (`max_train`, `max_test`, then `val_fraction` of train, or
    the dataset's own validation split when it has one)."""
    train_split = ds.train
    if cfg.max_train and cfg.max_train < len(train_split):
        keep, _ = stratified_split(train_split.labels, 1 - cfg.max_train / len(train_split), cfg.seed)
        train_split = train_split.subset(keep)
    test_split = ds.test
    if cfg.max_test and cfg.max_test < len(test_split):
        keep, _ = stratified_split(test_split.labels, 1 - cfg.max_test / len(test_split), cfg.seed)
        test_split = test_split.subset(keep)
    val_split: Split | None = None
    if cfg.val_fraction > 0 and ds.val is not None:   # the dataset's own (val/ beside train/ and test/)
        if _measures_precision(ds.val.labels):
            val_split = ds.val
    elif cfg.val_fraction > 0:
        tr_idx, val_idx = stratified_split(train_split.labels, cfg.val_fraction, cfg.seed)
        if _measures_precision(train_split.labels[val_idx]):
            train_split, val_split = train_split.subset(tr_idx), train_split.subset(val_idx)
    return train_split, val_split, test_split


def _more_than_asked(cfg: TrainConfig, ds: Dataset, train_split: Split, val_split: Split | None,
                     test_split: Split) -> list[str]:
    """Lines saying where max_train or max_test kept more images than asked (run_splits): a stratified subset keeps
    every class, at least 2 images of one with 4 or more and 1 of a smaller one (stratified_split)."""
    kept_train = len(train_split) + (len(val_split) if val_split is not None and val_split is not ds.val else 0)
    lines = []
    for flag, cap, kept, whole in (("--max-train", cfg.max_train, kept_train, ds.train),
                                   ("--max-test", cfg.max_test, len(test_split), ds.test)):
        if not cap or kept <= cap:
            continue
        counts = [n for n in torch.bincount(whole.labels).tolist() if n]
        two = sum(n >= 4 for n in counts)
        one = len(counts) - two
        if two and one:
            floor = (f"2 images of each class with 4 or more ({two} class{'es' if two > 1 else ''}) and 1 of each "
                     f"smaller one ({one} class{'es' if one > 1 else ''})")
        else:
            floor = f"{2 if two else 1} image{'s' if two else ''} of each of the {len(counts)} classes"
        what = "training" if flag == "--max-train" else "test"
        lines.append(f"{flag} {cap} kept {kept} {what} images, not {cap}: a stratified subset keeps every class, "
                     f"at least {floor}")
    return lines


def _small_classes(train_split: Split, class_names: list[str], m: int, asked: int | None = None) -> str | None:
    """A line naming the classes with fewer training images than the class-balanced sampler's `m` per class
    (their images repeat within a batch) and those with none, or None when there are none (or no sampler).
    `asked`: the configuration's m_per_class, named where the batch plan took another m (_batch_plan)."""
    if not m:
        return None
    counts = torch.bincount(train_split.labels, minlength=len(class_names)).tolist()
    few = sorted((n, c) for c, n in enumerate(counts) if 0 < n < m)
    none = [class_names[c] for c, n in enumerate(counts) if n == 0]
    parts = []
    if few:
        shown = ", ".join(f"{class_names[c]} {n}" for n, c in few[:5])
        of = f"than m_per_class={m}" if asked in (None, m) else \
            f"than the {m} of each class a batch takes (m_per_class={asked}, {'raised' if m > asked else 'lowered'} " \
            "to fit the batch)"
        parts.append(f"{len(few)} class{'es have' if len(few) != 1 else ' has'} fewer training images {of}, "
                     f"so their images repeat within a batch (smallest: {shown}"
                     f"{', ...' if len(few) > 5 else ''})")
    if none:
        parts.append(f"{len(none)} class{'es have' if len(none) != 1 else ' has'} no training image "
                     f"({', '.join(none[:5])}{', ...' if len(none) > 5 else ''})")
    return "; ".join(parts) if parts else None


def _measures_precision(labels: torch.Tensor) -> bool:
    """Whether a validation split of these labels can measure precision@1: it needs two images of some class
    (without, no split is made)."""
    return len(labels) > 0 and int(torch.bincount(labels).max()) >= 2


def _centre(net: nn.Module, ce_head: dict | None, share: float | None, train_split: Split, val_split: Split | None,
            mean, std, device: torch.device, tta: str, seed: int,
            log: Callable[[str], None]) -> tuple[dict | None, dict]:
    """Take `share` (None: the best on the validation split) of the training images' mean embedding off `net`'s
    embeddings (training/_centre.py). Returns the CE head's state moved to match, and what meta.training records."""
    shift = mean_embedding(net, train_split.images, mean, std, device, tta, seed=seed)
    record: dict[str, Any] = {}
    if share is None:
        val_emb = embed_images(net, val_split.images, mean, std, device, tta=tta)
        share, record["centre_val_precision_at_1"] = choose_centre(val_emb, val_split.labels, shift)
        log("validation precision@1 by share of the mean embedding taken off: " + ", ".join(
            f"{a} {p:.4f}" for a, p in record["centre_val_precision_at_1"].items()))
    record["centre"] = share
    log(f"embeddings centred by {share:g} of the training images' mean embedding")
    return fold_shift(net, share * shift, ce_head), record


def train(cfg: TrainConfig, data: str | os.PathLike | Dataset, out: str | os.PathLike, *, name: str | None = None,
          resume: bool = False, progress: bool = True, log: Callable[[str], None] = print,
          stop_after: int | None = None) -> TrainResult | None:
    """Train `cfg.model` with `cfg.loss` on `data` and write the artifact to `out` (plus `out`.metrics.json
    and a resumable checkpoint `out`.ckpt, removed when the run completes).

    `data` is a path that load_dataset reads (or an already loaded Dataset). `stop_after` ends this session
    after that many epochs, leaving the checkpoint for a later `resume=True` (returns None then).

    Started by torchrun (WORLD_SIZE > 1), each process trains on its share of every batch
    (training/_distributed.py); the main process alone logs, validates, checkpoints and writes the artifact,
    and the others return None.
    """
    cfg.validate()
    _check_pair_batch(cfg)
    check_run(out, stop_after)
    # one run at a time writes `out` (torchrun's processes: the command that started them holds the lock)
    lock = lock_run(out) if int(os.environ.get("WORLD_SIZE", "1")) == 1 else None
    try:
        world, device_name = dist_.join(cfg.device)
        try:
            return _train(cfg, data, Path(out), name, resume, progress, log, stop_after, world, device_name)
        finally:
            dist_.leave(world)
    finally:
        if lock is not None:
            unlock_run(out, lock)


def _check_dataset(ds: Dataset) -> None:
    """ValueError naming what does not fit in a Dataset made in Python: images other than uint8 (N, C, S, S) pixels
    0..255 in 1 or 3 channels (floats in [0, 1] would be divided by 255 again), non-square images (the artifact
    records one size), labels that are not integer class ids 0..len(class_names)-1, one per image."""
    for part in ("train", "val", "test"):
        split = getattr(ds, part)
        if split is None:
            continue
        im, lab = split.images, split.labels
        said = f"dataset {ds.name!r}: {part} images"
        if not isinstance(im, torch.Tensor) or im.dtype != torch.uint8 or im.dim() != 4:
            kind = f"{im.dtype} {tuple(im.shape)}" if isinstance(im, torch.Tensor) else type(im).__name__
            hint = "; floats in [0, 1]: (images * 255).round().to(torch.uint8)" \
                if isinstance(im, torch.Tensor) and im.is_floating_point() else ""
            raise ValueError(f"{said} are {kind}, expected uint8 (N, C, S, S) pixels 0..255{hint}")
        if im.shape[-1] != im.shape[-2] or im.shape[1] not in (1, 3):
            raise ValueError(f"{said} of shape {tuple(im.shape)}: expected 1 or 3 channels and square images (the "
                             "artifact records one image size)")
        if not isinstance(lab, torch.Tensor) or lab.dim() != 1 or len(lab) != len(im) or \
                lab.is_floating_point() or lab.is_complex() or lab.dtype == torch.bool:
            raise ValueError(f"dataset {ds.name!r}: {part} labels must be integer class ids, one per image")
        if len(lab) and (int(lab.min()) < 0 or int(lab.max()) >= ds.num_classes):
            raise ValueError(f"dataset {ds.name!r}: {part} labels run from {int(lab.min())} to {int(lab.max())}, but "
                             f"there are {ds.num_classes} class_names: labels are ids 0..{ds.num_classes - 1}")


def _check_shares(batch_size: int, m: int, processes: int) -> None:
    if batch_size % processes:
        fits = [n for n in range(2, min(batch_size, 64) + 1) if batch_size % n == 0]
        raise ValueError(f"a batch of {batch_size}{f' ({batch_size // m} classes x {m})' if m else ''} does not "
                         f"split into {processes} equal shares, one for each process: use {', '.join(map(str, fits))} "
                         f"processes, or another batch size")


def check_processes(cfg: TrainConfig, data: str | os.PathLike, processes: int, progress: bool = True) -> None:
    """Before starting `processes` training processes (torchrun): ValueError (DatasetError for the data) when the
    run's batch cannot be shared among them equally, or the model cannot be built for the data. Reads the
    dataset, which is then cached for the processes (`progress`: a bar while a large one is decoded)."""
    cfg.validate()
    ds = load_dataset(data, in_chans=cfg.in_chans, image_size=cfg.image_size, test_fraction=cfg.test_fraction,
                      progress=progress)
    check_image_size(cfg, ds)
    loss_fn = create_loss(cfg.loss, cfg.embed_dim, ds.num_classes,
                          **{"label_smoothing": cfg.label_smoothing, **cfg.loss_kwargs})
    batch_size, m = _batch_plan(cfg, _classes_in(run_splits(cfg, ds)[0]), loss_fn.needs_pairs)
    _check_shares(batch_size, m, processes)
    _build(cfg, ds.in_chans, ds.image_size)


class ModelArgumentError(ValueError):
    """A model builder argument (`arch_kwargs`) the model cannot be built with: `key`, `value`, the `model`, the
    builder's `reason`, and the builder's `default` for it when the model reports one (else None)."""

    def __init__(self, model: str, key: str, value: Any, reason: str, default: Any = None):
        self.model, self.key, self.value, self.reason, self.default = model, key, value, reason, default
        hint = f"; its default is {list(default) if isinstance(default, tuple) else default!r}" \
            if default is not None else ""
        super().__init__(f"bad model argument {key}={value!r}: {model} cannot be built with it ({reason}){hint}")


def _culprit(cfg: TrainConfig, in_chans: int) -> ModelArgumentError | None:
    """The first of `cfg.arch_kwargs` that the model cannot be built with on its own, as a ModelArgumentError,
    or None when each builds alone (the arguments fail only together)."""
    import model as zoo

    for key, value in cfg.arch_kwargs.items():
        try:
            zoo.create_model(cfg.model, in_chans=in_chans, embed_dim=cfg.embed_dim, **{key: value})
        except Exception as exc:  # noqa: BLE001  (a builder's own code: whatever it raises names the problem)
            try:
                default = getattr(zoo.create_model(cfg.model, in_chans=in_chans, embed_dim=cfg.embed_dim),
                                  "config", {}).get(key)
            except Exception:  # noqa: BLE001
                default = None
            first = str(exc).splitlines()[0] if str(exc) else ""
            return ModelArgumentError(cfg.model, key, value, f"{type(exc).__name__}: {first}".rstrip(": "),
                                      default)
    return None


def check_image_size(cfg: TrainConfig, ds: Dataset) -> None:
    """ValueError naming `cfg.image_size` when the data was not decoded to it: IDX (MNIST, Fashion-MNIST) and
    CIFAR-10 batches keep their own size (image_size applies to ImageFolder data), and a size asked for must
    not be passed over in silence."""
    if cfg.image_size is not None and cfg.image_size != ds.image_size:
        kind = {"idx": "MNIST-style IDX", "cifar-batches": "CIFAR-10 batch"}.get(ds.layout, ds.layout)
        raise ValueError(f"image_size {cfg.image_size}: {ds.source} is {kind} data of {ds.image_size}x"
                         f"{ds.image_size} images, which are not resized (image_size applies to ImageFolder "
                         f"data); leave it out or give {ds.image_size}")


def _build(cfg: TrainConfig, in_chans: int, image_size: int) -> nn.Module:
    """The network `cfg` trains, built and tried on two blank images, so that arguments the builder does not take,
    or take but cannot build with (stride 0), or an image size too small for it, stop the run here, naming them
    (ValueError)."""
    import model as zoo

    build_kwargs = {"norm": True, "head_norm": True, **cfg.arch_kwargs} if cfg.fold_norm else cfg.arch_kwargs
    what = f"{cfg.model} with {cfg.arch_kwargs or 'default arguments'}"
    cannot_fold = ValueError(f"fold_norm needs a model that can fold its BatchNorms (the hybrid/cnn/inn family); "
                             f"{cfg.model!r} cannot")
    try:
        net = zoo.create_model(cfg.model, in_chans=in_chans, embed_dim=cfg.embed_dim, **build_kwargs)
    except TypeError as exc:  # an argument the builder does not take, or one of the wrong kind
        if cfg.fold_norm:
            try:
                plain = zoo.create_model(cfg.model, in_chans=in_chans, embed_dim=cfg.embed_dim, **cfg.arch_kwargs)
            except (TypeError, ValueError):
                plain = None
            if plain is not None and not callable(getattr(plain, "fused", None)):
                raise cannot_fold from None
        raise _culprit(cfg, in_chans) or ValueError(f"bad model arguments {cfg.arch_kwargs}: {exc}") from None
    except ValueError as exc:
        raise _culprit(cfg, in_chans) or ValueError(f"bad model arguments {cfg.arch_kwargs}: {exc}") from None
    if not isinstance(net, nn.Module):
        raise ValueError(f"{what}: its builder returned {type(net).__name__}, not a torch nn.Module")
    if cfg.fold_norm and not callable(getattr(net, "fused", None)):
        raise cannot_fold
    net.eval()
    try:
        with torch.no_grad():
            out = net(torch.zeros(2, in_chans, image_size, image_size))
    except (RuntimeError, ValueError, ZeroDivisionError) as exc:
        raise ValueError(f"{what} cannot embed {in_chans}x{image_size}x{image_size} images: "
                         f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
    if shape != (2, cfg.embed_dim):
        raise ValueError(f"{what} embeds 2 images of {in_chans}x{image_size}x{image_size} as {shape}, not "
                         f"(2, {cfg.embed_dim}): a builder must return a network whose output is (N, embed_dim) for "
                         f"the embed_dim it is given")
    return net.train()


@dataclass
class _Run:
    """What every step of one run reads: the configuration, the data and the splits it uses, the network and the
    loss being trained, the normalisation statistics, and where (device, processes) and how it reports."""

    cfg: TrainConfig
    ds: Dataset
    train_split: Split
    val_split: Split | None
    test_split: Split
    net: nn.Module
    loss_fn: MetricLoss
    mean: list[float]
    std: list[float]
    init_id: str | None   # the model id of the artifact the weights started from (init_from)
    centrable: bool
    device: torch.device
    world: dist_.World | None
    progress: bool
    log: Callable[[str], None]

    @property
    def main(self) -> bool:
        """This process validates, checkpoints and writes the artifact (the only one without torchrun)."""
        return self.world is None or self.world.main

    @property
    def use_amp(self) -> bool:
        return self.cfg.amp and self.device.type == "cuda"

    @functools.cached_property
    def data_identity(self) -> dict[str, Any]:
        """What the checkpoint records of the data the run trains on (_data_identity), taken once."""
        return _data_identity(self.ds, self.train_split, self.val_split)


def _prepare(cfg: TrainConfig, data, world: dist_.World | None, device: torch.device, progress: bool,
             log: Callable[[str], None]) -> _Run:
    """Read the data, draw the run's splits, build the network (or start it from cfg.init_from), take the
    normalisation statistics and make the loss: the seeded start of every run."""
    main = world is None or world.main
    if isinstance(data, Dataset):
        _check_dataset(data)
    elif not isinstance(data, (str, os.PathLike)):
        raise TypeError(f"data: a path load_dataset reads, or a training.Dataset of uint8 image tensors; got "
                        f"{type(data).__name__} (a torch Dataset: stack its images as uint8 (N, C, S, S) and its "
                        f"labels into training.Split(images, labels))")
    if not isinstance(data, Dataset) and not main:
        dist_.barrier(world)  # the main process decodes and caches the data first; the others read the cache
    ds = data if isinstance(data, Dataset) else load_dataset(
        data, in_chans=cfg.in_chans, image_size=cfg.image_size, test_fraction=cfg.test_fraction, progress=progress)
    if not isinstance(data, Dataset) and main:
        dist_.barrier(world)
    check_image_size(cfg, ds)
    for line in ds.notes() if main else []:
        log(line)
    _seed_all(cfg.seed)
    train_split, val_split, test_split = run_splits(cfg, ds)
    for line in _more_than_asked(cfg, ds, train_split, val_split, test_split) if main else []:
        log(line)

    net = _build(cfg, ds.in_chans, ds.image_size).to(device)
    # Normalisation statistics (stored in the artifact, used by the Embedder): those the starting
    # weights were trained with, else those of the training images.
    init_id = None
    if cfg.init_from:
        mean, std, init_id = _init_from(net, cfg, ds.in_chans, ds.image_size)
    else:
        x = train_split.images.float().div(255.0)
        mean = x.mean(dim=(0, 2, 3)).tolist()
        std = x.std(dim=(0, 2, 3)).clamp_min(1e-3).tolist()
        del x
    loss_fn: MetricLoss = create_loss(cfg.loss, cfg.embed_dim, ds.num_classes,
                                      **{"label_smoothing": cfg.label_smoothing, **cfg.loss_kwargs}).to(device)
    # Centring moves the embeddings: a head other than the CE one (whose bias can follow) would read them wrong.
    centrable = can_centre(net, loss_fn.heads())
    if cfg.centre and not centrable:
        raise ValueError(f"centre needs a model with a Linear embedding layer to fold the shift into and no head "
                         f"but the CE one; {cfg.model!r} with loss {cfg.loss!r} is not")
    if device.type == "cuda":
        net = net.to(memory_format=torch.channels_last)
    return _Run(cfg, ds, train_split, val_split, test_split, net, loss_fn, mean, std, init_id, centrable, device,
                world, progress, log)


@dataclass
class _Steps:
    """How the run steps: the batch plan (size, m of each class, steps an epoch), the optimiser over `params`,
    its learning-rate schedule and the gradient scaler (mixed precision)."""

    batch_size: int
    m: int   # images of each class in a batch; 0: plain shuffling
    steps_per_epoch: int
    params: list[nn.Parameter]
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler


def _optimiser(run: _Run) -> _Steps:
    """The batch plan (checked against the processes' shares), the optimiser over the network's and the loss's
    parameters, and its schedule."""
    cfg, net, loss_fn = run.cfg, run.net, run.loss_fn
    # The loss's own parameters (heads, proxies) join the network's group unless the loss gives them a
    # learning rate of their own (proxies learning faster): one group as before keeps old checkpoints resumable.
    loss_groups = loss_fn.param_groups(cfg.lr)
    groups = [{"params": list(net.parameters()) + [p for g in loss_groups if g["lr"] == cfg.lr for p in g["params"]],
               "lr": cfg.lr}] + [g for g in loss_groups if g["lr"] != cfg.lr]
    params = [p for g in groups for p in g["params"]]
    opt_cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    opt = opt_cls(groups, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=run.device.type == "cuda")
    batch_size, m = _batch_plan(cfg, _classes_in(run.train_split), loss_fn.needs_pairs)
    if run.world is not None:
        _check_shares(batch_size, m, run.world.size)
    if (lowered := _pair_batch_note(cfg, m)) and run.main:
        run.log(lowered)
    if (small := _small_classes(run.train_split, run.ds.class_names, m, cfg.m_per_class)) and run.main:
        run.log(small)
    steps_per_epoch = max(1, len(run.train_split) // batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(cfg, steps_per_epoch))
    scaler = torch.amp.GradScaler("cuda", enabled=run.use_amp)
    return _Steps(batch_size, m, steps_per_epoch, params, opt, sched, scaler)


def _checked_augmenter(cfg: TrainConfig, ds: Dataset) -> nn.Module | None:
    """_augmenter, tried once on blank images (its random draws not taken from the run's): ValueError naming the
    settings when it cannot work on the data's images."""
    aug = _augmenter(cfg, ds)
    if aug is not None:
        try:
            with torch.random.fork_rng(devices=[]):
                aug(torch.zeros(2, ds.in_chans, ds.image_size, ds.image_size))
        except (RuntimeError, ValueError) as exc:
            raise ValueError(f"augmentation (crop_padding {cfg.crop_padding}, rotate {cfg.rotate}, scale {cfg.scale}, "
                             f"erase {cfg.erase}) cannot work on {ds.in_chans}x{ds.image_size}x{ds.image_size} "
                             f"images: {str(exc).splitlines()[0]}") from None
    return aug


@dataclass
class _Teachers:
    """Distillation (training/_distill.py): the teachers' embeddings (and class logits) of each batch, and the
    terms they add to the loss. Without cfg.teachers it adds nothing."""

    cfg: TrainConfig
    ids: list[str]
    views: AugmentedViewTeachers | None = None   # distill_views "augmented": they embed every batch
    emb: torch.Tensor | None = None               # distill_views "clean": every training image, embedded once
    logits: torch.Tensor | None = None
    distill: SimilarityDistillation | None = None
    distill_logits: LogitDistillation | None = None
    student_head: nn.Module | None = None

    @property
    def active(self) -> bool:
        """Whether the teachers embed each batch (so their embeddings are gathered with the students')."""
        return self.views is not None or self.emb is not None

    @classmethod
    def build(cls, run: _Run, store: torch.device) -> "_Teachers":
        """The teachers of `run` (loaded, and for clean views their embeddings taken, on `store`, where the
        training images are)."""
        cfg, ds = run.cfg, run.ds
        teachers = cls(cfg, [])
        if cfg.distill_logits_weight:
            teachers.student_head = run.loss_fn.heads().get("ce_head")
            if teachers.student_head is None:
                raise ValueError(f"distill logits weight needs a loss with a cross-entropy head (ce, ce+ms), "
                                 f"not {cfg.loss!r}")
            teachers.distill_logits = LogitDistillation(cfg.distill_logits_temperature)
        if cfg.teachers:
            class_names = list(ds.class_names) if teachers.distill_logits is not None else None
            if cfg.distill_views == "augmented":
                run.log(f"{' and '.join(cfg.teachers)} embed every augmented batch (teacher)")
                teachers.views = AugmentedViewTeachers(cfg.teachers, ds.in_chans, ds.image_size, run.device,
                                                       class_names)
                teachers.ids = teachers.views.ids
            else:
                run.log(f"{' and '.join(cfg.teachers)} embed the {len(run.train_split)} training images (teacher)")
                emb, logits, teachers.ids = teacher_embeddings(
                    cfg.teachers, run.train_split.images, ds.in_chans, ds.image_size, run.device, class_names)
                teachers.emb = emb.to(store)
                if logits is not None:
                    teachers.logits = logits.to(store)
            # distill_weight=0 (soft labels alone): no similarity matrix per step only to multiply it by 0
            teachers.distill = SimilarityDistillation(cfg.distill_temperature) if cfg.distill_weight else None
        return teachers

    def targets(self, idx: torch.Tensor, xb: torch.Tensor, device: torch.device, use_amp: bool):
        """(embeddings, logits or None) of the batch of training images `idx`, `xb` as augmented (before
        normalisation); (None, None) without teachers."""
        if self.views is not None:
            with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
                t_emb, t_logits, _ = self.views(xb)
            return t_emb, t_logits
        if self.emb is not None:
            t_logits = self.logits[idx].to(device, non_blocking=True) if self.logits is not None else None
            return self.emb[idx].to(device, non_blocking=True), t_logits
        return None, None

    def add_terms(self, loss: torch.Tensor, emb: torch.Tensor, t_emb, t_logits) -> torch.Tensor:
        """`loss` plus the weighted distillation terms of the student's embeddings `emb`."""
        if self.distill is not None:
            loss = loss + self.cfg.distill_weight * self.distill(emb, t_emb)
        if self.distill_logits is not None:
            loss = loss + self.cfg.distill_logits_weight * self.distill_logits(self.student_head(emb.float()),
                                                                               t_logits)
        return loss


@dataclass
class _Progress:
    """Where a run stands: the epoch it starts at, the best validation precision@1 so far and the weights that
    scored it (flattened, see _flatten_best; None: the last epoch is kept), the per-epoch history, and the
    class order of the class-balanced sampler (None: a new one)."""

    start_epoch: int = 0
    best_p1: float = -1.0
    best_state: dict[str, torch.Tensor] | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    sampler_labels: list | None = None

    def keep(self, p1: float, shipped: nn.ModuleDict, epoch: int) -> None:
        """The weights of `shipped` (net and loss) after `epoch` are the best so far, at precision@1 `p1`."""
        self.best_p1 = p1
        self.best_state = _flatten_best({"model": _cpu_state(shipped["net"]), "loss": _cpu_state(shipped["loss"]),
                                         "epoch": epoch})

    def stops_after(self, epoch: int, stop_after: int | None, epochs: int) -> bool:
        """Whether this session ends after `epoch` (0-based) by stop_after, before the last epoch."""
        return stop_after is not None and epoch + 1 - self.start_epoch >= stop_after and epoch + 1 < epochs


# TrainConfig fields that decide where and how fast a run computes, not what it learns: a checkpoint resumes
# whatever they are (a run killed on a GPU finishes on the CPU). threads: torch's CPU threads; device: cpu or cuda
# (None: cuda when present). The other things of that kind are no TrainConfig fields and were never compared:
# the number of processes (torchrun, --nproc), the progress bar and the log.
_RUNTIME_ONLY = ("threads", "device")
# TrainConfig fields that decide only how the finished model is scored on the test split, which no epoch reads: a
# checkpoint resumes whatever they are too (a run's --max-test lowered to finish sooner)
_SCORING_ONLY = ("max_test", "eval_ms_batch", "eval_ms_m")


def _config_differences(state: dict, cfg: TrainConfig) -> tuple[list[str], list[str], list[str]]:
    """(what differs between the configuration a checkpoint `state` was written with and `cfg`, as "key X there,
    Y here" phrases; the same of the runtime-only fields and of the scoring-only ones, which do not stop a
    resume). Fields added to TrainConfig after the checkpoint was written take their defaults (which keep the old
    behaviour), so a run survives an upgrade of simsearch."""
    ours = json.loads(json.dumps(cfg.to_dict()))
    theirs = {**json.loads(json.dumps(TrainConfig().to_dict())), **json.loads(state["config"])}
    differ = sorted(k for k in ours.keys() | theirs.keys() if ours.get(k) != theirs.get(k))
    said = {k: f"{k} {theirs.get(k)!r} there, {ours.get(k)!r} here" for k in differ}
    return ([v for k, v in said.items() if k not in _RUNTIME_ONLY + _SCORING_ONLY],
            [v for k, v in said.items() if k in _RUNTIME_ONLY], [v for k, v in said.items() if k in _SCORING_ONLY])


def _data_difference(state: dict, run: _Run) -> str | None:
    """"dataset A there, B here" when the checkpoint `state` was written for other data than the run's (other
    classes, other split sizes, other images or labels), else None; None too for a checkpoint written before
    checkpoints recorded their data."""
    if "data" not in state:
        return None
    theirs, ours = json.loads(state["data"]), run.data_identity
    compared = ("class_names", "train_size", "val_size", "digest")   # not the name or path: the data may move
    if all(theirs.get(k) == ours.get(k) for k in compared):
        return None
    there, here = _data_said(theirs), _data_said(ours)
    if there == here:
        here = here[:-1] + "; other images or labels)"
    return f"dataset {there} there, {here} here"


def _data_said(identity: dict[str, Any]) -> str:
    """A _data_identity as "NAME (K classes: a, b, ...; N training images)"."""
    classes = identity["class_names"]
    shown = ", ".join(classes[:4]) + (", ..." if len(classes) > 4 else "")
    return f"{identity['name']} ({len(classes)} classes: {shown}; {identity['train_size']} training images)"


def _load_state(ckpt: Path, state: dict, run: _Run, steps: _Steps, ema) -> None:
    """The checkpoint's weights and optimiser, schedule, scaler and moving-average states into the run's;
    ValueError naming the checkpoint when they do not fit (a checkpoint of other data, written before the
    checkpoint recorded its data)."""
    try:
        run.net.load_state_dict(state["model"])
        run.loss_fn.load_state_dict(state["loss"])
        steps.opt.load_state_dict(state["optimizer"])
        if ema is not None:
            ema.load_state_dict(state["ema"])
    except (RuntimeError, ValueError, KeyError) as exc:
        first = str(exc).strip().splitlines()
        raise ValueError(f"{ckpt}: its weights do not fit this run (another dataset or model?): "
                         f"{first[-1].strip() if first else type(exc).__name__}") from None
    steps.sched.load_state_dict(state["scheduler"])
    if state["scaler"] or not steps.scaler.is_enabled():  # written on a CPU, resumed with mixed precision: a new one
        steps.scaler.load_state_dict(state["scaler"])


def _restore(ckpt: Path, resume: bool, run: _Run, steps: _Steps, ema, tta: str) -> tuple[_Progress, str]:
    """The checkpoint `ckpt` loaded into the run's network, loss, optimiser, schedule, scaler, moving average
    and random generators when `resume` (its configuration and data must be ours, but for _RUNTIME_ONLY fields),
    and the progress it records, with the test-time augmentation the run then uses; a fresh start otherwise
    (saying so where one might not expect it)."""
    cfg, log = run.cfg, run.log
    done = _Progress()
    if resume and ckpt.exists():
        state = torch.load(ckpt, map_location=run.device, weights_only=True)
        differ, runtime, scoring = _config_differences(state, cfg)
        if (data := _data_difference(state, run)) is not None:
            differ.append(data)
        started = json.loads(state.get("init_id", "null"))   # the starting model of a fine-tune, when recorded
        if started is not None and started != run.init_id:
            differ.append(f"starting model (init_from) {started} there, {run.init_id} here ({cfg.init_from} is "
                          "another model now)")
        elif started is not None:   # the same model, moved or copied: its file's name is not what it learns from
            differ = [d for d in differ if not d.startswith("init_from ")]
        if differ:
            raise ValueError(f"{ckpt}: the checkpoint was written with a different configuration: "
                             + ", ".join(differ))
        if cfg.tta is None and "tta" not in json.loads(state["config"]):
            tta = "none"  # started before test-time augmentation existed: validate and ship as it began
        _load_state(ckpt, state, run, steps, ema)
        done.start_epoch, done.best_p1 = int(state["epoch"]), float(state["best_p1"])
        done.best_state = state.get("best_model") or None
        done.history = json.loads(state["history"])
        done.sampler_labels = json.loads(state.get("sampler_labels", "null"))
        torch.set_rng_state(state["torch_rng"].cpu())
        np.random.set_state(_np_state(state))
        random.seed(int(state["epoch"]) + cfg.seed)
        log(f"resumed from {ckpt} at epoch {done.start_epoch}"
            + (f" ({'; '.join(runtime)}: these say where and how fast it computes, not what it learns)"
               if runtime else "")
            + (f" ({'; '.join(scoring)}: these say how the finished model is scored, not what it learns)"
               if scoring else ""))
    elif resume:   # said: a mistyped --out would otherwise retrain from scratch unseen
        log(f"no checkpoint {ckpt}: starting from the first epoch")
    elif ckpt.exists():   # said, so that a forgotten --resume does not throw away an interrupted run unseen
        log(f"{ckpt} holds an earlier, unfinished run: starting afresh, and replacing it after the first epoch "
            "(simsearch train --resume continues it instead)")
    return done, tta


def _sampler(run: _Run, steps: _Steps, sampler_labels: list | None):
    """The class-balanced sampler of a pair loss (pml's MPerClassSampler), in the class order a checkpoint
    recorded (`sampler_labels`); None for a loss that shuffles plainly."""
    if not run.loss_fn.needs_pairs:
        return None
    from pytorch_metric_learning.samplers import MPerClassSampler
    sampler = MPerClassSampler(run.train_split.labels.numpy(), steps.m, batch_size=steps.batch_size,
                               length_before_new_iter=steps.steps_per_epoch * steps.batch_size)
    if sampler_labels is not None:  # the class order it shuffles in place, epoch after epoch
        as_int = {int(k): k for k in sampler.labels}
        sampler.labels = [as_int[k] for k in sampler_labels]
    return sampler


def _log_start(run: _Run, steps: _Steps, tta: str) -> None:
    """The lines that open a run: the validation split it uses (or why none), then what trains on what."""
    import model as zoo

    cfg, ds, val_split, log, world = run.cfg, run.ds, run.val_split, run.log, run.world
    if cfg.val_fraction > 0 and val_split is None and ds.val is not None:
        log(f"no validation split: {ds.info.get('val_from', 'the validation folder')} holds no two images of any "
            f"class, and precision@1 needs them; the last epoch is kept")
    elif cfg.val_fraction > 0 and val_split is None:
        log(f"no validation split: {cfg.val_fraction:g} of the training images would not hold two images of any "
            f"class, and precision@1 needs them; the last epoch is kept (more images a class, or a larger "
            f"--val-fraction, would give one)")
    elif val_split is not None and val_split is ds.val:
        log(f"validation split: {ds.info.get('val_from', 'the dataset')} ({len(val_split)} images), not a share of "
            f"the training images")
    batch_size, m = steps.batch_size, steps.m
    log(f"training {cfg.model} ({zoo.count_parameters(run.net):,} parameters) with {cfg.loss} on {ds.name} "
        f"({len(run.train_split)} train, {len(val_split) if val_split else 0} val, {len(run.test_split)} test) of "
        f"{ds.in_chans}x{ds.image_size}x{ds.image_size} on {run.device}; "
        f"batch {batch_size}{f' = {batch_size // m} classes x {m}' if m else ''}"
        f"{f' in {world.size} processes of {batch_size // world.size}' if world else ''}, {cfg.epochs} epochs; "
        f"embeddings with test-time augmentation {tta}")


def _val_precision(run: _Run, net: nn.Module, tta: str) -> float:
    """`net`'s precision@1 on the validation split, rounded as the history records it."""
    emb = embed_images(net, run.val_split.images, run.mean, run.std, run.device, tta=tta)
    return round(retrieval_metrics(emb, run.val_split.labels, only_p1=True)["precision_at_1"], 5)


def _step_net(run: _Run) -> nn.Module:
    """The network each step runs: under torchrun wrapped in DDP, with every process starting from the main one's
    weights (DDP copies the network's when it wraps it; the loss's are sent here). Each process draws its own
    augmentations (_train reseeds the others each epoch)."""
    world = run.world
    dist_.broadcast_module(world, run.loss_fn)
    if world is None:
        return run.net
    step_net = nn.parallel.DistributedDataParallel(run.net,
                                                   device_ids=[run.device.index] if run.device.type == "cuda" else None)
    return step_net


def _validate(run: _Run, shipped: nn.ModuleDict, tta: str, done: _Progress, rec: dict[str, Any]) -> None:
    """The end of an epoch in the main process: `shipped`'s validation precision@1 into the epoch's record `rec`
    (the weights kept when it is the best yet), and `rec` into the history."""
    if run.val_split is not None:
        rec["val_precision_at_1"] = _val_precision(run, shipped["net"], tta)
        if rec["val_precision_at_1"] > done.best_p1:
            done.keep(rec["val_precision_at_1"], shipped, rec["epoch"])
    done.history.append(rec)


@dataclass
class _Batches:
    """The training images and labels where they stay for the run (_resident), drawn in an order each epoch
    (the class-balanced `sampler`, else shuffled) and augmented by `aug`."""

    images: torch.Tensor
    labels: torch.Tensor
    sampler: Any
    aug: nn.Module | None

    def order(self, world: dist_.World | None) -> torch.Tensor:
        """This epoch's order of the training images, the same in every process."""
        if self.sampler is not None:
            order = torch.tensor(list(iter(self.sampler)), dtype=torch.long)
        else:
            order = torch.randperm(len(self.images))
        return dist_.broadcast(world, order).to(self.images.device)  # one batch order for every process

    def sampler_labels(self) -> list[int] | None:
        """The sampler's class order, for the checkpoint (None without a sampler)."""
        return [int(k) for k in self.sampler.labels] if self.sampler is not None else None


def _train_epoch(run: _Run, steps: _Steps, batches: _Batches, teachers: _Teachers, step_net: nn.Module,
                 trained: nn.ModuleDict, ema, normalize: nn.Module,
                 epoch: int) -> tuple[torch.Tensor, int]:
    """One epoch of optimiser steps (and moving-average updates); (the summed loss, on the device, and the
    number of steps)."""
    from tqdm import tqdm

    cfg, device, world, net, loss_fn = run.cfg, run.device, run.world, run.net, run.loss_fn
    batch_size, opt, scaler = steps.batch_size, steps.opt, steps.scaler
    net.train()
    loss_fn.train()
    loss_params = list(loss_fn.parameters())
    order = batches.order(world)
    total, count = torch.zeros((), device=device), 0  # summed on the device: no sync per step
    bar = tqdm(range(steps.steps_per_epoch), desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not run.progress,
               leave=False, mininterval=1.0)
    for step in bar:
        idx = dist_.share(world, order[step * batch_size:(step + 1) * batch_size])
        xb = batches.images[idx].to(device, non_blocking=True).float().div_(255.0)
        if batches.aug is not None:
            xb = batches.aug(xb)
        t_emb, t_logits = teachers.targets(idx, xb, device, run.use_amp)
        xb = normalize(xb)   # as the Embedder feeds the network when it serves
        if device.type == "cuda":
            xb = xb.contiguous(memory_format=torch.channels_last)
        yb = batches.labels[idx].to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.float16, enabled=run.use_amp):
            emb = step_net(xb)
        if world is not None:  # the whole batch, in every process: the loss a single process would compute
            if teachers.active:
                emb, yb, t_emb, t_logits = dist_.gather(world, emb, yb, t_emb, t_logits)
            else:
                emb, yb = dist_.gather(world, emb, yb)
        loss = teachers.add_terms(loss_fn(emb.float(), yb), emb, t_emb, t_logits)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        dist_.average_gradients(world, loss_params)
        if cfg.grad_clip:
            scaler.unscale_(opt)
            nn.utils.clip_grad_norm_(steps.params, cfg.grad_clip)
        scaler.step(opt)
        scaler.update()
        steps.sched.step()
        if ema is not None:
            ema.update_parameters(trained)
        total += loss.detach()
        count += 1
        if run.progress and step % 20 == 0:
            bar.set_postfix(loss=f"{total.item() / count:.4f}")
    bar.close()
    return total, count


def _train(cfg: TrainConfig, data, out: Path, name, resume: bool, progress: bool, log, stop_after,
           world: dist_.World | None, device_name: str | None) -> TrainResult | None:
    """One run in this process (train() holds OUT.lock and the process group): the data and the network
    (_prepare), the optimiser (_optimiser), the augmentation, the moving average and the teachers; the checkpoint
    (_restore); the epochs (_train_epoch; the main process validates and checkpoints after each); then _finish
    writes the artifact and its metrics. None where this session stops early (stop_after) and in the processes
    other than the main one."""
    import model as zoo

    main = world is None or world.main
    if not main:
        progress, log = False, (lambda _msg: None)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = torch.device(device_name or ("cuda" if torch.cuda.is_available() else "cpu"))
    t_start = time.time()

    run = _prepare(cfg, data, world, device, progress, log)
    steps = _optimiser(run)
    aug = _checked_augmenter(cfg, run.ds)
    # A model that learnt to ignore mirroring embeds better as the mean over an image and its mirror image.
    tta = cfg.tta or ("hflip" if _trains_with_flips(cfg, run.ds) else "none")
    trained = nn.ModuleDict({"net": run.net, "loss": run.loss_fn})  # what the moving average follows
    ema = _ema_of(trained, cfg.ema) if cfg.ema else None
    # What is validated, kept as the best epoch and shipped: the moving average when there is one.
    shipped = ema.module if ema is not None else trained
    train_images = _resident(run.train_split.images, device)
    train_labels = run.train_split.labels.to(train_images.device)  # beside the images: one index serves both
    teachers = _Teachers.build(run, train_images.device)
    normalize = zoo.PixelNormalize(run.mean, run.std).to(device)   # as the Embedder's, bit for bit

    ckpt = _checkpoint_path(out)
    done, tta = _restore(ckpt, resume, run, steps, ema, tta)
    step_net = _step_net(run)
    batches = _Batches(train_images, train_labels, _sampler(run, steps, done.sampler_labels), aug)
    _log_start(run, steps, tta)

    if cfg.init_from and main and run.val_split is not None and done.start_epoch == 0:
        # Fine-tuning must not hand back a worse model than it was given: the starting weights are epoch 0,
        # and an epoch is kept only if it beats them on validation.
        done.keep(_val_precision(run, shipped["net"], tta), shipped, 0)
        log(f"the starting model (init_from): validation precision@1 {done.best_p1:.4f}, which an epoch must beat")

    for epoch in range(done.start_epoch, cfg.epochs):
        t0 = time.time()
        if not main:  # its own augmentations, seeded each epoch: a resumed run draws what the uninterrupted one did
            torch.manual_seed(cfg.seed + 7919 * world.rank + epoch)   # (the checkpoint holds the main one's state)
        total, count = _train_epoch(run, steps, batches, teachers, step_net, trained, ema, normalize, epoch)
        if not torch.isfinite(total) and not all(bool(torch.isfinite(p).all()) for p in run.net.parameters()):
            # one sync an epoch (a loss alone may be inf where AMP skips a step); validation would fail unexplained
            raise ValueError(f"the training loss became {total.item()} in epoch {epoch + 1} and the weights hold NaN "
                             f"or infinity: they diverged (lr {cfg.lr:g}, grad_clip {cfg.grad_clip}); lower lr"
                             + ("" if cfg.grad_clip else ", or clip gradients (grad_clip, 5 by default)"))
        if not main:  # the main process validates and checkpoints
            if done.stops_after(epoch, stop_after, cfg.epochs):
                dist_.finish(world)
                return None
            continue
        rec: dict[str, Any] = {"epoch": epoch + 1, "train_loss": round(total.item() / max(count, 1), 5),
                               "lr": steps.opt.param_groups[0]["lr"], "seconds": round(time.time() - t0, 1)}
        _validate(run, shipped, tta, done, rec)
        log(json.dumps(rec))
        _save_checkpoint(ckpt, run.net, run.loss_fn, steps.opt, steps.sched, steps.scaler, epoch + 1, done.best_p1,
                         done.best_state, done.history, cfg, ema, batches.sampler_labels(), run.data_identity,
                         run.init_id)
        if done.stops_after(epoch, stop_after, cfg.epochs):
            log(f"stopped after epoch {epoch + 1}; continue with the same command and --resume (in Python: the "
                "same configuration and resume=True)")
            dist_.finish(world)
            return None

    dist_.finish(world)  # the main process alone from here: centring, the test scores, the artifact
    if not main:
        return None
    return _finish(run, shipped, done, tta, steps, teachers.ids, out, name, t_start)


def _best_weights(run: _Run, shipped: nn.ModuleDict, done: _Progress) -> int:
    """Load the best epoch's weights (done.best_state) into `shipped`; the epoch kept (cfg.epochs: the last)."""
    if done.best_state is None:
        return run.cfg.epochs
    best_state = done.best_state
    shipped["net"].load_state_dict({k[6:]: v for k, v in best_state.items() if k.startswith("model.")})
    shipped["loss"].load_state_dict({k[5:]: v for k, v in best_state.items() if k.startswith("loss.")})
    best_epoch = int(best_state["_epoch"].item())
    if best_epoch == 0:
        run.log(f"no epoch beat the starting model on validation (precision@1 {done.best_p1:.4f}): the artifact "
                f"keeps its weights; a lower --lr, or more images a class, may do better")
    return best_epoch


def _finish(run: _Run, shipped: nn.ModuleDict, done: _Progress, tta: str, steps: _Steps, teacher_ids: list[str],
            out: Path, name: str | None, t_start: float) -> TrainResult:
    """The best epoch's weights, folded and centred, scored on the test split and written: the artifact `out`
    and its metrics file."""
    import model as zoo

    cfg, ds, device, log = run.cfg, run.ds, run.device, run.log
    train_split, val_split, test_split, mean, std = run.train_split, run.val_split, run.test_split, run.mean, run.std
    net, loss_fn = shipped["net"], shipped["loss"]
    best_epoch = _best_weights(run, shipped, done)
    train_seconds = time.time() - t_start
    arch_kwargs = dict(cfg.arch_kwargs)
    if cfg.fold_norm:  # the artifact is the plain architecture; its test scores are measured after folding
        net = net.fused()
        arch_kwargs = {k: v for k, v in arch_kwargs.items() if k not in ("norm", "head_norm")}

    heads = loss_fn.heads()
    ce_head = {k: v.detach().cpu() for k, v in heads["ce_head"].state_dict().items()} if "ce_head" in heads else None
    centring: dict[str, Any] = {}
    if cfg.centre or (cfg.centre is None and val_split is not None and run.centrable):
        ce_head, centring = _centre(net, ce_head, cfg.centre, train_split, val_split, mean, std, device, tta,
                                    cfg.seed, log)
        if ce_head is not None:
            heads["ce_head"].load_state_dict(ce_head)  # the artifact stores the heads from here

    # Final evaluation on the test split.
    emb = embed_images(net, test_split.images, mean, std, device, tta=tta)
    neighbours = _nearest_neighbours(emb)   # for the metrics and the mistakes alike, as evaluate_artifact
    metrics = evaluate_embeddings(emb, test_split.labels, ce_head, ms_m=cfg.eval_ms_m,
                                  ms_classes=max(1, cfg.eval_ms_batch // cfg.eval_ms_m),
                                  class_names=list(ds.class_names), neighbours=neighbours,
                                  ce_classes=torch.unique(train_split.labels).tolist())  # a test-only class: no CE
    # in the metrics file, as `simsearch evaluate --json` has them; not in the artifact, whose copies by
    # `evaluate --out` leave them out too (they name this dataset's images)
    mistakes = confident_mistakes(test_split.labels, neighbours, 10, list(ds.class_names), test_split.names)
    metrics["best_epoch"] = best_epoch
    metrics["tta"] = tta
    if val_split is not None:
        metrics["val_precision_at_1"] = done.best_p1
    net = net.to("cpu").to(memory_format=torch.contiguous_format)
    metrics["parameters"] = zoo.count_parameters(net)
    metrics["size_kb_float32"] = round(metrics["parameters"] * 4 / 1024, 2)

    artifact_name = name or f"{cfg.model}-{ds.name}"
    training_info = {"config": cfg.to_dict(), "dataset": _data_used(ds, train_split, val_split, test_split),
                     "device": str(device), "init_from": run.init_id,
                     "teachers": teacher_ids, **centring,
                     "train_seconds": round(train_seconds, 1), "epochs_run": len(done.history),
                     "batch_size_used": steps.batch_size, "m_per_class_used": steps.m,
                     "processes": run.world.size if run.world else 1,
                     "history": done.history,
                     "torch": torch.__version__}
    meta = zoo.ArtifactMeta(name=artifact_name, arch=cfg.model, arch_kwargs=arch_kwargs,
                            arch_source=zoo.model_source(cfg.model),
                            in_chans=ds.in_chans, image_size=ds.image_size, mean=mean, std=std,
                            embed_dim=cfg.embed_dim, class_names=list(ds.class_names), training=training_info,
                            metrics=metrics, heads=loss_fn.head_meta(), tta=tta)
    zoo.save_artifact(out, net, meta, heads={k: v.cpu() for k, v in heads.items()})
    metrics_path = out.with_name(out.name.removesuffix(".safetensors") + ".metrics.json")
    # written whole: a finished run is recognised by this file (experiments reuse it)
    text = json.dumps(json_nulls({"artifact": str(out), "name": artifact_name,
                                  "metrics": {**metrics, "confident_mistakes": mistakes}, "training": training_info}),
                      indent=2, allow_nan=False) + "\n"
    write_whole(metrics_path, lambda tmp: tmp.write_text(text))
    ckpt = _checkpoint_path(out)
    if ckpt.exists():
        ckpt.unlink()
    log(format_metrics(metrics))
    log(f"wrote {out} and {metrics_path} ({train_seconds:.0f} s)")
    return TrainResult(out, metrics, done.history, metrics_path)


def _data_used(ds: Dataset, train_split: Split, val_split: Split | None, test_split: Split) -> dict[str, Any]:
    """ds.describe() with the sizes of the splits the run used (after max_train, max_test and the validation
    split), the dataset's own beside them, and every class's train, val and test counts."""
    splits = {"train": train_split, "val": val_split, "test": test_split}
    counts = {k: torch.bincount(s.labels, minlength=ds.num_classes).tolist() if s is not None else
              [0] * ds.num_classes for k, s in splits.items()}
    return {**ds.describe(), "dataset_train_size": len(ds.train), "dataset_test_size": len(ds.test),
            "train_size": len(train_split), "val_size": len(val_split) if val_split is not None else 0,
            "test_size": len(test_split),
            "class_counts": {name: {k: counts[k][i] for k in splits} for i, name in enumerate(ds.class_names)}}


def _data_identity(ds: Dataset, train_split: Split, val_split: Split | None) -> dict[str, Any]:
    """What a checkpoint records of the data a run trains on, so that --resume can refuse other data: the dataset's
    name and class names, the training and validation split sizes and a digest of their images and labels (not of
    paths or file times: a dataset moved or copied elsewhere is the same data)."""
    h = hashlib.sha256()
    for split in (train_split, val_split):
        if split is not None:
            h.update(np.ascontiguousarray(split.images.numpy()).data)
            h.update(split.labels.numpy().astype("<i8").tobytes())
    return {"name": ds.name, "class_names": list(ds.class_names), "train_size": len(train_split),
            "val_size": len(val_split) if val_split is not None else 0, "digest": h.hexdigest()}


def _ema_of(trained: nn.ModuleDict, decay: float):
    """A moving average of the net and the loss together (torch's AveragedModel), so the shipped embedding
    and the heads it is scored with come from the same average; BatchNorm statistics are averaged too."""
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    return AveragedModel(trained, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


def _cpu_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


def _flatten_best(best: dict) -> dict[str, torch.Tensor]:
    flat = {f"model.{k}": v for k, v in best["model"].items()}
    flat.update({f"loss.{k}": v for k, v in best["loss"].items()})
    flat["_epoch"] = torch.tensor(best["epoch"])
    return flat


def _np_state(state: dict):
    s = json.loads(state["numpy_rng"])
    return (s[0], np.array(s[1], dtype=np.uint32), s[2], s[3], s[4])


def _save_checkpoint(path: Path, net, loss_fn, opt, sched, scaler, epoch: int, best_p1: float, best_state,
                     history: list, cfg: TrainConfig, ema=None, sampler_labels: list[int] | None = None,
                     data: dict[str, Any] | None = None, init_id: str | None = None) -> None:
    ns = np.random.get_state()
    state = {"model": net.state_dict(), "loss": loss_fn.state_dict(), "optimizer": opt.state_dict(),
             "ema": ema.state_dict() if ema is not None else {},
             "scheduler": sched.state_dict(), "scaler": scaler.state_dict(), "epoch": epoch, "best_p1": best_p1,
             "best_model": best_state or {}, "history": json.dumps(history), "config": json.dumps(cfg.to_dict()),
             "torch_rng": torch.get_rng_state(), "sampler_labels": json.dumps(sampler_labels),
             "numpy_rng": json.dumps([ns[0], ns[1].tolist(), ns[2], ns[3], ns[4]])}
    if data is not None:
        state["data"] = json.dumps(data)
    if init_id is not None:   # a fine-tune's starting model: a resume refuses an --init file that is another now
        state["init_id"] = json.dumps(init_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_whole(path, lambda tmp: torch.save(state, tmp))
