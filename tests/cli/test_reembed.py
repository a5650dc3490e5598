"""`simsearch index reembed`: a served gallery embedded again by another model from its stored thumbnails,
while the service keeps serving it; run again, it catches up with what the service wrote meanwhile; the
copy then serves under the new model. Real server, real HTTP, real trained model."""
from __future__ import annotations

import io
import json
import tarfile

import httpx
import numpy as np
import pytest
from PIL import Image

from cli import main
from index import Store, StoreConfig
from tests.app.conftest import start_server, stop_server
from tests.conftest import REPO

KEY = "reembed-test-key"
NEW = REPO / "model" / "weights" / "hybrid1-res-cifar10.safetensors"


@pytest.fixture
def photos(shared_data, tmp_path) -> dict[str, bytes]:
    """label/NNNN.jpg -> bytes: 6 CIFAR-10 test images of each of 3 classes."""
    out = {}
    with tarfile.open(shared_data / "cifar10-jpeg.tar") as tf:
        for m in tf:
            parts = m.name.split("/")
            if m.isfile() and len(parts) == 4 and parts[1] == "test" and parts[2] in ("cat", "ship", "truck") \
                    and int(parts[3][:4]) < 6:
                out[f"{parts[2]}/{parts[3]}"] = tf.extractfile(m).read()
    return out


def _post(server, photos: dict[str, bytes], metadata: dict | None = None) -> None:
    r = httpx.post(server.url + "/index", headers={"x-api-key": KEY},
                   files=[("file", (i.split("/")[1], data)) for i, data in photos.items()],
                   data={"id": list(photos), "label": [i.split("/")[0] for i in photos],
                         **({"metadata": json.dumps(metadata)} if metadata else {})})
    assert r.status_code == 201, r.text


def _serve(artifact, data, tmp_path):
    return start_server({"SIMSEARCH_MODEL_PATH": str(artifact), "SIMSEARCH_DATA_DIR": str(data),
                         "SIMSEARCH_API_KEY": KEY, "SIMSEARCH_RATE_LIMIT_PER_MINUTE": "0"}, tmp_path)


def _embed_thumbnail(store: Store, id_: str) -> np.ndarray:
    import model

    with Image.open(io.BytesIO(store.thumbnail(id_))) as im:
        im.load()  # decoded whole, as `reembed` does (not in JPEG draft mode)
        return model.Embedder.from_file(NEW, device="cpu").embed([im])[0]


def test_reembed_copies_a_served_gallery_under_the_new_model_and_catches_up_with_later_writes(
        hybrid1_artifact, photos, tmp_path, capsys):
    source = _serve(hybrid1_artifact, tmp_path / "old", tmp_path)
    try:
        _post(source, dict(list(photos.items())[:15]), {"trip": "rome"})
        args = ["index", "reembed", str(tmp_path / "new"), "--data", str(tmp_path / "old"), "--model", str(NEW)]
        assert main(args) == 0  # while the service holds the index for writing
        out = capsys.readouterr().out
        assert "15 to embed with hybrid1-res-cifar10@" in out and "holds 15 items of hybrid1-res-cifar10@" in out

        # the service writes on: an addition, a replacement (same id, another image), an edit, a deletion
        ids = list(photos)
        _post(source, {ids[15]: photos[ids[15]], ids[0]: photos[ids[16]]})
        assert httpx.patch(f"{source.url}/index/{ids[1]}", headers={"x-api-key": KEY},
                           json={"label": "boat", "metadata": {"trip": None, "stars": 5}}).status_code == 200
        assert httpx.delete(f"{source.url}/index/{ids[2]}", headers={"x-api-key": KEY}).status_code == 204
        assert main(args) == 0
        out = capsys.readouterr().out
        assert "15 items in" in out and "3 to embed" in out and "12 already copied, 1 to remove" in out
        assert main(args) == 0
        assert "0 to embed" in capsys.readouterr().out  # nothing changed since
    finally:
        stop_server(source)

    with Store.open(StoreConfig(tmp_path / "old" / "index", read_only=True)) as old, \
            Store.open(StoreConfig(tmp_path / "new" / "index", read_only=True)) as new:
        assert new.model_id.startswith("hybrid1-res-cifar10@") and new.info()["index"] == old.info()["index"]
        assert new.count() == old.count() == 15 and new.labels() == old.labels()
        for item in old.list(limit=100):  # same ids, labels, metadata and thumbnails
            copy = new.get(item.id)
            assert (copy.label, copy.metadata) == (item.label, item.metadata)
            assert new.thumbnail(item.id) == old.thumbnail(item.id)
        # in the source's listing order, but for the edited item (embedded again, it moved back)
        assert [i.id for i in new.list(limit=100) if i.id != ids[1]] == \
            [i.id for i in old.list(limit=100) if i.id != ids[1]]
        assert new.get(ids[1]).label == "boat" and new.get(ids[1]).metadata == {"stars": 5}
        assert ids[2] not in new
        # the replaced item carries the vector of its new image's thumbnail, not of the first one
        assert np.dot(new.get(ids[0]).vector, _embed_thumbnail(old, ids[0])) > 0.9999

    # the copy serves under the new model: each stored image finds itself first
    copy = _serve(NEW, tmp_path / "new", tmp_path)
    try:
        assert httpx.get(copy.url + "/readyz").status_code == 200
        firsts = [httpx.post(copy.url + "/search?k=1", files={"file": ("q.jpg", photos[i])}).json()["results"][0]["id"]
                  for i in ids[3:15]]
        assert firsts == ids[3:15]
    finally:
        stop_server(copy)


def test_reembed_to_the_bundled_default_leaves_out_items_stored_without_thumbnails_and_says_which(hybrid1_artifact, photos, tmp_path, capsys):
    for i, data in photos.items():  # cat/... in one folder, ship/... and truck/... in another
        path = tmp_path / ("a" if i.startswith("cat/") else "b") / i
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    data = str(tmp_path / "old")
    assert main(["index", "build", str(tmp_path / "a"), "--data", data, "--model", str(hybrid1_artifact),
                 "--no-thumbnails"]) == 0
    assert main(["index", "build", str(tmp_path / "b"), "--data", data, "--model", str(hybrid1_artifact)]) == 0
    capsys.readouterr()
    assert main(["index", "reembed", str(tmp_path / "new"), "--data", data]) == 1  # to the bundled default
    out = capsys.readouterr().out
    assert "not copied, no thumbnail: 6 items (first: cat/0000.jpg, cat/0001.jpg, cat/0002.jpg)" in out
    assert f"Serve it with --data {tmp_path / 'new'} (the bundled default model)" in out
    assert "simsearch index build SOURCE" in out
    with Store.open(StoreConfig(tmp_path / "new" / "index", read_only=True)) as new:
        assert new.count() == 12 and new.labels() == {"ship": 6, "truck": 6}
        assert new.model_id.startswith("hybrid1-cifar10@")


def test_reembed_leaves_out_and_names_an_old_item_dest_refuses_and_copies_the_rest(hybrid1_artifact, photos,
                                                                                   tmp_path, capsys):
    """An item stored before metadata keys beginning with '$' were refused: the new gallery refuses it, the copy
    goes on without it, says which and why, and exits 1; once the key is renamed in the source, a rerun copies it."""
    import sqlite3

    folder = tmp_path / "photos"
    for i, data in list(photos.items())[:6]:
        (folder / i).parent.mkdir(parents=True, exist_ok=True)
        (folder / i).write_bytes(data)
    data = tmp_path / "old"
    assert main(["index", "build", str(folder), "--data", str(data), "--model", str(hybrid1_artifact)]) == 0
    with sqlite3.connect(data / "index" / "store.sqlite3") as conn:   # as a gallery written before the refusal holds it
        conn.execute("""UPDATE items SET metadata = '{"$old":1}' WHERE id = 'cat/0001.jpg'""")
    capsys.readouterr()
    args = ["index", "reembed", str(tmp_path / "new"), "--data", str(data), "--model", str(NEW)]
    assert main(args) == 1
    out = capsys.readouterr()
    assert "skipped cat/0001.jpg:" in out.out and "$old" in out.out
    assert "not copied, refused by DEST: 1 items (first: cat/0001.jpg)" in out.out
    with Store.open(StoreConfig(tmp_path / "new" / "index", read_only=True)) as new:
        assert new.count() == 5 and new.get("cat/0001.jpg") is None
    with Store.open(StoreConfig(data / "index")) as old:   # the key renamed: the next run copies the item
        old.update("cat/0001.jpg", metadata_patch={"$old": None, "old": 1})
    assert main(args) == 0
    with Store.open(StoreConfig(tmp_path / "new" / "index", read_only=True)) as new:
        assert new.count() == 6 and new.get("cat/0001.jpg").metadata == {"old": 1}


def test_reembed_embeds_each_thumbnail_decoded_whole_not_at_the_reduced_scale_of_an_upload(
        hybrid1_artifact, photos, tmp_path, capsys):
    import model

    # photos of 256 px, so that the 128 px thumbnails `index build` stores are large enough for draft mode
    for i, data in list(photos.items())[:6]:
        path = tmp_path / "photos" / i
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.open(io.BytesIO(data)).convert("RGB").resize((256, 256), Image.Resampling.BICUBIC).save(path, quality=90)
    data = str(tmp_path / "old")
    assert main(["index", "build", str(tmp_path / "photos"), "--data", data, "--model", str(hybrid1_artifact)]) == 0
    assert main(["index", "reembed", str(tmp_path / "new"), "--data", data, "--model", str(NEW)]) == 0
    capsys.readouterr()
    drafted = model.Embedder.from_file(NEW, device="cpu")
    with Store.open(StoreConfig(tmp_path / "old" / "index", read_only=True)) as old, \
            Store.open(StoreConfig(tmp_path / "new" / "index", read_only=True)) as new:
        ids = [item.id for item in old.list(limit=100)]
        assert len(ids) == 6
        for id_ in ids:
            assert np.abs(new.get(id_).vector - _embed_thumbnail(old, id_)).max() < 1e-6
            as_upload = drafted.embed([Image.open(io.BytesIO(old.thumbnail(id_)))])[0]
            assert np.abs(new.get(id_).vector - as_upload).max() > 1e-4   # the two decodings do differ


def test_reembed_mistakes_are_one_line_and_touch_nothing(hybrid1_artifact, photos, tmp_path, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(next(iter(photos.values())))
    data, other = str(tmp_path / "old"), str(tmp_path / "other")
    for d in (data, other):
        assert main(["index", "build", str(folder), "--data", d, "--model", str(hybrid1_artifact)]) == 0
    capsys.readouterr()

    def refused(*args: str) -> str:
        assert main(["index", "reembed", *args]) == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1
        return err

    assert "already holds vectors of hybrid1-test@" in refused(str(tmp_path / "new"), "--data", data, "--model",
                                                             str(hybrid1_artifact))
    assert not (tmp_path / "new").exists()
    assert "is the --data folder" in refused(data, "--data", data, "--model", str(NEW))
    assert "--workers must be at least 1, got -5" in refused(str(tmp_path / "new"), "--data", data, "--model",
                                                             str(NEW), "--workers", "-5")
    assert not (tmp_path / "new").exists()
    assert "did not make; give a new or empty folder" in refused(other, "--data", data, "--model", str(NEW))
    assert "no store at" in refused(str(tmp_path / "new"), "--data", str(tmp_path / "nothing"), "--model", str(NEW))
    assert main(["index", "reembed", str(tmp_path / "new"), "--data", data, "--model", str(NEW), "--index", "hnsw"]) == 0
    capsys.readouterr()
    with Store.open(StoreConfig(tmp_path / "new" / "index", read_only=True)) as new:
        assert new.info()["index"] == "hnsw" and new.count() == 1  # --index: another kind than DATA's flat
    assert "is a re-embedding of" in refused(str(tmp_path / "new"), "--data", other, "--model", str(NEW))


def test_writes_made_while_a_run_copies_are_caught_up_by_the_next_run_exactly(hybrid1_artifact, photos, tmp_path,
                                                                              capsys):
    import threading

    import model

    images = list(photos.values())
    source = _serve(hybrid1_artifact, tmp_path / "old", tmp_path)
    try:
        for start in range(0, 360, 36):
            _post(source, {f"g{i % 3}/p{i}": images[i % len(images)] for i in range(start, start + 36)}, {"round": 0})
        stop, writes = threading.Event(), []

        def write_on():  # replace, add, edit and delete, until the first run has finished
            n = 0
            with httpx.Client(base_url=source.url, headers={"x-api-key": KEY}) as c:
                while not stop.is_set():
                    n += 1
                    i = (n * 37) % 400
                    id_ = f"g{i % 3}/p{i}"
                    if n % 4 == 0:
                        r = c.patch(f"/index/{id_}", json={"metadata": {"round": n}})
                    elif n % 4 == 1:
                        r = c.delete(f"/index/{id_}")
                    else:
                        r = c.post("/index", files=[("file", ("x.jpg", images[n % len(images)]))],
                                   data={"id": id_, "label": f"w{n % 3}", "metadata": json.dumps({"round": n})})
                    writes.append(r.status_code)

        writer = threading.Thread(target=write_on)
        writer.start()
        args = ["index", "reembed", str(tmp_path / "new"), "--data", str(tmp_path / "old"), "--model", str(NEW),
                "--batch-size", "8"]
        try:
            assert main(args) == 0
        finally:
            stop.set()
            writer.join()
        assert len(writes) > 10 and set(writes) <= {200, 201, 204, 404}
        capsys.readouterr()
        assert main(args) == 0  # the catch-up: the service no longer writes
        out = capsys.readouterr().out
        assert " 0 to embed" not in out and " to embed with " in out  # writes fell after the first run's listing
    finally:
        stop_server(source)

    embedder = model.Embedder.from_file(NEW, device="cpu")
    with Store.open(StoreConfig(tmp_path / "old" / "index", read_only=True)) as old, \
            Store.open(StoreConfig(tmp_path / "new" / "index", read_only=True)) as new:
        ids = [it.id for it in old.list(limit=1000)]
        assert sorted(it.id for it in new.list(limit=1000)) == sorted(ids)
        thumbs = []
        for id_, mine, copy in zip(ids, old.get_many(ids), new.get_many(ids)):
            assert (copy.label, copy.metadata) == (mine.label, mine.metadata), id_
            thumbs.append(new.thumbnail(id_))
            assert thumbs[-1] == old.thumbnail(id_), id_
        loaded = []
        for data in thumbs:
            with Image.open(io.BytesIO(data)) as im:
                im.load()
                loaded.append(im.copy())
        want = embedder.embed(loaded)
        got = np.stack([it.vector for it in new.get_many(ids)])
        assert np.min(np.sum(want * got, axis=1)) > 0.9999  # each vector is its current thumbnail's


def test_reembed_onto_a_full_disk_stops_with_one_line_and_the_same_command_finishes(hybrid1_artifact, tmp_path,
                                                                                   small_disk):
    """DEST on a real full disk (tests/conftest.py's small_disk): the run stops in one line keeping what it
    copied, and once there is room the same command copies the rest and nothing twice."""
    import subprocess
    import sys

    from tests.conftest import noise_folder

    mount, inside = small_disk
    photos = noise_folder(tmp_path / "photos", 1000, seed=4)
    data = str(tmp_path / "data")
    # 96 px thumbnails of noise (about 6 KB each, half of 128 px ones): 1000 of them fit the 16 MB disk once
    # the ballast is gone
    assert main(["index", "build", str(photos), "--data", data, "--model", str(hybrid1_artifact),
                 "--thumbnail-size", "96"]) == 0
    reembed = [*inside, sys.executable, "-m", "cli", "index", "reembed", str(mount / "new"), "--data", data,
               "--model", str(NEW), "--batch-size", "32"]
    first = subprocess.run(reembed, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert first.returncode == 2, first.stdout + first.stderr
    last = first.stderr.strip().splitlines()[-1]
    assert "is full" in last and "What was copied is kept" in last and "Traceback" not in first.stderr
    # the part copied opens as a store of its own: it says it is a part
    check = [*inside, sys.executable, "-m", "cli", "index", "check", "--data", str(mount / "new")]
    cut = subprocess.run(check, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert cut.returncode == 1 and "`simsearch index reembed` from " in cut.stdout, cut.stdout + cut.stderr
    assert "did not finish" in cut.stdout and "Run the same command again" in cut.stdout

    subprocess.run([*inside, "rm", str(mount / "ballast")], check=True)
    second = subprocess.run(reembed, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert second.returncode == 0, second.stdout + second.stderr
    done = int(second.stdout.split(" to embed with ")[1].split("already copied")[0].split(", ")[1])
    assert 0 < done < 1000 and "holds 1000 items of hybrid1-res-cifar10@" in second.stdout
    whole = subprocess.run(check, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert whole.returncode == 0 and whole.stdout.startswith("ok: "), whole.stdout + whole.stderr


def test_reembed_of_a_named_gallery_goes_to_the_same_name_in_dest(hybrid1_artifact, photos, tmp_path, capsys):
    data, dest = tmp_path / "data", tmp_path / "new"
    folder = tmp_path / "photos"
    for id_, jpeg in photos.items():
        (folder / id_).parent.mkdir(parents=True, exist_ok=True)
        (folder / id_).write_bytes(jpeg)
    assert main(["index", "build", str(folder), "--data", str(data), "--gallery", "pets",
                 "--model", str(hybrid1_artifact)]) == 0
    assert main(["index", "reembed", str(dest), "--data", str(data), "--gallery", "pets", "--model", str(NEW)]) == 0
    capsys.readouterr()
    with Store.open(StoreConfig(dest / "galleries" / "pets" / "index", read_only=True)) as store:
        assert store.count() == len(photos) and store.model_id.startswith("hybrid1-res-cifar10@")
    assert not (dest / "index").exists()   # the default gallery was not asked for
