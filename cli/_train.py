"""`simsearch train DATA`, `simsearch evaluate ARTIFACT DATA`, `simsearch experiment table1|ablation`."""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

from ._errors import CliError

# The import names of the `train` extra's packages (pyproject.toml). A slim install (the container's)
# has none of them; each command below says so up front instead of failing mid-run.
_TRAIN_MODULES = {"torchvision": "torchvision", "pytorch_metric_learning": "pytorch-metric-learning",
                  "sklearn": "scikit-learn", "kornia": "kornia", "timm": "timm"}


def _import_training(command: str):
    """The training package, or a CliError that names the missing packages and the install command."""
    import importlib.util

    missing = [pkg for mod, pkg in _TRAIN_MODULES.items() if importlib.util.find_spec(mod) is None]
    if missing:
        raise CliError(f"'simsearch {command}' needs the training extra, and {', '.join(missing)} "
                       f"{'is' if len(missing) == 1 else 'are'} not installed: pip install 'simsearch[train]'")
    import training

    return training


def _kv(text: str) -> tuple[str, object]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    k, v = text.split("=", 1)
    try:
        return k, json.loads(v)
    except json.JSONDecodeError:
        return k, v


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a zoo model on a dataset and write a model artifact",
                       description="Train any zoo model with any of the built-in losses (--loss), or a weighted "
                                   "sum of several. DATA is a "
                                   "folder with MNIST-style IDX files, a cifar-10-batches-py folder, an ImageFolder "
                                   "tree (train/<class>/..., test/<class>/..., or just <class>/...), or a .tar of one.")
    p.add_argument("data", help="dataset path (see above)")
    p.add_argument("--out", "-o", required=True, help="artifact to write (.safetensors); also writes .metrics.json")
    p.add_argument("--model", default=None, help="zoo architecture (simsearch models; default hybrid1)")
    p.add_argument("--loss", default=None, help="ce, ms, triplet, contrastive, circle, supcon, nsoftmax, proxy_anchor, "
                                                "arcface, pddm, or several joined by + (ce+ms, the default; "
                                                "docs/training.md)")
    p.add_argument("--preset", default="default", help="default (our recipe) or paper (Adam 1e-3, no augmentation)")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--weight-decay", type=float, default=None)
    p.add_argument("--schedule", default=None, help="none, cosine or step")
    p.add_argument("--no-augment", action="store_true", help="turn augmentation off")
    p.add_argument("--fold-norm", action="store_true",
                   help="train with BatchNorm after every convolution and before the embedding layer, folded into "
                        "the weights of the artifact (which keeps the plain architecture and parameter count)")
    p.add_argument("--init", default=None, metavar="ARTIFACT",
                   help="start from this artifact's embedding network (its path, or the name of a bundled one: "
                        "`simsearch models` lists them) instead of random weights (fine-tuning; "
                        "its normalisation kept); --model, --arch, the embedding size, --in-chans and "
                        "--image-size default to the artifact's")
    p.add_argument("--teacher", action="append", default=[], metavar="ARTIFACT",
                   help="distil from this artifact (its path, or the name of a bundled one; a better model for the "
                        "same images; repeat for an ensemble): "
                        "the student also learns its in-batch similarities (--set distill_weight=W, "
                        "distill_temperature=T; 1.0, 0.1) and, with --set distill_logits_weight=W (0; "
                        "distill_logits_temperature=T, 4.0), its classifier's soft labels")
    p.add_argument("--val-fraction", type=float, default=None,
                   help="share of the training images held out to pick the best epoch (0: the last epoch); a val/ "
                        "folder beside train/ and test/ is used instead")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads, at least 1 (default: torch's)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when present)")
    p.add_argument("--nproc", type=int, default=1, metavar="N",
                   help="train in N processes (torchrun, DistributedDataParallel), each on its share of every batch: "
                        "one per GPU, or on a CPU one per core, each with one thread (default 1)")
    p.add_argument("--image-size", type=int, default=None, help="ImageFolder images are decoded to this size (32)")
    p.add_argument("--in-chans", type=int, default=None, choices=(1, 3), help="ImageFolder channels (3)")
    p.add_argument("--max-train", type=int, default=None, help="use at most this many training images")
    p.add_argument("--max-test", type=int, default=None, help="evaluate on at most this many test images")
    p.add_argument("--stop-after", type=int, default=None,
                   help="stop after this many epochs, keeping OUT.ckpt to --resume later")
    p.add_argument("--arch", action="append", type=_kv, default=[], metavar="KEY=VALUE",
                   help="model builder argument, e.g. --arch stride=1 --arch act=relu --arch norm=true")
    p.add_argument("--set", action="append", type=_kv, default=[], metavar="KEY=VALUE",
                   help="any other TrainConfig field, e.g. --set loss_kwargs='{\"ms_weight\": 2}'")
    p.add_argument("--name", default=None, help="artifact name (default MODEL-DATASET)")
    p.add_argument("--resume", action="store_true", help="continue from OUT.ckpt when it exists")
    p.add_argument("--download", default=None, choices=("mnist", "fashion-mnist", "cifar10"),
                   help="first download this dataset with torchvision into DATA (needs internet)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_train)

    p = sub.add_parser("evaluate", help="retrieval metrics and test losses of an artifact on a dataset's test split")
    p.add_argument("artifact", help="model artifact (.safetensors), or the name of a bundled one (`simsearch "
                                    "models` lists them; a file of that name wins)")
    p.add_argument("data", help="dataset path (same layouts as train)")
    p.add_argument("--device", default=None)
    p.add_argument("--max-test", type=int, default=None, help="a seeded stratified subset of this many test images")
    p.add_argument("--seed", type=int, default=None,
                   help="the seed of the --max-test subset (default: the one the artifact was trained with, so "
                        "that it is the subset `simsearch train --max-test` scored)")
    p.add_argument("--test-fraction", type=float, default=None, metavar="SHARE",
                   help="for a folder of class folders without test/: the share of each class held out as the test "
                        "split (default: the one the artifact was trained with, so that on its own training data "
                        "the images its training held out are scored)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads, at least 1 (default: torch's)")
    p.add_argument("--quiet", action="store_true", help="no progress bar while a large dataset is decoded")
    # model.TTA_MODES, spelt out: building the parser must not import torch
    p.add_argument("--tta", default=None, choices=("none", "hflip"),
                   help="test-time augmentation (default: the artifact's own, as the service embeds); hflip averages "
                        "with the embedding of the mirrored image")
    p.add_argument("--json", dest="json_out", default=None, help="also write the metrics to this JSON file")
    p.add_argument("--mistakes-sheet", default=None, metavar="PNG",
                   help="also draw the test images whose nearest neighbour is of another class, the nearest first, "
                        "each with its neighbours, into this PNG: duplicates filed under two classes and wrong "
                        "labels come first")
    p.add_argument("--mistakes-rows", type=int, default=12, help="rows of the mistakes sheet (default 12)")
    p.add_argument("--map", default=None, metavar="PNG",
                   help="also draw a map of the test images, placed by t-SNE of their embeddings and framed in "
                        "their class's colour, into this PNG, with how far it can be trusted")
    p.add_argument("--map-points", type=int, default=2000, help="test images on the map (10..5000, default 2000, "
                                                                "a seeded sample; t-SNE takes about half a minute a "
                                                                "thousand on a 2-core CPU)")
    p.add_argument("--out", default=None, help="also write a copy of the artifact that uses this --tta and records "
                                               "these scores (same weights)")
    p.add_argument("--name", default=None, help="with --out: the copy's artifact name (default the same)")
    p.add_argument("--centre", type=float, default=None, metavar="SHARE",
                   help="first take this share (0..1) of the training images' mean embedding off every embedding, "
                        "folded into the weights that are scored and that --out writes")
    p.set_defaults(func=_evaluate)

    p = sub.add_parser("experiment", help="regenerate the paper's tables (table1, table2, ablation)")
    p.add_argument("which", choices=("table1", "table2", "ablation"))
    p.add_argument("--data-root", default=None, help="folder with mnist/, fashion-mnist/, cifar10-jpeg.tar "
                                                     "(default ../shared/data)")
    p.add_argument("--epochs", default=None, help="epochs per run, or MNIST,FASHION,CIFAR (default the paper's 20,20,25)")
    p.add_argument("--preset", default="paper")
    p.add_argument("--models", default=None, help="comma-separated subset of the table's models")
    p.add_argument("--losses", default=None, help="comma-separated subset of ce,ms")
    p.add_argument("--datasets", default=None, help="comma-separated subset of mnist,fashion-mnist,cifar10")
    p.add_argument("--max-train", type=int, default=None, help="train on at most this many images per run")
    p.add_argument("--max-test", type=int, default=None, help="evaluate on this many test images (default all)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out-dir", default=None,
                   help="where the Markdown and JSON go (default docs/results; a reduced run, with fewer --epochs, "
                        "--max-train, --max-test, --datasets, --models, --losses or another --preset, writes into "
                        "its --work-dir instead, so that it never replaces the full tables)")
    p.add_argument("--work-dir", default=None,
                   help="where per-run artifacts go (default a cache folder); processes sharing one never "
                        "train the same run")
    p.set_defaults(func=_experiment)


def _train(args) -> int:
    training = _import_training("train")

    args.init = args.init and _artifact_option("--init", args.init)
    args.teacher = [_artifact_option("--teacher", t) for t in args.teacher]
    data = _dataset_path(args, training)
    cfg = _train_config(args, training)
    out = _checked_out(args)
    if int(os.environ.get("WORLD_SIZE", "1")) == 1:   # said once, not by each of torchrun's processes
        _say_replacing(out)
    if args.nproc > 1 and int(os.environ.get("WORLD_SIZE", "1")) == 1:  # not yet one of torchrun's processes
        return _launch(args, cfg, data)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        import faulthandler

        faulthandler.enable()   # a process that crashes (SIGABRT, SIGSEGV) writes where, for _launch to show
        _end_with_launcher()
    from training import ModelArgumentError

    started = time.time()
    try:
        training.train(cfg, data, out, name=args.name, resume=args.resume, progress=not args.quiet,
                       stop_after=args.stop_after)
    except training.DatasetError as exc:
        raise CliError(str(exc)) from None
    except ModelArgumentError as exc:  # said as the option was given
        raise CliError(_arch_error(exc)) from None
    except ValueError as exc:  # e.g. a checkpoint written with another configuration
        raise CliError(str(exc)) from None
    except KeyboardInterrupt:   # said with what to run next, when this run kept an epoch to go on from
        _say_interrupted(out, started, args.resume)
        return 130
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        _end_torchrun_process()
    return 0


def _artifact_option(option: str, given: str) -> str:
    """The artifact that --init or --teacher `given` means, as serve --model and evaluate find it (model.find_artifact:
    a path that exists as given, else a bundled model's name, resolved to its file); CliError naming the option, and
    the bundled names nearest first, when it is neither: before the dataset is read or anything trained."""
    import model

    try:
        found = model.find_artifact(given)
    except model.ArtifactError as exc:
        raise CliError(f"{option}: {exc}") from None
    return given if Path(given).exists() else str(found)


def _dataset_path(args, training) -> Path:
    """DATA, after downloading --download's dataset into it when asked to."""
    data = Path(args.data)
    if args.download:
        try:
            data = training.download_dataset(args.download, data)
        except Exception as exc:  # network errors: say what failed
            raise CliError(f"could not download {args.download} into {args.data}: {exc}") from None
    return data


def _train_config(args, training):
    """`simsearch train`'s options as a validated training.TrainConfig (the preset's values where an option is
    left out), refused as the options were given."""
    overrides = _overrides(args)
    known = set(training.TrainConfig.model_fields)
    for key, _ in args.set:
        if key not in known:
            raise CliError(f"--set {key}: not a training setting; the settings are {', '.join(sorted(known))}")
    overrides.update(dict(args.set))
    if args.arch:
        overrides["arch_kwargs"] = {**overrides.get("arch_kwargs", {}), **dict(args.arch)}
    try:
        cfg = training.preset(args.preset, **overrides).validate()
    except training.ConfigError as exc:
        raise CliError(_config_error(exc)) from None
    except (TypeError, ValueError) as exc:
        hint = (" (a loss of your own: name the module or .py file that registers it in SIMSEARCH_MODEL_MODULES)"
                if str(exc).startswith("unknown loss") else "")
        raise CliError(f"{exc}{hint}") from None
    import model

    if not model.is_model(cfg.model):
        raise CliError(f"unknown model {cfg.model!r}; known: {', '.join(model.list_models())} (an architecture of "
                       "your own: name the module or .py file that registers it in SIMSEARCH_MODEL_MODULES)")
    return cfg


def _overrides(args) -> dict:
    """The TrainConfig fields that the options (--set and --arch aside) give: those left out are not among them;
    with --init and neither --model nor --arch, the architecture is the artifact's."""
    overrides = {k: v for k, v in {
        "model": args.model, "loss": args.loss, "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr,
        "weight_decay": args.weight_decay, "schedule": args.schedule, "val_fraction": args.val_fraction,
        "seed": args.seed, "threads": args.threads, "device": args.device, "image_size": args.image_size,
        "in_chans": args.in_chans, "max_train": args.max_train,
        "max_test": args.max_test, "init_from": args.init,
        "teachers": args.teacher or None}.items() if v is not None}
    if args.no_augment:
        overrides["augment"] = False
    if args.fold_norm:
        overrides["fold_norm"] = True
    if args.init and args.model is None and not args.arch:
        overrides.update(_architecture_of(args.init, overrides))
    return overrides


def _checked_out(args) -> Path:
    """--out, refused (as are --nproc and --stop-after out of their range) before anything is trained: it must
    be a .safetensors file that this run may write (training.check_run)."""
    out = Path(args.out)
    if out.suffix != ".safetensors":
        raise CliError(f"--out must end in .safetensors, got {args.out!r}")
    if args.nproc < 1:
        raise CliError(f"--nproc must be at least 1, got {args.nproc}")
    if args.stop_after is not None and args.stop_after < 1:
        raise CliError(f"--stop-after must be at least 1 epoch, got {args.stop_after}")
    from training import check_run

    try:
        check_run(out, args.stop_after)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    _check_writable("--out", out)
    return out


def _say_replacing(out: Path) -> None:
    """One line when --out is an artifact already, naming its model id: a gallery built with it opens under that
    model only, and once the file is replaced `index reembed` is the way to move such a gallery."""
    if not out.is_file():
        return
    import hashlib

    import model

    try:
        name = model.read_meta(out).name
    except model.ArtifactError:
        print(f"note: --out {out} exists (not a readable artifact); this run replaces it", file=sys.stderr)
        return
    h = hashlib.sha256()
    with open(out, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    print(f"note: this run replaces {out} (model {name}@{h.hexdigest()[:12]}) when it ends: a gallery built with "
          f"it opens under that model only (`simsearch index reembed NEWDATA --data DATA --model {out}` moves one "
          "to the new model; another --out keeps both)", file=sys.stderr)


def _check_writable(option: str, path: Path) -> None:
    """CliError naming `option` and `path`, before any work, unless a file can be written at `path`: its folder
    is made when missing (as writing it would), and a file is made and removed there to be sure."""
    if path.is_dir():
        raise CliError(f"{option} {path}: is a folder; give a file name")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CliError(f"{option} {path}: cannot write there ({_why_not(path, exc)})") from None
    try:
        fd, probe = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".probe")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise CliError(f"{option} {path}: cannot write there ({exc.strerror or exc} in {path.parent})") from None


def _why_not(path: Path, exc: OSError) -> str:
    """Why `path`'s folder could not be made: a file where a folder of its path should be, named, or the
    system's reason with the folder it was making."""
    for folder in reversed(path.parents):
        if folder.exists() and not folder.is_dir():
            return f"{folder} is a file, not a folder"
    return f"{exc.strerror or exc}: {exc.filename}" if exc.filename else str(exc.strerror or exc)


def _say_interrupted(out: Path, started: float, resume: bool) -> None:
    """What to run next after Ctrl-C, when this run (begun at `started`) kept an epoch to go on from."""
    ckpt = out.with_name(out.name + ".ckpt")
    if ckpt.exists() and ckpt.stat().st_mtime >= started:
        again = "the same command again" if resume else "the same command with --resume"
        print(f"interrupted; {ckpt} holds the last finished epoch: run {again} to go on from it", file=sys.stderr)
    else:
        print("interrupted before this run finished an epoch (nothing of it kept to go on from)", file=sys.stderr)


def _config_error(exc) -> str:
    """A training.ConfigError as `simsearch train` says it: a setting that has an option of its own is
    named as the option (the others are given as --set FIELD=VALUE, under the field's name)."""
    if exc.field == "teachers" and not exc.value:
        return str(exc).replace("(teachers is empty)", "(--teacher ARTIFACT)")
    return str(exc)


def _arch_error(exc) -> str:
    """A training.ModelArgumentError as one line naming the --arch option and its value as typed."""
    shown = exc.value if isinstance(exc.value, str) else json.dumps(exc.value)
    default = exc.default
    if isinstance(default, tuple):
        default = list(default)
    hint = f"; its default is {json.dumps(default) if not isinstance(default, str) else default}" \
        if default is not None else ""
    return f"--arch {exc.key}={shown}: {exc.model} cannot be built with it ({exc.reason}){hint}"


def _end_with_launcher() -> None:
    """In a process `--nproc` started: be sent SIGTERM when the `simsearch train` that started it dies (kill -9, the
    OOM killer), which holds OUT's lock for it; otherwise it would train on and write OUT without the lock.
    Linux only (prctl's PR_SET_PDEATHSIG); elsewhere it does nothing. torchrun starts the processes from the
    launcher's main thread, whose end (the process's) is what the signal follows."""
    launcher = os.environ.get("SIMSEARCH_TRAIN_LAUNCHER")
    if not launcher or not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        if ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM), 0, 0, 0) != 0:   # PR_SET_PDEATHSIG
            return
    except (OSError, AttributeError):
        return
    if str(os.getppid()) != launcher:   # it died before the line above
        os.kill(os.getpid(), signal.SIGTERM)


def _end_torchrun_process() -> None:
    """End one of torchrun's training processes, its work done and written, without the interpreter's
    teardown: there, about one process in 150 aborted on this machine ("terminate called without an
    active exception": a C++ thread of torch.distributed destroyed while still joinable, with no Python
    frame left), which torchrun reports as a failed training."""
    import logging

    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(0)


def _launch(args, cfg, data: Path) -> int:
    """Run this same command in `args.nproc` processes under torchrun (one machine), showing the main process's
    output; each of them trains its share (training/_distributed.py)."""
    import torch
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    n = args.nproc
    if cfg.device != "cpu" and torch.cuda.is_available():
        if cfg.device not in (None, "cuda"):
            raise CliError(f"--nproc {n} trains on cuda:0 ... cuda:{n - 1}, one process each; give --device cuda "
                           f"or cpu, not {cfg.device!r}")
        if n > torch.cuda.device_count():
            raise CliError(f"--nproc {n} needs a GPU per process and there are {torch.cuda.device_count()}; "
                           f"give --nproc {torch.cuda.device_count()}, or --device cpu")
    # What can be checked before starting the processes is (the dataset is read, and cached for them, here).
    from training import ModelArgumentError, check_processes

    try:
        check_processes(cfg, data, n, progress=not args.quiet)
    except ModelArgumentError as exc:
        raise CliError(_arch_error(exc)) from None
    except ValueError as exc:  # DatasetError too
        raise CliError(str(exc)) from None
    from training import lock_run, unlock_run

    try:   # the processes' run holds OUT's lock through this one (train() takes none in them)
        lock = lock_run(args.out)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    # The main process writes to the console; the others' output goes to files, shown when one fails.
    logs = tempfile.mkdtemp(prefix="simsearch-train-")
    try:
        launch = parse_args(["--standalone", f"--nproc-per-node={n}", "--local-ranks-filter=0", "--log-dir", logs,
                             "--redirects", ",".join(f"{r}:3" for r in range(1, n)), "--module", "cli"])
        launch.training_script_args = list(args.argv)  # set, not parsed: torchrun's parser would read our options
        os.environ["SIMSEARCH_TRAIN_LAUNCHER"] = str(os.getpid())   # the processes end with this one (_train)
        run(launch)
    except SignalException as exc:   # Ctrl-C or a kill reached torchrun, which has stopped the processes; the main
        return 128 + int(exc.sigval)   # one said what to run next (interrupted; OUT.ckpt holds ...) as one alone does
    except ChildFailedError as exc:
        main = exc.failures.get(0)
        if main is not None and main.exitcode == 2:  # the main process said what was wrong, above
            return 2
        if main is not None and main.exitcode > 0:  # not stopped by a signal because another failed
            raise CliError(f"the main training process failed (exit code {main.exitcode}); its output is above") from None
        rank, first = exc.get_first_failure()
        how = f"exit code {first.exitcode}"
        if first.exitcode < 0 and -first.exitcode in signal.valid_signals():
            how += f", {signal.Signals(-first.exitcode).name}"
        raise CliError(f"training process {rank} of {n} failed first ({how}); "
                       + _last_lines(Path(logs), rank)) from None
    finally:
        os.environ.pop("SIMSEARCH_TRAIN_LAUNCHER", None)
        shutil.rmtree(logs, ignore_errors=True)
        unlock_run(args.out, lock)
    return 0


def _last_lines(logs: Path, rank: int, n: int = 20, stack: int = 60) -> str:
    """The end of process `rank`'s error output (else of its output), as torchrun's --redirects wrote it: its
    last `n` lines, or, when it died with faulthandler's report, that report from its first line (what killed it)
    on, up to `stack` lines (where it was: a deep stack would push the first line out of the last 20)."""
    for name in ("stderr.log", "stdout.log"):
        # faulthandler's list of every extension module is one very long line that says nothing here
        lines = [line for f in logs.glob(f"*/attempt_*/{rank}/{name}")
                 for line in f.read_text(errors="replace").splitlines()
                 if line.strip() and not line.startswith("Extension modules:")]
        if lines:
            fatal = [i for i, line in enumerate(lines) if line.startswith("Fatal Python error")]
            shown = lines[fatal[-1]:fatal[-1] + stack] if fatal else lines[-n:]
            return f"the last of its {name[:6]}:\n  " + "\n  ".join(shown)
    return "it wrote nothing"


def _architecture_of(artifact: str, overrides: dict) -> dict:
    """The TrainConfig fields that make `artifact`'s architecture, for those not given on the command line."""
    import model

    try:
        meta = model.read_meta(artifact)
    except model.ArtifactError as exc:
        raise CliError(f"--init: {exc}") from None
    found = {"model": meta.arch, "arch_kwargs": dict(meta.arch_kwargs), "embed_dim": meta.embed_dim,
             "in_chans": meta.in_chans, "image_size": meta.image_size}
    return {k: v for k, v in found.items() if k not in overrides}


def _evaluate(args) -> int:
    import model

    training = _import_training("evaluate")
    _check_evaluate_options(args)
    for option, path in (("--json", args.json_out), ("--out", args.out), ("--mistakes-sheet", args.mistakes_sheet),
                         ("--map", args.map)):
        if path:   # before the evaluation, which can take long: its results must have somewhere to go
            _check_writable(option, Path(path))
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    try:
        artifact = model.find_artifact(args.artifact)   # a file, else a bundled model's name (hybrid1-mnist)
        res = training.evaluate_artifact(artifact, args.data, device=args.device, max_test=args.max_test,
                                         seed=args.seed, test_fraction=args.test_fraction,
                                         tta=args.tta, out=args.out, out_name=args.name, centre=args.centre,
                                         sheet=args.mistakes_sheet, sheet_rows=args.mistakes_rows,
                                         map_path=args.map, map_points=args.map_points,
                                         log=lambda line: print(line, file=sys.stderr), progress=not args.quiet)
    except (model.ArtifactError, training.DatasetError, ValueError) as exc:
        raise CliError(str(exc)) from None
    except OSError as exc:  # e.g. --out in a folder that cannot be written; the message names the file
        raise CliError(str(exc)) from None
    if args.json_out:  # before printing: a closed stdout (`| head`) must not lose the file
        try:
            Path(args.json_out).write_text(json.dumps(training.json_nulls(res), indent=2, allow_nan=False) + "\n")
        except OSError as exc:   # checked up front, so a disk that filled since
            raise CliError(f"--json {args.json_out}: cannot write it ({exc.strerror or exc})") from None
    print(training.format_metrics(res))
    _say_written(args, res)
    return 0


def _check_evaluate_options(args) -> None:
    """`simsearch evaluate`'s refusals of options out of their range or that do not go together, before
    anything is read."""
    if args.name and not args.out:
        raise CliError("--name names the copy that --out writes; give --out too")
    if args.centre is not None and not 0 <= args.centre <= 1:
        raise CliError(f"--centre is a share of the mean embedding in [0, 1], got {args.centre}")
    if args.mistakes_sheet is not None and not args.mistakes_sheet.lower().endswith(".png"):
        raise CliError(f"--mistakes-sheet writes a PNG: give a name ending in .png, got {args.mistakes_sheet!r}")
    if not 1 <= args.mistakes_rows <= 1000:
        raise CliError(f"--mistakes-rows must be 1..1000, got {args.mistakes_rows}")
    if args.map is not None and not args.map.lower().endswith(".png"):
        raise CliError(f"--map writes a PNG: give a name ending in .png, got {args.map!r}")
    if args.test_fraction is not None and not 0 < args.test_fraction < 1:
        raise CliError(f"--test-fraction is a share of each class, between 0 and 1, got {args.test_fraction}")
    if args.max_test is not None and args.max_test < 1:
        raise CliError(f"--max-test must be at least 1 (leave it out for every test image), got {args.max_test}")
    if not 10 <= args.map_points <= 5000:
        raise CliError(f"--map-points must be 10..5000, got {args.map_points}")
    if args.threads is not None and args.threads < 1:
        raise CliError(f"--threads must be at least 1, got {args.threads}")


def _say_written(args, res: dict) -> None:
    """A line for each file `simsearch evaluate` wrote beside the metrics: the mistakes sheet, the map, the copy."""
    if args.mistakes_sheet:
        print(f"wrote {args.mistakes_sheet}: {res['mistakes_sheet']['rows']} queries with their neighbours")
    if args.map:
        m = res["map"]
        print(f"wrote {args.map}: {m['points']:,} test images; trustworthiness {m['trustworthiness']:.3f}; nearest "
              f"neighbour of the same class {m['same_class_nearest_on_map']:.3f} on the map, "
              f"{m['same_class_nearest_in_embedding']:.3f} in the embedding")
    if args.out:
        print(f"wrote {args.out} (tta {res['tta']})")


def _experiment(args) -> int:
    training = _import_training("experiment")
    try:
        cfg = _experiment_config(args)
        md, js = training.run_experiment(cfg, log=print)
    except training.ConfigError as exc:
        raise CliError(_as_option(exc)) from None
    except ValueError as exc:
        raise CliError(str(exc)) from None
    print(f"wrote {md} and {js}")
    reductions = [f"--{what.replace('_', '-')} {getattr(args, what)}" for what in cfg.reduced()]
    if reductions and args.out_dir is None:
        full = cfg.RESULTS_DIR
        print(f"a reduced run ({', '.join(reductions)}), so its tables went to its work folder, not "
              f"{full}/ (which holds the full ones); give --out-dir {full} to write them there")
    return 0


def _experiment_config(args):
    """`simsearch experiment`'s options as a training.ExperimentConfig (the options left out take its defaults)."""
    from training import ExperimentConfig

    def names(text: str | None) -> list[str] | None:   # "mnist,cifar10"
        return [t.strip() for t in text.split(",") if t.strip()] if text else None

    given = {"datasets": names(args.datasets), "losses": names(args.losses), "epochs": _epochs(args.epochs),
             "models": names(args.models) if args.which == "table1" else None,   # the ablation's is hybrid1
             **{what: Path(getattr(args, what)) for what in ("data_root", "out_dir", "work_dir")
                if getattr(args, what)}}
    command = "simsearch " + " ".join(sys.argv[1:]) if sys.argv and sys.argv[0].endswith("simsearch") else \
        " ".join(sys.argv)
    return ExperimentConfig(args.which, preset=args.preset, max_train=args.max_train, max_test=args.max_test,
                            threads=args.threads, command=command, **{k: v for k, v in given.items() if v is not None})


def _epochs(text: str | None) -> dict[str, int] | None:
    """--epochs N or MNIST,FASHION,CIFAR as epochs per dataset."""
    from training import ExperimentConfig

    if not text:
        return None
    try:
        parts = [int(p) for p in text.split(",")]
    except ValueError:
        parts = []
    if len(parts) not in (1, 3):
        raise CliError(f"--epochs takes N or MNIST,FASHION,CIFAR, got {text!r}")
    return dict(zip(ExperimentConfig.PAPER_EPOCHS, parts * 3 if len(parts) == 1 else parts, strict=True))


def _as_option(exc) -> str:
    """A training.ConfigError about an ExperimentConfig setting, which begins with the setting's name, begun with
    its option instead (data_root: --data-root)."""
    from training import ExperimentConfig

    said, field = str(exc), exc.field
    if field in {f.name for f in dataclasses.fields(ExperimentConfig)} - {"which"} and said.startswith(field + " "):
        return f"--{field.replace('_', '-')}{said[len(field):]}"
    return said
