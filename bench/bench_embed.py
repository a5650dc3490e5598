"""Embedding throughput of Hybrid-1 against ResNet-50 (torchvision, 224x224) and against the machine's peak.

    .venv/bin/python bench/bench_embed.py [--rounds 5] [--seconds 0.4] [--artifact PATH]

Measured in one process, interleaved round by round:
- Hybrid-1 through model.Embedder.embed_arrays (uint8 in, normalised float32 out: the service's path)
  at batch 1, 8 (typical of the service's micro-batches), 32 and 256, with torch's default thread count and with 1 thread;
  the same with trace=False (hybrid1_eager_b*: the eager modules instead of the TorchScript graph) and,
  when the `onnx` extra is installed, with runtime="onnx" (hybrid1_onnx_b*: the model exported to ONNX,
  run by onnxruntime; the same uint8-in, unit-vectors-out contract);
- ResNet-50 from torchvision (no weights needed) on 224x224 float input at batch 1 and 16;
- the practical peak: a 4096x4096 fp32 matmul on the same threads;
- the theoretical peak: cores x GHz x FLOPs/cycle from lscpu (see bench/_common.py).
FLOPs per image come from torch.utils.flop_counter.FlopCounterMode (convolutions, linear) plus the
involution's multiply-and-sum counted by hand (see involution_flops below).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import _common  # noqa: E402
import model  # noqa: E402


def involution_flops(net: torch.nn.Module, size: int) -> int:
    """The involution's own arithmetic, which FlopCounterMode does not see (unfold, mul, sum):
    per output value k*k multiplies and k*k-1 adds, i.e. C * Ho * Wo * (2*k*k - 1) per layer."""
    total, h = 0, size
    for m in net.modules():
        if isinstance(m, model.Involution):
            ho = h // m.stride
            total += m.channels * ho * ho * (2 * m.kernel_size ** 2 - 1)
    return total


def flops_per_image(net: torch.nn.Module, shape: tuple[int, int, int]) -> dict:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        net(torch.zeros(1, *shape))
    counted = counter.get_total_flops()
    hand = involution_flops(net, shape[-1])
    by_op = {str(k): int(v) for k, v in counter.get_flop_counts().get("Global", {}).items()}
    return {"total": counted + hand, "flop_counter": counted, "involution_by_hand": hand, "by_op": by_op}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=0.4, help="seconds per case per round")
    ap.add_argument("--artifact", type=Path, help="default: the trained CIFAR-10 artifact, else a seeded one")
    ap.add_argument("--resnet-batches", default="1,16")
    ap.add_argument("--tag", default="", help="suffix of the result file: bench_embed<TAG>.json")
    args = ap.parse_args()

    machine = _common.machine()
    default_threads = torch.get_num_threads()
    tmp = Path(tempfile.mkdtemp(prefix="bench-embed-"))
    if args.artifact:
        art_path, art_kind = args.artifact, str(args.artifact)
    else:
        art_path, art_kind = _common.default_or_seeded_artifact(tmp)
    emb = model.Embedder.from_file(art_path, device="cpu")
    eager = model.Embedder.from_file(art_path, device="cpu", trace=False)
    c, s = emb.meta.in_chans, emb.meta.image_size
    print(f"artifact: {art_kind}; {emb.model_id}; input {c}x{s}x{s}; torch threads default {default_threads}; "
          f"{'TorchScript graph' if emb.traced else 'eager (did not trace)'}")

    flops = flops_per_image(emb.model, (c, s, s))
    from torchvision.models import resnet50

    rn = resnet50().eval()
    rn_flops = flops_per_image(rn, (3, 224, 224))
    print(f"FLOPs/image: Hybrid-1 {flops['total']/1e6:.2f} M (FlopCounterMode {flops['flop_counter']/1e6:.2f} M "
          f"+ involution by hand {flops['involution_by_hand']/1e6:.3f} M); ResNet-50@224 {rn_flops['total']/1e9:.2f} G")

    rng = np.random.default_rng(0)
    batches = {bs: rng.integers(0, 256, (bs, c, s, s), dtype=np.uint8) for bs in (1, 8, 32, 256)}
    n = 4096
    a, b = torch.randn(n, n), torch.randn(n, n)
    rn_inputs = {bs: torch.randn(bs, 3, 224, 224) for bs in [int(x) for x in args.resnet_batches.split(",")]}

    results: dict = {"threads": {}}
    theo = _common.theoretical_peak_gflops()
    for threads in sorted({default_threads, 1}, reverse=True):
        torch.set_num_threads(threads)
        # onnxruntime's threads are fixed when its session is made: one Embedder per thread count.
        ort = (None if model.missing_onnx_packages() else
               model.Embedder.from_file(art_path, device="cpu", runtime="onnx", batch_size=256))
        cases = {}
        for bs, arr in batches.items():
            cases[f"hybrid1_b{bs}"] = (lambda arr=arr: len(emb.embed_arrays(arr)))
            cases[f"hybrid1_eager_b{bs}"] = (lambda arr=arr: len(eager.embed_arrays(arr)))
            if ort is not None:
                cases[f"hybrid1_onnx_b{bs}"] = (lambda arr=arr: len(ort.embed_arrays(arr)))
        cases["matmul_4096"] = lambda: (torch.mm(a, b), 1)[1]
        print(f"\n== {threads} thread(s): Hybrid-1 + matmul, {args.rounds} rounds x {args.seconds}s each")
        with torch.inference_mode():
            r = _common.interleaved(cases, rounds=args.rounds, seconds=args.seconds)
        # ResNet-50 is ~1000x slower: one call per round, interleaved with one more matmul round.
        rn_cases = {f"resnet50_224_b{bs}": (lambda x=x: (rn(x), len(x))[1]) for bs, x in rn_inputs.items()}
        print(f"== {threads} thread(s): ResNet-50 224x224")
        with torch.inference_mode():
            r.update(_common.interleaved(rn_cases, rounds=max(2, args.rounds // 2), seconds=0.0, warmup=1))
        peak_gflops = r["matmul_4096"]["median"] * 2 * n ** 3 / 1e9
        rn_best_name = max((k for k in r if k.startswith("resnet50")), key=lambda k: r[k]["median"])
        rn_rate = r[rn_best_name]["median"]
        out = {"matmul_peak_gflops_median": peak_gflops,
               "matmul_peak_gflops_best": r["matmul_4096"]["best"] * 2 * n ** 3 / 1e9, "cases": r}
        print(f"{'case':28s} {'img/s median':>13s} {'best':>10s} {'GFLOP/s':>9s} {'%matmul':>8s} {'%theor.':>8s} "
              f"{'x ResNet':>9s}")
        for name, v in r.items():
            if name == "matmul_4096":
                continue
            f_img = rn_flops["total"] if name.startswith("resnet") else flops["total"]
            gf = v["median"] * f_img / 1e9
            v["gflops"] = gf
            v["pct_of_matmul_peak"] = 100 * gf / peak_gflops
            # the theoretical peak of the cores in use: per core x threads
            theo_used = theo["gflops"] / theo["cores"] * min(threads, theo["cores"])
            v["pct_of_theoretical_peak"] = 100 * gf / theo_used if theo_used else None
            v["x_resnet50"] = v["median"] / rn_rate
            print(f"{name:28s} {v['median']:13.1f} {v['best']:10.1f} {gf:9.2f} {v['pct_of_matmul_peak']:7.1f}% "
                  f"{v['pct_of_theoretical_peak'] or 0:7.1f}% {v['x_resnet50']:9.0f}")
        print(f"matmul 4096 fp32: {peak_gflops:.1f} GFLOP/s median (theoretical "
              f"{theo['gflops'] / theo['cores'] * min(threads, theo['cores']):.1f} on {threads} core(s)); "
              f"ResNet-50 reference = {rn_best_name} {rn_rate:.2f} img/s")
        out["resnet50_reference"] = {"case": rn_best_name, "img_per_s": rn_rate}
        results["threads"][str(threads)] = out

    # Before/after of the Embedder's input normalisation (model/_embedder.py): the old three-pass
    # (x / 255 - mean) / std, a first fix (one addcmul) and what it now uses (in-place mul_ + add_).
    torch.set_num_threads(1)
    norm_cases = {}
    c = emb.meta.in_chans
    mean = torch.tensor(emb.meta.mean, dtype=torch.float32).view(1, c, 1, 1)
    std = torch.tensor(emb.meta.std, dtype=torch.float32).view(1, c, 1, 1)
    scale, shift = 1.0 / (255.0 * std), -mean / std   # model.PixelNormalize's constants for uint8 pixels
    for bs in (1, 256):
        t = torch.from_numpy(batches[bs])
        norm_cases[f"norm_three_pass_b{bs}"] = (lambda t=t: len((t.float().div_(255.0) - mean) / std))
        norm_cases[f"norm_addcmul_b{bs}"] = (lambda t=t: len(torch.addcmul(shift, t.float(), scale)))
        norm_cases[f"norm_inplace_b{bs}"] = (lambda t=t: len(t.float().mul_(scale).add_(shift)))
    with torch.inference_mode():
        rnorm = _common.interleaved(norm_cases, rounds=max(args.rounds, 9), seconds=0.15)
    for name, v in rnorm.items():
        print(f"{name:24s} {v['sec_per_call_median'] * 1e6:9.1f} us per batch")
    results["normalisation_1_thread"] = rnorm

    torch.set_num_threads(default_threads)
    best_t = max(results["threads"], key=lambda t: results["threads"][t]["cases"]["hybrid1_b256"]["median"])
    b256 = results["threads"][best_t]["cases"]["hybrid1_b256"]
    targets = {
        "b256_pct_of_matmul_peak": {"value": b256["pct_of_matmul_peak"], "target": ">= 25", "threads": best_t,
                                    "met": b256["pct_of_matmul_peak"] >= 25},
        "b256_x_resnet50": {"value": b256["x_resnet50"], "target": ">= 1000", "threads": best_t,
                            "met": b256["x_resnet50"] >= 1000},
    }
    print(f"\ntargets (threads={best_t}): batch 256 at {b256['pct_of_matmul_peak']:.1f}% of matmul peak "
          f"({'met' if targets['b256_pct_of_matmul_peak']['met'] else 'MISSED'}, >= 25%); "
          f"{b256['x_resnet50']:.0f}x ResNet-50 ({'met' if targets['b256_x_resnet50']['met'] else 'MISSED'}, >= 1000x)")
    _common.write_result("embed" + args.tag, {
        "command": _common.command_line(), "machine": machine, "loadavg_at_end": list(__import__("os").getloadavg()),
        "artifact": art_kind, "model_id": emb.model_id,
        "flops_per_image": {"hybrid1": flops, "resnet50_224": rn_flops}, "theoretical_peak": theo,
        "results": results, "targets": targets,
    })


if __name__ == "__main__":
    main()
