"""Dataset readers: IDX (MNIST, Fashion-MNIST), CIFAR-10 python batches, ImageFolder trees and tars.

Every reader returns the same thing, a `Dataset` of uint8 image tensors (N, C, S, S) and int64
labels for a train and a test split (and a validation split where the dataset has its own), plus class
names. A decoded dataset is cached once as a safetensors file under $SIMSEARCH_CACHE (default
~/.cache/simsearch/datasets), keyed by the source path, its size and modification time and the decoding
options, so that training never decodes JPEGs twice. Nothing is downloaded here: see `download_dataset`
for the one explicit exception.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import pickle
import tarfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Callable

import numpy as np
import torch

from model import (DAMAGED_ARCHIVE_ERRORS, IMAGE_EXTENSIONS, SPLIT_FOLDERS, common_folder, files_under,
                   images_without_ending, list_tar, readable_name)

from ._files import write_whole

MNIST_CLASSES = [str(i) for i in range(10)]
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                   "Ankle boot"]
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
_IDX_FILES = {"train_images": "train-images-idx3-ubyte", "train_labels": "train-labels-idx1-ubyte",
              "test_images": "t10k-images-idx3-ubyte", "test_labels": "t10k-labels-idx1-ubyte"}
_CIFAR_TRAIN = [f"data_batch_{i}" for i in range(1, 6)]
_SKIPPED_LISTED = 20  # undecodable images named in a dataset's description (all are counted)
_CACHE_VERSION = 10   # 3: ImageFolder splits keep their images' file names; 4: two test images of a small class;
# 5: an ImageFolder's val/ beside train/ and test/ is read as the validation split; 6: a split's total is exact;
# 7: the info names empty class folders, loose images, test-only classes and the folder descended into;
# 8: a tar made inside its folder (./ names) leaves its hidden members out, and a tar's hard links are read;
# 9: split folders in any case (Train/, Test/), loose images in test/ or a validation folder named as not read;
# 10: images with no image ending, a tar's links and empty folders named as not read, damaged EXIF data named
_NOT_READ_SHOWN = 5   # entries of the "not read" line shown on the console (all are in the metrics file)
_VAL_DIRS = ("val", "valid", "validation")   # the names datasets give a validation folder
_BAR_FROM = 2000   # images to decode from which a progress bar is shown (when progress is on)


#: Why a folder beside train/ is not read (the "not read" line of training, and of `simsearch index build`)
_BESIDE_SPLITS = "beside train/, only test/ and a validation folder, val/, valid/ or validation/, are"


class DatasetError(ValueError):
    """The path is not a dataset in a layout we read; the message says what was expected."""


@dataclass
class Split:
    """Images as uint8 (N, C, S, S) and labels as int64 (N,); for an ImageFolder, each image's file within the
    dataset (`test/cat/0001.jpg`), so that what evaluation finds can be traced to a file."""

    images: torch.Tensor
    labels: torch.Tensor
    names: list[str] | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: torch.Tensor | np.ndarray) -> "Split":
        """The rows `index` (a new Split sharing no memory with this one)."""
        index = torch.as_tensor(index, dtype=torch.long)
        names = [self.names[i] for i in index.tolist()] if self.names is not None else None
        return Split(self.images[index].clone(), self.labels[index].clone(), names)


@dataclass
class Dataset:
    """A decoded dataset: train and test splits, class names and where it came from; `val`, a validation split
    of the dataset's own (an ImageFolder's val/ beside train/ and test/), or None."""

    name: str
    layout: str  # "idx", "cifar-batches" or "imagefolder"
    train: Split
    test: Split
    class_names: list[str]
    source: str
    info: dict = field(default_factory=dict)
    val: Split | None = None
    # Why this decoding could not be cached, for notes(); not part of the dataset (describe() leaves it out).
    cache_note: str | None = field(default=None, repr=False, compare=False)

    @property
    def in_chans(self) -> int:
        return int(self.train.images.shape[1])

    @property
    def image_size(self) -> int:
        return int(self.train.images.shape[-1])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def skipped_note(self) -> str | None:
        """A line naming the images that could not be decoded and were left out, or None when there were none."""
        sk = self.info.get("skipped_images")
        if not sk:
            return None
        n = sk["count"]
        shown = "; ".join(sk["first"][:3]) + (" ..." if n > 3 else "")
        listed = "" if n <= 3 else (" (all named in the metrics file)" if n == len(sk["first"])
                                    else f" (the first {len(sk['first'])} named in the metrics file)")
        return f"{self.source}: left out {n} image{'s' if n != 1 else ''} that could not be decoded: {shown}{listed}"

    def notes(self) -> list[str]:
        """Lines to tell the user about how the dataset was read: images left out, folders not read."""
        lines = [note] if (note := self.skipped_note()) else []
        if self.cache_note:
            lines.append(self.cache_note)
        if exif := self.info.get("damaged_exif"):
            n = exif["count"]
            lines.append(f"{self.source}: {n} image{'s' if n != 1 else ''} with damaged EXIF data, used without EXIF "
                         f"orientation: {'; '.join(exif['first'][:3])}{' ...' if n > 3 else ''}")
        if root := self.info.get("root"):
            classes = self.class_names
            lines.append(f"{self.source}: its only folder, {root}/, is read as the dataset root: its "
                         f"{len(classes)} sub-folders are the classes ({', '.join(classes[:4])}"
                         f"{', ...' if len(classes) > 4 else ''})")
        # the folders beside train/ and what lies in the class-folder levels, in one line
        ignored = self.info.get("ignored_folders", [])
        not_read = self.info.get("not_read", {})
        if ignored or not_read:
            shown = [f"{', '.join(f + '/' for f in ignored)} ({_BESIDE_SPLITS})"] if ignored else []
            shown += [f"{n} ({why})" for n, why in list(not_read.items())[:_NOT_READ_SHOWN]]
            more = f" and {len(not_read) - _NOT_READ_SHOWN} more" if len(not_read) > _NOT_READ_SHOWN else ""
            lines.append(f"{self.source}: not read: {', '.join(shown)}{more}")
        lines += self._classes_without_training_notes()
        return lines

    def _classes_without_training_notes(self) -> list[str]:
        """A line for test/ and one for a validation folder beside it, each naming its classes that train/ has no
        images of, and the training folder whose name differs from one only in case (case_only)."""
        lines, case = [], self.info.get("case_only", {})
        for key, default, why in (("test", "test/", "scored by retrieval only"), ("val", "val/", "")):
            if only := self.info.get(f"{key}_only_classes"):
                near = "; ".join(([why] if why else []) + [f"{case[c]} differs from {c}/ only in case"
                                                            for c in only if c in case])
                lines.append(f"{self.source}: {self.info.get(f'{key}_from', default)} has {len(only)} "
                             f"class{'es' if len(only) != 1 else ''} with no training images: "
                             f"{', '.join(only[:_NOT_READ_SHOWN])}{' ...' if len(only) > _NOT_READ_SHOWN else ''}"
                             f"{f' ({near})' if near else ''}")
        return lines

    def describe(self) -> dict:
        """A JSON-able summary (recorded in artifacts and metrics files)."""
        return {"name": self.name, "layout": self.layout, "source": self.source, "num_classes": self.num_classes,
                "train_size": len(self.train), "test_size": len(self.test),
                **({"val_size": len(self.val)} if self.val is not None else {}), "in_chans": self.in_chans,
                "image_size": self.image_size, **self.info}


# ---------------------------------------------------------------------------------------------
# Sources: a folder or a tar, both seen as a set of relative posix names with a byte reader.


# What listing a tar (compressed or not) that is cut short or corrupt raises.


def _damaged(path: Path, exc: BaseException) -> DatasetError:
    return DatasetError(f"{path}: the archive is damaged or cut short ({type(exc).__name__}: {exc}); copy it again")


class _Source:
    """A folder or a tar: its files' relative posix names (`names`, hidden ones left out: a tar is read as the
    folder it was made of) and `read(name)`, a file's bytes."""

    def __init__(self, path: Path):
        self.path = path
        self._tar: tarfile.TarFile | None = None
        self.folders: list[str] = []   # a tar's folders (a folder's are looked up when needed)
        self.links: list[str] = []   # a tar's links, left out (a folder's are followed)
        if path.is_dir():
            try:
                self.names = files_under(path)
            except OSError as exc:  # a folder inside that cannot be listed: say which, not a traceback
                raise DatasetError(f"{path}: cannot list {exc.filename}: {exc.strerror}") from None
        elif path.is_file() and tarfile.is_tarfile(path):
            try:
                self._tar = tarfile.open(path)
                listing = list_tar(self._tar)
            except DAMAGED_ARCHIVE_ERRORS as exc:
                self.close()
                raise _damaged(path, exc) from None
            self._members = listing.files
            self.names = sorted(self._members)
            self.folders, self.links = listing.folders, listing.links
        elif path.exists():
            raise DatasetError(f"{path}: not a folder or a tar archive")
        else:
            raise DatasetError(f"{path}: no such file or folder")

    @property
    def is_tar(self) -> bool:
        """Whether the source is a tar, not a folder."""
        return self._tar is not None

    def read(self, name: str) -> bytes:
        if self._tar is not None:
            f = self._tar.extractfile(self._members[name])
            assert f is not None
            return f.read()
        return (self.path / name).read_bytes()

    def head(self, name: str) -> bytes:
        """The first bytes of file `name` (model's IMAGE_HEAD_BYTES), b"" where it cannot be read."""
        from model import file_head, member_head

        if self._tar is not None:
            return member_head(self._tar, self._members[name])
        return file_head(self.path / name)

    def close(self) -> None:
        if self._tar is not None:
            self._tar.close()

    def fingerprint(self) -> str:
        """Changes whenever the source's content plausibly changes (names, sizes, mtimes)."""
        # os.fsencode: a name that is not UTF-8 (a Latin-1 café.jpg from an old zip) reaches us with surrogates
        h = hashlib.sha256(os.fsencode(self.path.resolve()))
        if self._tar is not None:
            st = self.path.stat()
            h.update(f"{st.st_size}:{st.st_mtime_ns}".encode())
        else:
            for n in self.names:
                st = (self.path / n).stat()
                h.update(os.fsencode(n) + f":{st.st_size}:{st.st_mtime_ns}\n".encode())
        return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# Readers.


def _read_idx(data: bytes, name: str) -> np.ndarray:
    """The array in the IDX file `name` (its bytes `data`, gzipped or not); DatasetError naming the file."""
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as exc:   # a cut-off download
            raise DatasetError(f"{name}: not a whole gzip file ({exc})") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DatasetError(f"{name}: not an IDX file of unsigned bytes (it starts with {data[:4].hex(' ')}, "
                           "not 00 00 08 and a dimension count)")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    body = np.frombuffer(data, dtype=np.uint8, offset=min(4 + 4 * ndim, len(data)))
    if body.size != int(np.prod(dims)):
        raise DatasetError(f"{name}: the IDX file is truncated: its header says {dims}, it holds {body.size} values")
    return body.reshape(dims)


def _by_folder(names: list[str], wanted: dict[str, tuple[str, ...]], what: str, display: str) -> dict[str, str] | None:
    """The one folder holding a file for every key of `wanted` (key -> accepted base names)."""
    folders: dict[str, dict[str, str]] = {}
    for n in names:
        path = PurePosixPath(n)
        for key, bases in wanted.items():
            if path.name in bases:
                got = folders.setdefault(str(path.parent), {})
                # prefer the uncompressed file when both are present
                if key not in got or not n.endswith(".gz"):
                    got[key] = n
    complete = sorted(f for f, got in folders.items() if len(got) == len(wanted))
    if len(complete) > 1:
        raise DatasetError(f"{display}: holds {len(complete)} {what} datasets ({', '.join(complete)}); "
                           f"pass one of those folders")
    return folders[complete[0]] if complete else None


def _find_idx(names: list[str], display: str) -> dict[str, str] | None:
    # torchvision's MNIST keeps the files in <root>/MNIST/raw/; any one folder, raw or .gz, is accepted.
    return _by_folder(names, {k: (v, v + ".gz") for k, v in _IDX_FILES.items()}, "IDX", display)


def _idx_dataset(src: _Source, files: dict[str, str], display: str) -> Dataset:
    arrays = {k: _read_idx(src.read(v), f"{display}/{v}") for k, v in files.items()}
    for split in ("train", "test"):
        images, labels = len(arrays[f"{split}_images"]), len(arrays[f"{split}_labels"])
        if images != labels:
            raise DatasetError(f"{display}: {files[f'{split}_images']} holds {images} images but "
                               f"{files[f'{split}_labels']} {labels} labels")
    own = _idx_folder_name(src, files["train_images"]).lower()
    fashion = "fashion" in own
    classes = FASHION_CLASSES if fashion else MNIST_CLASSES
    nclass = int(max(arrays["train_labels"].max(), arrays["test_labels"].max())) + 1
    if nclass != 10:
        classes = [str(i) for i in range(nclass)]

    def split(kind: str) -> Split:
        images = torch.from_numpy(arrays[f"{kind}_images"].copy())
        images = images[:, None] if images.ndim == 3 else images.permute(0, 3, 1, 2).contiguous()
        return Split(images, torch.from_numpy(arrays[f"{kind}_labels"].astype(np.int64)))

    name = "fashion-mnist" if fashion else ("mnist" if "mnist" in own else readable_name(src.path.stem))
    return Dataset(name, "idx", split("train"), split("test"), list(classes), display)


def _idx_folder_name(src: _Source, file: str) -> str:
    """The name of the folder holding the IDX file `file` (a name within `src`), or of its parent where that is
    torchvision's raw/ (FashionMNIST/raw/): what says whether these are digits or clothes, where the rest of the
    path (fashion-stuff/mnist/) says nothing about them."""
    where = Path(os.path.abspath(src.path))   # `.` named by the folder it is, a link by its own name
    chain = [*where.parts[:-1], _archive_stem(where.name), *PurePosixPath(file).parent.parts]
    chain = [part for part in chain if part not in ("", ".", "/")]
    if len(chain) > 1 and chain[-1].lower() == "raw":
        chain.pop()
    return chain[-1] if chain else ""


def _find_cifar(names: list[str], display: str) -> dict[str, str] | None:
    found = _by_folder(names, {b: (b,) for b in _CIFAR_TRAIN + ["test_batch"]}, "CIFAR batch", display)
    if found:
        folder = str(PurePosixPath(found["test_batch"]).parent)
        meta = "batches.meta" if folder == "." else f"{folder}/batches.meta"
        if meta in names:
            found["batches.meta"] = meta
    return found


def _unpickle(data: bytes) -> dict:
    # The CIFAR batches are Python pickles (that is the published format; torchvision reads them the same way).
    return pickle.loads(data, encoding="latin1")


# What unpickling a CIFAR batch that is cut short, or is no CIFAR batch, raises.
_NOT_A_BATCH = (pickle.UnpicklingError, EOFError, KeyError, ValueError, TypeError, AttributeError, IndexError)


def _cifar_batch(src: _Source, file: str, display: str) -> tuple[np.ndarray, np.ndarray]:
    """(images (N, 3, 32, 32), labels (N,)) of the CIFAR python batch `file`; DatasetError naming the file when it
    is cut short (a download stopped half-way) or holds something else."""
    try:
        d = _unpickle(src.read(file))
        images = np.asarray(d["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        labels = np.asarray(d.get("labels", d.get("fine_labels")), dtype=np.int64).reshape(-1)
    except _NOT_A_BATCH as exc:
        raise DatasetError(f"{display}/{file}: not a whole CIFAR batch ({type(exc).__name__}: {exc}); "
                           "copy it again") from None
    if len(images) != len(labels):
        raise DatasetError(f"{display}/{file}: holds {len(images)} images but {len(labels)} labels; copy it again")
    return images, labels


def _cifar_dataset(src: _Source, files: dict[str, str], display: str) -> Dataset:
    def load(batches: list[str]) -> Split:
        xs, ys = zip(*(_cifar_batch(src, files[b], display) for b in batches), strict=True)
        return Split(torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys)))

    classes = CIFAR10_CLASSES
    if "batches.meta" in files:
        try:
            classes = list(_unpickle(src.read(files["batches.meta"])).get("label_names", classes))
        except _NOT_A_BATCH as exc:
            raise DatasetError(f"{display}/{files['batches.meta']}: not a whole CIFAR batches.meta "
                               f"({type(exc).__name__}: {exc}); copy it again") from None
    return Dataset("cifar10", "cifar-batches", load(_CIFAR_TRAIN), load(["test_batch"]), classes, display)


def _decode_images(src: _Source, names: list[str], in_chans: int, size: int, desc: str, progress: bool = True,
                   damaged_exif: dict[str, str] | None = None) -> tuple[torch.Tensor, dict[str, str]]:
    """The images that decode, in order, and {name: why} for those that do not (skipped, as `simsearch index
    build` skips them: one broken file in a user's folder of thousands must not stop the run). A progress bar
    on stderr for `_BAR_FROM` images or more, unless `progress` is False. `damaged_exif` gets {name: what} for
    each image whose EXIF data is damaged (it is used without EXIF orientation)."""
    from PIL import Image, UnidentifiedImageError
    from tqdm import tqdm

    from model import to_model_array
    from model import unreadable_reason
    from model import exif_notes, open_image

    out = np.empty((len(names), in_chans, size, size), np.uint8)
    ok = np.ones(len(names), bool)
    bad: dict[str, str] = {}
    for i, n in enumerate(tqdm(names, desc=desc, unit="img", leave=False, mininterval=2.0,
                               disable=not progress or len(names) < _BAR_FROM)):
        data = None
        try:
            data = src.read(n)
            with exif_notes() as said, open_image(data) as im:
                out[i] = to_model_array(im, in_chans, size, owned=True)
            if said and damaged_exif is not None:
                damaged_exif[n] = said[0]
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
            # SyntaxError: what some of Pillow's plugins raise for a malformed header; DecompressionBombError (no
            # OSError): an image over Pillow's pixel limit, a stitched panorama or a large scan
            ok[i] = False
            bad[n] = unreadable_reason(exc, data)
    return torch.from_numpy(out if ok.all() else out[ok]), bad


def _class_tree(names: list[str]) -> dict[str, list[str]]:
    """class folder -> image names, for names shaped <class>/.../<image>."""
    tree: dict[str, list[str]] = {}
    for n in names:
        if "/" in n and n.lower().endswith(IMAGE_EXTENSIONS):
            tree.setdefault(n.split("/", 1)[0], []).append(n)
    return tree


def _not_read(src: _Source, prefix: str, sub: str, names: list[str], tree: dict[str, list[str]]) -> dict[str, str]:
    """{what: why} for what lies in the class-folder level `sub` (relative to the dataset root: "", "train/",
    "test/" or a validation folder) but is no class: folders without images (empty, or other files only) and
    images outside a class folder; and, anywhere below it, a tar's links and files that begin as an image does but
    have no image ending (`model.images_without_ending`)."""
    out: dict[str, str] = {}
    inside = [n[len(sub):] for n in names if n.startswith(sub)]
    folders = {n.split("/", 1)[0] for n in inside if "/" in n}
    if src.is_tar:   # a tar lists its folders, empty ones too
        folders |= {rest.split("/", 1)[0] for f in src.folders if (rest := f.removeprefix(prefix + sub)) != f and rest}
    else:   # a folder: empty folders are not among the file names
        try:
            folders |= {e.name for e in os.scandir(src.path / prefix / sub)
                        if e.is_dir() and not e.name.startswith(".")}
        except OSError:
            pass
    for f in sorted(folders - set(tree)):
        out[readable_name(f"{sub}{f}/")] = "no images"
    for n in inside:
        if "/" not in n and n.lower().endswith(IMAGE_EXTENSIONS):
            out[readable_name(f"{sub}{n}")] = "not in a class folder"
    for link in src.links:
        if (rest := link.removeprefix(prefix + sub)) != link:
            out[readable_name(f"{sub}{rest}")] = "a link in a tar"
    for n in images_without_ending([f"{sub}{n}" for n in inside], lambda n: src.head(prefix + n)):
        out[readable_name(n)] = "an image without an image ending"
    return out




def _imagefolder_dataset(src: _Source, prefix: str, names: list[str], display: str, in_chans: int,
                         image_size: int, test_fraction: float, seed: int, progress: bool = True,
                         test_only: bool = False) -> Dataset:
    info: dict = {}
    parts, classes, not_read = _imagefolder_parts(src, prefix, names, display, info)
    if not_read:
        info["not_read"] = not_read
    if len(classes) < 2:
        raise DatasetError(f"{display}: found only {len(classes)} class folder ({_readables(classes)}); "
                           "need at least 2")
    left: _Parts = {}
    if test_only and "test" in parts:   # a test/ folder of its own: train/ and a validation folder are not decoded
        left = {key: part for key, part in parts.items() if key != "test"}
        parts = {"test": parts["test"]}
        info["not_decoded"] = {key: sum(map(len, tree.values())) for key, (_, tree) in left.items()}
    decoded, skipped = _decode_parts(src, prefix, parts, in_chans, image_size, progress, info)
    if skipped:
        # the classes of the splits not decoded are kept: whether their images decode is not known
        classes = sorted(set(_note_skipped(display, decoded, skipped, info)).union(*(t for _, t in left.values())))
    index = {c: i for i, c in enumerate(classes)}
    splits = {key: Split(images, torch.tensor([index[c] for _, c in files], dtype=torch.long),
                         _readables([f for f, _ in files])) for key, (images, files) in decoded.items()}
    if "not_decoded" in info:   # train/ not decoded: an empty split of the same shape
        splits["train"] = Split(torch.empty((0, in_chans, image_size, image_size), dtype=torch.uint8),
                                torch.empty((0,), dtype=torch.long), [])
    for key in ("train", "test"):   # a split folder whose every image failed to decode
        if key in splits and not len(splits[key]) and not (key == "train" and "not_decoded" in info):
            folder = readable_name(parts[key][0])
            raise DatasetError(f"{display}: none of the images in {folder} could be decoded "
                               f"(e.g. {min(n for n in skipped if n.startswith(folder))!r})")
    val = splits.pop("val", None)
    if "all" in splits:
        splits = _held_out_test(splits["all"], test_fraction, seed, info, display, bool(skipped))
    return Dataset(_dataset_name(src), "imagefolder", splits["train"], splits["test"], _readables(classes), display,
                   info, val if val is not None and len(val) else None)


_Parts = dict[str, tuple[str, dict[str, list[str]]]]   # split -> (its folder within the dataset, its class tree)


def _imagefolder_parts(src: _Source, prefix: str, names: list[str], display: str,
                       info: dict) -> tuple[_Parts, list[str], dict[str, str]]:
    """Where an ImageFolder's splits lie: (split -> (folder, class tree), the classes, what is not read), the
    layout noted in `info`. train/ beside test/ or a validation folder are splits of their own; otherwise the
    class folders make one part ("all") that is split later. Split folders are found in any case (Train/)."""
    tops = {n.split("/", 1)[0] for n in names if "/" in n}
    with_images = {n.split("/", 1)[0] for n in names if "/" in n and n.lower().endswith(IMAGE_EXTENSIONS)}
    split_dirs = _split_dirs(tops, display)
    val_dirs = [split_dirs[d] for d in _VAL_DIRS if split_dirs.get(d) in with_images]
    if len(val_dirs) > 1:
        raise DatasetError(f"{display}: holds both {val_dirs[0]}/ and {val_dirs[1]}/; keep one validation folder")
    train_dir, test_dir = split_dirs.get("train"), split_dirs.get("test")
    if train_dir and (test_dir or val_dirs):
        # train/ + test/, with a validation folder beside them or not; train/ + val/ alone: val/ is the test split
        test_dir, val_dir = (test_dir, val_dirs[0] if val_dirs else None) if test_dir else (val_dirs[0], None)
        return _split_folder_parts(src, prefix, names, display, info, with_images, (train_dir, test_dir, val_dir))
    return _class_folder_parts(src, prefix, names, display, info)


def _split_dirs(tops: set[str], display: str) -> dict[str, str]:
    """The split folders among the top folders `tops`, by their name in lower case: {"train": "Train", "test":
    "Test"}. Two that differ only in case (train/ and Train/) are refused: which one is meant is a guess."""
    found: dict[str, str] = {}
    for top in sorted(tops):
        kind = top.lower()
        if kind in SPLIT_FOLDERS:
            if kind in found:
                raise DatasetError(f"{display}: holds both {found[kind]}/ and {top}/; keep one of them")
            found[kind] = top
    return found


def _split_folder_parts(src: _Source, prefix: str, names: list[str], display: str, info: dict,
                        with_images: set[str],
                        dirs: tuple[str, str, str | None]) -> tuple[_Parts, list[str], dict[str, str]]:
    """_imagefolder_parts for `dirs`: train/, beside test/ (or a validation folder standing for it) and a
    validation folder beside both, or None, each by its own name (Train/). A test split with no class folders of
    images is refused here, before any decoding: there would be nothing to score the model on."""
    def tree(folder: str) -> dict[str, list[str]]:
        return _class_tree([n.split("/", 1)[1] for n in names if n.startswith(folder + "/")])

    train_dir, test_dir, val_dir = dirs
    train_tree, test_tree = tree(train_dir), tree(test_dir)
    if not train_tree:
        raise DatasetError(f"{display}: {train_dir}/ has no class folders with images in them")
    not_read = _not_read(src, prefix, train_dir + "/", names, train_tree)
    in_test = _not_read(src, prefix, test_dir + "/", names, test_tree)
    if not test_tree:
        raise DatasetError(_no_test_classes(display, train_dir, test_dir, in_test))
    not_read.update(in_test)
    parts = {"train": (train_dir + "/", train_tree), "test": (test_dir + "/", test_tree)}
    info["test_from"] = f"{test_dir}/"
    if ignored := sorted(with_images - {train_dir, test_dir, val_dir}):
        info["ignored_folders"] = _readables(ignored)
    if val_dir is not None:
        val_tree = tree(val_dir)
        not_read.update(_not_read(src, prefix, val_dir + "/", names, val_tree))
        if val_tree:
            parts["val"] = (val_dir + "/", val_tree)
            info["val_from"] = f"{val_dir}/"
    classes = sorted(set().union(*(t for _, t in parts.values())))
    by_case = {c.lower(): c for c in train_tree}
    for key, (_, split_tree) in parts.items():   # test/ and a validation folder's classes with no training images
        if key != "train" and (only := sorted(set(split_tree) - set(train_tree))):
            info[f"{key}_only_classes"] = _readables(only)
            if case := {readable_name(c): readable_name(f"{train_dir}/{by_case[c.lower()]}/") for c in only
                        if c.lower() in by_case}:
                info.setdefault("case_only", {}).update(case)
    return parts, classes, not_read


def _no_test_classes(display: str, train_dir: str, test_dir: str, in_test: dict[str, str]) -> str:
    """Why a test folder with no class folders of images is refused, naming the images loose in it."""
    loose = [n for n, why in in_test.items() if why == "not in a class folder"]
    said = (f": {', '.join(loose[:3])}{' ...' if len(loose) > 3 else ''} {'is' if len(loose) == 1 else 'are'} "
            "not in a class folder" if loose else "")
    return (f"{display}: {test_dir}/ has no class folders with images in them{said}; put the test images in "
            f"{test_dir}/<class>/, or move {test_dir}/ out to hold a test split out of {train_dir}/")


def _class_folder_parts(src: _Source, prefix: str, names: list[str], display: str,
                        info: dict) -> tuple[_Parts, list[str], dict[str, str]]:
    """_imagefolder_parts for class folders alone (<class>/<image>), under `prefix`, the one folder descended
    into when there is one."""
    tree = _class_tree(names)
    if not tree:
        raise DatasetError(_explain(display, names, prefix))
    classes = sorted(tree)
    not_read = _not_read(src, prefix, "", names, tree)
    loose = [n for n, why in not_read.items() if why == "not in a class folder"]
    if prefix and loose and len(classes) < 2:
        # the one folder descended into holds images itself: it is the class, not its sub-folder
        top = readable_name(prefix.rstrip("/").rsplit("/", 1)[-1])
        count = sum(map(len, tree.values())) + len(loose)
        raise DatasetError(f"{display}: found only 1 class folder ({top!r}, {count} images, sub-folders "
                           f"included); need at least 2: put each class's images in its own folder, "
                           f"<class>/<image>")
    if prefix:
        info["root"] = readable_name(prefix.rstrip("/"))
    return {"all": ("", tree)}, classes, not_read


def _decode_parts(src: _Source, prefix: str, parts: _Parts, in_chans: int, image_size: int, progress: bool,
                  info: dict) -> tuple[dict[str, tuple[torch.Tensor, list[tuple[str, str]]]], dict[str, str]]:
    """Each part's images decoded, in class then file order: ({split: (images, [(file, class)] of those that
    decoded)}, {file, as _readable gives it: why} for those that did not). The images with damaged EXIF data
    are noted in `info`."""
    decoded, skipped, exif = {}, {}, {}
    for key, (sub, tree) in parts.items():
        files = [(sub + n, c) for c in sorted(tree) for n in sorted(tree[c])]
        images, bad = _decode_images(src, [prefix + f for f, _ in files], in_chans, image_size, f"decode {key}",
                                     progress, exif)
        skipped.update({readable_name(n.removeprefix(prefix)): why for n, why in bad.items()})
        decoded[key] = (images, [(f, c) for f, c in files if prefix + f not in bad])
    if exif:
        info["damaged_exif"] = {"count": len(exif), "first": [
            f"{readable_name(n.removeprefix(prefix))} ({why})" for n, why in sorted(exif.items())[:_SKIPPED_LISTED]]}
    return decoded, skipped


def _note_skipped(display: str, decoded: dict[str, tuple[torch.Tensor, list[tuple[str, str]]]],
                  skipped: dict[str, str], info: dict) -> list[str]:
    """The classes left once the images that did not decode are skipped, those noted in `info`; a dataset of
    which none, or fewer than 2 classes, decode is refused."""
    total = sum(len(files) for _, files in decoded.values()) + len(skipped)
    first = min(skipped.items())
    if len(skipped) == total:
        raise DatasetError(f"{display}: none of its {total} images could be decoded (e.g. {first[0]!r}: "
                           f"{first[1]})")
    info["skipped_images"] = {"count": len(skipped), "first": [f"{n}: {why}" for n, why in
                                                               sorted(skipped.items())[:_SKIPPED_LISTED]]}
    # a class whose every image was skipped is not a class of this dataset
    classes = sorted({c for _, files in decoded.values() for _, c in files})
    if len(classes) < 2:
        raise DatasetError(f"{display}: only {len(classes)} class folder ({_readables(classes)}) has images that "
                           f"decode ({len(skipped)} do not, e.g. {first[0]!r}); need at least 2")
    return classes


def _held_out_test(every: Split, test_fraction: float, seed: int, info: dict, display: str,
                   skipped: bool) -> dict[str, Split]:
    """{"train", "test"}: a seeded stratified `test_fraction` of each class held out of `every` (the images of a
    dataset without a test/ folder), noted in `info`. DatasetError when nothing can be held out (every class has
    one image; `skipped`: images that did not decode were left out first)."""
    if not 0.0 < test_fraction < 1.0:
        raise DatasetError(f"test fraction must be between 0 and 1, got {test_fraction}")
    train_idx, test_idx = stratified_split(every.labels, test_fraction, seed)
    if not len(test_idx):   # a class of one image stays in train: with no class of two, no test split is left
        raise DatasetError(f"{display}: no class has 2 or more images{' that decode' if skipped else ''}, so none "
                           "can be held out to test on: give the classes at least 2 images each, or split them "
                           "yourself into train/<class>/ and test/<class>/")
    info.update(test_from=f"seeded stratified {test_fraction:g} of each class", split_seed=seed)
    return {"train": every.subset(train_idx), "test": every.subset(test_idx)}


def _dataset_name(src: _Source) -> str:
    """The dataset's name: its folder's or tar's, without the archive's suffixes."""
    return readable_name(_archive_stem(src.path.name))


def _archive_stem(name: str) -> str:
    """A file or folder name without an archive's suffixes (.tar, .tar.gz, .tgz, ...)."""
    for suffix in (".tar", ".gz", ".tgz", ".bz2", ".xz"):
        name = name.removesuffix(suffix)
    return name.removesuffix(".tar")


def _readables(names: list[str]) -> list[str]:
    """readable_name of each of `names`."""
    return [readable_name(n) for n in names]


def _explain(display: str, names: list[str], prefix: str = "") -> str:
    names = _readables(names)
    shown = ", ".join(names[:5]) + (" ..." if len(names) > 5 else "") if names else "nothing"
    loose = [n for n in names if "/" not in n and n.lower().endswith(IMAGE_EXTENSIONS)]
    if loose and prefix:   # every file is in one folder, descended into: that is one class
        return (f"{display}: found one class ({readable_name(prefix.rstrip('/').rsplit('/', 1)[-1])!r}, {len(loose)} "
                f"image{'s' if len(loose) != 1 else ''}); need at least 2: put each class's images in its own "
                f"folder, <class>/<image>")
    if loose:
        return (f"{display}: found images but no class folders (e.g. {loose[0]!r}): put each class's images in "
                f"its own folder, <class>/<image>, with at least 2 classes")
    return (f"{display}: not a dataset layout simsearch reads. Expected one of: the four MNIST-style IDX "
            f"files (train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], t10k-images-idx3-ubyte[.gz], "
            f"t10k-labels-idx1-ubyte[.gz]); a cifar-10-batches-py folder (data_batch_1..5, test_batch); or an "
            f"ImageFolder tree (train/<class>/<image>, test/<class>/<image>, or just <class>/<image>), or a "
            f".tar of any of these. Found: {shown}")


def stratified_split(labels: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded split of indices into (keep, held_out) with `fraction` of every class held out: at least 2 of
    a class with 4 or more members (so that retrieval within the held-out part has a match to find for
    each of them), 1 of a class with 2 or 3, and always at least as many kept. In all, round(fraction x N)
    are held out wherever those bounds allow (each class's share rounded, the rounding then evened out over
    the classes it moved most), so keeping `1 - m / N` of N keeps exactly m (`--max-train`, `--max-test`)."""
    g = torch.Generator().manual_seed(seed)
    shuffled, want, lo, hi = [], [], [], []
    for c in torch.unique(labels):
        idx = torch.nonzero(labels == c).flatten()
        shuffled.append(idx[torch.randperm(len(idx), generator=g)])
        least = 2 if len(idx) >= 4 else 1 if len(idx) >= 2 else 0
        want.append(len(idx) * fraction)
        lo.append(min(least, len(idx) - max(least, 1)))
        hi.append(len(idx) - max(least, 1))
    n = [min(max(int(round(w)), a), b) for w, a, b in zip(want, lo, hi, strict=True)]
    target = int(round(len(labels) * fraction))
    while sum(n) < target:   # one more from the class rounded down most that can give one
        room = [c for c in range(len(n)) if n[c] < hi[c]]
        if not room:
            break
        n[min(room, key=lambda c: (n[c] - want[c], c))] += 1
    while sum(n) > target:   # one fewer from the class rounded up most that can keep one more
        room = [c for c in range(len(n)) if n[c] > lo[c]]
        if not room:
            break
        n[max(room, key=lambda c: (n[c] - want[c], -c))] -= 1
    held = [idx[:k] for idx, k in zip(shuffled, n, strict=True)]
    keep = [idx[k:] for idx, k in zip(shuffled, n, strict=True)]
    return torch.sort(torch.cat(keep)).values, torch.sort(torch.cat(held)).values


# ---------------------------------------------------------------------------------------------
# Public entry point with the cache.


def cache_dir() -> Path:
    """$SIMSEARCH_CACHE or ~/.cache/simsearch."""
    return Path(os.environ.get("SIMSEARCH_CACHE", Path.home() / ".cache" / "simsearch"))


def load_dataset(path: str | os.PathLike, *, in_chans: int | None = None, image_size: int | None = None,
                 test_fraction: float = 0.2, split_seed: int = 0, use_cache: bool = True,
                 progress: bool = True, test_only: bool = False) -> Dataset:
    """Read the dataset at `path`, autodetecting its layout (IDX, CIFAR batches, ImageFolder, a tar of one).

    `in_chans` and `image_size` apply to ImageFolder data (default 3 and 32; images are decoded with
    model.to_model_array, the same preprocessing the service uses). IDX and CIFAR data keep their
    native shape. A folder of class folders without train/ and test/ gets a seeded stratified test
    split of `test_fraction`. Raises DatasetError with an explanation when the layout is unknown.
    `progress`: a progress bar on stderr while a large ImageFolder is decoded (False: none, as `--quiet`).
    `test_only`: an ImageFolder with a test/ folder of its own has only that decoded (what evaluation scores):
    its train split is empty, and `info["not_decoded"]` counts the files of the splits left (a decoding of the
    whole dataset already cached is used as it is). Other layouts are read whole.
    """
    path = Path(path).expanduser()
    src = _Source(path)
    display = readable_name(str(path))
    try:
        # The readable extensions are in the key: a tar's fingerprint does not change when HEIC support
        # is installed, but the images read from it do.
        key = hashlib.sha256(json.dumps([_CACHE_VERSION, src.fingerprint(), in_chans, image_size, test_fraction,
                                         split_seed, IMAGE_EXTENSIONS]).encode()).hexdigest()[:24]
        whole = cached = cache_dir() / "datasets" / f"{key}.safetensors"
        if use_cache and (hit := _cached_dataset(cached)) is not None:
            return hit
        if test_only:   # the test split alone is cached apart from the whole
            cached = cached.with_name(f"{key}-test.safetensors")
            if use_cache and (hit := _cached_dataset(cached)) is not None:
                return hit
        ds = _read(src, display, in_chans, image_size, test_fraction, split_seed, progress, test_only)
        if not len(ds.test):   # every reader refuses this with its reason; no run may end on an empty test split
            raise DatasetError(f"{display}: its test split holds no images: there is nothing to score a model on")
        if in_chans is not None and ds.in_chans != in_chans:
            ds = _convert_channels(ds, in_chans)
        if use_cache:   # a layout read whole (no test/ folder, IDX, CIFAR) is cached as the whole
            ds.cache_note = _cache(cached if "not_decoded" in ds.info else whole, ds)
        return ds
    finally:
        src.close()


def _read(src: _Source, display: str, in_chans, image_size, test_fraction, seed, progress: bool = True,
          test_only: bool = False) -> Dataset:
    prefix, names = common_folder(src.names)
    idx = _find_idx(names, display)
    cifar = _find_cifar(names, display)
    found = []   # every dataset the path holds: reading one of two silently would train on the wrong images
    if idx:
        found.append(f"MNIST-style IDX files in {_folder_of(idx)}")
    if cifar:
        found.append(f"CIFAR-10 batches in {_folder_of(cifar)}")
    if found and (tree := _class_tree(names)):
        found.append(f"image class folders ({', '.join(sorted(f + '/' for f in tree)[:4])}"
                     f"{', ...' if len(tree) > 4 else ''})")
    if len(found) > 1:
        raise DatasetError(f"{display}: holds {len(found)} datasets, {' and '.join(found)}; one was expected: "
                           f"pass the folder of one of them, or move the other out")
    if idx:
        return _idx_dataset(src, {k: prefix + v for k, v in idx.items()}, display)
    if cifar:
        return _cifar_dataset(src, {k: prefix + v for k, v in cifar.items()}, display)
    return _imagefolder_dataset(src, prefix, names, display, in_chans or 3, image_size or 32, test_fraction, seed,
                                progress, test_only)


def _folder_of(files: dict[str, str]) -> str:
    folder = str(PurePosixPath(next(iter(files.values()))).parent)
    return "the top folder" if folder == "." else f"{folder}/"


def _convert_channels(ds: Dataset, in_chans: int) -> Dataset:
    def conv(x: torch.Tensor) -> torch.Tensor:
        if in_chans == 1 and x.shape[1] == 3:  # ITU-R 601-2 luma, as PIL's convert("L")
            w = torch.tensor([299, 587, 114], dtype=torch.int32).view(1, 3, 1, 1)
            return ((x.int() * w).sum(1, keepdim=True) + 500).div(1000, rounding_mode="floor").clamp(0, 255).byte()
        if in_chans == 3 and x.shape[1] == 1:
            return x.expand(-1, 3, -1, -1).contiguous()
        raise DatasetError(f"cannot convert {x.shape[1]} channels to {in_chans}")

    for split in (ds.train, ds.test, ds.val):
        if split is not None:
            split.images = conv(split.images)
    return ds


def _cached_dataset(path: Path) -> Dataset | None:
    """The dataset cached at `path`, or None where there is none or it cannot be read (it is then decoded again)."""
    try:
        return _load_cached(path) if path.is_file() else None
    except Exception:  # a damaged or unreadable cache entry is rebuilt
        return None


def _cache(path: Path, ds: Dataset) -> str | None:
    """Save `ds` to the cache file `path`; None, or where the cache cannot be written (a read-only home, an odd
    $SIMSEARCH_CACHE, a full disk), the note to show: the cache only saves decoding again, so the run goes on."""
    from safetensors import SafetensorError   # what safetensors raises for a file it cannot write

    try:
        _save_cached(path, ds)
    except (OSError, SafetensorError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        return (f"could not cache the decoded dataset in {path.parent} ({why}): it will be decoded again next "
                "time; set SIMSEARCH_CACHE to a folder that can be written")
    return None


def _save_cached(path: Path, ds: Dataset) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {k: getattr(ds, k) for k in ("name", "layout", "class_names", "source", "info")}
    splits = {"train": ds.train, "test": ds.test, **({"val": ds.val} if ds.val is not None else {})}
    meta.update({f"{k}_names": split.names for k, split in splits.items()})
    tensors = {f"{k}_{part}": t for k, split in splits.items()
               for part, t in (("images", split.images.contiguous()), ("labels", split.labels))}
    write_whole(path, lambda tmp: save_file(tensors, str(tmp), metadata={"dataset": json.dumps(meta)}))


def _load_cached(path: Path) -> Dataset:
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), "pt") as f:
        meta = json.loads(f.metadata()["dataset"])
    t = load_file(str(path))

    def split(k: str) -> Split | None:
        return Split(t[f"{k}_images"], t[f"{k}_labels"], meta[f"{k}_names"]) if f"{k}_images" in t else None

    return Dataset(meta["name"], meta["layout"], split("train"), split("test"), meta["class_names"], meta["source"],
                   meta["info"], split("val"))


def download_dataset(name: str, root: str | os.PathLike) -> Path:
    """Download MNIST, Fashion-MNIST or CIFAR-10 with torchvision into `root` (only when the user asks:
    `simsearch train --download`). Returns the folder to pass to load_dataset."""
    from torchvision import datasets

    root = Path(root)
    makers: dict[str, Callable] = {"mnist": datasets.MNIST, "fashion-mnist": datasets.FashionMNIST,
                                   "cifar10": datasets.CIFAR10}
    if name not in makers:
        raise DatasetError(f"cannot download {name!r}; known: {sorted(makers)}")
    made = {"mnist": [root / "MNIST"], "fashion-mnist": [root / "FashionMNIST"],
            "cifar10": [root / "cifar-10-batches-py", root / "cifar-10-python.tar.gz"]}[name]
    new = [p for p in made if not p.exists()]
    try:
        for train in (True, False):
            makers[name](str(root), train=train, download=True)
    except BaseException:   # no network, or interrupted: what this call began is not left to look like a dataset
        for path in new:
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        raise
    return {"mnist": root / "MNIST" / "raw", "fashion-mnist": root / "FashionMNIST" / "raw",
            "cifar10": root / "cifar-10-batches-py"}[name]
