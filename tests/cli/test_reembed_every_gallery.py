"""`simsearch index reembed` without --gallery moves every gallery of DATA, as `index backup` copies every one,
and its closing line says which galleries DEST holds."""
from __future__ import annotations

from pathlib import Path

from cli import main
from index import Store, StoreConfig

NEW = Path(__file__).resolve().parents[2] / "model" / "weights" / "hybrid1-res-cifar10.safetensors"


def test_reembed_moves_every_gallery_of_data_and_with_gallery_says_which_it_left(
        cat_and_ship_photos, hybrid1_artifact, tmp_path, capsys):
    data = tmp_path / "data"
    for named in ([], ["--gallery", "up"], ["--gallery", "shoes"]):
        assert main(["index", "build", str(cat_and_ship_photos), "--data", str(data),
                     "--model", str(hybrid1_artifact), *named]) == 0
    capsys.readouterr()

    dest = tmp_path / "new"
    assert main(["index", "reembed", str(dest), "--data", str(data), "--model", str(NEW)]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith(f"{dest} holds the galleries of {data} (default, shoes, up). Serve it with --data {dest}")
    for folder in (dest / "index", dest / "galleries" / "up" / "index", dest / "galleries" / "shoes" / "index"):
        with Store.open(StoreConfig(folder, read_only=True)) as store:
            assert store.count() == 12 and store.model_id.startswith("hybrid1-res-cifar10@")

    one = tmp_path / "one"
    assert main(["index", "reembed", str(one), "--data", str(data), "--gallery", "up", "--model", str(NEW)]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith(f"{one} holds gallery 'up' of {data} only, not default, shoes (without --gallery")
    assert not (one / "index").exists() and (one / "galleries" / "up" / "index").is_dir()
