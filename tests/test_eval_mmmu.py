"""MMMU harness: loaders, official prompt with interleaved images, official parsing, aggregation, CLI."""
from __future__ import annotations

import io
import json
import random

import pytest
from PIL import Image

from eval.mmmu.data import gold_answer, load_mmmu, parse_options
from eval.mmmu.parse import (eval_multi_choice, eval_open, fallback_choice, parse_multi_choice,
                             parse_open_response)
from eval.mmmu.prompt import build_mmmu_prompt
from eval.mmmu.score import score_mmmu, write_mmmu_outputs

COLORS = {1: (255, 0, 0), 2: (0, 255, 0), 3: (0, 0, 255)}
MC_SUFFIX = "\n\nAnswer with the option's letter from the given choices directly."


def png(color) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (5, 3), color).save(buf, format="PNG")
    return buf.getvalue()


def mmmu_row(sample_id, question="What is shown in <image 1>?", options="['cat', 'dog']", answer="A",
             question_type="multiple-choice", images=(1,)):
    row = {"id": sample_id, "question": question, "options": options, "explanation": "", "answer": answer,
           "question_type": question_type, "img_type": "['Photos']", "topic_difficulty": "Easy", "subfield": "x"}
    for n in range(1, 8):
        row[f"image_{n}"] = {"bytes": png(COLORS[n]), "path": f"{n}.png"} if n in images else None
    return row


def write_parquet(path, rows):
    import datasets

    features = datasets.Features({
        **{k: datasets.Value("string") for k in ("id", "question", "options", "explanation", "answer",
                                                  "question_type", "img_type", "topic_difficulty", "subfield")},
        **{f"image_{n}": datasets.Image() for n in range(1, 8)},
    })
    ds = datasets.Dataset.from_list(rows, features=features)
    ds.to_parquet(str(path))
    return ds


# ---------------------------------------------------------------- loading

def test_load_parquet_file_folder_and_datasets_dir(tmp_path):
    art = [mmmu_row("validation_Art_1"), mmmu_row("validation_Art_2", answer="B")]
    math = [mmmu_row("validation_Math_1", options="[]", answer="3.5", question_type="short-answer")]
    (tmp_path / "hub" / "Art").mkdir(parents=True)
    (tmp_path / "hub" / "Math").mkdir()
    write_parquet(tmp_path / "hub" / "Art" / "validation-00000-of-00001.parquet", art)
    write_parquet(tmp_path / "hub" / "Art" / "dev-00000-of-00001.parquet", [mmmu_row("dev_Art_1")])
    ds = write_parquet(tmp_path / "hub" / "Math" / "validation-00000-of-00001.parquet", math)

    one = load_mmmu(tmp_path / "hub" / "Art" / "validation-00000-of-00001.parquet")
    assert [r["id"] for r in one] == ["validation_Art_1", "validation_Art_2"]
    assert one[0]["options"] == ["cat", "dog"] and one[0]["subject"] == "Art"
    assert isinstance(one[0]["image_1"], dict) and one[0]["image_2"] is None  # not decoded by loading

    folder = load_mmmu(tmp_path / "hub", split="validation")
    assert [r["id"] for r in folder] == ["validation_Art_1", "validation_Art_2", "validation_Math_1"]
    assert folder[2]["options"] == [] and len(load_mmmu(tmp_path / "hub")) == 4

    ds.save_to_disk(str(tmp_path / "saved"))
    saved = load_mmmu(tmp_path / "saved")
    assert saved[0]["id"] == "validation_Math_1" and saved[0]["subject"] == "Math"
    _, images = build_mmmu_prompt(saved[0])
    assert images[0].getpixel((0, 0)) == COLORS[1]


def test_options_parsing_and_errors(tmp_path):
    assert parse_options("['0.5', \"it's\", '<image 2>']", "f") == ["0.5", "it's", "<image 2>"]
    assert parse_options("[]", "f") == [] and parse_options("", "f") == []
    write_parquet(tmp_path / "bad.parquet", [mmmu_row("validation_Art_1", options="['a', 'b'")])
    with pytest.raises(ValueError, match=r"bad\.parquet, row 0 \(id validation_Art_1\): options"):
        load_mmmu(tmp_path / "bad.parquet")


def test_gold_answers_including_lists():
    assert gold_answer({"answer": "B"}) == "B"
    assert gold_answer({"answer": "['24/7', '3.429']"}) == ["24/7", "3.429"]
    assert gold_answer({"answer": "?"}) is None and gold_answer({"answer": ""}) is None
    assert gold_answer({"answer": "[H+]"}) == "[H+]"  # looks like a list, is not one


# ---------------------------------------------------------------- prompt and interleaving

def test_official_prompt_texts():
    text, images = build_mmmu_prompt(mmmu_row("validation_Art_1", question="Who painted <image 1>?",
                                              options="['Monet', 'Manet']"))
    assert text == "Who painted <image>?\n(A) Monet\n(B) Manet" + MC_SUFFIX and len(images) == 1
    text, _ = build_mmmu_prompt(mmmu_row("validation_Math_1", question="Area of <image 1>?", options="[]",
                                         answer="2", question_type="short-answer"))
    assert text == "Area of <image>?\nAnswer the question using a single word or phrase."


def test_image_placeholders_become_tokens_in_order_of_appearance():
    row = mmmu_row("validation_Design_3", question="Compare <image 2> with <image 1>.",
                   options="['<image 3>', 'both <image 1> and <image 2>']", images=(1, 2, 3))
    text, images = build_mmmu_prompt(row)
    assert text == ("Compare <image> with <image>.\n(A) <image>\n(B) both <image> and <image>" + MC_SUFFIX)
    assert [im.getpixel((0, 0)) for im in images] == [COLORS[2], COLORS[1], COLORS[3], COLORS[1], COLORS[2]]
    assert text.count("<image>") == len(images)


def test_unreferenced_and_missing_images():
    text, images = build_mmmu_prompt(mmmu_row("validation_Art_4", question="Describe it.", images=(1, 2)))
    assert text.startswith("<image>\n<image>\nDescribe it.\n") and len(images) == 2
    with pytest.raises(ValueError, match=r"validation_Art_5.*<image 3> but image_3 is empty"):
        build_mmmu_prompt(mmmu_row("validation_Art_5", question="See <image 3>", images=(1,)))


# ---------------------------------------------------------------- parsing (official rules)

I2A = {"A": "red circle", "B": "blue square", "C": "green triangle", "D": "yellow star"}


@pytest.mark.parametrize("response, choice, method", [
    ("(B)", "B", "bracket"),
    ("The answer is (C).", "C", "bracket"),
    ("(A) looks close but (D) is right", "D", "bracket"),  # several: the last one wins
    ("C", "C", "letter"),
    ("B.", "B", "letter"),
    ("I would say B here", "B", "letter"),
    ("Not A but D", "D", "letter"),
    ("I think the picture shows a blue square", "B", "text"),
    ("it is a red circle, no wait, it is a green triangle", "C", "text"),
])
def test_multiple_choice_parsing(response, choice, method):
    assert parse_multi_choice(response, I2A, "validation_Art_1") == (choice, method)


def test_multiple_choice_fallback_is_seeded_by_question_id():
    ids = [f"validation_Art_{i}" for i in range(40)]
    forward = {i: parse_multi_choice("no idea", I2A, i) for i in ids}
    backward = {i: parse_multi_choice("no idea", I2A, i) for i in reversed(ids)}
    assert forward == backward and all(p.method == "random" for p in forward.values())
    assert len({p.choice for p in forward.values()}) > 1  # a real draw, not a constant
    seeded = parse_multi_choice("hmm", I2A, "validation_Art_1", seed=7)
    assert seeded.choice == fallback_choice("ABCD", "validation_Art_1", 7)
    random.seed(3)
    expected = random.random()
    random.seed(3)
    parse_multi_choice("no idea", I2A, "validation_Art_2")
    assert random.random() == expected  # the global generator is left alone


@pytest.mark.parametrize("response, gold, correct", [
    ("the answer is 3.5", "3.5", True),
    ("So the total is 1,000 dollars.", "1000", True),
    ("The rate is 50%", "50", True),
    ("The rate is 50%", "50%", True),
    ("x = 2.004", "2", True),  # rounded to 2 decimals: 2.0
    ("the answer is 3.49", "3.5", False),
    ("The capital is Paris.", "Paris", True),
    ("banana", "a", False),  # a one-letter answer does not match inside a word
    ("it is a", "a", True),
    ("It is 1.5e3 meters", "1500", True),
])
def test_open_parsing_and_matching(response, gold, correct):
    assert eval_open(gold, parse_open_response(response)) is correct


def test_open_parse_values():
    assert parse_open_response("the answer is 3.5") == [3.5]  # the tail "3.5" and its number, one float
    parsed = parse_open_response("So the total is 1,000 dollars.")
    assert "1,000 dollars" in parsed and 1000.0 in parsed
    assert eval_open(["24/7", "3.429"], parse_open_response("The answer is 3.429")) is True
    assert eval_open(["Tampa", "Florida"], parse_open_response("It is in florida")) is True
    assert eval_multi_choice("B", "B") and eval_multi_choice(["A", "B"], "B") and not eval_multi_choice("A", "B")


# ---------------------------------------------------------------- scoring and outputs

def scoring_rows():
    def row(sample_id, answer, question_type="multiple-choice", options=("cat", "dog")):
        r = mmmu_row(sample_id, options=repr(list(options)), answer=answer, question_type=question_type)
        return r

    return [row("validation_Art_1", "A"), row("validation_Art_2", "B"), row("validation_Design_1", "A"),
            row("validation_Math_1", "3.5", "short-answer", ()), row("validation_Math_2", "B"),
            row("validation_Math_3", "['24/7', '3.429']", "short-answer", ()),
            row("validation_Shapes_1", "A")]


def test_subject_and_discipline_aggregation():
    preds = {"validation_Art_1": "A", "validation_Art_2": "(A)", "validation_Design_1": "A",
             "validation_Math_1": "The answer is 3.5", "validation_Math_2": "B",
             "validation_Math_3": "3.429", "validation_Shapes_1": "B"}
    result = score_mmmu(scoring_rows(), preds)
    assert result.scores == {"Overall": 5 / 7, "Art and Design": 2 / 3, "Art": 1 / 2, "Design": 1.0,
                             "Science": 1.0, "Math": 1.0, "Shapes": 0.0}
    assert result.num == {"Overall": 7, "Art and Design": 3, "Art": 2, "Design": 1, "Science": 3, "Math": 3,
                          "Shapes": 1}
    assert result.submission is None and result.missing == []


def test_missing_predictions_count_wrong_and_unknown_ids_fail():
    result = score_mmmu(scoring_rows(), {"validation_Art_1": "A"})
    assert result.scores["Overall"] == 1 / 7 and len(result.missing) == 6
    with pytest.raises(ValueError, match=r"out\.json: 1 id\(s\) not in the data: validation_Art_99"):
        score_mmmu(scoring_rows(), {"validation_Art_99": "A"}, source="out.json")


def test_outputs_and_test_split_submission(tmp_path):
    rows = [mmmu_row("test_Art_1", answer="?"), mmmu_row("test_Math_1", answer="?", options="[]",
                                                         question_type="short-answer")]
    result = score_mmmu(rows, {"test_Art_1": "I pick (B)", "test_Math_1": "It is 42"})
    assert result.scores is None
    write_mmmu_outputs(result, str(tmp_path))
    assert json.loads((tmp_path / "submission.json").read_text()) == {"test_Art_1": "B", "test_Math_1": "It is 42"}
    assert not (tmp_path / "scores.json").exists()
    lines = [json.loads(x) for x in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    assert [x["parsed"] for x in lines] == ["B", [42.0]] and lines[0]["correct"] is None
    assert {"id", "response", "parsed", "correct"} <= set(lines[0])


# ---------------------------------------------------------------- CLI

def test_cli_scores_official_output_json(tmp_path, capsys):
    from mllm.app.cli import main

    rows = [mmmu_row("validation_Art_1", answer="A"), mmmu_row("validation_Art_2", answer="B"),
            mmmu_row("validation_Math_1", options="[]", answer="12", question_type="short-answer")]
    write_parquet(tmp_path / "val.parquet", rows)
    preds = tmp_path / "output.json"
    preds.write_text(json.dumps({"validation_Art_1": "A", "validation_Art_2": "A", "validation_Math_1": "x = 12"}))
    out = tmp_path / "run"
    args = ["eval", "mmmu", "--data", str(tmp_path / "val.parquet"), "--predictions", str(preds), "--out", str(out)]
    assert main(args) == 0
    assert "Art and Design" in capsys.readouterr().out
    scores = json.loads((out / "scores.json").read_text())
    assert scores == {"Overall": 2 / 3, "Art and Design": 0.5, "Art": 0.5, "Science": 1.0, "Math": 1.0}
    info = json.loads((out / "run_info.json").read_text())
    assert info["prompt_version"] == "mmmu-official-v1" and info["seed"] == 42
    assert len(info["data"]["sha256"]) == 64 and (out / "predictions.jsonl").exists()

    preds.write_text(json.dumps(["not", "a", "mapping"]))
    assert main(args) == 2
    assert "expected a JSON object mapping question id -> response" in capsys.readouterr().err
