"""Ingestion speed: POST /index over HTTP and `simsearch index build`, in images/s.

    .venv/bin/python bench/bench_ingest.py [--images 5000] [--seconds 8] [--artifact PATH]

References, in the same run: the in-process pipeline on the same images (decode + preprocess with
model.to_model_array, Embedder.embed_arrays in batches of 256, Store.upsert in chunks of 1,000
into a fresh store), and GET /healthz on the same server.
- POST /index with wrk (1 thread), 1 image per request at concurrency 8, and 64 images per request
  (the service's max_files_per_request) at concurrency 2; CIFAR-10 test JPEGs (32x32); thumbnails
  at the default size, into a fresh store.
- `simsearch index build` on an ImageFolder of the first --images CIFAR-10 test JPEGs (extracted
  once under $SIMSEARCH_BENCH_DIR), into a fresh data directory; skipped when the command is absent.
- `simsearch index upload` of the same folder into the running server (after the POST /index runs),
  batches of 32 images a request, one request at a time.
"""
from __future__ import annotations

import argparse
import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

import _common  # noqa: E402
import _server  # noqa: E402


def extract_folder(n: int) -> Path:
    """The first n CIFAR-10 test JPEGs as an ImageFolder tree <root>/<class>/<file>.jpg (cached)."""
    root = _server.WORK / f"cifar10-test-{n}"
    if (root / ".complete").exists():
        return root
    shutil.rmtree(root, ignore_errors=True)
    per_class = max(1, n // 10)
    counts: dict[str, int] = {}
    with tarfile.open(_common.SHARED_DATA / "cifar10-jpeg.tar") as tar:
        for m in tar:
            parts = m.name.split("/")
            if not (m.isfile() and len(parts) == 4 and parts[1] == "test" and m.name.endswith(".jpg")):
                continue
            cls = parts[2]
            if counts.get(cls, 0) >= per_class:
                continue
            counts[cls] = counts.get(cls, 0) + 1
            dest = root / cls / parts[3]
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(tar.extractfile(m).read())
    (root / ".complete").write_text(str(sum(counts.values())))
    return root


def in_process(files: list[Path], artifact: Path) -> dict:
    """decode + preprocess + embed + upsert in this process: the work without HTTP or the CLI."""
    from PIL import Image

    import model
    from index import Item, Store, StoreConfig

    emb = model.Embedder.from_file(artifact, device="cpu")
    tmp = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    store = Store.open(StoreConfig(path=tmp / "index", dim=emb.dim, model_id=emb.model_id, index="flat"))
    t0 = time.perf_counter()
    arrays = np.stack([emb.preprocess(Image.open(io.BytesIO(f.read_bytes()))) for f in files])
    t1 = time.perf_counter()
    vecs = emb.embed_arrays(arrays)
    t2 = time.perf_counter()
    for s in range(0, len(files), 1000):
        store.upsert([Item(id=f"i{s + i}", vector=v, label=files[s + i].parent.name)
                      for i, v in enumerate(vecs[s:s + 1000])])
    t3 = time.perf_counter()
    store.close()
    shutil.rmtree(tmp, ignore_errors=True)
    n = len(files)
    return {"images": n, "images_per_s": n / (t3 - t0), "decode_per_s": n / (t1 - t0),
            "embed_per_s": n / (t2 - t1), "upsert_per_s": n / (t3 - t2)}


def cli_build(folder: Path, artifact: Path, n: int) -> dict:
    exe = _server.simsearch_exe()
    probe = subprocess.run([exe, "index", "build", "--help"], capture_output=True, text=True)
    if probe.returncode != 0:
        return {"skipped": f"`simsearch index build` is not available: {probe.stderr.strip()[-200:]}"}
    data = Path(tempfile.mkdtemp(prefix="bench-build-"))
    try:
        return timed_command([exe, "index", "build", str(folder), "--data", str(data), "--model", str(artifact)], n,
                             "wall time of the whole command, process start and model load included")
    finally:
        shutil.rmtree(data, ignore_errors=True)


def cli_upload(folder: Path, url: str, n: int) -> dict:
    return timed_command([_server.simsearch_exe(), "index", "upload", str(folder), "--url", url], n,
                         "wall time of the whole command, process start included")


def timed_command(cmd: list[str], n: int, note: str) -> dict:
    t0 = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True)
    dt = time.perf_counter() - t0
    if out.returncode != 0:
        return {"error": (out.stdout + out.stderr)[-1000:], "command": " ".join(cmd)}
    return {"images": n, "seconds": dt, "images_per_s": n / dt, "command": " ".join(cmd), "note": note,
            "output_tail": (out.stdout + out.stderr)[-400:]}


def report(what: str, r: dict, in_process: dict, n: int) -> None:
    """Add the ratio to the in-process pipeline to a command's result, and print it."""
    if "images_per_s" not in r:
        print(f"{what}: {r}")
        return
    r["ratio_to_in_process"] = r["images_per_s"] / in_process["images_per_s"]
    print(f"{what}: {r['images_per_s']:.0f} images/s ({r['seconds']:.1f} s for {n}); "
          f"{100 * r['ratio_to_in_process']:.0f}% of in-process")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=5000)
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--artifact", type=Path)
    ap.add_argument("--server-env", action="append", default=[], metavar="K=V")
    ap.add_argument("--tag", default="", help="suffix for the JSON file name (bench_ingest<tag>.json)")
    ap.add_argument("--variant", help="run the server with bench/variants/NAME/sitecustomize.py on PYTHONPATH")
    ap.add_argument("--no-cli", action="store_true", help="skip `simsearch index build`")
    ap.add_argument("--no-in-process", action="store_true", help="skip the in-process reference")
    args = ap.parse_args()
    import model

    machine = _common.machine()
    artifact, art_kind = _common.chosen_artifact(args.artifact, "bench-ingest-")
    model_id = model.load_artifact(artifact).model_id
    env = _common.server_env(args.server_env, args.variant)
    folder = extract_folder(args.images)
    files = sorted(folder.glob("*/*.jpg"))
    print(f"artifact {art_kind} ({model_id}); {len(files)} CIFAR-10 test JPEGs in {folder}")

    res: dict = {}
    if args.no_in_process:
        ip = {"images_per_s": float("nan")}
    else:
        res["in_process"] = ip = in_process(files, artifact)
        print(f"in-process decode+embed+upsert: {ip['images_per_s']:.0f} images/s (decode {ip['decode_per_s']:.0f}/s, "
              f"embed {ip['embed_per_s']:.0f}/s, upsert {ip['upsert_per_s']:.0f}/s)")

    empty = Path(tempfile.mkdtemp(prefix="bench-ingest-data-"))
    sample = files[:64]
    with _server.Server(empty, artifact, env=env) as srv:
        srv.wait_ready()
        _server.wrk(srv.url, "/index", 2, 1, sample, "image/jpeg")  # warm-up
        ref = _server.wrk(srv.url, "/healthz", 8, args.seconds)
        res["healthz_c8"] = ref
        print(f"GET /healthz c=8: {ref['rps']:.0f} req/s")
        for per, conc in ((1, 8), (64, 2)):
            before = srv.metrics()
            cpu0 = _server.cpu_seconds(srv.pid)
            r = _server.wrk(srv.url, "/index", conc, args.seconds, sample, "image/jpeg", files_per_request=per,
                            timeout_s=30)
            r["server_cpu_ms_per_image"] = (1e3 * (_server.cpu_seconds(srv.pid)["total"] - cpu0["total"])
                                            / max(1, r["requests"] * per))
            r.update(_server.server_breakdown(srv.metrics(), before))
            r["files_per_request"] = per
            r["images_per_s"] = r["ok_rps"] * per
            r["ratio_to_in_process"] = r["images_per_s"] / ip["images_per_s"]
            r["ratio_to_healthz_requests"] = r["ok_rps"] / ref["rps"]
            res[f"post_index_{per}_per_request_c{conc}"] = r
            print(f"POST /index, {per} image(s)/request, c={conc}: {r['images_per_s']:.0f} images/s "
                  f"({r['ok_rps']:.1f} req/s, p50 {r['p50_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms, errors {r['errors']}); "
                  f"{100 * r['ratio_to_in_process']:.0f}% of in-process; mean embed batch {r.get('mean_embed_batch', 0):.1f}; "
                  f"server CPU {r['server_cpu_ms_per_image']:.2f} ms/image")
        if not args.no_cli:
            res["cli_upload"] = cli_upload(folder, srv.url, len(files))
            report("simsearch index upload", res["cli_upload"], ip, len(files))
        res["gallery_after"] = srv.metrics().get("simsearch_gallery_items")
    shutil.rmtree(empty, ignore_errors=True)

    res["cli_build"] = {"skipped": "--no-cli"} if args.no_cli else cli_build(folder, artifact, len(files))
    report("simsearch index build", res["cli_build"], ip, len(files))
    _common.write_result("ingest" + args.tag, {"command": _common.command_line(), "machine": machine,
                                    "loadavg_at_end": list(os.getloadavg()), "artifact": art_kind,
                                    "model_id": model_id, "server_env": env, "variant": args.variant, "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
                                    "torch_threads_in_process": __import__("torch").get_num_threads(), "results": res})


if __name__ == "__main__":
    main()
