"""Turning a batch of uploads into vectors: decode what came encoded, then one model call for all.

Two interchangeable runners with one signature, `runner(payloads) -> Embedded`:
- `LocalEmbedding`, in the calling thread (the batcher's worker thread);
- `EmbeddingProcess`, in a child process that holds its own copy of the model.

Why a process: in the server the worker thread shares the GIL with the event loop, and every torch
operator, Pillow step and FAISS call releases it and must win it back. Under load that doubled the
worker's CPU per query and stretched its wall time 36x (docs/results/benchmarks.md, tenth and
eleventh sessions). The child decodes and embeds with a GIL of its own; the parent pays one pickled
message each way per batch.
"""
from __future__ import annotations

import logging
import multiprocessing as mp
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import numpy as np

from ._errors import ApiError
from ._images import decode_image

log = logging.getLogger("simsearch.app")

#: One job's images: encoded uploads as (what, bytes) pairs, or uint8 arrays (N, C, S, S) already made.
Payload = Union[list[tuple[str, bytes]], np.ndarray]

# How long one batch may take in the child before it is presumed stuck and replaced. A batch is at
# most batch_max_size images (32 by default) of at most max_pixels each: seconds, not minutes.
_BATCH_TIMEOUT_S = 120.0
_START_TIMEOUT_S = 300.0   # torch's import and the TorchScript trace, on a loaded machine


@dataclass
class Embedded:
    """The result for one batch of payloads."""

    vectors: np.ndarray          # float32 (rows of the jobs that did not fail, dim), in payload order
    failures: list               # per payload: None, or the ApiError that failed it (its rows are absent)
    decode_seconds: list[float]  # per decoded image
    embed_seconds: float         # the model call
    rows: int                    # images embedded (len(vectors))


class LocalEmbedding:
    """Decode and embed in the calling thread with `embedder` (a model.Embedder)."""

    def __init__(self, embedder, max_pixels: int):
        self.embedder = embedder
        self.max_pixels = max_pixels

    def __call__(self, payloads: list[Payload]) -> Embedded:
        """Embed every payload; one that cannot be decoded fails alone (its ApiError in `failures`)."""
        arrays: list[np.ndarray] = []
        failures: list = [None] * len(payloads)
        decode_seconds: list[float] = []
        for i, payload in enumerate(payloads):
            if isinstance(payload, np.ndarray):
                arrays.append(payload)
                continue
            try:
                decoded = []
                for what, data in payload:
                    t0 = time.perf_counter()
                    decoded.append(decode_image(data, self.max_pixels, what=what, convert=self.embedder.preprocess))
                    decode_seconds.append(time.perf_counter() - t0)
            except ApiError as exc:   # a bad upload fails its own request only
                failures[i] = exc
                continue
            arrays.append(np.stack(decoded))
        if not arrays:
            return Embedded(np.zeros((0, self.embedder.dim), np.float32), failures, decode_seconds, 0.0, 0)
        batch = np.concatenate(arrays) if len(arrays) > 1 else arrays[0]
        t0 = time.perf_counter()
        vectors = self.embedder.embed_arrays(batch)
        return Embedded(vectors, failures, decode_seconds, time.perf_counter() - t0, len(batch))


def _child(conn, model_path: str, device: str | None, trace: bool, max_pixels: int, threads: int) -> None:
    """The child process: load the model, then answer one batch at a time until told to stop (None)
    or until the parent goes away (EOF)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)   # Ctrl+C in a terminal is the parent's to handle
    import torch

    import model

    torch.set_num_threads(threads)
    try:
        embedder = model.Embedder.from_file(model_path, device=device, trace=trace)
    except Exception as exc:  # noqa: BLE001  (reported to the parent, which explains it)
        conn.send(("failed", f"{type(exc).__name__}: {exc}"))
        return
    run = LocalEmbedding(embedder, max_pixels)
    conn.send(("ready", embedder.model_id))
    while True:
        try:
            payloads = conn.recv()
        except EOFError:
            return
        if payloads is None:
            return
        try:
            out = run(payloads)
        except Exception as exc:  # noqa: BLE001  (the batch fails; the child keeps serving)
            conn.send(("error", f"{type(exc).__name__}: {exc}"))
            continue
        failures = [None if f is None else (f.status, f.code, f.message) for f in out.failures]
        conn.send(("ok", out.vectors, failures, out.decode_seconds, out.embed_seconds))


class EmbeddingProcess:
    """Decode and embed in a child process that loads the same artifact.

    Call it from one thread at a time (the batcher's worker). A child that dies or hangs mid-batch
    is replaced: that batch fails with 503 `embedding_restarted` (retry), the next one goes to the
    new child. `restarts` counts the replacements.
    """

    def __init__(self, model_path: str | Path, device: str | None, trace: bool, max_pixels: int,
                 expect_model_id: str | None = None, threads: int = 1):
        self._args = (str(model_path), device, trace, max_pixels, threads)
        self._expect = expect_model_id
        self._ctx = mp.get_context("spawn")   # a fork of a process running torch's threads may deadlock
        self._proc = None
        self._conn = None
        self._lock = threading.Lock()
        self.restarts = 0

    @property
    def pid(self) -> int | None:
        """The child's process id (None before start)."""
        return self._proc.pid if self._proc is not None else None

    def start(self) -> None:
        """Start the child and wait until its model is loaded (raises RuntimeError if it cannot be)."""
        parent, child = self._ctx.Pipe()
        proc = self._ctx.Process(target=_child, args=(child, *self._args), name="simsearch-embed", daemon=True)
        proc.start()
        child.close()
        try:
            if not parent.poll(_START_TIMEOUT_S):
                raise RuntimeError(f"the embedding process did not load the model in {_START_TIMEOUT_S:.0f} s")
            status, detail = parent.recv()
        except (EOFError, OSError):
            proc.join(5)
            raise RuntimeError(f"the embedding process exited while loading the model "
                               f"(exit code {proc.exitcode})") from None
        except RuntimeError:
            proc.kill()
            raise
        if status != "ready":
            proc.join(5)
            raise RuntimeError(f"the embedding process cannot load the model: {detail}")
        if self._expect is not None and detail != self._expect:
            proc.kill()
            raise RuntimeError(f"the embedding process loaded {detail}, not {self._expect}")
        self._proc, self._conn = proc, parent

    def __call__(self, payloads: list[Payload]) -> Embedded:
        """Embed every payload in the child (see LocalEmbedding); 503 if the child fails mid-batch."""
        with self._lock:
            if not self._proc.is_alive():   # died between batches: nothing of this batch was lost in it
                self._replace(f"exited (exit code {self._exit_code()}) between batches")
            try:
                self._conn.send(payloads)
                if not self._conn.poll(_BATCH_TIMEOUT_S):
                    raise TimeoutError
                reply = self._conn.recv()
            except (EOFError, OSError, TimeoutError) as exc:
                why = (f"did not answer in {_BATCH_TIMEOUT_S:.0f} s" if isinstance(exc, TimeoutError)
                       else f"exited (exit code {self._exit_code()})")
                self._replace(why)
                raise ApiError(503, "embedding_restarted", f"the embedding process {why} while handling "
                                                           "this request; it has been restarted: retry",
                               {"Retry-After": "1"}) from None
        if reply[0] == "error":
            raise RuntimeError(f"embedding failed in the embedding process: {reply[1]}")
        _, vectors, failures, decode_seconds, embed_seconds = reply
        failures = [None if f is None else ApiError(*f) for f in failures]
        return Embedded(vectors, failures, decode_seconds, embed_seconds, len(vectors))

    def _exit_code(self) -> int | None:
        self._proc.join(1)
        return self._proc.exitcode

    def _replace(self, why: str) -> None:
        log.error("the embedding process (pid %s) %s; starting a new one", self.pid, why)
        self._proc.kill()
        self._proc.join(5)
        self._conn.close()
        self.restarts += 1
        self.start()   # if this raises, the next batch raises too: the service answers 500s until fixed

    def close(self) -> None:
        """Stop the child (asks it to exit, kills it after 5 s)."""
        with self._lock:
            if self._proc is None:
                return
            try:
                self._conn.send(None)
            except OSError:
                pass
            self._proc.join(5)
            if self._proc.is_alive():
                self._proc.kill()
                self._proc.join(5)
            self._conn.close()
            self._proc = None
