"""Service settings: SIMSEARCH_* environment variables (the CLI sets them too)."""
from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from pathlib import Path

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from ._images import FORMAT_NAMES, image_policy

# index.MILVUS_INDEX_KINDS, without importing index before /healthz (tests/app/test_groups.py holds them equal)
MILVUS_INDEXES = ("flat", "hnsw", "ivf")
# A thumbnail this size fits index._milvus.MAX_THUMBNAIL (49,149 bytes): at 384 px the largest measured
# was 33,532 bytes (noise, the worst case for JPEG); at 512, a 640x480 photo's was 52,691
MILVUS_MAX_THUMBNAIL_SIZE = 384
# A root path: "/" and non-empty parts of the characters a URL path holds as they are (uvicorn puts the prefix in
# both the decoded path and the raw one, so no % escapes, and ASCII only), no part "." or "..", which browsers
# take out of a URL
_ROOT_PATH = re.compile(r"(?:/(?!\.\.?(?:/|$))[A-Za-z0-9\-._~!$&'()*+,;=:@]+)+")


# SIMSEARCH_* variables that are not settings below but are read elsewhere: by `simsearch serve` (workers,
# log format), training's dataset cache, the compose file and image build, the benches and tests
_OTHER_VARIABLES = frozenset({"SIMSEARCH_WORKERS", "SIMSEARCH_LOG_FORMAT", "SIMSEARCH_CACHE", "SIMSEARCH_VARIANT",
                              "SIMSEARCH_GATEWAY_PORT", "SIMSEARCH_EXTRAS", "SIMSEARCH_BENCH_DIR",
                              "SIMSEARCH_SHARED_DATA"})


def _served_first_segments() -> set[str]:
    """The first path segment of every route the service serves (search, index, ..., docs, static)."""
    from ._errors import all_routes
    from ._routes import router

    routes = {getattr(route, "path", "").split("/")[1] for route in all_routes(router.routes)}
    return (routes | {"docs", "redoc", "openapi.json", "static"}) - {""}   # FastAPI's pages, the mounted files


class Settings(BaseSettings):
    """Everything the service can be told. Each field is read from SIMSEARCH_<FIELD> (e.g.
    SIMSEARCH_API_KEY, SIMSEARCH_MAX_BODY_BYTES); limits of 0 switch that limit off where noted."""

    model_config = SettingsConfigDict(env_prefix="SIMSEARCH_", extra="ignore", validate_default=True)

    model_path: Path | None = Field(None, description="model artifact, or the name of a bundled one (hybrid1-mnist; "
                                                      "a file of that name wins); default: the bundled CIFAR-10 "
                                                      "Hybrid-1")
    model_modules: str = Field("", description="comma-separated modules or .py files that register architectures "
                                               "of your own (@model.register_model), imported before the model "
                                               "loads")
    data_dir: Path = Field(Path("data"), description="directory holding the index (<data_dir>/index)")
    index: str | None = Field(None, description="index preset: flat, hnsw, ivf, ivfpq or a FAISS factory string; "
                                                 "unset, a gallery keeps the kind it has and a new one is flat")
    milvus_uri: str | None = Field(None, description="keep the galleries in Milvus instead of data_dir: a Milvus server "
                                                     "(http://milvus:19530), which many service processes share, "
                                                     "or a Milvus Lite file (galleries.db, one process); the "
                                                     "milvus extra")
    milvus_token: SecretStr | None = Field(None, description="milvus_uri: user:password or an API key, when the "
                                                             "server asks for one")
    milvus_db: str | None = Field(None, description="milvus_uri: the Milvus database (default: its default one)")
    device: str | None = Field(None, description="torch device for the model (cpu, cuda, cuda:1); default: auto")
    trace_model: bool = Field(True, description="run the network as a TorchScript graph when it traces faithfully "
                                                "(fewer Python calls per batch); false: always the eager modules")
    runtime: str = Field("torch", description="what runs the network: torch, or onnx (exported to ONNX at start and "
                                              "run by onnxruntime on the CPU; needs the onnx extra)")
    api_key: SecretStr | None = Field(None, description="key required for writes (and reads, see below); several "
                                                        "keys comma-separated, each with full access")
    api_key_file: Path | None = Field(None, description="file of the keys, one per line (# comments), each may be "
                                                        "scoped (`KEY read`, `KEY galleries=a,b`), read again when "
                                                        "it changes: keys and scopes change without a restart")
    require_key_for_reads: bool = Field(False, description="also require the key for searches, listings and /metrics")
    read_only: bool = Field(False, description="serve the index without writing to it (a backup, read-only "
                                               "media, replicas beside the service that writes); writes get 405")
    refresh_seconds: float = Field(5.0, ge=0, description="read_only: how often to apply the writes another process "
                                                          "makes to the same folder; 0 = serve it as it was at start")
    max_body_bytes: int = Field(10 * 1024 * 1024, ge=1, description="largest request body (413 past it)")
    body_timeout_seconds: float = Field(30.0, ge=0, description="longest wait for the next bytes of a request "
                                                                "body, and past 30 s of waiting the body must "
                                                                "average 1 KB/s (408 body_timeout otherwise); "
                                                                "0 = off")
    # 64 MP lets the 48 and 50 MP modes of current phones through (8064x6048, 8160x6120); JPEG and HEIC
    # photos are decoded at reduced scale, so only the other formats ever hold that many pixels.
    max_pixels: int = Field(64_000_000, ge=1, description="largest image in pixels (width x height)")
    # A search's images that decode whole (PNG, WebP, GIF, BMP, AVIF) may hold max_pixels in all; a write, which
    # needs a key and carries a batch (`simsearch index upload` sends 32 files a request), 4 times as many:
    # 32 PNGs of 8 MP, about 4 s of one core (8 of 12 MP took 1.5 s: bench/bench_index_decode.py)
    max_index_pixels: int = Field(256_000_000, ge=1, description="most pixels the images of one POST /index that "
                                                                  "decode whole (PNG, WebP, GIF, BMP, AVIF) may "
                                                                  "hold in all, never less than max_pixels (a "
                                                                  "search's may hold max_pixels)")
    # What decoding holds is counted in pixels as max_index_pixels counts it. Two 64-MP images decoded whole at once
    # (a WebP's decode holds about 1 GB, a progressive JPEG's 370-490 MB, a PNG's some 250 MB), or ten 12-MP PNGs;
    # a phone's JPEG, decoded at 1/8 for the model and a 128-pixel thumbnail, counts 190,000: hundreds at once, so
    # that small images decode in as many threads as there are cores, as before
    decode_pixels_in_flight: int = Field(128_000_000, ge=1, description="most pixels the images that POST /index "
                                                                         "requests decode at once may hold in all, "
                                                                         "counted as max_index_pixels counts them "
                                                                         "(past it a decode waits for the others; "
                                                                         "one larger than it is decoded alone)")
    image_formats: str = Field(",".join(FORMAT_NAMES),
                               description="comma-separated formats uploads may be in, of " + ", ".join(FORMAT_NAMES)
                                           + " (jpeg includes MPO; heif includes HEIC; avif and heif only "
                                             "where their decoders are installed)")
    filter_keys: str = Field("", description="comma-separated metadata keys whose filter indexes are built at "
                                             "start-up (before ready) instead of by the first search that filters "
                                             "on each")
    cors_origins: str = Field("", description="comma-separated origins (scheme://host[:port]) whose web pages may "
                                              "call the API from a browser, or * for any; default: none (the "
                                              "service's own page needs none)")
    max_files_per_request: int = Field(64, ge=1, description="most `file` parts in one request")
    max_fields_per_request: int = Field(256, ge=1, description="most non-file multipart fields in one request")
    max_field_bytes: int = Field(64 * 1024, ge=1, description="largest non-file multipart field (metadata, id)")
    rate_limit_per_minute: int = Field(1200, ge=0, description="requests per minute per API key or client IP; 0 = off")
    workers_dir: Path | None = Field(None, description="a folder that the service processes of one machine "
                                                       "share (`serve --workers N` sets one): their common rate "
                                                       "limits, and the lock that has `skip_duplicates` store a "
                                                       "new picture once among them; default: each on its own")
    # A backup is the whole store (1.35 GB at a million items): far past max_body_bytes, which is sized for images
    max_restore_bytes: int = Field(16 * 1024 ** 3, ge=1, description="largest backup file PUT "
                                                                     "/galleries/NAME/backup takes (413 past it); "
                                                                     "the data folder's disk must also have room "
                                                                     "for it (507 otherwise)")
    backup_stall_seconds: float = Field(60.0, gt=0, description="a backup download (GET /galleries/NAME/backup) "
                                                                "whose client takes nothing of it for this long is "
                                                                "cut off, its temporary copy closed")
    max_concurrency: int = Field(64, ge=0, description="requests in flight before answering 503; 0 = off")
    max_duplicates_items: int = Field(50_000, ge=0, description="GET /duplicates searches the whole gallery with "
                                                                 "each of its items (19 s for 60,000 on 2 cores, "
                                                                 "growing with the square; the compose gateway "
                                                                 "waits 60 s): refused for a larger gallery, which "
                                                                 "`simsearch index duplicates` serves beside the "
                                                                 "service; 0 = no limit")
    max_galleries: int = Field(100, ge=1, description="most galleries the service makes, the default one "
                                                       "included (each open one holds its index in memory); those "
                                                       "already in the data folder always open")
    create_galleries_on_write: bool = Field(True, description="the first write (POST /index) to a gallery that "
                                                               "does not exist makes it; false: only PUT "
                                                               "/galleries/NAME makes one, and a write to a name "
                                                               "no gallery has is a 404 (a typo stores nothing)")
    batch_max_size: int = Field(32, ge=1, description="most images embedded together")
    batch_max_wait_ms: float = Field(2.0, ge=0, description="how long a batch waits to fill")
    thumbnail_size: int = Field(128, ge=0, le=1024, description="longest side of stored thumbnails; 0 = store none")
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    root_path: str = Field("", description="the path prefix the service is reached under behind a gateway "
                                           "(/simsearch for https://host/simsearch/), stripped by the gateway or "
                                           "not: the ASGI root_path, so that /docs loads /simsearch/openapi.json "
                                           "and redirects keep the prefix; default: none")

    @field_validator("root_path")
    @classmethod
    def _path_prefix(cls, v: str) -> str:
        if not v:
            return v
        if v == "/":
            raise ValueError("/ is the root itself: leave it unset (empty) to serve at the root")
        if not v.startswith("/"):
            why = "it must start with / (/simsearch, say)"
        elif v.endswith("/"):
            why = f"it must not end with / (give {v.rstrip('/')!r})"
        elif "?" in v or "#" in v:
            why = "it holds ? or # (a prefix has no query or fragment)"
        elif not _ROOT_PATH.fullmatch(v):
            why = ("each part between slashes must be non-empty, not . or .., and of letters, digits and "
                   "-._~!$&'()*+,;=:@ only (no spaces, % escapes or non-ASCII)")
        elif (first := v.split("/")[1]) in _served_first_segments():
            # the service takes paths with the prefix and without it: /search under a prefix /search could not
            # be told from the root
            why = (f"/{first} is a path the service serves itself, so a request for it could not be told from "
                   "one under the prefix: choose another prefix (/simsearch, say)")
        else:
            return v
        raise ValueError(f"not a path prefix: {why}")

    @field_validator("api_key")
    @classmethod
    def _empty_key_is_none(cls, v: SecretStr | None) -> SecretStr | None:
        from ._auth import parse_keys, unsendable

        keys = parse_keys(v.get_secret_value()) if v is not None else []
        if any(len(k.split()) > 1 for k in keys):
            raise ValueError("a key holds a space: SIMSEARCH_API_KEY takes full-access keys only, comma-separated; "
                             "scoped keys (`KEY read`, `KEY galleries=NAME,...`) go in SIMSEARCH_API_KEY_FILE")
        if unsendable(keys):
            raise ValueError(f"key {unsendable(keys)} holds a character an HTTP header cannot carry (a letter beyond "
                             "ASCII, a control character): no client could send it; keys are visible ASCII")
        return v if v is not None and v.get_secret_value() else None

    @field_validator("api_key_file")
    @classmethod
    def _readable_key_file(cls, v: Path | None) -> Path | None:
        if v is None or not str(v):
            return None
        from ._auth import KeyFileError, read_key_file

        try:
            keys = read_key_file(v)
        except OSError as exc:
            raise ValueError(f"{v}: {exc.strerror}") from None
        except KeyFileError as exc:   # names the line, never the key
            raise ValueError(f"{v}: {exc}") from None
        if not keys:
            raise ValueError(f"{v} holds no key (one per line; blank lines and # comments are skipped)")
        return v

    @field_validator("workers_dir")
    @classmethod
    def _workers_dir_is_a_folder(cls, v: Path | None) -> Path | None:
        if v is None or not str(v):
            return None
        if not v.is_dir():
            raise ValueError(f"{v} is not a folder")
        return v

    @model_validator(mode="after")
    def _one_source_of_keys(self) -> "Settings":
        if self.api_key is not None and self.api_key_file is not None:
            raise ValueError("give the API keys in SIMSEARCH_API_KEY or in SIMSEARCH_API_KEY_FILE, not both")
        return self

    @field_validator("image_formats")
    @classmethod
    def _known_formats(cls, v: str) -> str:
        names = [{"jpg": "jpeg", "heic": "heif"}.get(n, n) for n in (x.strip().lower() for x in v.split(",")) if n]
        unknown = [n for n in names if n not in FORMAT_NAMES]
        if unknown or not names:
            raise ValueError(f"{v!r}: give a comma-separated list of {', '.join(FORMAT_NAMES)}"
                             + (f" ({unknown[0]!r} is none of them)" if unknown else ""))
        image_policy(names)  # raises when none of them can be read here
        return ",".join(n for n in FORMAT_NAMES if n in names)

    @field_validator("filter_keys")
    @classmethod
    def _key_list(cls, v: str) -> str:
        return ",".join(dict.fromkeys(k.strip() for k in v.split(",") if k.strip()))

    @field_validator("cors_origins")
    @classmethod
    def _origin_list(cls, v: str) -> str:
        origins = list(dict.fromkeys(o.strip().rstrip("/") for o in v.split(",") if o.strip()))
        for origin in origins:
            if origin != "*" and not re.fullmatch(r"https?://[^/\s?#]+", origin):
                raise ValueError(f"{origin!r} is not an origin: give scheme://host[:port] "
                                 "(https://photos.example.com, say), without a path, or *")
        if "*" in origins and len(origins) > 1:
            raise ValueError(f"{v!r}: * already allows every origin; give it alone")
        return ",".join(origins)

    def cors_origin_list(self) -> list[str]:
        """The origins allowed to call the API from a browser (empty: none)."""
        return [o for o in self.cors_origins.split(",") if o]

    @field_validator("device", "index")
    @classmethod
    def _empty_is_unset(cls, v: str | None) -> str | None:
        # an empty variable (compose's ${SIMSEARCH_INDEX:-}) is "not given": a GPU when there is one; each
        # gallery's own index kind
        return v or None

    @field_validator("runtime")
    @classmethod
    def _known_runtime(cls, v: str) -> str:
        import model

        v = v.strip().lower()
        if v not in model.RUNTIMES:
            raise ValueError(f"give one of {', '.join(model.RUNTIMES)}")
        missing = model.missing_onnx_packages() if v == "onnx" else []
        if missing:
            raise ValueError(f"the onnx runtime needs {', '.join(missing)} installed "
                             "(pip install 'simsearch[onnx]')")
        return v

    @field_validator("milvus_uri", "milvus_db")
    @classmethod
    def _empty_is_none(cls, v: str | None) -> str | None:
        return v.strip() or None if v is not None else None

    @field_validator("milvus_token")
    @classmethod
    def _empty_token_is_none(cls, v: SecretStr | None) -> SecretStr | None:
        return v if v is not None and v.get_secret_value() else None

    @model_validator(mode="after")
    def _milvus_installed_and_its_index(self) -> "Settings":
        if self.milvus_uri is None:
            return self
        import importlib.util

        if importlib.util.find_spec("pymilvus") is None:
            raise ValueError("SIMSEARCH_MILVUS_URI needs pymilvus installed (pip install 'simsearch[milvus]')")
        if self.index is not None and self.index not in MILVUS_INDEXES:
            raise ValueError(f"SIMSEARCH_INDEX {self.index!r}: with SIMSEARCH_MILVUS_URI the index kinds are "
                             f"{', '.join(MILVUS_INDEXES)} (Milvus builds and keeps the index)")
        if self.thumbnail_size > MILVUS_MAX_THUMBNAIL_SIZE:
            raise ValueError(f"SIMSEARCH_THUMBNAIL_SIZE {self.thumbnail_size}: with SIMSEARCH_MILVUS_URI it is at most "
                             f"{MILVUS_MAX_THUMBNAIL_SIZE}, as Milvus keeps a thumbnail in one text field of 49,149 "
                             "bytes (at 512 a photo's thumbnail took 52,691)")
        return self

    def milvus_token_value(self) -> str | None:
        """The Milvus token as a string, or None."""
        return self.milvus_token.get_secret_value() if self.milvus_token is not None else None

    @model_validator(mode="after")
    def _onnx_on_the_cpu(self) -> "Settings":
        if self.runtime == "onnx" and self.device not in (None, "cpu"):
            raise ValueError(f"SIMSEARCH_RUNTIME onnx runs on the CPU; SIMSEARCH_DEVICE {self.device} needs "
                             "SIMSEARCH_RUNTIME torch")
        return self

    @classmethod
    def unknown_variables(cls, environ: Mapping[str, str]) -> list[str]:
        """One line for each SIMSEARCH_* variable in environ that nothing reads, naming the setting it
        may have meant: a misspelt setting (SIMSEARCH_DATA for SIMSEARCH_DATA_DIR) is otherwise left
        unused without a word. Not an error: a platform may set such names of its own (Kubernetes
        sets SIMSEARCH_SERVICE_HOST for a service called simsearch)."""
        known = {"SIMSEARCH_" + name.upper() for name in cls.model_fields} | _OTHER_VARIABLES
        lines = []
        for name in sorted(environ):
            upper = name.upper()
            if upper.startswith("SIMSEARCH_") and upper not in known:
                # the setting it begins (SIMSEARCH_DATA: SIMSEARCH_DATA_DIR), else one spelt alike
                near = sorted((k for k in known if k.startswith(upper + "_")), key=len)[:1] or \
                    difflib.get_close_matches(upper, sorted(known), n=1, cutoff=0.8)
                guess = f" (did you mean {near[0]}?)" if near else ""
                lines.append(f"{name} is not a setting and is ignored{guess}")
        return lines

    def resolved_model_path(self) -> Path:
        """The artifact to load: model_path (the bundled artifact of that name when no such file exists;
        model.ArtifactError when neither), or the bundled CIFAR-10 Hybrid-1."""
        import model

        if self.model_path is not None:
            return model.find_artifact(self.model_path)
        return model.default_artifact_path("cifar10")
