"""The trait report: per-token monitoring against a one-text forward pass,
its sections and plots, and the page in headless Chromium."""

import numpy as np
import pytest
import torch

from actlab.pipelines import TraitReportConfig, build_trait_report
from actlab.traits.monitor import MonitorConfig
from actlab.traits import GenerationConfig
from actlab.traits.definitions import parse_trait
from actlab.judges import Judgement
from actlab.judges.rules import KeywordJudge
from actlab.traits import SteerConfig, TraitRun, generate_trait_run, judge_run, steer_sweep, steering_layer, vectors_run

from conftest import chromium_driver
from actlab.runs import RunControl

SECTIONS = ["summary", "separation", "steering", "monitoring"]


class ByPolarity:
    def __init__(self, polarity):
        self.polarity = polarity

    def judge(self, items):
        return [Judgement(80.0 if p == "pos" else 20.0) for p in self.polarity]


@pytest.fixture(scope="module")
def trait_run(tmp_path_factory, tiny_models):
    model = tiny_models["llama"]
    trait = parse_trait({"name": "toy", "instruction": [{"pos": "Be happy.", "neg": "Be sad."}],
                         "questions": [f"Question {i}?" for i in range(10)]})
    run = generate_trait_run(model, trait, tmp_path_factory.mktemp("t") / "run", layers=[0, 1, 2],
                             cfg=GenerationConfig(max_new_tokens=6, temperature=0.8, seed=1), control=RunControl(progress=False))
    judge_run(run, ByPolarity(TraitRun.open(run).answers().column("polarity").to_pylist()))
    vectors_run(run)
    steer_sweep(model, run, KeywordJudge(["the"]),
                SteerConfig([steering_layer(run)], [0, 1], questions=2, max_new_tokens=4))
    return run


def test_monitoring_values_against_a_forward_pass(trait_run, tiny_models, tmp_path):
    model = tiny_models["llama"]
    out = build_trait_report(trait_run, tmp_path / "r.html", model=model, cfg=TraitReportConfig(examples=1))
    html = out.read_text()
    for section in SECTIONS:
        assert f'<section id="{section}">' in html
    assert "<td>judge</td><td>ByPolarity</td>" in html and "pos score &gt;= 50, neg score &lt; 50" in html
    assert sorted(p.name for p in (tmp_path / "figures").iterdir()) == ["monitor.png", "separation.png", "steering.png"]
    # the first monitored answer: its token spans carry h . v / |v| at the steering layer
    layer = steering_layer(trait_run)
    v = TraitRun.open(trait_run).vectors()[layer]
    row = TraitRun.open(trait_run).answers().to_pylist()[0]
    ids = model.tokenizer(row["prompt"] + row["answer"], add_special_tokens=False, return_tensors="pt")
    with torch.no_grad():
        hidden = model.hf_model(**ids, output_hidden_states=True).hidden_states[layer + 1][0]
    n_prompt = len(model.tokenizer(row["prompt"], add_special_tokens=False)["input_ids"])
    expected = (hidden @ (v / v.norm())).numpy()[n_prompt:]
    first_card = html.split('<section id="monitoring">')[1].split('<div class="example">')[1].split("</div>")[0]
    shown = [float(x) for x in first_card.split('title="')[1:] for x in [x.split('"')[0]]]
    assert np.allclose(shown, expected, rtol=2e-3, atol=2e-3)  # titles carry 3 significant digits


def test_trait_report_renders_in_headless_chromium(trait_run, tiny_models, tmp_path):
    out = build_trait_report(trait_run, tmp_path / "report.html", model=tiny_models["llama"])
    driver = chromium_driver()
    try:
        driver.get(out.resolve().as_uri())
        assert not [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        for section in SECTIONS:
            assert driver.find_element("id", section).is_displayed()
        images = driver.find_elements("tag name", "img")
        assert len(images) == 3 and all(
            driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", i) for i in images)
        assert len(driver.find_elements("css selector", "#monitoring .example")) == 6
    finally:
        driver.quit()


def test_the_trait_stages_compute_and_the_pipeline_draws(trait_run, tiny_models, monkeypatch):
    """steer_sweep and monitor_run leave no figure; draw_steering and draw_monitor draw what they left.
    The sweep reads each vectors file once."""
    from actlab.pipelines import draw_monitor, draw_steering
    from actlab.traits import monitor_run

    model = tiny_models["llama"]
    assert not list(trait_run.glob("*.png"))
    png = draw_steering(trait_run)
    assert png == trait_run / "steering.png" and png.read_bytes()[:4] == b"\x89PNG"
    assert TraitRun.open(trait_run).steering().schema.metadata[b"actlab.method"] == b"mean_diff"
    monitored = monitor_run(model, trait_run, "I am happy today.", cfg=MonitorConfig(layer=1))
    assert len(monitored.tokens) == len(monitored.values) and (monitored.layer, monitored.method) == (1, "mean_diff")
    assert not (trait_run / "monitor-layer1.png").exists()
    assert draw_monitor(trait_run, monitored).read_bytes()[:4] == b"\x89PNG"
    reads = []
    real = TraitRun.vectors
    monkeypatch.setattr(TraitRun, "vectors", lambda self, method="mean_diff": reads.append(method) or real(self, method))
    for method, expected in (("mean_diff", ["mean_diff"]), ("probe", ["probe", "mean_diff"])):
        reads.clear()
        steer_sweep(model, trait_run, KeywordJudge(["the"]), SteerConfig([0, 1, 2], [1], method, questions=1,
                                                                         max_new_tokens=2))
        assert reads == expected
    # as many new tokens as the run's generation (6) unless the sweep says
    steered = steer_sweep(model, trait_run, KeywordJudge(["the"]), SteerConfig([1], [1], questions=1))
    assert steered.schema.metadata[b"actlab.max_new_tokens"] == b"6"
