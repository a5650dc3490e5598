"""`simsearch serve`: the HTTP service (uvicorn running app:create_app)."""
from __future__ import annotations

import argparse
import copy
import errno
import os
import shutil
import sys
import tempfile
from pathlib import Path

from ._errors import CliError

# CLI option -> the SIMSEARCH_* variable it sets (app.Settings reads them).
_ENV = {
    "model": "SIMSEARCH_MODEL_PATH", "data": "SIMSEARCH_DATA_DIR", "index": "SIMSEARCH_INDEX",
    "milvus_uri": "SIMSEARCH_MILVUS_URI",
    "device": "SIMSEARCH_DEVICE", "runtime": "SIMSEARCH_RUNTIME",
    "api_key": "SIMSEARCH_API_KEY", "api_key_file": "SIMSEARCH_API_KEY_FILE",
    "max_body_bytes": "SIMSEARCH_MAX_BODY_BYTES", "max_pixels": "SIMSEARCH_MAX_PIXELS",
    "max_concurrency": "SIMSEARCH_MAX_CONCURRENCY", "rate_limit": "SIMSEARCH_RATE_LIMIT_PER_MINUTE",
    "thumbnail_size": "SIMSEARCH_THUMBNAIL_SIZE", "host": "SIMSEARCH_HOST", "port": "SIMSEARCH_PORT",
    "root_path": "SIMSEARCH_ROOT_PATH",
}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="run the HTTP service (search, index, metrics, the search page)",
                       description="Run the HTTP service with uvicorn. Every option but --log-level is also a "
                                   "SIMSEARCH_* environment variable (docs/service.md lists them); options given "
                                   "here win.")
    env = os.environ.get
    p.add_argument("--host", default=env("SIMSEARCH_HOST", "127.0.0.1"), help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=_port, default=env("SIMSEARCH_PORT", "8000"),
                   help="port (default $SIMSEARCH_PORT, else 8000)")
    p.add_argument("--root-path", help="the path prefix a gateway reaches the service under, whether it strips it "
                                       "before passing requests on or not (/simsearch for https://host/simsearch/): "
                                       "the ASGI root_path, so that /docs and redirects carry it (default: none)")
    p.add_argument("--model", help="model artifact (.safetensors), or the name of a bundled one (hybrid1-mnist; "
                                   "`simsearch models` lists them; a file of that name wins) (default: the bundled "
                                   "CIFAR-10 Hybrid-1)")
    p.add_argument("--data", help="data directory; the index lives in DATA/index (default ./data)")
    p.add_argument("--index", help="index preset: flat, hnsw, ivf, ivfpq or a FAISS factory string (default: "
                                   "each gallery keeps its kind; a new one is flat)")
    p.add_argument("--milvus-uri", help="keep the galleries in Milvus instead of DATA: a server (http://milvus:19530; "
                                        "many service processes may share it) or a Milvus Lite file (galleries.db); "
                                        "SIMSEARCH_MILVUS_TOKEN for its credentials (the milvus extra)")
    p.add_argument("--device", help="torch device for the model: cpu, cuda, cuda:1 (default: auto)")
    p.add_argument("--runtime", help="what runs the network: torch (default) or onnx (onnxruntime on the CPU, "
                                     "faster at the small batches a server sees; the onnx extra)")
    p.add_argument("--api-key", help="require this key for writes (prefer SIMSEARCH_API_KEY or --api-key-file: "
                                     "a command-line key is visible in the process list)")
    p.add_argument("--api-key-file", type=Path, help="read the API keys from this file, one per line; it is read "
                                                     "again when it changes (keys rotate without a restart)")
    p.add_argument("--require-key-for-reads", action="store_true", help="also require the key for searches")
    p.add_argument("--read-only", action="store_true",
                   help="serve the index without writing to it (a backup, read-only media, replicas beside the "
                        "service that writes, whose writes it applies every SIMSEARCH_REFRESH_SECONDS): writes get 405")
    p.add_argument("--create-galleries-on-write", action=argparse.BooleanOptionalAction, default=None,
                   help="whether the first write (POST /index?gallery=NAME) to a gallery that does not exist makes "
                        "it (default $SIMSEARCH_CREATE_GALLERIES_ON_WRITE, else yes); --no-create-galleries-on-write: "
                        "only PUT /galleries/NAME (`simsearch galleries create`) makes one, and a write to a "
                        "misspelt name is a 404 instead of a new gallery")
    p.add_argument("--max-body-bytes", type=int, help="largest request body (default 10 MiB)")
    p.add_argument("--max-pixels", type=int, help="largest image, width x height (default 64,000,000)")
    p.add_argument("--max-concurrency", type=int, help="requests in flight before 503 (default 64)")
    p.add_argument("--rate-limit", type=int, help="requests per minute per key or client IP; 0 = off (default 1200)")
    p.add_argument("--thumbnail-size", type=int, help="longest side of stored thumbnails; 0 = none (default 128)")
    p.add_argument("--workers", type=int, default=env("SIMSEARCH_WORKERS", "1"),
                   help="uvicorn worker processes (default $SIMSEARCH_WORKERS, else 1); more than 1 needs --milvus-uri "
                        "with a Milvus server, since one process owns an index in DATA; /metrics counts them all")
    p.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"),
                   help="uvicorn's log level (default info); given here only: no SIMSEARCH_LOG_LEVEL is read")
    p.add_argument("--log-format", default=env("SIMSEARCH_LOG_FORMAT", "text"), choices=("text", "json"),
                   help="text (uvicorn's lines) or json (one object a line: time, level, logger, message, "
                        "request_id; method, path, status on access lines). Default text")
    # the service imports SIMSEARCH_MODEL_MODULES itself, after OMP_NUM_THREADS is set (torch comes with them)
    p.set_defaults(func=_serve, imports_user_models=False)


def _port(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a port number (from --port, else SIMSEARCH_PORT; Kubernetes sets SIMSEARCH_PORT="
            "tcp://... for a Service named simsearch: pass --port, or set enableServiceLinks: false)") from None


def _serve(args) -> int:
    # One OpenMP thread for torch and FAISS (before either is imported): the event loop needs a core,
    # and spinning intra-op threads on busy cores cost 10-100x (docs/results/benchmarks.md, P2).
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if args.workers < 1:
        raise CliError(f"--workers {args.workers}: give 1 or more")
    if not 0 <= args.port <= 65535:
        raise CliError(f"--port {args.port} is not a port number (0-65535)")
    if args.api_key_file is not None:  # read by the service, again whenever it changes
        args.api_key_file = args.api_key_file.resolve()
    for name, var in _ENV.items():
        value = getattr(args, name, None)
        if value is not None:
            os.environ[var] = str(value)
    if args.require_key_for_reads:
        os.environ["SIMSEARCH_REQUIRE_KEY_FOR_READS"] = "true"
    if args.read_only:
        os.environ["SIMSEARCH_READ_ONLY"] = "true"
    if args.create_galleries_on_write is not None:
        os.environ["SIMSEARCH_CREATE_GALLERIES_ON_WRITE"] = "true" if args.create_galleries_on_write else "false"

    import uvicorn
    from pydantic import ValidationError

    try:  # check the settings here, so that a bad value is one clear line, not a traceback per worker
        from app import Settings

        settings = Settings()
    except ValidationError as exc:
        raise CliError("invalid setting: " + "; ".join(_describe(e) for e in exc.errors())) from None
    for line in Settings.unknown_variables(os.environ):
        print(f"simsearch serve: warning: {line}", file=sys.stderr)
    if args.log_format not in ("text", "json"):   # argparse checks choices on the command line, not the default
        raise CliError(f"SIMSEARCH_LOG_FORMAT {args.log_format!r}: give text or json")
    _check_settings(settings)
    _check_address(args.host, args.port)
    if args.workers != 1 and (settings.milvus_uri is None or "://" not in settings.milvus_uri):
        raise CliError(f"--workers {args.workers}: several worker processes need the galleries in a Milvus server "
                       "(--milvus-uri http://HOST:19530): " + ("a Milvus Lite file is opened by one process"
                                                               if settings.milvus_uri else
                                                               "one process owns an index in DATA (its writer lock)"))
    made = _metrics_folder() if args.workers != 1 else None
    if args.workers != 1 and settings.workers_dir is None:
        # the workers' rate limits and skip_duplicates lock go beside their metrics (gone with a made folder)
        os.environ["SIMSEARCH_WORKERS_DIR"] = os.environ["PROMETHEUS_MULTIPROC_DIR"]
    try:
        uvicorn.run("app:create_app", factory=True, host=args.host, port=args.port, log_level=args.log_level,
                    workers=args.workers if args.workers != 1 else None,
                    log_config=_log_config(args.log_level, args.log_format), proxy_headers=True,
                    forwarded_allow_ips=os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1"),
                    timeout_graceful_shutdown=10)
    finally:
        if made is not None:
            shutil.rmtree(made, ignore_errors=True)
    return 0


def _check_settings(settings) -> None:
    """What would otherwise keep the service running but never ready, checked before anything loads: the
    model file, the data folder, the index kind and the device. CliError naming the setting and value."""
    model_path = settings.model_path
    if model_path is not None and not model_path.is_file():
        import model

        try:
            found = model.find_artifact(model_path)   # a bundled model's name
        except model.ArtifactError:
            near = ", ".join(model.bundled_artifacts(nearest_to=model_path))
            raise CliError(f"SIMSEARCH_MODEL_PATH (--model) {str(model_path)!r}: no such file, nor the name of a "
                           f"bundled model (give one by name, nearest first: {near})") from None
        if not found.is_file():
            why = "is a folder, not a model artifact" if found.is_dir() else "not a file"
            raise CliError(f"SIMSEARCH_MODEL_PATH (--model) {str(model_path)!r}: {why}")
    if settings.milvus_uri is None:
        import index

        data = settings.data_dir
        nearest = next((p for p in (data, *data.absolute().parents) if p.exists()), None)
        if nearest is not None and not nearest.is_dir():
            raise CliError(f"SIMSEARCH_DATA_DIR (--data) {str(data)!r}: {str(nearest)!r} is a file, not a folder")
        if nearest is not None and nearest != data and not settings.read_only and not os.access(nearest, os.W_OK):
            raise CliError(f"SIMSEARCH_DATA_DIR (--data) {str(data)!r}: cannot make it ({str(nearest)!r} is not "
                           "writable)")
        if nearest == data and not settings.read_only and not os.access(data, os.W_OK) \
                and not os.access(data / "index", os.W_OK):
            # a volume or host folder given to another user (root) at the data folder, or a read-only disk: /healthz
            # but never ready
            if index.on_read_only_disk(data):
                raise CliError(f"SIMSEARCH_DATA_DIR (--data) {str(data)!r} is on a read-only disk: serve its galleries "
                               "read-only (SIMSEARCH_READ_ONLY=true, --read-only: searches, no writes), or give it a "
                               "writable disk")
            uid = os.getuid() if hasattr(os, "getuid") else "?"
            raise CliError(f"SIMSEARCH_DATA_DIR (--data) {str(data)!r}: not writable by this process (uid {uid}); "
                           "give the folder to that user (the image's is 10001: chown 10001:10001 on the host "
                           "folder mounted there), or serve it read-only (SIMSEARCH_READ_ONLY=true)")
        if settings.index is not None and settings.index not in index.PRESET_NAMES:
            _check_factory(settings)
    device = settings.device
    if device is not None:
        kind, _, number = device.partition(":")
        if kind not in ("cpu", "cuda", "mps", "xpu") or (number and not number.isdigit()) or (kind == "cpu" and number):
            raise CliError(f"SIMSEARCH_DEVICE (--device) {device!r}: give cpu, cuda, cuda:N (or mps, xpu), "
                           "or leave it out to use a GPU when there is one")
        if kind == "cuda":
            import torch

            count = torch.cuda.device_count()
            if count <= int(number or 0):
                raise CliError(f"SIMSEARCH_DEVICE (--device) {device!r}: " + (
                    f"this machine has {count} CUDA device(s)" if count else "no CUDA device is usable here "
                                                                             "(no NVIDIA GPU or driver)"))


def _check_factory(settings) -> None:
    """A FAISS factory string (SIMSEARCH_INDEX not a preset) checked against the model's dimension."""
    import index
    import model

    try:
        dim = model.read_meta(settings.resolved_model_path()).embed_dim
    except Exception:  # noqa: BLE001  (the service says what is wrong with the model when it loads it)
        return
    try:
        index.check_index_kind(settings.index, dim)
    except index.InvalidItemError as exc:
        raise CliError(f"SIMSEARCH_INDEX (--index): {exc}") from None


def _check_address(host: str, port: int) -> None:
    """Whether `serve` can listen on host:port, found out before the model and index load (uvicorn binds
    after they start loading, and its error did not name the address)."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise CliError(f"SIMSEARCH_HOST (--host) {host!r}: not an address of this machine ({exc.strerror})") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)   # as uvicorn binds it
        try:
            probe.bind(address)
        except OSError as exc:
            in_use = " (another process listens there: stop it, or give --port)" if exc.errno == errno.EADDRINUSE else ""
            raise CliError(f"cannot listen on {host}:{port}: {exc.strerror}{in_use}") from None


def _metrics_folder() -> Path | None:
    """Several workers: the folder where each writes its metrics, so that a scrape of any one counts all
    (prometheus_client's multiprocess mode; set before the workers start, which read it). The operator's
    PROMETHEUS_MULTIPROC_DIR when set, emptied of the last run's counts; else a temporary folder, which is
    returned to be removed at exit."""
    given = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not given:
        made = tempfile.mkdtemp(prefix="simsearch-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = made
        return Path(made)
    folder = Path(given)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for stale in folder.glob("*.db"):   # a run's counts must not carry into the next
            stale.unlink()
    except OSError as exc:
        raise CliError(f"PROMETHEUS_MULTIPROC_DIR={given}: cannot use it for the workers' metrics ({exc})") from None
    return None


def _log_config(level: str, fmt: str) -> dict:
    """uvicorn's logging config, with the service's own loggers and each request's id added; in JSON
    when fmt is "json" (one object a line, for log shippers)."""
    import logging

    import uvicorn

    config = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
    # The service's loggers ("simsearch.*": ready, not ready, errors; "index": opening, snapshots, a full
    # disk) and Python's warnings go where uvicorn's go, at the same level; without this only their
    # warnings would reach stderr, unformatted.
    for name in ("simsearch", "index", "py.warnings"):
        config["loggers"][name] = {"handlers": ["default"], "level": level.upper(), "propagate": False}
    logging.captureWarnings(True)
    # Each request's id (X-Request-ID, from the gateway or made here) on its log lines.
    config["filters"] = {"request_id": {"()": "app.RequestIdLogFilter"}}
    for handler in config["handlers"].values():
        handler["filters"] = ["request_id"]
    if fmt == "json":
        for name in ("default", "access"):
            config["formatters"][name] = {"()": "cli._serve._json_formatter"}
    else:
        config["formatters"]["access"]["fmt"] += "%(key_suffix)s%(error_suffix)s request_id=%(request_id)s"
    return config


def _json_formatter():
    """A python-json-logger formatter: time, level, logger, message, request_id (inside a request), the
    traceback as exc_info, and for access lines client, method, path, http_version and status, with code (an
    error's), key and key_line (the API key's class and key file line, when the request sent a key)."""
    import logging

    from pythonjsonlogger.core import RESERVED_ATTRS
    from pythonjsonlogger.json import JsonFormatter

    class AccessJsonFormatter(JsonFormatter):
        def add_fields(self, log_data: dict, record: logging.LogRecord, message_dict: dict) -> None:
            super().add_fields(log_data, record, message_dict)
            if log_data.get("request_id") == "-":  # not logged inside a request
                del log_data["request_id"]
            for text_form in ("error_suffix", "key_suffix"):   # the text lines' form of error_code, key_*
                log_data.pop(text_form, None)
            code = log_data.pop("error_code", None)
            key_class, key_line = log_data.pop("key_class", None), log_data.pop("key_line", None)
            if record.name == "uvicorn.access" and isinstance(record.args, tuple) and len(record.args) == 5:
                client, method, path, version, status = record.args
                log_data.update(client=client, method=method, path=path, http_version=version, status=int(status))
                if code:   # the error this request was answered with
                    log_data["code"] = code
                if key_class:   # the API key it was served under: its class, and its line in the key file
                    log_data["key"] = key_class
                    if key_line is not None:
                        log_data["key_line"] = key_line

    return AccessJsonFormatter(["asctime", "levelname", "name", "message"], datefmt="%Y-%m-%dT%H:%M:%S%z",
                               rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
                               reserved_attrs=[*RESERVED_ATTRS, "color_message"], json_ensure_ascii=False)


def _describe(error: dict) -> str:
    """One setting's validation error: the variable, why, and the value given (never a key's)."""
    name = "_".join(str(x) for x in error["loc"]).upper()
    if not name:  # a rule across settings: the message names them
        return error["msg"].removeprefix("Value error, ")
    got = "" if name == "API_KEY" else f" (got {error.get('input')!r})"
    return f"SIMSEARCH_{name}: {error['msg']}{got}"
