"""Training speed: seconds per epoch of Hybrid-1 on CPU (and on CUDA when present), per dataset.

    .venv/bin/python bench/bench_train.py [--datasets mnist,fashion-mnist,cifar10] [--steps 60]
        [--trainer-max-train 0] [--threads 0] [--augment-reference] [--no-cpu] [--no-trainer]
        [--cuda-epochs 3] [--fast-batches 128,512] [--result train]

Per dataset (the real data from ../shared/data, decoded once into training's uint8 cache):
- minimal loop: Hybrid-1 + a Linear cross-entropy head, AdamW, batch 128, uint8 tensors normalised
  on the fly, no augmentation; `--steps` timed steps (after 3 warm-up steps), extrapolated to one
  epoch of the full training split. Run for the model as it is and with the textbook unfold
  involution forward (_common.unfold_involution_forward) as the reference, interleaved in blocks
  of 10 steps.
- the project's trainer (training.train, default preset, loss ce+ms, 1 epoch, no validation
  split): the epoch's own wall time from its history (augmentation and sampling included), on
  `--trainer-max-train` images (0 = the whole split) and scaled to the full split. With
  `--augment-reference`, also with torchvision's per-image transforms (the trainer before kornia),
  interleaved, best of two each.
On CUDA (when torch sees a GPU) three more, each a whole epoch of the full training split timed after
one warm-up epoch (`--cuda-epochs` timed epochs, median):
- eager: the minimal loop on the GPU (plain fp32, data copied per batch);
- fast: the images on the GPU as uint8, channels-last, bf16 autocast, `torch.compile`d model and head,
  batch 128 and 512 (the issue's recipe for "well under 1 s an epoch");
- trainer: the project's trainer on the GPU (default preset, ce+ms, batched kornia augmentation, fp16
  autocast, channels-last, images on the GPU), its own per-epoch wall time.
Without a GPU that part is reported as not measured. `--result NAME` writes docs/results/bench_NAME.json.
"""
from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile
import time
import types
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import _common  # noqa: E402
import model  # noqa: E402

DATASETS = {"mnist": "mnist", "fashion-mnist": "fashion-mnist", "cifar10": "cifar10-jpeg.tar"}


def _with_unfold_involution(net: torch.nn.Module) -> torch.nn.Module:
    net = copy.deepcopy(net)
    for m in net.modules():
        if isinstance(m, model.Involution):
            m.forward = types.MethodType(_common.unfold_involution_forward, m)
    return net


def _channel_stats(imgs: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std (1, C, 1, 1) of uint8 images scaled to [0, 1], on `device`."""
    x = imgs.float().div(255.0)
    return (x.mean(dim=(0, 2, 3)).view(1, -1, 1, 1).to(device), x.std(dim=(0, 2, 3)).view(1, -1, 1, 1).to(device))


def minimal_loop(ds, steps: int, device: torch.device, batch: int = 128, block: int = 10) -> dict:
    """Seconds per step of a plain CE training loop, the model's involution forward against the
    textbook unfold forward, interleaved."""
    torch.manual_seed(0)
    base = model.create_model("hybrid1", in_chans=ds.in_chans)
    nets = {"current": base, "unfold": _with_unfold_involution(base)}
    imgs, labels = ds.train.images, ds.train.labels
    mean, std = _channel_stats(imgs, device)
    state = {}
    for name, net in nets.items():
        net = net.to(device).train()
        head = torch.nn.Linear(256, ds.num_classes).to(device)
        opt = torch.optim.AdamW(list(net.parameters()) + list(head.parameters()), lr=1e-3)
        state[name] = (net, head, opt)
    gen = torch.Generator().manual_seed(0)

    def step(name):
        net, head, opt = state[name]
        idx = torch.randint(0, len(labels), (batch,), generator=gen)
        xb = (imgs[idx].to(device).float().div_(255.0) - mean) / std
        loss = F.cross_entropy(head(net(xb)), labels[idx].to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    for name in state:
        for _ in range(3):
            step(name)
    times = {name: [] for name in state}
    done = 0
    while done < steps:
        for name in state:
            t0 = time.perf_counter()
            for _ in range(block):
                step(name)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times[name].append((time.perf_counter() - t0) / block)
        done += block
    steps_per_epoch = len(labels) // batch
    out = {}
    for name, ts in times.items():
        ts = sorted(ts)
        med = ts[len(ts) // 2]
        out[name] = {"sec_per_step_median": med, "sec_per_step_best": ts[0],
                     "sec_per_epoch_median": med * steps_per_epoch, "sec_per_epoch_best": ts[0] * steps_per_epoch}
    out["steps_per_epoch"] = steps_per_epoch
    out["speedup_over_unfold"] = out["unfold"]["sec_per_step_median"] / out["current"]["sec_per_step_median"]
    return out


def cuda_fast_epochs(ds, batch: int, epochs: int, device: str = "cuda") -> dict:
    """Seconds per full epoch of Hybrid-1 + CE head with everything the GPU offers: data resident on the
    device, channels-last, bf16 autocast, compiled model. The first epoch (compilation) is reported apart."""
    device = torch.device(device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    torch.manual_seed(0)
    net = model.create_model("hybrid1", in_chans=ds.in_chans).to(device).to(memory_format=torch.channels_last)
    head = torch.nn.Linear(256, ds.num_classes).to(device)
    opt = torch.optim.AdamW(list(net.parameters()) + list(head.parameters()), lr=1e-3, fused=device.type == "cuda")
    imgs, labels = ds.train.images.to(device), ds.train.labels.to(device)
    mean, std = _channel_stats(imgs, device)
    fwd = torch.compile(lambda x: head(net(x)))
    steps = len(labels) // batch

    def epoch() -> float:
        sync()
        t0 = time.perf_counter()
        order = torch.randperm(len(labels), device=device)
        for i in range(steps):
            idx = order[i * batch:(i + 1) * batch]
            xb = ((imgs[idx].float().div_(255.0) - mean) / std).contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=torch.bfloat16):
                loss = F.cross_entropy(fwd(xb).float(), labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        sync()
        return time.perf_counter() - t0

    first = epoch()
    times = sorted(epoch() for _ in range(epochs))
    return {"batch": batch, "steps_per_epoch": steps, "first_epoch_seconds_incl_compile": first,
            "sec_per_epoch_median": times[len(times) // 2], "sec_per_epoch_best": times[0],
            "images_per_second_median": steps * batch / times[len(times) // 2]}


def augment_ms(ds, device: str, batch: int = 128, reps: int = 50) -> dict:
    """Milliseconds per batch of the trainer's augmentation (default preset) on `device`, and of kornia's
    random crop alone in each of its two modes (a slice per image, or one batched warp)."""
    import kornia.augmentation as K
    from training import preset
    from training._trainer import _augmenter

    dev = torch.device(device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    x = ds.train.images[:batch].to(dev).float().div(255.0)
    size = (ds.image_size, ds.image_size)
    variants = {"trainer": _augmenter(preset("default", erase=0.5), ds)}
    for mode in ("slice", "resample"):
        variants[f"crop_{mode}"] = K.RandomCrop(size, padding=4, padding_mode="reflect", cropping_mode=mode)
    out = {}
    for name, aug in variants.items():
        for _ in range(5):
            aug(x)
        sync()
        t0 = time.perf_counter()
        for _ in range(reps):
            aug(x)
        sync()
        out[name] = (time.perf_counter() - t0) / reps * 1e3
    return out


class _PerImageTorchvision(torch.nn.Module):
    """The reference for the trainer's augmentation: torchvision's v2 transforms applied image by image (what
    the trainer did before it used kornia's batched augmentations)."""

    def __init__(self, cfg, ds):
        super().__init__()
        from torchvision.transforms import v2
        from training._trainer import _trains_with_flips

        steps = [v2.RandomCrop(ds.image_size, padding=cfg.crop_padding, padding_mode="reflect")]
        if _trains_with_flips(cfg, ds):
            steps.append(v2.RandomHorizontalFlip())
        if cfg.erase:
            steps.append(v2.RandomErasing(p=cfg.erase, value=0))
        self.t = v2.Compose(steps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([self.t(im) for im in x])


def trainer_reference_pair(ds, max_train: int, rounds: int = 2) -> dict:
    """The trainer's epoch with kornia's batched augmentation against torchvision per image, interleaved."""
    import training._trainer as trainer_mod

    batched = trainer_mod._augmenter
    times: dict[str, list[float]] = {"kornia_batched": [], "torchvision_per_image": []}
    for _ in range(rounds):
        for name in times:
            trainer_mod._augmenter = batched if name == "kornia_batched" else _PerImageTorchvision
            try:
                times[name].append(trainer_epoch(ds, max_train)["epoch_seconds_full_split"])
            finally:
                trainer_mod._augmenter = batched
    out = {k: {"epoch_seconds_full_split": sorted(v)[0], "all": v} for k, v in times.items()}
    out["speedup"] = out["torchvision_per_image"]["epoch_seconds_full_split"] / out["kornia_batched"]["epoch_seconds_full_split"]
    return out


def trainer_epoch(ds, max_train: int, device: str | None = None, epochs: int = 1) -> dict:
    from training import preset, train

    cfg = preset("default", model="hybrid1", epochs=epochs, val_fraction=0.0, max_train=max_train or None,
                 device=device)
    n_full = len(ds.train)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        res = train(cfg, ds, Path(tmp) / "bench.safetensors", progress=False, log=lambda s: None)
        total = time.perf_counter() - t0
    n_used = min(max_train or n_full, n_full)
    secs = [h["seconds"] for h in res.history]
    sec = sorted(secs[1:])[len(secs[1:]) // 2] if len(secs) > 1 else secs[0]  # after a warm-up epoch
    return {"images": n_used, "epoch_seconds": sec, "epoch_seconds_full_split": sec * n_full / n_used,
            "epoch_seconds_all": secs, "run_seconds_incl_test_eval": total, "loss": cfg.loss,
            "batch_size": cfg.batch_size, "device": str(device or "default")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", default="mnist,fashion-mnist,cifar10")
    ap.add_argument("--steps", type=int, default=60, help="timed steps per variant in the minimal loop")
    ap.add_argument("--trainer-max-train", type=int, default=0, help="images for the trainer epoch (0 = all)")
    ap.add_argument("--no-trainer", action="store_true")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    ap.add_argument("--augment-reference", action="store_true",
                    help="also time the CPU trainer with torchvision's per-image augmentation, interleaved")
    ap.add_argument("--no-cpu", action="store_true", help="skip the CPU measurements (GPU machine)")
    ap.add_argument("--cuda-epochs", type=int, default=3, help="timed epochs per CUDA variant")
    ap.add_argument("--fast-batches", default="128,512", help="batch sizes of the CUDA fast loop")
    ap.add_argument("--result", default="train", help="write docs/results/bench_RESULT.json")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    machine = _common.machine()
    from training import load_dataset

    results = {}
    for name in args.datasets.split(","):
        path = _common.SHARED_DATA / DATASETS[name]
        t0 = time.perf_counter()
        ds = load_dataset(path)
        load_s = time.perf_counter() - t0
        print(f"\n== {name}: {len(ds.train)} train images {tuple(ds.train.images.shape[1:])}, "
              f"loaded in {load_s:.1f} s; torch threads {torch.get_num_threads()}")
        r = {"train_images": len(ds.train), "load_seconds": load_s}
        if not args.no_cpu:
            r["cpu_minimal_loop"] = m = minimal_loop(ds, args.steps, torch.device("cpu"))
            print(f"  minimal CE loop, batch 128, CPU: current {m['current']['sec_per_epoch_median']:.1f} s/epoch "
                  f"(best {m['current']['sec_per_epoch_best']:.1f}); unfold involution "
                  f"{m['unfold']['sec_per_epoch_median']:.1f} s/epoch (current is {m['speedup_over_unfold']:.2f}x faster)")
        if not args.no_trainer and not args.no_cpu:
            r["cpu_trainer"] = t = trainer_epoch(ds, args.trainer_max_train)
            print(f"  trainer (default preset, ce+ms, augmentation): {t['epoch_seconds']:.1f} s for {t['images']} "
                  f"images = {t['epoch_seconds_full_split']:.1f} s per full epoch")
        if args.augment_reference and not args.no_cpu:
            r["cpu_trainer_augment_reference"] = a = trainer_reference_pair(ds, args.trainer_max_train)
            print(f"  trainer epoch, best of 2: kornia batched {a['kornia_batched']['epoch_seconds_full_split']:.1f} s, "
                  f"torchvision per image {a['torchvision_per_image']['epoch_seconds_full_split']:.1f} s "
                  f"({a['speedup']:.2f}x)", flush=True)
        if torch.cuda.is_available():
            gpu = torch.cuda.get_device_name()
            r["cuda_device"] = gpu
            r["cuda_augment_ms_per_batch128"] = a = augment_ms(ds, "cuda")
            print(f"  augmentation on {gpu}, ms per batch of 128: " + ", ".join(f"{k} {v:.2f}" for k, v in a.items()),
                  flush=True)
            if not args.no_trainer:
                r["cuda_trainer"] = t = trainer_epoch(ds, 0, "cuda", epochs=1 + args.cuda_epochs)
                print(f"  trainer on {gpu} (default preset, ce+ms, kornia augmentation, fp16): "
                      f"{t['epoch_seconds']:.2f} s/epoch (epochs {t['epoch_seconds_all']})", flush=True)
            r["cuda_minimal_loop"] = g = minimal_loop(ds, args.steps, torch.device("cuda"))
            print(f"  eager minimal loop on {gpu}: {g['current']['sec_per_epoch_median']:.2f} s/epoch", flush=True)
            for b in (int(v) for v in args.fast_batches.split(",") if v):
                r[f"cuda_fast_b{b}"] = f = cuda_fast_epochs(ds, b, args.cuda_epochs)
                print(f"  fast loop (data on GPU, channels-last, bf16, compiled), batch {b}: "
                      f"{f['sec_per_epoch_median']:.3f} s/epoch ({f['images_per_second_median']:,.0f} images/s; "
                      f"first epoch with compilation {f['first_epoch_seconds_incl_compile']:.1f} s)", flush=True)
        else:
            r["cuda"] = "not measured: no GPU on this machine"
        results[name] = r
    _common.write_result(args.result, {"command": _common.command_line(), "machine": machine,
                                   "loadavg_at_end": list(os.getloadavg()), "torch_threads": torch.get_num_threads(),
                                   "results": results})


if __name__ == "__main__":
    main()
