"""The SIMSEARCH_* variables the command line reads, in one place (the service reads its own through app's
Settings): where galleries are (--data, --milvus-uri defaults), and the key the HTTP clients (index upload,
index edit --url, search --url) send."""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from ._errors import CliError


@dataclass(frozen=True)
class ClientEnv:
    """The variables as the command line reads them; `ClientEnv.read()` takes them from the environment."""
    data_dir: str = "data"
    milvus_uri: str | None = None
    milvus_token: str | None = None
    milvus_db: str | None = None
    api_key: str | None = None
    api_key_file: str | None = None
    model_modules: str = ""

    @classmethod
    def read(cls) -> "ClientEnv":
        """The SIMSEARCH_* variables of this process (empty counts as unset where a default applies)."""
        env = os.environ.get
        return cls(data_dir=env("SIMSEARCH_DATA_DIR", "data"), milvus_uri=env("SIMSEARCH_MILVUS_URI") or None,
                   milvus_token=env("SIMSEARCH_MILVUS_TOKEN") or None, milvus_db=env("SIMSEARCH_MILVUS_DB") or None,
                   api_key=env("SIMSEARCH_API_KEY") or None, api_key_file=env("SIMSEARCH_API_KEY_FILE") or None,
                   model_modules=env("SIMSEARCH_MODEL_MODULES", "").strip())

    def write_key(self, given: str | None) -> str:
        """The key to send: --api-key as given, else the first of SIMSEARCH_API_KEY's keys, else the first of
        SIMSEARCH_API_KEY_FILE's, as the service reads both (one a line or comma-separated, # comments); ""
        for none. CliError naming a key file that cannot be read."""
        if given:
            return _sendable(given, "--api-key")
        if self.api_key:
            return _sendable(next(iter(_keys(self.api_key)), ""), "SIMSEARCH_API_KEY (its first key)")
        if self.api_key_file:
            where = f"SIMSEARCH_API_KEY_FILE {self.api_key_file!r}"
            try:   # as the service reads it: UTF-8 (a byte order mark skipped), or UTF-16 after its byte order mark
                raw = Path(self.api_key_file).read_bytes()
                text = raw.decode("utf-16") if raw[:2] in (b"\xff\xfe", b"\xfe\xff") else raw.decode("utf-8-sig")
            except OSError as exc:
                raise CliError(f"{where}: {exc.strerror}") from None
            except UnicodeDecodeError as exc:
                raise CliError(f"{where} is not UTF-8 text (byte {exc.start} is 0x{exc.object[exc.start]:02x})") \
                    from None
            return _sendable(next(iter(_file_keys(text)), ""), f"{where} (its first key)")
        return ""


def _keys(text: str) -> list[str]:
    # the service's parse_keys (app/_auth.py), which the command line does not import
    lines = (line.strip() for line in text.splitlines())
    return [k.strip() for line in lines if line and not line.startswith("#") for k in line.split(",") if k.strip()]


def _file_keys(text: str) -> list[str]:
    # the keys of a key file as the service's parse_key_file reads them: a line's first word holds its keys
    # (comma-separated), the words after it are options (`KEY read`, `KEY galleries=a,b`), never part of a key
    words = (re.sub(r"\s*,\s*", ",", line).split() for line in text.splitlines())
    return [k for line in words if line and not line[0].startswith("#") for k in line[0].split(",") if k]


def _sendable(key: str, source: str) -> str:
    """`key`, or CliError naming `source` (never the key) when an HTTP header cannot carry it: a character beyond
    ASCII or a control character (httpx would stop with a UnicodeEncodeError traceback, the service refuse it)."""
    if any(not " " <= c <= "~" for c in key):
        raise CliError(f"the API key from {source} holds a character an HTTP header cannot carry (a letter beyond "
                       "ASCII or a control character): write the key in printable ASCII")
    return key
