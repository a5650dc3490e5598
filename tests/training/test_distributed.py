"""Training in several processes (`simsearch train --nproc N`, torchrun and DDP over gloo on the CPU): the same
gradient and the same weights as one process, resumable, and clear errors."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file

import model
from .conftest import run_cli

REPO = Path(__file__).resolve().parents[2]


def _batch(seed: int = 3):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(16, 3, 8, 8, generator=g)
    y = torch.arange(4).repeat_interleave(4)  # 4 classes x 4: each process's share holds two whole classes
    return x, y


def _net_and_loss():
    from training import create_loss

    torch.manual_seed(0)
    net = model.create_model("cnn3a", in_chans=3, embed_dim=16)
    loss_fn = create_loss("ce+ms", 16, 4)
    return net, loss_fn


def _ddp_grads(rank: int, size: int, store: str, out: str) -> None:
    """One training step's gradients in process `rank` of `size`, as the trainer takes it."""
    import torch.distributed as dist

    from training import _distributed as d

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=size)
    world = d.World(rank, size, rank, "gloo")
    net, loss_fn = _net_and_loss()
    step_net = torch.nn.parallel.DistributedDataParallel(net)
    x, y = _batch()
    idx = d.share(world, torch.arange(len(y)))
    emb, labels = d.gather(world, step_net(x[idx]), y[idx])
    assert labels.dtype == y.dtype and torch.equal(labels, y)
    loss = loss_fn(emb, labels)
    loss.backward()
    d.average_gradients(world, list(loss_fn.parameters()))
    grads = {f"net.{k}": p.grad for k, p in net.named_parameters()}
    grads.update({f"loss.{k}": p.grad for k, p in loss_fn.named_parameters()})
    torch.save({"grads": grads, "loss": loss.detach()}, f"{out}.{rank}")
    d.finish(world)   # the trainer's way out: leaving while the other was on its way out aborted one (SIGABRT)


def test_the_gradient_in_two_processes_is_the_gradient_of_the_whole_batch(tmp_path):
    net, loss_fn = _net_and_loss()
    x, y = _batch()
    loss = loss_fn(net(x), y)
    loss.backward()
    want = {f"net.{k}": p.grad for k, p in net.named_parameters()}
    want.update({f"loss.{k}": p.grad for k, p in loss_fn.named_parameters()})

    mp.spawn(_ddp_grads, args=(2, str(tmp_path / "store"), str(tmp_path / "grads")), nprocs=2)
    for rank in (0, 1):
        got = torch.load(tmp_path / f"grads.{rank}", weights_only=True)
        assert torch.allclose(got["loss"], loss.detach(), atol=1e-6)
        assert got["grads"].keys() == want.keys()
        for k, g in want.items():
            # a share's gradient alone, or the sum of the two, would be far off
            assert torch.allclose(got["grads"][k], g, rtol=1e-4, atol=1e-7), k


# class-balanced batches (in four processes, shares of half a class); plain shuffling; a teacher's similarities
# and soft labels gathered beside the embeddings
@pytest.mark.parametrize("loss, teacher, nproc", [("ce+ms", False, 2), ("ce+ms", False, 4), ("ce", False, 2),
                                                  ("ce", True, 2)])
def test_n_processes_train_the_weights_one_process_would_and_resume(tiny_cifar_folder, tmp_path, loss, teacher,
                                                                    nproc):
    # No augmentation (each process draws its own) and no BatchNorm (each sees its share): then the only
    # difference is rounding.
    common = ["--model", "cnn3a", "--loss", loss, "--no-augment", "--val-fraction", "0", "--epochs", "3",
              "--batch-size", "16", "--quiet"]
    if teacher:
        t = tmp_path / "teacher.safetensors"
        r = run_cli("train", str(tiny_cifar_folder), "--out", str(t), "--loss", "ce", "--epochs", "1",
                    "--batch-size", "16", "--quiet", cache=tmp_path)
        assert r.returncode == 0, r.stderr
        common += ["--teacher", str(t), "--set", "distill_logits_weight=0.5"]
    one, two = tmp_path / "one.safetensors", tmp_path / "two.safetensors"
    r = run_cli("train", str(tiny_cifar_folder), "--out", str(one), *common, cache=tmp_path)
    assert r.returncode == 0, r.stderr
    # N processes, stopped after the first epoch and resumed
    r = run_cli("train", str(tiny_cifar_folder), "--out", str(two), *common, "--nproc", str(nproc),
                "--stop-after", "1", cache=tmp_path)
    assert r.returncode == 0, r.stderr
    assert not two.exists() and two.with_name(two.name + ".ckpt").exists()
    r = run_cli("train", str(tiny_cifar_folder), "--out", str(two), *common, "--nproc", str(nproc), "--resume",
                cache=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "resumed from" in r.stdout and f"in {nproc} processes of {16 // nproc}" in r.stdout
    assert r.stdout.count("wrote ") == 1  # the main process alone reports and writes

    a, b = load_file(one), load_file(two)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-5), k
    trained = model.read_meta(two).training
    assert trained["processes"] == nproc and trained["batch_size_used"] == 16
    assert model.read_meta(one).training["processes"] == 1
    assert [h["epoch"] for h in trained["history"]] == [1, 2, 3]


def test_the_default_recipe_in_two_processes_writes_a_working_hybrid1(tiny_cifar_folder, tmp_path):
    out = tmp_path / "h.safetensors"
    r = run_cli("train", str(tiny_cifar_folder), "--out", str(out), "--epochs", "2", "--batch-size", "16",
                "--nproc", "2", "--quiet", cache=tmp_path)
    assert r.returncode == 0, r.stderr
    meta = model.read_meta(out)
    assert meta.arch == "hybrid1" and meta.training["processes"] == 2 and meta.metrics["test_size"] == 24
    metrics = json.loads(out.with_name("h.metrics.json").read_text())
    assert metrics["training"]["processes"] == 2 and len(metrics["training"]["history"]) == 2
    emb = model.Embedder.from_file(out, device="cpu")
    v = emb.embed_arrays(torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8).numpy())
    assert v.shape == (2, 256)


@pytest.mark.parametrize("args, message", [
    (["--nproc", "0"], "--nproc must be at least 1, got 0"),
    # 4 classes: batches of 16 = 2 classes x 8, which three processes cannot share
    (["--nproc", "3", "--batch-size", "16"], "a batch of 16 (2 classes x 8) does not split into 3 equal shares, one "
                                             "for each process: use 2, 4, 8, 16 processes, or another batch size"),
])
def test_impossible_process_counts_are_one_clear_error(tiny_cifar_folder, tmp_path, args, message):
    r = run_cli("train", str(tiny_cifar_folder), "--out", str(tmp_path / "x.safetensors"), "--epochs", "1",
                "--quiet", *args, cache=tmp_path)
    assert r.returncode == 2, r.stderr
    assert message in r.stderr
    assert "Traceback" not in r.stderr
    # refused before torchrun starts the processes: none of its reports of stopping them
    assert "SIGTERM" not in r.stderr and "exitcode" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "x.safetensors").exists()


def test_a_process_other_than_the_main_one_that_crashes_is_named_with_the_end_of_its_output(tiny_cifar_folder,
                                                                                             tmp_path):
    """Only the main process writes to the console; when another one dies (here SIGABRT, as a C++ abort
    would), the error names it, its signal, and shows the end of what it wrote (faulthandler's stack)."""
    import signal
    import time

    env = {**os.environ, "SIMSEARCH_CACHE": str(tmp_path), "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    log = tmp_path / "out.log"
    with log.open("w") as out:
        p = subprocess.Popen([sys.executable, "-m", "cli", "train", str(tiny_cifar_folder), "--out",
                              str(tmp_path / "x.safetensors"), "--model", "cnn3a", "--epochs", "300", "--batch-size",
                              "16", "--quiet", "--nproc", "2"], cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while '"epoch": 2' not in log.read_text() and time.monotonic() < deadline:   # both are training
            assert p.poll() is None, log.read_text()
            time.sleep(0.1)
        rank1 = [int(d.name) for d in Path("/proc").iterdir() if d.name.isdigit() and _environ(d).get("RANK") == "1"
                 and _environ(d).get("SIMSEARCH_CACHE") == str(tmp_path)]
        assert len(rank1) == 1, rank1
        os.kill(rank1[0], signal.SIGABRT)
        assert p.wait(120) == 2
    finally:
        if p.poll() is None:
            p.kill()
    text = log.read_text()
    assert "training process 1 of 2 failed first (exit code -6, SIGABRT); the last of its stderr:" in text, text
    # where it was: faulthandler's stack of the process that died, not of the main one
    assert "Fatal Python error: Aborted" in text and "training/_trainer.py" in text.split("failed first")[1], text
    assert "Extension modules:" not in text


def _environ(proc: Path) -> dict[str, str]:
    try:
        raw = (proc / "environ").read_bytes()
    except OSError:
        return {}
    return dict(kv.split("=", 1) for kv in raw.decode(errors="replace").split("\0") if "=" in kv)
