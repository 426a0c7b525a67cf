"""The pipeline's index page answers "did it work?" first: every stage's headline numbers, equal to the
stage's own result files, above the stage table; answers side by side; no finished stage mislabelled."""

from __future__ import annotations

import json
import re
import shutil

import pytest

from alignkit.engine.outputs import write_status
from alignkit.engine.stages import summary_row
from alignkit.engine.summary import write_pipeline_summary
from alignkit.feedback.winrate import WinRateConfig, run_win_rate

PROMPTS = [f"Question {i}: how do I keep basil alive?" for i in range(6)]


def answers(run_dir, texts):
    run_dir.mkdir(parents=True)
    rows = [{"prompt": [{"role": "user", "content": p}], "completion": t, "finish_reason": "stop"}
            for p, t in zip(PROMPTS, texts)]
    (run_dir / "generations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    write_status(run_dir, "complete", "generate", rows=len(rows), seconds=1.0)


@pytest.fixture()
def pipeline(tmp_path):
    root = tmp_path / "runs"
    good = "Water it when the top of the soil is dry, give it six hours of sun, and pinch off the flowers."
    answers(root / "sft_answers", ["I can't help with that."] * 6)
    answers(root / "dpo_answers", [good] * 5 + ["I can't help with that."])
    run_win_rate(WinRateConfig(dataset_name=str(root / "dpo_answers" / "generations.jsonl"),
                               baseline=str(root / "sft_answers" / "generations.jsonl"), judge="rules",
                               output_dir=str(root / "win_rate")))
    rm = root / "reward_model"
    rm.mkdir()
    write_status(rm, "complete", "reward_model", steps=4, eval={"eval/accuracy": 0.8125, "eval/loss": 0.41})
    ppo = root / "ppo"
    ppo.mkdir()
    (ppo / "metrics.jsonl").write_text("".join(
        json.dumps({"step": s, "objective/scores": -1.5 + 0.25 * s, "objective/kl": 0.1 * s}) + "\n"
        for s in range(1, 5)))
    write_status(ppo, "complete", "ppo", steps=4)
    names = ["sft_answers", "dpo_answers", "win_rate", "reward_model", "ppo"]
    path = write_pipeline_summary(root, [summary_row(n, root / n) for n in names])
    return root, path.read_text(encoding="utf-8")


def test_headlines_come_first_and_equal_the_stages_own_results(pipeline):
    root, html = pipeline
    assert html.index("<h2>Results</h2>") < html.index("<h2>Stages</h2>")
    result = json.loads((root / "win_rate" / "win_rate.json").read_text())
    low, high = result["interval_95"]
    shown = f"{100 * result['win_rate']:.1f}% <span class=hint>({100 * low:.0f}–{100 * high:.0f})</span>"
    assert "win rate of dpo_answers over sft_answers" in html and shown in html
    assert result["win_rate"] > 0.5  # the rubric prefers the helpful answer: a real verdict, not a constant
    assert "held-out accuracy" in html and "81.2%" in html
    assert "reward-model score, first → last logged step" in html and "-1.25 → -0.5" in html
    assert "KL to the reference (last step)" in html and "0.4" in html


def test_finished_stages_link_their_outputs_and_rl_shows_its_reward_curve(pipeline):
    root, html = pipeline
    assert "(not written yet)" not in html  # every stage finished, none writes report.html here
    hrefs = re.findall(r'<a href="([^"]+)"', html)
    assert "sft_answers/generations.jsonl" in hrefs and "win_rate/win_rate.json" in hrefs
    assert 'alt="ppo objective/scores"' in html


def test_answers_are_shown_side_by_side(pipeline):
    _, html = pipeline
    assert "Answers side by side" in html
    table = html[html.index("<table class=answers>"):]
    table = table[:table.index("</table>")]
    assert "<th>sft_answers</th><th>dpo_answers</th>" in table
    assert PROMPTS[0] in table and "six hours of sun" in table and "I can&#x27;t help with that." in table


def test_the_page_in_a_browser_leads_with_the_results(pipeline):
    playwright_api = pytest.importorskip("playwright.sync_api")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("no chromium on PATH (Debian: apt-get install chromium)")
    root, _ = pipeline
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        page.goto((root / "index.html").resolve().as_uri())
        headings = page.locator("h2").all_inner_texts()
        assert headings[0] == "Results" and "Stages" in headings
        results = page.locator("table.headlines")
        assert results.is_visible() and results.bounding_box()["y"] < 800  # above the fold
        assert "win rate of dpo_answers over sft_answers" in results.inner_text()
        browser.close()
