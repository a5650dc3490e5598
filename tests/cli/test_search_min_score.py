"""`simsearch search --min-score S` (and `classify`): the cosine cut beside --max-distance, here and through a real
`simsearch serve` (--url); a hit whose printed score is given back as --min-score is kept, and both cuts at once
are refused."""
from __future__ import annotations

import json

import pytest

from cli import main

from .test_upload import KEY, photos, serving  # noqa: F401  (photos is a fixture)
from tests.app.conftest import stop_server


@pytest.fixture
def gallery(hybrid1_artifact, photos, tmp_path, capsys):  # noqa: F811
    """A service holding the 12 photos; (local search args, remote search args) of one query photo, k=12."""
    live = serving(hybrid1_artifact, tmp_path)
    try:
        assert main(["index", "upload", str(photos), "--url", live.url, "--api-key", KEY]) == 0
        capsys.readouterr()
        query = str(photos / "dog" / "0001.jpg")
        yield (["search", query, "-k", "12", "--json", "--data", str(tmp_path / "data"), "--model",
                str(hybrid1_artifact)],
               ["search", query, "-k", "12", "--json", "--url", live.url])
    finally:
        stop_server(live)


def _hits(capsys, args: list[str]) -> list[dict]:
    assert main(args) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("where", ["local", "remote"])
def test_min_score_keeps_the_hits_with_at_least_that_score_a_printed_score_included(gallery, capsys, where):
    args = gallery[0] if where == "local" else gallery[1]
    every = _hits(capsys, args)
    assert len(every) == 12 and every[0]["score"] > every[-1]["score"]
    for i in (0, 3, 7):
        # the score as --json printed it, given back
        kept = _hits(capsys, args + ["--min-score", repr(every[i]["score"])])
        assert [h["id"] for h in kept] == [h["id"] for h in every[:i + 1]], (i, kept)
    assert _hits(capsys, args + ["--min-score", "-1"]) == every


def test_min_score_is_refused_with_max_distance_or_outside_minus_one_to_one(gallery, capsys):
    for args in gallery:
        assert main(args + ["--min-score", "0.5", "--max-distance", "0.8"]) == 2
        assert "--max-distance 0.8 and --min-score 0.5 are one cut in two units" in capsys.readouterr().err
        assert main(args + ["--min-score", "1.5"]) == 2
        assert "--min-score must be a cosine similarity, -1..1, got 1.5" in capsys.readouterr().err


def test_classify_says_which_score_no_item_reached(gallery, capsys):
    local = ["classify" if a == "search" else a for a in gallery[0] if a != "--json"]
    # a region of a gallery photo: near it, but no copy of anything the gallery holds
    assert main(local + ["--crop", "0,0,0.6,0.6", "--min-score", "1"]) == 0
    assert "unknown  (no labelled gallery item with a score of at least 1.0)" in capsys.readouterr().out
