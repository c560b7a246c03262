"""The latent browser: example values against a one-window forward pass,
the page in headless Chromium on 65,536 latents (open, search, sort, click a
latent, see its highlighted examples, follow a neighbour), and bad input."""

import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

import actlab
from actlab import ActlabError, LatentsConfig, latents_run
from actlab.latents.examples import example_activations
from actlab.pipelines import build_latent_browser
from actlab.features import features_run
from actlab.saes import SAE, SAEConfig
from conftest import TEXTS, chromium_driver, random_sae, run_cli

HOOK, LAYER = "blocks.1.hook_resid_post", 1


def wide_sae(d_sae=65536, seed=0):
    """A large random SAE with about 90 latents active per token of the tiny
    model (its residual norm is about 60)."""
    g = torch.Generator().manual_seed(seed)
    weights = {"W_enc": torch.randn(64, d_sae, generator=g) / 60, "b_enc": torch.full((d_sae,), -2.5),
               "W_dec": torch.randn(d_sae, 64, generator=g), "b_dec": torch.zeros(64)}
    return SAE(SAEConfig(d_in=64, d_sae=d_sae, architecture="standard", hook_name=HOOK, prepend_bos=True,
                         neuronpedia_id="tiny/1-res"), weights)


def test_example_values_equal_a_one_window_forward(tmp_path, tiny_models):
    model, sae = tiny_models["llama"], random_sae(HOOK, seed=3, prepend_bos=True)
    run = actlab.open_run(latents_run(model, TEXTS * 2, {"s": sae}, tmp_path / "run", LatentsConfig(context=6)))
    examples = example_activations(run, model, {"s": sae}).to_pandas()
    windows = pq.read_table(tmp_path / "run" / "windows-00000.parquet").to_pandas().set_index("window")
    expected_pairs = {(j, k) for name in ("top", "intervals") for j, k in
                      zip(run.table(name, "s").column("latent").to_pylist(),
                          run.table(name, "s").column("window").to_pylist())}
    assert set(zip(examples.latent, examples.window)) == expected_pairs
    for row in examples.sample(60, random_state=0).itertuples():
        ids = list(windows.loc[row.window, "token_ids"])
        with torch.no_grad():
            hidden = model.hf_model(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states[LAYER + 1]
            codes = sae.encode(hidden[0])[:, row.latent].numpy()
        codes[0] = 0  # BOS
        assert list(row.positions) == np.flatnonzero(codes > 0).tolist()
        assert np.allclose(row.values, codes[codes > 0], rtol=1e-5, atol=1e-6)
    # the SAE must be the run's: another one is refused in one line
    (tmp_path / "run" / "examples.parquet").unlink()
    with pytest.raises(ActlabError, match="not the ones this run summarised"):
        example_activations(run, model, {"s": random_sae(HOOK, seed=4, prepend_bos=True)})


def wait_for(driver, css, seconds=120):
    """Until the page shows `css` (generous: a busy CI machine renders slowly; speed is not tested here)."""
    deadline = time.monotonic() + seconds
    while not driver.find_elements("css selector", css):
        assert time.monotonic() < deadline, f"the page showed no {css} in {seconds} s"
        time.sleep(0.1)


def test_browser_in_headless_chromium_on_65k_latents(tmp_path, tiny_models):
    """65,536 latents (logit effects and neighbours skipped: their cost is the
    SAE's, tested in test_effects) open at once; a small run's page shows them."""
    model, sae = tiny_models["llama"], wide_sae()
    texts = [f"{t} {i}" for i, t in enumerate(TEXTS * 3)]
    path = latents_run(model, texts, {"wide": sae}, tmp_path / "run",
                       LatentsConfig(context=16, logit_tokens=0, neighbours=0, cofiring=5))
    latents = actlab.open_run(path).latents().to_pandas()
    busiest = int(latents.sort_values(["frequency", "latent"], ascending=[False, True]).latent.iloc[0])
    assert latents["count"].gt(0).sum() > 1000  # enough active latents to browse
    index = build_latent_browser(path, tmp_path / "browser", model, saes={"wide": sae})
    small = latents_run(model, TEXTS, {"s": random_sae(HOOK, seed=5, prepend_bos=True)}, tmp_path / "small",
                        LatentsConfig(context=8, logit_tokens=5, neighbours=4))
    small_busiest = int(actlab.open_run(small).latents().to_pandas().sort_values("count").latent.iloc[-1])
    pq.write_table(pa.table({"sae": ["s"], "latent": pa.array([small_busiest], pa.int32()), "explanation": ["dogs"],
                             "score": [0.75], "fuzzing_auroc": [float("nan")], "baseline": ['the tokens "a"'],
                             "baseline_score": [0.5], "baseline_fuzzing_auroc": [0.25]}),
                   small / "explanations.parquet")
    small_index = build_latent_browser(small, tmp_path / "small_browser", use_model=False)
    title = "return document.querySelector('#detail h2').textContent"
    driver = chromium_driver()
    try:
        driver.get(index.resolve().as_uri())
        wait_for(driver, "tr.row")
        assert driver.find_element("id", "count").text == "65536 of 65536 latents"
        rows = driver.find_elements("css selector", "tr.row")
        assert len(rows) == 100 and int(rows[0].get_attribute("data-latent")) == busiest  # most frequent first
        search = driver.find_element("id", "search")
        search.send_keys("65535")
        assert [r.get_attribute("data-latent") for r in driver.find_elements("css selector", "tr.row")] == ["65535"]
        search.clear()
        search.send_keys(str(busiest))
        driver.find_element("css selector", f'tr.row[data-latent="{busiest}"]').click()
        wait_for(driver, "#examples")
        assert driver.execute_script(title) == f"wide · latent {busiest}"
        assert driver.find_elements("css selector", "#examples .example")
        assert driver.find_elements("css selector", "#examples .tok.on")  # token-level highlighting
        assert driver.find_elements("css selector", "#histogram rect")
        link = driver.find_element("css selector", "#detail a[href^='https://neuronpedia.org/tiny/1-res/']")
        assert link.get_attribute("href").endswith(f"/{busiest}")
        partner = driver.find_element("css selector", "#detail a.latent")  # co-firing
        other = partner.get_attribute("data-latent")
        partner.click()
        deadline = time.monotonic() + 120
        while not driver.execute_script(title).endswith(f"latent {other}") and time.monotonic() < deadline:
            time.sleep(0.1)
        assert driver.execute_script(title) == f"wide · latent {other}"
        # a small run with logit effects and neighbours, without the model: the maximum alone is marked
        driver.get(small_index.resolve().as_uri() + f"#0/{small_busiest}")
        wait_for(driver, "#examples")
        assert driver.find_element("css selector", "#detail .expl").text == "dogs"
        assert driver.find_element("id", "scores").text == ('detection AUROC 0.7500, fuzzing AUROC n/a; baseline '
                                                           '(the tokens "a"): detection AUROC 0.5000, fuzzing AUROC '
                                                           '0.2500')
        assert len(driver.find_elements("css selector", "#logits td code")) == 5
        assert len(driver.find_elements("css selector", "#neighbours a.latent")) == 4
        examples = driver.find_elements("css selector", "#examples .example")
        assert examples and all(len(e.find_elements("css selector", ".tok.on")) == 1 for e in examples)
        assert not [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    finally:
        driver.quit()


def test_a_features_run_is_refused_in_one_line(monkeypatch, capsys, tmp_path, tiny_models):
    path = features_run(tiny_models["llama"], actlab.Records.of(TEXTS), {"s": random_sae(HOOK)}, tmp_path / "f")
    code, _, err = run_cli(monkeypatch, capsys, "latents", "report", path, "--no-model")
    assert code == 2 and "is not a latents run" in err and "Traceback" not in err


def test_features_report_links_into_the_browser(tmp_path, tiny_models):
    from actlab.pipelines import build_report
    from actlab.pipelines import ReportConfig

    model, sae = tiny_models["llama"], random_sae(HOOK, seed=6, prepend_bos=True)
    features = features_run(model, actlab.Records.of(TEXTS), {"s": sae}, tmp_path / "features")
    latents = latents_run(model, TEXTS, {"s": sae}, tmp_path / "latents", LatentsConfig(context=8))
    index = build_latent_browser(latents, use_model=False)
    page = build_report(features, tmp_path / "out" / "report.html", use_model=False,
                        cfg=ReportConfig(browser=index.parent, quality_texts=0))
    html = page.read_text()
    links = [part.split('"')[0] for part in html.split('href="')[1:] if "#0/" in part.split('"')[0]]
    assert links and all((page.parent / link.split("#")[0]).resolve() == index.resolve() for link in links)
    latents_shown = {int(link.rsplit("/", 1)[1]) for link in links}
    cards = {int(part.split('"')[0].rsplit("-", 1)[1]) for part in html.split('<div class="card" id="')[1:]}
    assert latents_shown == cards
    with pytest.raises(ActlabError, match="not a latent browser"):
        build_report(features, tmp_path / "r2.html", use_model=False,
                     cfg=ReportConfig(browser=tmp_path, quality_texts=0))
