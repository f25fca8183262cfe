"""GSM8K answer extraction and few-shot prompts, on the shared data set (skipped where it is absent)."""

from __future__ import annotations

import pytest

from speedrun.eval import gsm8k
from speedrun.recipe import Gsm8k

DATA = gsm8k.REPO.parent / "shared" / "data" / "gsm8k"
needs_data = pytest.mark.skipif(not (DATA / "test.jsonl").is_file(), reason=f"no GSM8K copy at {DATA}")


@pytest.mark.parametrize(
    ("text", "flexible", "strict"),
    [
        (" She makes 9 * 2 = $18 every day.\n#### 18", "18", "18"),
        (" 1,000 + 234 = 1,234\n#### 1,234", "1234", "1234"),
        (" The answer is 3.50 dollars.", "3.5", None),
        (" He lost 5, so -5 is the change. #### -5", "-5", "-5"),
        (" 12.0 apples", "12", None),
        (" no number here", None, None),
        (" #### 7\n\nQuestion 2: ", "2", "7"),  # flexible takes the LAST number, strict the #### form
    ],
)
def test_extraction(text, flexible, strict):
    assert gsm8k.extract_flexible(text) == flexible
    assert gsm8k.extract_strict(text) == strict


def test_score_counts_both_forms():
    outs = [{"text": " so 5\n#### 5"}, {"text": " it is 6"}, {"text": " #### 8 then 9"}, {"text": "", "error": "x"}]
    s = gsm8k.score(outs, ["5", "6", "8", "1"])
    assert s["score_flexible"] == pytest.approx(2 / 4)  # 5, 6 right; 9 != 8; empty
    assert s["score_strict"] == pytest.approx(2 / 4)  # 5, 8 right
    assert s["invalid"] == pytest.approx(1 / 4) and s["errors"] == 1


@needs_data
def test_labels_cover_the_whole_test_set():
    rows = gsm8k.read_jsonl(DATA / "test.jsonl")
    assert len(rows) == 1319
    labels = [gsm8k.label(r["answer"]) for r in rows]
    assert labels[0] == "18"  # Janet's ducks
    assert all(lbl.lstrip("-").isdigit() for lbl in labels)


@needs_data
def test_few_shot_prompt_shape():
    prompts, labels = gsm8k.build_prompts(DATA, shots=3, questions=5)
    train = gsm8k.read_jsonl(DATA / "train.jsonl")
    test = gsm8k.read_jsonl(DATA / "test.jsonl")
    assert len(prompts) == len(labels) == 5
    p = prompts[0]
    assert p.count("Question: ") == 4 and p.count("\nAnswer:") == 4
    assert p.startswith(f"Question: {train[0]['question']}\nAnswer: {train[0]['answer']}\n\n")
    assert train[2]["answer"] in p and train[3]["question"] not in p
    assert p.endswith(f"Question: {test[0]['question']}\nAnswer:")
    assert gsm8k.build_prompts(DATA, shots=0, questions=1)[0][0] == f"Question: {test[0]['question']}\nAnswer:"


@needs_data
def test_data_dir_resolution(monkeypatch, tmp_path):
    monkeypatch.delenv("SPEEDRUN_GSM8K_DIR", raising=False)
    assert gsm8k.data_dir(None, download=False) == DATA
    (tmp_path / "test.jsonl").write_text((DATA / "test.jsonl").read_text().splitlines()[0] + "\n")
    monkeypatch.setenv("SPEEDRUN_GSM8K_DIR", str(tmp_path))
    assert gsm8k.data_dir(None, download=False) == tmp_path
    cfg = Gsm8k(min_score=0.5, data=str(DATA))
    assert gsm8k.data_dir(cfg, download=False) == DATA  # the recipe's field wins
