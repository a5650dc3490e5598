"""`simsearch index build|galleries|stats|delete` and `search` with --milvus-uri: a gallery in Milvus (a
Milvus Lite server process) built from real CIFAR-10 files, found, counted and pruned from the command
line, and one line, not a traceback, when Milvus is gone."""
from __future__ import annotations

import json
import os
import signal

import pytest

pytest.importorskip("pymilvus")

from cli import main  # noqa: E402
from index import MilvusConfig, MilvusStore  # noqa: E402

from ..app.conftest import free_port  # noqa: E402
from ..index.test_milvus import _milvus_server  # noqa: E402


def test_the_index_commands_build_search_count_and_delete_a_gallery_in_milvus(hybrid1_artifact, cat_and_ship_photos,
                                                                              tmp_path, capsys):
    """`simsearch index build|stats|delete` and `search` with --milvus-uri, on a folder of real CIFAR-10
    images, against a Milvus Lite server process."""
    folder = cat_and_ship_photos
    port = free_port()
    server = _milvus_server(tmp_path / "milvus", port)
    uri = f"http://127.0.0.1:{port}"
    common = ["--milvus-uri", uri, "--gallery", "pets", "--data", str(tmp_path / "unused")]
    try:
        assert main(["index", "build", str(folder), "--model", str(hybrid1_artifact), *common]) == 0
        assert "indexed 12 images" in capsys.readouterr().out
        assert main(["index", "build", str(folder), "--model", str(hybrid1_artifact), *common]) == 0
        assert "12 already indexed, 0 to embed" in capsys.readouterr().out   # it resumes
        assert main(["index", "galleries", "--json", "--milvus-uri", uri]) == 0
        assert [(g["name"], g["count"]) for g in json.loads(capsys.readouterr().out)] == [("pets", 12)]
        assert main(["index", "stats", "--json", *common]) == 0
        stats = json.loads(capsys.readouterr().out)
        assert stats["count"] == 12 and stats["labels"] == {"cat": 6, "ship": 6} and stats["backend"] == "milvus"
        query = folder / "ship" / "0003.jpg"
        assert main(["search", str(query), "-k", "2", "--json", "--model", str(hybrid1_artifact), *common]) == 0
        hits = json.loads(capsys.readouterr().out)   # one query: its hits
        assert hits[0]["id"] == "ship/0003.jpg" and hits[0]["score"] > 0.999
        assert main(["index", "delete", "--label", "cat", *common]) == 0
        assert "would delete 6 of the 12 items in " + uri in capsys.readouterr().out
        assert main(["index", "delete", "--label", "cat", "--yes", *common]) == 0
        assert "deleted 6 items" in capsys.readouterr().out
        with MilvusStore.open(MilvusConfig(uri, gallery="pets")) as store:
            assert store.labels() == {"ship": 6}
        # without --model: the bundled model that made the gallery, or one line asking for it
        import model

        mnist = ["--milvus-uri", uri, "--gallery", "digits", "--data", str(tmp_path / "unused")]
        assert main(["index", "build", str(folder), "--model", str(model.default_artifact_path("mnist")), *mnist]) == 0
        capsys.readouterr()
        assert main(["search", str(query), "-k", "1", "--json", *mnist]) == 0
        assert json.loads(capsys.readouterr().out)[0]["id"] == "ship/0003.jpg"
        assert main(["search", str(query), *common]) == 2
        assert ("gallery 'pets' in Milvus holds vectors of model 'hybrid1-test@" in capsys.readouterr().err)
    finally:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()
    # Milvus gone: one line naming it, not a traceback
    assert main(["index", "stats", *common]) == 2
    err = capsys.readouterr().err
    assert err.startswith("simsearch index: error: ") and "Milvus at " + uri in err and "Traceback" not in err
