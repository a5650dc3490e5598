"""`simsearch classify`: the label the nearest gallery images agree on, from the command line, locally
and through a running service, agreeing with the service's own POST /classify; unknown beyond
--max-distance; the share of labelled queries classified as their label."""
from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from cli import main

from .test_search_remote import runs_with_and_without_json
from .test_upload import KEY, cifar_folder, photos, serving  # noqa: F401  (photos is a fixture)
from tests.app.conftest import stop_server

# The service's default model: votes need a trained embedding (a fresh one puts every image at cosine
# 0.9999 to every other, where float rounding decides the order).
DEFAULT_MODEL = Path(__file__).resolve().parents[2] / "model" / "weights" / "hybrid1-cifar10.safetensors"


@pytest.fixture
def queries(shared_data, tmp_path):
    """queries/<class>/NNNN.jpg: 4 more CIFAR-10 test images of each class of `photos`, not in the gallery."""
    return cifar_folder(shared_data, tmp_path / "queries", range(4, 8))


def test_classify_votes_as_the_services_classify_does_locally_and_through_the_service(
        photos, queries, tmp_path, capsys):  # noqa: F811
    live = serving(DEFAULT_MODEL, tmp_path)
    try:
        assert main(["index", "upload", str(photos), "--url", live.url, "--api-key", KEY]) == 0
        capsys.readouterr()
        local = ["classify", str(queries), "-k", "5", "--data", str(tmp_path / "data"), "--model", str(DEFAULT_MODEL)]
        remote = ["classify", str(queries), "-k", "5", "--url", live.url]
        runs = runs_with_and_without_json(capsys, local=local, remote=remote)
        assert len(runs["local"]) == 12
        for got, want in zip(runs["remote"], runs["local"]):
            assert (got["query"], got["query_label"], got["label"], got["votes"]) == \
                (want["query"], want["query_label"], want["label"], want["votes"])
        for row in runs["local"]:   # what the service's POST /classify says of the same image
            with open(row["query"], "rb") as f:
                served = httpx.post(live.url + "/classify?k=5", files={"file": ("q.jpg", f.read())}).json()
            assert (row["label"], row["votes"]) == (served["label"], served["votes"])
            assert row["confidence"] == pytest.approx(served["confidence"])
            assert sum(row["votes"].values()) == 5 and row["query_label"] == row["query"].split("/")[-2]
        right = sum(row["label"] == row["query_label"] for row in runs["local"])
        assert right > 4   # better than chance (a third) with a trained model: 8 of 12 when written
        for name in ("local text", "remote text"):
            lines = runs[name].out.splitlines()
            assert lines[-2:] == ["12 of 12 queries classified (1.000), 0 unknown",
                                  f"{right} of 12 queries with a label ({right / 12:.3f}) are classified as that label"]
            # with --json the same two lines go to stderr (stdout holds the JSON lines only)
            assert runs[name.replace("text", "json stderr")].splitlines()[-2:] == lines[-2:]
            first = runs["local"][0]
            assert lines[0].startswith(f"{first['query']}  (label {first['query_label']})  ->  {first['label']}  "
                                       f"(confidence {first['confidence']:.2f}; votes ")

        # nothing that near: unknown, and said so
        assert main(["classify", str(queries), "--max-distance", "0.001", "--url", live.url]) == 0
        lines = capsys.readouterr().out.splitlines()
        assert lines[0].endswith("->  unknown  (no labelled gallery item within 0.001)")
        assert lines[-2:] == ["0 of 12 queries classified (0.000), 12 unknown",
                              "0 of 12 queries with a label (0.000) are classified as that label"]
        # one image: the answer alone; a gallery image finds its own label at distance 0
        assert main(["classify", str(photos / "ship" / "0002.jpg"), "--data", str(tmp_path / "data"),
                     "--model", str(DEFAULT_MODEL)]) == 0
        assert capsys.readouterr().out == "ship  (confidence 1.00; votes ship 1)\n"
        assert main(["classify", str(photos / "ship" / "0002.jpg"), "--url", live.url, "--json"]) == 0
        single = json.loads(capsys.readouterr().out)
        assert single["label"] == "ship" and single["results"][0]["id"] == "ship/0002.jpg"
    finally:
        stop_server(live)


def test_classify_refuses_a_bad_k_or_filter_in_one_line(photos, tmp_path, capsys):  # noqa: F811
    for args, said in ((["-k", "0"], "-k must be 1..1000, got 0"), (["-k", "1001"], "-k must be 1..1000, got 1001"),
                       (["--where", "{"], "--where")):
        assert main(["classify", str(photos / "ship" / "0002.jpg"), "--data", str(tmp_path / "data"), *args]) == 2
        err = capsys.readouterr().err
        assert err.startswith("simsearch classify: error:") and said in err and len(err.strip().splitlines()) == 1


def test_classify_help_offers_only_options_classify_has(capsys):
    for command in ("classify", "search"):
        with pytest.raises(SystemExit) as done:
            main([command, "--help"])
        assert done.value.code == 0
        said = " ".join(capsys.readouterr().out.split())
        assert ("--like" in said) == (command == "search"), said
