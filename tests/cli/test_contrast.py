"""`actlab contrast` end to end on a tiny model: the run, its tables, the
report in headless Chromium, and bad input."""

import json

import pyarrow.parquet as pq

import actlab
from conftest import chromium_driver, random_sae, run_cli, save_sae_lens_folder


def test_contrast_command(monkeypatch, capsys, tmp_path, tiny_model_dir):
    rows = [{"id": i, "prompt": f"Statement number {i} says that the sky is", "fact": "blue.",
             "hallucination": "green." if i % 2 else "red.", **({"domain": "sky"} if i % 3 == 0 else {})}
            for i in range(24)]
    (tmp_path / "colours.json").write_text(json.dumps(rows[:12]))
    (tmp_path / "more.json").write_text(json.dumps(rows[12:] + [{**rows[5], "id": 99}]))  # row 5's prompt again
    sae = save_sae_lens_folder(random_sae("blocks.1.hook_resid_post"), tmp_path / "sae")
    code, out, err = run_cli(monkeypatch, capsys, "contrast", "--model", tiny_model_dir, "--pairs",
                             tmp_path / "colours.json", "--pairs", tmp_path / "more.json", "--sae", sae,
                             "--out", tmp_path / "run", "--position", "continuation", "--draws", 2, "--folds", 3)
    assert code == 0, err
    assert "pooled paired tests are significant" in out and "paired effects" in out
    run = actlab.open_run(tmp_path / "run")
    texts = run.texts().to_pandas()
    assert len(texts) == 24 * 3 and set(texts["domain"]) == {"colours", "more"}
    # the seed's inner domain is kept as subdomain, in both tables
    expected = {i: "sky" if i % 3 == 0 else None for i in range(24)}
    table = run.texts()
    assert [expected[i] for i in table.column("pair_index").to_pylist()] == table.column("subdomain").to_pylist()
    pairs = run.pairs().to_pandas()
    assert pairs.columns.tolist().index("subdomain") == pairs.columns.tolist().index("domain") + 1
    assert pairs["subdomain"].notna().sum() == 8 * len(set(pairs["layer"]))
    # a repeated prompt is named, with its files and ids, in the output and the manifest
    assert "1 prompt(s) occur more than once" in out
    assert "'Statement number 5 says that the sky is' (colours.json#5, more.json#99)" in out
    assert run.manifest["duplicate_prompts"] == [{"prompt": rows[5]["prompt"],
                                                  "occurrences": ["colours.json#5", "more.json#99"]}]
    stats = pq.read_table(tmp_path / "run" / "stats.parquet").to_pandas()
    assert set(stats["domain"]) == {"all", "colours", "more"} and stats["q"].notna().any()
    detection = pq.read_table(tmp_path / "run" / "detection.parquet").to_pandas()
    assert {"sae_metrics_logistic", "residual_linear_probe", "residual_mean_diff_probe"} <= set(detection["detector"])
    driver = chromium_driver()
    try:
        driver.get((tmp_path / "run" / "report.html").resolve().as_uri())
        for anchor in ("summary", "effects", "domains", "distributions", "detection"):
            assert driver.find_element("id", anchor).is_displayed(), anchor
        images = driver.find_elements("tag name", "img")
        assert images and all(driver.execute_script("return arguments[0].naturalWidth", img) > 0 for img in images)
        assert not [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    finally:
        driver.quit()
    code, _, err = run_cli(monkeypatch, capsys, "contrast", "--model", tiny_model_dir, "--pairs",
                           tmp_path / "nope.json", "--out", tmp_path / "r2")
    assert code == 2 and "input file not found" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_cli(monkeypatch, capsys, "contrast", "--model", tiny_model_dir, "--pairs",
                           tmp_path / "colours.json", "--sae", sae, "--position", "middle", "--out", tmp_path / "r3")
    assert code == 2 and "position must be last or continuation" in err and "(--position)" in err
    (tmp_path / "empty.json").write_text("[]")
    code, _, err = run_cli(monkeypatch, capsys, "contrast", "--model", tiny_model_dir, "--pairs",
                           tmp_path / "colours.json", "--pairs", tmp_path / "empty.json", "--out", tmp_path / "r4")
    assert code == 2 and "empty.json: no pairs" in err and len(err.strip().splitlines()) == 1
