"""`simsearch search --url`: many queries through a real `simsearch serve`'s POST /batch/search, printed
as the local search prints them, with a refused image skipped, requests made smaller when the service
takes fewer files, and a missing key said in one line."""
from __future__ import annotations

import json

import httpx
import pytest

from cli import main

from .test_upload import KEY, photos, serving  # noqa: F401  (photos is a fixture)
from tests.app.conftest import stop_server


def runs_with_and_without_json(capsys, **commands: list[str]) -> dict:
    """Each command run with --json (its JSON lines, under its name, and its stderr under "<name> json
    stderr") and without (what it printed, under "<name> text"), each expected to exit 0."""
    runs = {}
    for name, args in commands.items():
        assert main(args + ["--json"]) == 0
        printed = capsys.readouterr()
        runs[name] = [json.loads(line) for line in printed.out.splitlines()]
        runs[name + " json stderr"] = printed.err
        assert main(args) == 0
        runs[name + " text"] = capsys.readouterr()
    return runs


def test_remote_search_prints_what_the_local_search_prints_and_skips_a_refused_image(  # noqa: C901 (one scenario, step by step)
        hybrid1_artifact, photos, tmp_path, capsys):  # noqa: F811
    # a service that takes at most 5 files a request: the 13 queries are sent in smaller requests
    live = serving(hybrid1_artifact, tmp_path, SIMSEARCH_MAX_FILES_PER_REQUEST="5")
    try:
        assert main(["index", "upload", str(photos), "--url", live.url, "--api-key", KEY]) == 0
        capsys.readouterr()
        local_args = ["search", str(photos), "-k", "3", "--data", str(tmp_path / "data"), "--model", str(hybrid1_artifact)]
        remote_args = ["search", str(photos), "-k", "3", "--url", live.url]
        runs = runs_with_and_without_json(capsys, local=local_args, remote=remote_args)
        # the same queries, neighbours, labels and scores (to float rounding: the batches differ)
        assert [(r["query"], r["label"], [h["id"] for h in r["results"]]) for r in runs["remote"]] == \
            [(r["query"], r["label"], [h["id"] for h in r["results"]]) for r in runs["local"]]
        assert len(runs["remote"]) == 12 and all(r["query"].endswith("/" + r["results"][0]["id"]) for r in runs["remote"])
        for got, want in zip(runs["remote"], runs["local"]):
            assert [h["score"] for h in got["results"]] == pytest.approx([h["score"] for h in want["results"]], abs=1e-4)
        remote = runs["remote text"]
        assert remote.out.splitlines()[-1] == runs["local text"].out.splitlines()[-1] == \
            "12 of 12 queries with a label (1.000) have a nearest neighbour of that label"
        # with --json the same line goes to stderr (stdout holds the JSON lines only, each parsed above)
        for name in ("local json stderr", "remote json stderr"):
            assert "12 of 12 queries with a label (1.000) have a nearest neighbour of that label\n" in runs[name]
        assert "cat/notes.jpg: it is not a JPEG" in remote.err and "1 of 13 queries could not be read" in remote.err

        assert main(["search", str(photos / "dog"), "-k", "2", "--json", "--url", live.url,
                     "--where", '{"width": 32}']) == 0
        lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        assert [row["query"] for row in lines] == [str(photos / "dog" / f"000{i}.jpg") for i in range(4)]
        assert [row["results"][0]["id"] for row in lines] == [f"dog/000{i}.jpg" for i in range(4)]

        assert main(["search", str(photos / "ship" / "0001.jpg"), "-k", "1", "--url", live.url]) == 0
        assert capsys.readouterr().out.split()[-1] == "ship/0001.jpg"
        # a region of each query (--crop) is sent as the service's crop=, and answered as the local search does
        region = {where: ["search", str(photos / "ship"), "-k", "2", "--crop", "0.25,0.25,1,1", *args] for where, args in
                  (("local", ["--data", str(tmp_path / "data"), "--model", str(hybrid1_artifact)]),
                   ("remote", ["--url", live.url]))}
        runs = runs_with_and_without_json(capsys, **region)
        assert [[h["id"] for h in r["results"]] for r in runs["remote"]] == \
            [[h["id"] for h in r["results"]] for r in runs["local"]]
        for got, want in zip(runs["remote"], runs["local"]):
            assert [h["score"] for h in got["results"]] == pytest.approx([h["score"] for h in want["results"]], abs=1e-4)
        # a region of an indexed image: near it, but not the exact self-match (score 1) the whole image gives
        assert all(r["results"][0]["score"] < 1 - 1e-5 for r in runs["local"] + runs["remote"])
        # marks (--like/--unlike) are sent as the service's like=/unlike=, and answered as the local search does
        marks = ["--like", "ship/0002.jpg", "--like", "ship/0003.jpg", "--unlike", "ship/0001.jpg"]
        refined = {where: ["search", str(photos / "ship"), "-k", "3", *marks, *args] for where, args in
                   (("local", ["--data", str(tmp_path / "data"), "--model", str(hybrid1_artifact)]),
                    ("remote", ["--url", live.url]))}
        runs = runs_with_and_without_json(capsys, **refined)
        assert [[h["id"] for h in r["results"]] for r in runs["remote"]] == \
            [[h["id"] for h in r["results"]] for r in runs["local"]]
        assert len(runs["local"]) == 4 and all(len(r["results"]) == 3 for r in runs["local"])
        assert not {h["id"] for r in runs["local"] for h in r["results"]} & {"ship/0001.jpg", "ship/0002.jpg",
                                                                              "ship/0003.jpg"}
        data = ["--data", str(tmp_path / "data"), "--model", str(hybrid1_artifact)]
        for args, message in [(["--like", "no/such.jpg"], "no item with id(s) ['no/such.jpg'] in gallery 'default'"),
                              (["--like", "ship/0002.jpg", "--unlike", "ship/0002.jpg"], "both name ['ship/0002.jpg']"),
                              (["--like", "ship/0002.jpg", "--rerank", "5"], "--rerank re-orders")]:
            assert main(["search", str(photos / "ship" / "0000.jpg"), *args, *data]) == 2
            assert message in capsys.readouterr().err
        assert main(["search", str(photos / "ship" / "0000.jpg"), "--like", "no/such.jpg", "--url", live.url]) != 0
        assert "no item with id(s) ['no/such.jpg']" in capsys.readouterr().err
        # --exclude is sent as the service's exclude=, and answered as the local search does (each query image
        # is its own nearest item, above: leaving out ship/0000.jpg and ship/0002.jpg changes their answers)
        left_out = ["ship/0000.jpg", "ship/0002.jpg", "cat/0001.jpg"]
        excluded = {where: ["search", str(photos / "ship"), "-k", "3", *[a for i in left_out for a in ("--exclude", i)],
                            *args] for where, args in (("local", data), ("remote", ["--url", live.url]))}
        runs = runs_with_and_without_json(capsys, **excluded)
        assert [[h["id"] for h in r["results"]] for r in runs["remote"]] == \
            [[h["id"] for h in r["results"]] for r in runs["local"]]
        assert all(len(r["results"]) == 3 and not {h["id"] for h in r["results"]} & set(left_out)
                   for r in runs["local"])
        # groups (--group-by/--group-size) are asked for as the service's group_by=, and answered as locally
        grouped = {where: ["search", str(photos / "cat"), "-k", "3", "--group-by", "label", "--group-size", "2", *args]
                   for where, args in (("local", data), ("remote", ["--url", live.url]))}
        runs = runs_with_and_without_json(capsys, **grouped)
        assert [[(h["group"], h["id"]) for h in r["results"]] for r in runs["remote"]] == \
            [[(h["group"], h["id"]) for h in r["results"]] for r in runs["local"]]
        for r in runs["local"]:   # 3 labels, 2 items each, one group after another, the query's own first
            assert [h["group"] for h in r["results"]][::2] == [h["group"] for h in r["results"]][1::2]
            assert len({h["group"] for h in r["results"]}) == 3 and r["results"][0]["group"] == "cat"
            assert all(h["group"] == h["label"] for h in r["results"])
        assert runs["local text"].out.count('label = "dog"') == runs["remote text"].out.count('label = "dog"') == 4
        for args, message in [(["--group-size", "2"], "--group-size 2 needs --group-by"),
                              (["--group-by", "year"], "--group-by='year'"),
                              (["--group-by", "label", "--rerank", "5"], "--rerank and --group-by")]:
            assert main(["search", str(photos / "ship" / "0000.jpg"), *args, *data]) == 2
            assert message in capsys.readouterr().err
        # --offset is sent as the service's offset=: the next page, locally and remotely the same
        whole = {where: ["search", str(photos / "ship"), "-k", "6", *args]
                 for where, args in (("local", data), ("remote", ["--url", live.url]))}
        paged = {where: ["search", str(photos / "ship"), "-k", "3", "--offset", "3", *args]
                 for where, args in (("local", data), ("remote", ["--url", live.url]))}
        runs, pages = runs_with_and_without_json(capsys, **whole), runs_with_and_without_json(capsys, **paged)
        for where in ("local", "remote"):
            assert [[h["id"] for h in r["results"]] for r in pages[where]] == \
                [[h["id"] for h in r["results"]][3:] for r in runs["local"]]
        assert "\n  4  " in pages["local text"].out and "\n  1  " not in pages["local text"].out   # ranks go on
        grouped_page = {where: ["search", str(photos / "cat"), "-k", "2", "--offset", "1", "--group-by", "label",
                                *args] for where, args in (("local", data), ("remote", ["--url", live.url]))}
        pages = runs_with_and_without_json(capsys, **grouped_page)
        assert [[h["group"] for h in r["results"]] for r in pages["remote"]] == \
            [[h["group"] for h in r["results"]] for r in pages["local"]]
        assert all(len(r["results"]) == 2 and "cat" not in {h["group"] for h in r["results"]} for r in pages["local"])
        for args, message in [(["--offset", "-1"], "--offset must be at least 0, got -1"),
                              (["--offset", "9995", "-k", "6"], "at most 10000"),
                              (["--offset", "3", "-k", "3", "--rerank", "5"], "--rerank 5 must be at least -k 3 + "
                                                                          "--offset 3")]:
            assert main(["search", str(photos / "ship" / "0000.jpg"), *args, *data]) == 2
            assert message in capsys.readouterr().err
        # --together: the images are one query (the service's /search with several file parts), the same both ways
        ships = [str(photos / "ship" / f"000{i}.jpg") for i in (1, 2, 3)]
        found = {}
        # one query: one answer, as for one file
        for where, args in (("local", data), ("remote", ["--url", live.url])):
            assert main(["search", *ships, "-k", "5", "--together", "--json", *args]) == 0
            found[where] = [h["id"] for h in json.loads(capsys.readouterr().out)]
        assert found["remote"] == found["local"] and len(found["local"]) == 5
        assert main(["search", ships[0], "-k", "5", "--json", *data]) == 0
        assert [h["id"] for h in json.loads(capsys.readouterr().out)] != found["local"]
        # --like with no image: the marked items alone are the query (the service's search with no body)
        marks_only = ["--like", "ship/0002.jpg", "--like", "ship/0003.jpg", "--unlike", "dog/0001.jpg"]
        for where, args in (("local", data), ("remote", ["--url", live.url])):
            assert main(["search", *marks_only, "-k", "4", "--json", *args]) == 0
            found[where] = [h["id"] for h in json.loads(capsys.readouterr().out)]
        no_body = httpx.post(live.url + "/search?k=4&like=ship/0002.jpg&like=ship/0003.jpg&unlike=dog/0001.jpg")
        assert found["local"] == found["remote"] == [h["id"] for h in no_body.json()["results"]]
        assert len(found["local"]) == 4 and not {"ship/0002.jpg", "ship/0003.jpg"} & set(found["local"])
        for args, message in [([], "give query images, or --like ID"), (["--unlike", "dog/0001.jpg"], "--like ID"),
                              (["--like", "ship/0002.jpg", "--together"], "--together needs query images")]:
            assert main(["search", *args, *data]) == 2
            assert message in capsys.readouterr().err
        assert main(["classify", *data]) == 2
        assert "give query images" in capsys.readouterr().err
        # --combine best: near any of them, each image's nearest merged at their best scores, the same both ways
        mixed = [ships[0], str(photos / "dog" / "0001.jpg"), str(photos / "cat" / "0002.jpg")]
        pages = {}
        for offset, k in ((0, 5), (1, 4)):
            for where, args in (("local", data), ("remote", ["--url", live.url])):
                assert main(["search", *mixed, "-k", str(k), "--offset", str(offset), "--together", "--combine",
                             "best", "--json", *args]) == 0
                found[where] = [(h["id"], h["score"]) for h in json.loads(capsys.readouterr().out)]
            assert [i for i, _ in found["remote"]] == [i for i, _ in found["local"]]
            pages[offset] = found["local"]
        assert pages[1] == pages[0][1:]   # the next page goes on where the first left off
        best: dict = {}
        for image in mixed:
            assert main(["search", image, "-k", "6", "--json", *data]) == 0
            for h in json.loads(capsys.readouterr().out):
                best[h["id"]] = max(best.get(h["id"], -2.0), h["score"])
        # (this test's seeded model scores every pair near 1: the three queries' own copies tie at 1.0 to a
        # float's last bit, searched alone or together, so their order is not compared, only the five)
        assert {i for i, _ in pages[0]} == {i for i, _ in sorted(best.items(), key=lambda kv: -kv[1])[:5]}
        assert all(abs(score - best[i]) < 1e-5 for i, score in pages[0])
        for args, message in [(["--combine", "best"], "add --together"),
                              (["--together", "--combine", "best", "--group-by", "label"],
                               "--combine best and --group-by")]:
            assert main(["search", *mixed, *args, *data]) == 2
            assert message in capsys.readouterr().err
        assert main(["search", *ships, "-k", "5", "--together", "--json", *data]) == 0
        together = [h["id"] for h in json.loads(capsys.readouterr().out)]
        notes = str(photos / "cat" / "notes.jpg")
        for where, args in (("local", data), ("remote", ["--url", live.url])):
            assert main(["classify", *ships, "-k", "3", "--together", *args]) == 0, where
            assert "ship" in capsys.readouterr().out
            # an image that cannot be read is skipped and said, the rest searched together, the same both ways
            assert main(["search", *ships, notes, "-k", "5", "--together", "--json", *args]) == 0, where
            out, err = capsys.readouterr()
            assert [h["id"] for h in json.loads(out)] == together, where
            assert f"skipped {notes}:" in err and "1 of 4 images could not be read" in err, (where, err)
            assert "file 0" not in err and "'notes.jpg'" not in err, (where, err)   # the path, in the CLI's words
            assert main(["search", notes, notes, "--together", *args]) == 1, where
            assert "2 of 2 images could not be read; nothing to search with" in capsys.readouterr().err, where
            assert main(["search", notes, "--together", *args]) == 2, where   # one image: refused as one query
            assert "notes.jpg" in capsys.readouterr().err, where
        metrics = httpx.get(live.url + "/metrics").text
        assert 'route="/batch/search",status="413"' in metrics and 'route="/batch/search",status="200"' in metrics
    finally:
        stop_server(live)


def test_remote_search_without_a_needed_key_or_with_a_model_says_so_in_one_line(
        hybrid1_artifact, photos, tmp_path, capsys):  # noqa: F811
    live = serving(hybrid1_artifact, tmp_path, SIMSEARCH_REQUIRE_KEY_FOR_READS="true")
    try:
        assert main(["search", str(photos / "dog"), "--url", live.url]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "needs an API key for searches" in err[0] and "--api-key" in err[0]
        assert main(["search", str(photos / "dog"), "--url", live.url, "--api-key", KEY]) == 0
        assert main(["search", str(photos / "dog"), "--url", live.url, "--model", str(hybrid1_artifact)]) == 2
        assert "--model with --url" in capsys.readouterr().err
    finally:
        stop_server(live)
    assert main(["search", str(photos / "dog"), "--url", live.url]) == 2   # nothing listening there now
    assert "cannot reach the service" in capsys.readouterr().err


def test_an_upload_reports_the_position_that_makes_a_search_through_a_replica_see_it(
        hybrid1_artifact, photos, tmp_path, capsys):  # noqa: F811
    import re
    import shutil

    from tests.app.conftest import start_server

    first = tmp_path / "first"
    shutil.copytree(photos / "cat", first / "cat")
    live = serving(hybrid1_artifact, tmp_path)
    replica = None
    try:
        assert main(["index", "upload", str(first), "--url", live.url, "--api-key", KEY]) == 0
        # a replica that applies the writer's changes only when asked (an hour between refreshes)
        replica = start_server({"SIMSEARCH_MODEL_PATH": str(hybrid1_artifact), "SIMSEARCH_DATA_DIR": str(tmp_path / "data"),
                                "SIMSEARCH_READ_ONLY": "true", "SIMSEARCH_REFRESH_SECONDS": "3600",
                                "SIMSEARCH_RATE_LIMIT_PER_MINUTE": "0"}, tmp_path, log_name="replica.log")
        capsys.readouterr()
        assert main(["index", "upload", str(photos), "--url", live.url, "--api-key", KEY]) == 0   # dogs and ships
        out = capsys.readouterr().out
        position = re.search(r"it holds 12 items \(position (\d+\.\d+): `--after \1` makes a search", out)[1]
        query = str(photos / "ship" / "0002.jpg")
        assert main(["search", query, "-k", "1", "--url", replica.url]) == 0
        assert capsys.readouterr().out.split()[-1] != "ship/0002.jpg"   # the replica has not looked yet
        assert main(["classify", query, "--url", replica.url, "--after", position]) == 0
        assert capsys.readouterr().out.startswith("ship  ")
        assert main(["search", query, "-k", "1", "--url", replica.url, "--after", position]) == 0
        assert capsys.readouterr().out.split()[-1] == "ship/0002.jpg"
        assert main(["search", query, "--after", position, "--data", str(tmp_path / "data")]) == 2
        assert "--after is for a search through a service" in capsys.readouterr().err
    finally:
        if replica is not None:
            stop_server(replica)
        stop_server(live)


def test_upload_and_remote_search_use_a_named_gallery(hybrid1_artifact, photos, tmp_path, capsys):  # noqa: F811
    live = serving(hybrid1_artifact, tmp_path)
    try:
        assert main(["index", "upload", str(photos), "--url", live.url, "--api-key", KEY, "--gallery", "pets"]) == 0
        assert "it holds 12 items" in capsys.readouterr().out
        assert httpx.get(live.url + "/galleries").json()["galleries"] == [
            {"name": "default", "count": 0, "open": True}, {"name": "pets", "count": 12, "open": True}]
        query = str(photos / "dog" / "0001.jpg")
        assert main(["search", query, "-k", "1", "--url", live.url, "--gallery", "pets"]) == 0
        assert capsys.readouterr().out.split()[-1] == "dog/0001.jpg"
        assert main(["classify", query, "--url", live.url, "--gallery", "pets", "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["label"] == "dog"
        assert main(["search", query, "-k", "1", "--url", live.url]) == 0   # the default gallery is empty
        assert capsys.readouterr().out.strip() == "no neighbours"
        assert main(["search", query, "--url", live.url, "--gallery", "hats"]) == 2
        assert "no gallery named 'hats'" in capsys.readouterr().err
    finally:
        stop_server(live)
