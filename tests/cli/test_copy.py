"""`simsearch index copy`: galleries moved whole, with their vectors, from a data folder into Milvus and
back, the same items (ids in listing order, vectors, labels, metadata, thumbnails) and the same search
answers at every step; what Milvus cannot hold named, and the mistakes an operator can make refused in
one line."""
from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("pymilvus")

from cli import main  # noqa: E402
from index import Item, MilvusConfig, MilvusStore, Store, StoreConfig, StoreError, StoreReader  # noqa: E402


def _folder_items(path) -> list[Item]:
    with StoreReader(path) as reader:
        _, rows = reader.rows()
        return reader.items(list(rows))


def _milvus_items(uri: str, gallery: str) -> list[Item]:
    with MilvusStore.open(MilvusConfig(uri, gallery=gallery)) as store:
        return store.items(store.ids())


def _assert_same(got: list[Item], want: list[Item]) -> None:
    assert [i.id for i in got] == [i.id for i in want]   # the listing order too
    for g, w in zip(got, want):
        assert (g.label, g.metadata, g.thumbnail) == (w.label, w.metadata, w.thumbnail), g.id
        np.testing.assert_allclose(g.vector, w.vector, atol=1e-6)


def _hits(capsys, query, model, place: list[str]) -> list[tuple[str, float]]:
    assert main(["search", str(query), "-k", "5", "--json", "--model", str(model), *place]) == 0
    return [(h["id"], h["score"]) for h in json.loads(capsys.readouterr().out)]


def _assert_same_hits(got: list[tuple[str, float]], want: list[tuple[str, float]]) -> None:
    """The same scores in the same order, and the same items, where two items whose scores tie (the test
    model puts several ships within 1e-5 of each other) may come in either order: FAISS and Milvus break
    ties differently."""
    np.testing.assert_allclose([s for _, s in got], [s for _, s in want], atol=1e-5)
    clear = [s for _, s in want][-1] + 1e-5   # a tie at the k-th place may bring in either item
    assert {i for i, s in got if s > clear} == {i for i, s in want if s > clear}


def test_every_gallery_goes_from_a_folder_into_milvus_and_back_with_the_same_items_and_answers(
        cat_and_ship_photos, hybrid1_artifact, tmp_path, capsys):
    photos = cat_and_ship_photos
    data, back, uri = tmp_path / "data", tmp_path / "back", str(tmp_path / "galleries.db")
    assert main(["index", "build", str(photos / "cat"), "--data", str(data), "--model", str(hybrid1_artifact)]) == 0
    assert main(["index", "build", str(photos), "--data", str(data), "--gallery", "pets",
                 "--model", str(hybrid1_artifact)]) == 0
    with Store.open(StoreConfig(data / "galleries" / "pets" / "index")) as pets:   # edits the copy must keep
        pets.update("ship/0001.jpg", metadata_patch={"port": "Brest", "year": 1.0, "tags": ["a", None]})
        pets.upsert([Item("ship/0002.jpg", pets.get("ship/0002.jpg").vector, "boat", {"n": 2},
                          thumbnail=pets.thumbnail("ship/0002.jpg"))])   # replaced: now last in the listing
    capsys.readouterr()

    assert main(["index", "copy", "--all", "--data", str(data), "--to-milvus-uri", uri]) == 0
    out = capsys.readouterr().out
    assert "copied 6 of the 6 items" in out and "copied 12 of the 12 items" in out
    assert main(["index", "copy", "--all", "--milvus-uri", uri, "--to-data", str(back)]) == 0
    capsys.readouterr()
    for gallery, path in (("default", "index"), ("pets", "galleries/pets/index")):
        source = _folder_items(data / path)
        assert len(source) == (6 if gallery == "default" else 12) and all(i.thumbnail for i in source)
        _assert_same(_milvus_items(uri, gallery), source)
        _assert_same(_folder_items(back / path), source)
    assert _folder_items(back / "galleries/pets/index")[-1].id == "ship/0002.jpg"

    query = photos / "ship" / "0003.jpg"
    want = _hits(capsys, query, hybrid1_artifact, ["--data", str(data), "--gallery", "pets"])
    assert want[0][0] == "ship/0003.jpg" and want[0][1] == pytest.approx(1.0, abs=1e-5)
    _assert_same_hits(_hits(capsys, query, hybrid1_artifact, ["--milvus-uri", uri, "--gallery", "pets"]), want)
    _assert_same_hits(_hits(capsys, query, hybrid1_artifact, ["--data", str(back), "--gallery", "pets"]), want)

    # Again: the same items replaced, nothing doubled
    assert main(["index", "copy", "--milvus-uri", uri, "--gallery", "pets", "--to-data", str(back)]) == 0
    assert "it holds 12 items. Serve it with --data " in capsys.readouterr().out
    _assert_same(_folder_items(back / "galleries/pets/index"), _folder_items(data / "galleries/pets/index"))


def test_a_copy_reads_a_folder_a_service_is_writing_and_keeps_what_the_destination_held(
        hybrid1_artifact, tmp_path, capsys):
    rng = np.random.default_rng(0)
    vec = lambda: rng.normal(size=8).astype(np.float32)  # noqa: E731
    with Store.open(StoreConfig(tmp_path / "d" / "index", dim=8, model_id="m@1")) as served, \
            Store.open(StoreConfig(tmp_path / "e" / "index", dim=8, model_id="m@1")) as held:
        served.upsert([Item(f"i{i}", vec(), "a", {"i": i}) for i in range(5)])
        held.upsert([Item("own", vec()), Item("i0", vec(), "old")])
        held.close()
        # `served` holds its writer's lock all along, as `simsearch serve` would
        assert main(["index", "copy", "--data", str(tmp_path / "d"), "--to-data", str(tmp_path / "e")]) == 0
        assert "copied 5 of the 5 items" in capsys.readouterr().out
        got = {i.id: i for i in _folder_items(tmp_path / "e" / "index")}
        assert sorted(got) == ["i0", "i1", "i2", "i3", "i4", "own"] and got["i0"].label == "a"


def test_what_milvus_cannot_hold_is_named_the_rest_is_copied_and_the_status_says_so(tmp_path, capsys):
    rng = np.random.default_rng(1)
    with Store.open(StoreConfig(tmp_path / "d" / "index", dim=8, model_id="m@1", index="hnsw")) as s:
        s.upsert([Item("small", rng.normal(size=8).astype(np.float32), thumbnail=b"t" * 100),
                  Item("big-thumb", rng.normal(size=8).astype(np.float32), "x", thumbnail=b"t" * 60_000),
                  Item("long-label", rng.normal(size=8).astype(np.float32), "l" * 5000)])
    uri = str(tmp_path / "g.db")
    assert main(["index", "copy", "--data", str(tmp_path / "d"), "--to-milvus-uri", uri]) == 1
    out = capsys.readouterr().out
    assert "copied 2 of the 3 items" in out and "copied without its thumbnail: 'big-thumb' (" in out
    assert "49149" in out and "not copied: 'long-label' (" in out
    got = {i.id: i for i in _milvus_items(uri, "default")}
    assert sorted(got) == ["big-thumb", "small"] and got["big-thumb"].thumbnail is None
    assert got["big-thumb"].label == "x" and got["small"].thumbnail == b"t" * 100
    with MilvusStore.open(MilvusConfig(uri)) as store:
        assert store.info()["index"] == "hnsw"   # the source's kind, which Milvus builds

    with Store.open(StoreConfig(tmp_path / "pq" / "index", dim=8, model_id="m@1", index="ivfpq")) as s:
        s.upsert([Item("q", rng.normal(size=8).astype(np.float32))])
    assert main(["index", "copy", "--data", str(tmp_path / "pq"), "--to-milvus-uri", uri, "--to-gallery", "pq"]) == 0
    assert "Milvus does not build the source's index kind 'ivfpq': the copy is flat" in capsys.readouterr().out
    with MilvusStore.open(MilvusConfig(uri, gallery="pq")) as store:
        assert store.info()["index"] == "flat" and store.ids() == ["q"]


def test_an_operators_mistakes_are_one_line_each(tmp_path, capsys):
    rng = np.random.default_rng(2)
    with Store.open(StoreConfig(tmp_path / "d" / "index", dim=8, model_id="m@1")) as s:
        s.upsert([Item("a", rng.normal(size=8).astype(np.float32))])
    with Store.open(StoreConfig(tmp_path / "other" / "index", dim=8, model_id="other@1")) as s:
        s.upsert([Item("b", rng.normal(size=8).astype(np.float32))])
    d = ["index", "copy", "--data", str(tmp_path / "d")]
    cases = [
        (d, "give the destination: --to-data FOLDER or --to-milvus-uri URI"),
        (d + ["--to-data", str(tmp_path / "x"), "--to-milvus-uri", "g.db"], "give the destination"),
        (d + ["--to-data", str(tmp_path / "d")], "the source and the destination are the same gallery ('default')"),
        (d + ["--to-data", str(tmp_path / "other")], "other@1"),
        (d + ["--all", "--gallery", "pets", "--to-data", str(tmp_path / "x")], "--all copies every gallery"),
        (d + ["--gallery", "pets", "--to-data", str(tmp_path / "x")], "no index at"),
        (d + ["--batch-size", "0", "--to-data", str(tmp_path / "x")], "--batch-size must be at least 1, got 0"),
        (d + ["--to-data", str(tmp_path / "x"), "--to-gallery", "My Gallery"],   # named as the option it came with
         "error: --to-gallery: a gallery name is 1 to 63 lower-case letters"),
        (d + ["--to-milvus-uri", str(tmp_path / "g.db"), "--to-gallery", "My Gallery"], "error: --to-gallery: "),
        (d + ["--to-data", str(tmp_path / "x"), "--gallery", "Hats!"], "error: --gallery: a gallery name is"),
    ]
    for argv, words in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("simsearch index: error: ") and words in err and "Traceback" not in err, (argv, err)
    with Store.open(StoreConfig(tmp_path / "e" / "index", dim=8, model_id="m@1")):   # a service writing it
        assert main(d + ["--to-data", str(tmp_path / "e")]) == 2
        assert "Stop the service serving" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_an_explicit_data_folder_is_read_even_where_the_milvus_uri_is_set_in_the_environment(
        tmp_path, capsys, monkeypatch):
    """In the service's container SIMSEARCH_MILVUS_URI is set: `--data /data` there means the folder (to
    copy it into Milvus, say), no flag means Milvus, and an explicit --milvus-uri wins."""
    rng = np.random.default_rng(3)
    with Store.open(StoreConfig(tmp_path / "d" / "index", dim=8, model_id="m@1")) as s:
        s.upsert([Item(f"f{i}", rng.normal(size=8).astype(np.float32)) for i in range(2)])
    uri = str(tmp_path / "g.db")
    with MilvusStore.open(MilvusConfig(uri, dim=8, model_id="m@1")) as m:
        m.upsert([Item("m0", rng.normal(size=8).astype(np.float32))])
    monkeypatch.setenv("SIMSEARCH_MILVUS_URI", uri)

    def count(*argv: str) -> int:
        assert main(["index", "stats", "--json", *argv]) == 0
        return json.loads(capsys.readouterr().out)["count"]

    assert count("--data", str(tmp_path / "d")) == 2
    assert count() == 1
    assert count("--data", str(tmp_path / "d"), "--milvus-uri", uri) == 1
    assert count("--milvus-uri", uri, "--data", str(tmp_path / "d")) == 1
    assert main(["index", "copy", "--data", str(tmp_path / "d"), "--to-milvus-uri", uri, "--to-gallery", "f"]) == 0
    assert "copied 2 of the 2 items" in capsys.readouterr().out
    assert main(["index", "galleries", "--json", "--data", str(tmp_path / "d")]) == 0
    assert [g["name"] for g in json.loads(capsys.readouterr().out)] == ["default"]   # the folder's
    assert main(["index", "galleries", "--json"]) == 0
    assert [g["name"] for g in json.loads(capsys.readouterr().out)] == ["default", "f"]   # Milvus's


def test_a_copy_killed_midway_leaves_a_store_that_says_it_is_a_part_until_the_same_command_finishes_it(
        tmp_path, capsys):
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    rng = np.random.default_rng(5)
    data, dest = tmp_path / "data", tmp_path / "dest"
    with Store.open(StoreConfig(data / "index", dim=16, model_id="m@1")) as source:
        vecs = rng.standard_normal((20_000, 16)).astype(np.float32)
        source.upsert([Item(f"i{n}", v / np.linalg.norm(v), "a") for n, v in enumerate(vecs)])
    copy = [sys.executable, "-m", "cli", "index", "copy", "--data", str(data), "--to-data", str(dest),
            "--batch-size", "20"]   # a commit every 20 items: slow enough to be cut off midway
    repo = Path(__file__).resolve().parents[2]
    run = subprocess.Popen(copy, cwd=repo, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                with StoreReader(dest / "index") as part:
                    if part.count() >= 200:
                        break
            except StoreError:   # not made yet
                pass
            time.sleep(0.05)
        os.kill(run.pid, signal.SIGKILL)
    finally:
        run.wait(30)
    with StoreReader(dest / "index") as part:
        assert 0 < part.count() < 20_000   # cut off midway: a store that opens, holding a part
    assert main(["index", "check", "--data", str(dest)]) == 1
    assert "`simsearch index copy` from " in capsys.readouterr().out
    assert main(["index", "stats", "--data", str(dest), "--json"]) == 0
    assert "did not finish" in json.loads(capsys.readouterr().out)["incomplete"]
    assert main(["index", "backup", str(tmp_path / "saved"), "--data", str(dest)]) == 0   # a copy of a part is one
    assert main(["index", "check", "--data", str(tmp_path / "saved")]) == 1
    assert "did not finish" in capsys.readouterr().out

    assert main(copy[3:]) == 0   # the same command again: the whole source, and no mark
    capsys.readouterr()
    assert main(["index", "check", "--data", str(dest)]) == 0
    assert main(["index", "stats", "--data", str(dest)]) == 0
    out = capsys.readouterr().out
    assert "items     20000" in out and "incomplete" not in out
