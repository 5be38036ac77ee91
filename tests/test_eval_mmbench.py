"""MMBench harness: TSV reading, VLMEvalKit exact-matching extraction, CircularEval scoring, outputs, CLI."""
from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
import os

import pandas as pd
import pytest
from PIL import Image

from eval.mmbench.data import load_mmbench_tsv, load_predictions
from data_pipelines.mmbench.extract import extract_choice
from data_pipelines.mmbench.prompt import build_mmbench_prompt, options_dict
from eval.mmbench.score import accuracy_report, score_mmbench, write_mmbench_outputs

RED, BLUE, GREEN = (255, 0, 0), (0, 0, 255), (0, 255, 0)


def b64_png(color, size=(6, 4)) -> str:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def write_tsv(path, rows, columns):
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f, delimiter="\t", lineterminator="\n")
        w.writerow(columns)
        for r in rows:
            w.writerow([r.get(c, "") for c in columns])
    return str(path)


COLUMNS = ["index", "question", "hint", "A", "B", "C", "D", "answer", "category", "image", "l2-category", "split"]


@pytest.fixture
def dev_tsv(tmp_path):
    red = b64_png(RED)
    rows = [
        {"index": 1, "question": "Which text?", "A": "None", "B": "NA", "C": "nan", "D": "", "answer": "B",
         "category": "ocr", "image": red, "l2-category": "finegrained_perception (instance-level)"},
        {"index": 2, "question": "Same picture?", "hint": "Look closely", "A": "yes", "B": "no", "answer": "A",
         "category": "image_scene", "image": "1", "l2-category": "coarse_perception"},
        {"index": 3, "question": "Two pictures", "A": "red", "B": "blue", "answer": "A", "category": "image_scene",
         "image": json.dumps([b64_png(GREEN), b64_png(BLUE, (3, 5))]), "l2-category": "coarse_perception"},
        {"index": 1000001, "question": "Which text?", "A": "NA", "B": "nan", "C": "None", "answer": "A",
         "category": "ocr", "image": "1", "l2-category": "finegrained_perception (instance-level)"},
    ]
    return write_tsv(tmp_path / "dev.tsv", rows, COLUMNS)


# ---------------------------------------------------------------- reading the TSV

def test_nan_looking_option_texts_stay_options(dev_tsv):
    data = load_mmbench_tsv(dev_tsv)
    row = data[0]
    assert row["index"] == 1 and isinstance(row["index"], int)
    assert options_dict(row) == {"A": "None", "B": "NA", "C": "nan"}  # empty D is no option
    prompt = build_mmbench_prompt(row)
    assert prompt == ("Question: Which text?\nOptions:\nA. None\nB. NA\nC. nan\n"
                      "Please select the correct answer from the options above. \n")
    assert build_mmbench_prompt(data[1]).startswith("Hint: Look closely\nQuestion: Same picture?\n")
    assert "image" not in row and "image" not in data.columns
    assert data.has_answers


def test_image_reference_and_multi_image_rows(dev_tsv):
    data = load_mmbench_tsv(dev_tsv)
    (own,) = data.images(data[0])
    (reused,) = data.images(data[1])  # image cell "1": row 1's picture
    assert own.size == reused.size == (6, 4) and reused.getpixel((0, 0)) == RED
    first, second = data.images(3)
    assert first.getpixel((0, 0)) == GREEN and second.getpixel((0, 0)) == BLUE and second.size == (3, 5)
    assert data.images(1000001)[0].getpixel((2, 2)) == RED


def test_images_are_decoded_lazily(tmp_path):
    rows = [{"index": 7, "question": "q", "A": "x", "B": "y", "answer": "A", "image": "!" * 100}]
    data = load_mmbench_tsv(write_tsv(tmp_path / "broken.tsv", rows, COLUMNS))  # loading does not decode
    assert len(data) == 1
    with pytest.raises(ValueError, match=r"broken\.tsv, row index 7"):
        data.images(7)


def test_reference_to_missing_index_is_a_clear_error(tmp_path):
    rows = [{"index": 1, "question": "q", "A": "x", "answer": "A", "image": b64_png(RED)},
            {"index": 5, "question": "q", "A": "x", "answer": "A", "image": "999"}]
    path = write_tsv(tmp_path / "badref.tsv", rows, COLUMNS)
    with pytest.raises(ValueError, match=r"badref\.tsv, row index 5: image refers to index 999"):
        load_mmbench_tsv(path)


def test_missing_index_column_and_bad_index_are_named(tmp_path):
    path = write_tsv(tmp_path / "noindex.tsv", [{"question": "q"}], ["question", "A"])
    with pytest.raises(ValueError, match=r"noindex\.tsv: missing column\(s\) index"):
        load_mmbench_tsv(path)
    path = write_tsv(tmp_path / "badindex.tsv", [{"index": "abc", "question": "q"}], ["index", "question"])
    with pytest.raises(ValueError, match=r"badindex\.tsv, line 2: index 'abc'"):
        load_mmbench_tsv(path)


# ---------------------------------------------------------------- extraction (VLMEvalKit exact matching)

CHOICES = {"A": "cat", "B": "dog", "C": "bird", "D": "fish"}


@pytest.mark.parametrize("prediction, expected", [
    ("B", "B"),
    ("A.", "A"),
    ("(C)", "C"),
    ("Answer: B", "B"),
    ("**B**", "B"),
    ("The answer is D.", "D"),
    ("the answer is c", "C"),  # "answer is X" is read case-insensitively
    ("The correct answer is **D**. Here's why: B and C are not fish.", "D"),
    ("I think it is C", "C"),
    ("dog", "B"),  # option text only
    ("It is a dog.", "B"),
    ("b", ""),  # a lower-case bare letter is not an option token
    ("A or B", ""),  # two letters, no "answer is": not unique
    ("cat or dog", ""),  # two option texts: not unique
    ("Sorry, I can't help with images of people yet.", "Z"),  # refusal
    ("Cannot determine the answer from the picture", "Z"),
    ("Z", "Z"),
    ("", ""),
    ("Because Bananas Are Delicious", ""),  # letters inside words do not count
    ("A is a cat in the picture of the garden today", ""),  # a lone letter too early in a long answer
    ("Failed to obtain answer via API.", ""),
])
def test_extraction_matches_vlmevalkit_exact_matching(prediction, expected):
    assert extract_choice(prediction, CHOICES) == expected


def test_extraction_does_not_modify_the_choices():
    choices = {"A": "Cat", "B": "Dog"}
    assert extract_choice("dog", choices) == "B"
    assert choices == {"A": "Cat", "B": "Dog"}


# ---------------------------------------------------------------- CircularEval

def _row(index, answer, category, l2, **extra):
    row = {"index": index, "question": f"q{index % 1_000_000}", "A": "cat", "B": "dog", "C": "bird",
           "answer": answer, "category": category, "l2-category": l2}
    row.update(extra)
    return row


def circular_rows():
    return [
        # question 1: three passes, all right
        _row(1, "A", "ocr", "coarse_perception"), _row(1_000_001, "B", "ocr", "coarse_perception"),
        _row(2_000_001, "C", "ocr", "coarse_perception"),
        # question 2: pass 0 right, pass 1 wrong -> the group fails
        _row(2, "A", "ocr", "logic_reasoning"), _row(1_000_002, "C", "ocr", "logic_reasoning"),
        # question 3: an abnormal single-pass group, right
        _row(3, "B", "scene", "logic_reasoning"),
        # question 4: pass 0 wrong, pass 1 right
        _row(4, "A", "scene", "coarse_perception"), _row(1_000_004, "B", "scene", "coarse_perception"),
    ]


CIRCULAR_PREDICTIONS = {1: "A", 1_000_001: "(B)", 2_000_001: "Answer: C", 2: "A", 1_000_002: "B",
                        3: "dog", 4: "C", 1_000_004: "B"}


def test_circular_groups_need_every_pass_right():
    result = score_mmbench(circular_rows(), CIRCULAR_PREDICTIONS)
    assert result.group_hits == {1: True, 2: False, 3: True, 4: False}
    assert result.circular == {"Overall": 2 / 4, "CP": 1 / 2, "LR": 1 / 2, "ocr": 1 / 2, "scene": 1 / 2}
    # vanilla: base rows 1, 2, 3, 4 judged alone -> 1, 2, 3 right
    assert result.vanilla == {"Overall": 3 / 4, "CP": 1 / 2, "LR": 1.0, "ocr": 1.0, "scene": 1 / 2}
    assert [r.hit for r in result.rows] == [True, True, True, True, False, True, False, True]


def test_each_pass_is_judged_against_its_own_answer():
    # Every pass answering "A" is right only on the pass whose answer is A.
    rows = circular_rows()[:3]
    result = score_mmbench(rows, {1: "A", 1_000_001: "A", 2_000_001: "A"})
    assert [r.hit for r in result.rows] == [True, False, False]
    assert result.circular["Overall"] == 0.0 and result.vanilla["Overall"] == 1.0


def test_g_index_column_defines_the_groups():
    rows = [_row(10, "A", "c", "coarse_perception", g_index=10), _row(11, "B", "c", "coarse_perception", g_index=10),
            _row(12, "C", "c", "coarse_perception", g_index=12)]
    result = score_mmbench(rows, {10: "A", 11: "A", 12: "C"})
    assert result.group_hits == {10: False, 12: True}
    assert result.circular["Overall"] == 0.5
    assert result.counts["groups"] == 2


def test_rows_without_base_row_are_left_out_and_reported():
    rows = circular_rows()[:3] + [_row(1_000_009, "A", "ocr", "coarse_perception")]
    result = score_mmbench(rows, {1: "A", 1_000_001: "B", 2_000_001: "C", 1_000_009: "A"})
    assert result.orphans == [1_000_009]
    assert result.circular["Overall"] == 1.0 and result.counts["groups"] == 1


def test_missing_predictions_count_wrong_and_unknown_ones_are_errors():
    preds = dict(CIRCULAR_PREDICTIONS)
    del preds[1_000_001]
    result = score_mmbench(circular_rows(), preds)
    assert result.missing == [1_000_001] and result.counts["missing_predictions"] == 1
    assert result.group_hits[1] is False and result.circular["Overall"] == 1 / 4
    with pytest.raises(ValueError, match=r"preds\.tsv: 1 prediction index\(es\) not in the data file: 77"):
        score_mmbench(circular_rows(), {**CIRCULAR_PREDICTIONS, 77: "A"}, source="preds.tsv")


def test_report_order_and_l2_abbreviations():
    records = [({"l2-category": l2, "category": cat}, hit) for l2, cat, hit in [
        ("relation_reasoning", "zeta", True), ("attribute_reasoning", "alpha", False),
        ("finegrained_perception (cross-instance)", "alpha", True),
        ("finegrained_perception (instance-level)", "beta", True), ("my_new_l2", "beta", False)]]
    report = accuracy_report(records)
    assert list(report) == ["Overall", "AR", "FP-C", "FP-S", "my_new_l2", "RR", "alpha", "beta", "zeta"]
    assert report["Overall"] == 3 / 5 and report["alpha"] == 0.5 and report["my_new_l2"] == 0.0


# ---------------------------------------------------------------- predictions files and outputs

def test_prediction_readers(tmp_path):
    tsv = tmp_path / "p.tsv"
    pd.DataFrame({"index": [1, 2], "Prediction": ["None", "B"]}).to_csv(tsv, sep="\t", index=False)
    assert load_predictions(tsv) == {1: "None", 2: "B"}  # "None" stays text; column case ignored
    jsonl = tmp_path / "p.jsonl"
    jsonl.write_text('{"index": 1, "prediction": "A"}\n\n{"index": "1000001", "prediction": null}\n')
    assert load_predictions(jsonl) == {1: "A", 1_000_001: ""}
    (tmp_path / "dup.jsonl").write_text('{"index": 1, "prediction": "A"}\n{"index": 1, "prediction": "B"}\n')
    with pytest.raises(ValueError, match=r"dup\.jsonl, line 2: index 1 appears twice"):
        load_predictions(tmp_path / "dup.jsonl")
    (tmp_path / "bad.jsonl").write_text('{"index": 1}\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl, line 1: missing field 'prediction'"):
        load_predictions(tmp_path / "bad.jsonl")


def test_xlsx_predictions(tmp_path):
    path = tmp_path / "p.xlsx"
    try:
        import openpyxl  # noqa: F401
    except ImportError:
        path.write_bytes(b"not really a workbook")
        with pytest.raises(ValueError, match=r"p\.xlsx: reading \.xlsx needs the openpyxl package"):
            load_predictions(path)
    else:
        pd.DataFrame({"index": [3, 4], "prediction": ["A", "NA"]}).to_excel(path, index=False)
        assert load_predictions(path) == {3: "A", 4: "NA"}


def test_outputs_scores_json_and_predictions_tsv(tmp_path, dev_tsv):
    data = load_mmbench_tsv(dev_tsv)
    result = score_mmbench(data, {1: "B", 2: "yes", 3: "(A)", 1_000_001: "A"})
    written = write_mmbench_outputs(data, result, str(tmp_path / "out"))
    scores = json.loads((tmp_path / "out" / "scores.json").read_text())
    assert set(scores) == {"circular", "vanilla"}
    assert scores["circular"] == {"Overall": 1.0, "CP": 1.0, "FP-S": 1.0, "image_scene": 1.0, "ocr": 1.0}
    assert all(0.0 <= v <= 1.0 for part in scores.values() for v in part.values())
    table = pd.read_csv(tmp_path / "out" / "predictions.tsv", sep="\t", keep_default_na=False, dtype=str)
    assert list(table.columns) == ["index", "question", "hint", "A", "B", "C", "D", "answer", "category",
                                   "l2-category", "split", "prediction", "extracted", "hit", "group_hit"]
    assert table["index"].tolist() == ["1", "2", "3", "1000001"]
    assert table["A"].tolist()[0] == "None" and table["extracted"].tolist() == ["B", "A", "A", "A"]
    assert table["hit"].tolist() == ["1", "1", "1", "1"] and len(written) == 2


def test_test_split_writes_predictions_only(tmp_path):
    rows = [{"index": 1, "question": "q", "A": "cat", "B": "dog", "image": b64_png(RED)},
            {"index": 1_000_001, "question": "q", "A": "dog", "B": "cat", "image": "1"}]
    data = load_mmbench_tsv(write_tsv(tmp_path / "test.tsv", rows, ["index", "question", "A", "B", "image"]))
    assert not data.has_answers
    result = score_mmbench(data, {1: "dog", 1_000_001: "A"})
    assert result.circular is None and result.vanilla is None
    write_mmbench_outputs(data, result, str(tmp_path / "out"))
    assert not (tmp_path / "out" / "scores.json").exists()
    table = pd.read_csv(tmp_path / "out" / "predictions.tsv", sep="\t", keep_default_na=False, dtype=str)
    assert list(table.columns) == ["index", "question", "A", "B", "prediction", "extracted"]
    assert table["extracted"].tolist() == ["B", "A"]


# ---------------------------------------------------------------- CLI

def test_cli_scores_predictions_end_to_end(tmp_path, dev_tsv, capsys):
    from mllm.app.cli import main

    preds = tmp_path / "preds.jsonl"
    preds.write_text("".join(json.dumps({"index": i, "prediction": p}) + "\n"
                             for i, p in [(1, "B"), (2, "no"), (3, "A")]))  # 1000001 missing
    out = tmp_path / "run"
    assert main(["eval", "mmbench", "--data", dev_tsv, "--predictions", str(preds), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "Circular" in printed and "1 rows without a prediction" in printed
    scores = json.loads((out / "scores.json").read_text())
    assert scores["circular"]["Overall"] == 1 / 3  # q1 fails (pass 1000001 missing), q2 wrong, q3 right
    assert scores["vanilla"]["Overall"] == 2 / 3
    info = json.loads((out / "run_info.json").read_text())
    assert info["data"]["sha256"] == hashlib.sha256(open(dev_tsv, "rb").read()).hexdigest()
    assert info["prompt_version"] == "vlmevalkit-mcq-v1"
    assert set(info["versions"]) == {"mllm", "torch", "transformers"} and info["model"] is None
    assert info["missing_prediction_indices"] == [1_000_001] and os.path.exists(out / "predictions.tsv")


def test_cli_model_run_with_missing_checkpoint_is_one_clear_error(tmp_path, dev_tsv, capsys):
    from mllm.app.cli import main

    code = main(["eval", "mmbench", "--data", dev_tsv, "--model", str(tmp_path / "ckpt"), "--out", str(tmp_path)])
    assert code == 2
    err = capsys.readouterr().err
    assert "checkpoint directory" in err and "does not exist" in err
