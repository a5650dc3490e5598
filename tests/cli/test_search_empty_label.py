"""`simsearch search --label ''` is refused alike here and through a service (--url), in the words `index edit
--label ''` uses: in DATA it searched the items labelled "" (none of an ImageFolder's), over --url the service
read an empty label parameter as none and searched every item, so one command gave two answers. A real label
still filters in both modes. Over a real `simsearch serve`."""
from __future__ import annotations

import json

import pytest

from cli import main

from .test_upload import KEY, photos, serving  # noqa: F401  (photos is a fixture)
from tests.app.conftest import stop_server


@pytest.fixture
def gallery(hybrid1_artifact, photos, tmp_path, capsys):  # noqa: F811
    """A service holding the photos (labelled by folder); (local search args, remote search args) of one query."""
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


def test_an_empty_label_is_refused_here_and_through_a_service_as_index_edit_refuses_it(gallery, capsys, tmp_path):
    assert main(["index", "edit", "--label", "", "--set", '{"x": 1}', "--data", str(tmp_path / "data")]) == 2
    edit_says = capsys.readouterr().err.split(": error: ", 1)[1]   # after the command's name
    assert "--label ''" in edit_says and '{"$label": {"$exists": false}}' in edit_says
    for args in gallery:
        assert main(args + ["--label", ""]) == 2, args
        captured = capsys.readouterr()
        assert captured.err == "simsearch search: error: " + edit_says and captured.out == "", (args, captured)


def test_a_label_still_filters_here_and_through_a_service(gallery, capsys):
    for args in gallery:
        assert main(args + ["--label", "dog"]) == 0, capsys.readouterr().err
        hits = json.loads(capsys.readouterr().out)
        assert hits and {h["label"] for h in hits} == {"dog"}, (args, hits)


@pytest.mark.parametrize("command", [["index", "facets", "label"], ["index", "delete", "--yes"]])
def test_index_facets_and_delete_refuse_an_empty_label_in_the_same_words(tmp_path, capsys, command):
    # nothing is opened: the option is refused first (an empty DATA folder would be another error)
    assert main(command + ["--label", "", "--data", str(tmp_path / "data")]) == 2
    says = capsys.readouterr().err
    assert "--label ''" in says and '{"$label": {"$exists": false}}' in says, says
