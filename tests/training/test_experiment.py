"""The Table 1 runner on a tiny slice: it trains each cell, writes Markdown and JSON, and reuses finished runs."""
from __future__ import annotations

import json

from training import _experiment as exp


def test_table1_slice_writes_ours_beside_the_papers(shared_data, tmp_path):
    logs: list[str] = []
    kwargs = dict(datasets=["mnist"], models=["inn2"], losses=["ce", "ms"], epochs={"mnist": 1},
                  preset_name="paper", max_train=300, max_test=500, threads=1, out_dir=tmp_path / "results",
                  work_dir=tmp_path / "work", command="test", log=logs.append)
    md, js = exp.run_table1(shared_data, **kwargs)
    payload = json.loads(js.read_text())
    rows = {r["loss"]: r for r in payload["results"]}
    assert set(rows) == {"ce", "ms"} and rows["ce"]["parameters"] == 560  # the paper's count
    assert rows["ce"]["loss_value"] == rows["ce"]["ce_loss"] and rows["ms"]["loss_value"] == rows["ms"]["ms_loss"]
    assert rows["ms"]["ce_loss"] is None  # an MS-trained model has no classification head
    text = md.read_text()
    assert "Vanilla INN-2" in text and "/ 1.8941" in text and "/ 1.1249" in text and "Reduced run" in text
    assert rows["ms"]["ms_loss_plain"] is not None and "`ms_loss_plain`" in text  # the MS cells' second protocol
    assert f"{rows['ms']['ms_loss_plain']:.4f}" in text
    # a second call reuses both finished runs instead of training again
    logs.clear()
    exp.run_table1(shared_data, **kwargs)
    assert not any(line.startswith("[") for line in logs)
