"""Shared helpers for the benchmarks: machine description, interleaved timing, JSON results, inputs.

The machine these run on is shared and noisy, so every measurement is taken side by side with its
reference in the same process and run, in interleaved rounds (A, B, A, B, ...), and reported as the
median and the best round; ratios are taken between the medians of the same run.
"""
from __future__ import annotations

import io
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "docs" / "results"
# the retrieval figures the quality benches report, as `simsearch evaluate` computes them
QUALITY_KEYS = ("precision_at_1", "mean_average_precision_at_r", "recall_at_10")
SHARED_DATA = Path(os.environ.get("SIMSEARCH_SHARED_DATA", REPO.parent / "shared" / "data"))


def lscpu() -> dict[str, str]:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return {}
    info = {}
    for line in out.splitlines():
        if ":" in line:
            key, value = line.split(":", 1)
            info[key.strip()] = value.strip()
    return info


def cpu_mhz() -> float | None:
    """The nominal clock: lscpu's max MHz when given, else /proc/cpuinfo's 'cpu MHz'."""
    info = lscpu()
    for key in ("CPU max MHz", "CPU MHz"):
        if key in info:
            try:
                return float(info[key])
            except ValueError:
                pass
    try:
        m = re.search(r"cpu MHz\s*:\s*([\d.]+)", Path("/proc/cpuinfo").read_text())
        return float(m.group(1)) if m else None
    except OSError:
        return None


def theoretical_peak_gflops() -> dict:
    """cores x GHz x fp32 FLOPs per cycle, from the vector units lscpu lists (an upper bound).

    FLOPs/cycle/core assume two FMA pipes: AVX-512 on Intel = 2 x 16 lanes x 2 = 64; AVX-512 on AMD
    Zen 4 (family 25) runs 512-bit ops as two 256-bit halves, and AVX2+FMA anywhere = 2 x 8 x 2 = 32;
    SSE only = 2 x 4 x 2 = 16.
    """
    info = lscpu()
    flags = set(info.get("Flags", "").split())
    vendor = info.get("Vendor ID", "")
    cores = os.cpu_count() or 1
    mhz = cpu_mhz() or 0.0
    if "avx512f" in flags and vendor == "GenuineIntel":
        per_cycle, why = 64, "AVX-512, 2 FMA units x 16 fp32 lanes x 2 FLOPs"
    elif "avx512f" in flags or ("avx2" in flags and "fma" in flags):
        per_cycle = 32
        why = ("AVX-512 executed as 2 x 256-bit (AMD Zen 4): 2 FMA pipes x 8 fp32 lanes x 2 FLOPs"
               if "avx512f" in flags else "AVX2+FMA: 2 FMA units x 8 fp32 lanes x 2 FLOPs")
    else:
        per_cycle, why = 16, "SSE: 2 x 4 fp32 lanes x 2 FLOPs"
    return {"gflops": cores * mhz / 1000.0 * per_cycle, "cores": cores, "ghz": mhz / 1000.0,
            "flops_per_cycle_per_core": per_cycle, "assumption": why}


def machine() -> dict:
    info = lscpu()
    out = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "cpu_model": info.get("Model name", platform.processor()),
        "cpu_family_model": f"{info.get('CPU family', '?')}/{info.get('Model', '?')}",
        "nproc": os.cpu_count(),
        "mhz": cpu_mhz(),
        "vector_flags": sorted(f for f in info.get("Flags", "").split() if f in {"avx", "avx2", "fma", "avx512f",
                                                                               "avx512_bf16", "avx512_vnni"}),
        "python": platform.python_version(),
        "loadavg_at_start": list(os.getloadavg()),
    }
    for mod in ("torch", "torchvision", "numpy", "PIL", "faiss", "fastapi", "uvicorn"):
        try:
            out[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001 - a missing package is just not listed
            pass
    return out


def command_line() -> str:
    return " ".join([".venv/bin/python", os.path.relpath(sys.argv[0], REPO)] + sys.argv[1:])


def interleaved(cases: dict[str, Callable[[], int]], rounds: int = 5, seconds: float = 0.4,
                warmup: int = 2) -> dict[str, dict]:
    """Run each case for `seconds` per round, the cases interleaved, `rounds` times.

    A case is a callable doing one unit of work and returning how many items it handled. Returns
    {name: {"median": items/s, "best": items/s, "rounds": [...], "sec_per_call_median": s}}.
    """
    for fn in cases.values():
        for _ in range(warmup):
            fn()
    rates: dict[str, list[float]] = {k: [] for k in cases}
    per_call: dict[str, list[float]] = {k: [] for k in cases}
    for _ in range(rounds):
        for name, fn in cases.items():
            calls = items = 0
            t0 = time.perf_counter()
            while True:
                items += fn()
                calls += 1
                dt = time.perf_counter() - t0
                if dt >= seconds:
                    break
            rates[name].append(items / dt)
            per_call[name].append(dt / calls)
    return {k: {"median": statistics.median(v), "best": max(v), "rounds": [round(x, 2) for x in v],
                "sec_per_call_median": statistics.median(per_call[k])} for k, v in rates.items()}


def write_result(name: str, data: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"bench_{name}.json"
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")
    print(f"wrote {os.path.relpath(path, REPO)}")
    return path


def run_per_artifact(name: str, doc: str, study: Callable[[str, str], dict]) -> None:
    """The main() of a bench that studies ARTIFACT DATA pairs one by one: reads the pairs, --threads (torch's,
    default 1) and --tag, runs `study(artifact, data)` on each and writes bench_<name><tag>.json with the
    command, the machine and the time taken."""
    import argparse

    import torch

    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    ap.add_argument("pairs", nargs="+", help="ARTIFACT DATA [ARTIFACT DATA ...]")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--tag", default="", help="suffix of the JSON file's name")
    args = ap.parse_args()
    if len(args.pairs) % 2:
        ap.error(f"expected ARTIFACT DATA pairs, got {len(args.pairs)} paths")
    torch.set_num_threads(args.threads)
    started = time.time()
    runs = [study(a, d) for a, d in zip(args.pairs[::2], args.pairs[1::2], strict=True)]
    write_result(name + args.tag, {"command": command_line(), "machine": machine(),
                                   "seconds": round(time.time() - started, 1), "runs": runs})


# ---- inputs ---------------------------------------------------------------------------------------

def cifar_test_jpegs(n: int) -> list[bytes]:
    """The first n CIFAR-10 (JPEG) test images as encoded bytes, read straight from the shared tar."""
    import tarfile

    tar_path = SHARED_DATA / "cifar10-jpeg.tar"
    out = []
    with tarfile.open(tar_path) as tar:
        for member in tar:
            if member.isfile() and "/test/" in member.name and member.name.endswith(".jpg"):
                out.append(tar.extractfile(member).read())
                if len(out) >= n:
                    break
    if not out:
        raise SystemExit(f"no CIFAR-10 JPEGs in {tar_path}")
    return out


def random_flat_index(n: int, dim: int, seed: int = 0):
    """A FAISS IndexFlatIP of `n` random unit vectors: a stand-in gallery for timing exact search."""
    import faiss
    import numpy as np

    vectors = np.random.default_rng(seed).standard_normal((n, dim), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    index = faiss.IndexFlatIP(dim)
    index.add(vectors)
    return index


def random_store(folder: Path, n: int, dim: int, seed: int = 0):
    """An open, writable index.Store in `folder` holding `n` random unit vectors (ids i0, i1, ...; no labels), added
    20,000 at a time: a stand-in gallery for timing the store's own searches and writes."""
    import numpy as np

    from index import Item, Store, StoreConfig

    store = Store.open(StoreConfig(path=folder, dim=dim, model_id="bench@0", snapshot_every=0))
    rng = np.random.default_rng(seed)
    for at in range(0, n, 20_000):
        vectors = rng.standard_normal((min(20_000, n - at), dim)).astype(np.float32)   # the store normalises them
        store.upsert([Item(f"i{i}", v) for i, v in enumerate(vectors, at)])
    return store


def png_32(n: int = 64) -> list[bytes]:
    """32x32 RGB PNG queries: CIFAR-10 test images re-encoded losslessly as PNG."""
    from PIL import Image

    out = []
    for data in cifar_test_jpegs(n):
        buf = io.BytesIO()
        Image.open(io.BytesIO(data)).convert("RGB").save(buf, "PNG")
        out.append(buf.getvalue())
    return out


def photo_640x480(quality: int = 90) -> list[bytes]:
    """640x480 JPEG photos: scikit-learn's two bundled photos (640x427), scaled to cover 640x480 and
    centre-cropped, plus their mirror images; a synthetic textured image if those are missing."""
    from PIL import Image, ImageOps

    photos = []
    try:
        from sklearn.datasets import load_sample_images

        photos = [Image.fromarray(a) for a in load_sample_images().images]
    except Exception:  # noqa: BLE001
        import numpy as np

        rng = np.random.default_rng(0)
        base = rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)
        photos = [Image.fromarray(base).resize((640, 480), Image.Resampling.BICUBIC)]
    out = []
    for im in photos + [ImageOps.mirror(p) for p in photos]:
        im = ImageOps.fit(im.convert("RGB"), (640, 480), Image.Resampling.BICUBIC)
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=quality)
        out.append(buf.getvalue())
    return out


def reencode(jpegs: list[bytes], fmt: str) -> list[bytes]:
    """The same photos as HEIC (quality 90, with a 320-pixel embedded thumbnail, as phones write it) or
    AVIF (quality 90). Importing model registers pillow-heif's HEIF plugin with Pillow."""
    import model  # noqa: F401
    from PIL import Image

    options = {"HEIF": {"quality": 90, "thumbnails": [320]}, "AVIF": {"quality": 90}}[fmt]
    out = []
    for data in jpegs:
        buf = io.BytesIO()
        Image.open(io.BytesIO(data)).convert("RGB").save(buf, fmt, **options)
        out.append(buf.getvalue())
    return out


def seeded_artifact(path: Path, stride: int = 2) -> Path:
    """A Hybrid-1 RGB artifact with seeded random weights (speed does not depend on the weights)."""
    import torch

    import model

    torch.manual_seed(0)
    net = model.create_model("hybrid1", in_chans=3, stride=stride)
    meta = model.ArtifactMeta(name="hybrid1-bench", arch="hybrid1", arch_kwargs={"stride": stride}, in_chans=3,
                              image_size=32, class_names=[f"c{i}" for i in range(10)])
    return model.save_artifact(path, net, meta)


def default_or_seeded_artifact(tmpdir: Path) -> tuple[Path, str]:
    """The trained CIFAR-10 artifact when it exists, else a seeded one; and which it was."""
    import model

    path = Path(model.default_artifact_path("cifar10"))
    if path.is_file():
        return path, "trained default (model/weights)"
    return seeded_artifact(tmpdir / "hybrid1-bench.safetensors"), "seeded random Hybrid-1 (stride 2)"


def chosen_artifact(arg: Path | None, prefix: str) -> tuple[Path, str]:
    """The --artifact given on the command line, else the bundled one (or a seeded stand-in)."""
    if arg:
        return arg.resolve(), str(arg)
    import tempfile

    return default_or_seeded_artifact(Path(tempfile.mkdtemp(prefix=prefix)))


def server_env(pairs: list[str], variant: str | None) -> dict[str, str]:
    """The server's extra environment: --server-env K=V pairs, plus a --variant's sitecustomize on PYTHONPATH."""
    env = dict(kv.split("=", 1) for kv in pairs)
    if variant:
        vdir = Path(__file__).resolve().parent / "variants" / variant
        if not (vdir / "sitecustomize.py").is_file():
            raise SystemExit(f"--variant {variant}: no {vdir}/sitecustomize.py")
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(vdir), os.environ.get("PYTHONPATH")]))
    return env


def unfold_involution_forward(self, x):
    """The textbook involution forward (the model's before 2026-11-25): 1x1 Conv2d modules for the
    kernel and unfold (im2col) + multiply + sum for the neighbourhood. The reference for the
    model's own forward in bench_train.py; same arithmetic, so the same output to float rounding."""
    import torch.nn.functional as F

    b, c, h, w = x.shape
    k, g, s = self.kernel_size, self.groups, self.stride
    kernel = self.span(F.relu(self.bn(self.reduce(self.pool(x)))))
    ho, wo = kernel.shape[-2:]
    kernel = kernel.view(b, g, 1, k * k, ho, wo)
    cols = F.unfold(x, k, padding=(k - 1) // 2, stride=s).view(b, g, c // g, k * k, ho, wo)
    return (kernel * cols).sum(dim=3).reshape(b, c, ho, wo)
