"""Tasks: JSONL loaders on fixtures, malformed-row errors, prompt rendering, and tricky reward cases."""
import json
import pathlib
import sys
import types
from decimal import Decimal

import numpy as np
import pytest
from tokenizers import Tokenizer, models
from transformers import PreTrainedTokenizerFast

from rlae_jax.tasks import TASKS, Example, get_task
from rlae_jax.tasks.rewards import (
    choice_reward, exact_match_reward, extract_choice, extract_final_number, normalize_answer, number_reward,
)

DATA = pathlib.Path(__file__).parent / "data" / "tasks"
CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")


def word_level_tokenizer(chat_template=None) -> PreTrainedTokenizerFast:
    """A one-token tokenizer (no downloads), optionally with a chat template."""
    backend = Tokenizer(models.WordLevel({"<unk>": 0}, unk_token="<unk>"))
    return PreTrainedTokenizerFast(tokenizer_object=backend, chat_template=chat_template)


# ---------------------------------------------------------------- loaders
def test_registry_knows_every_task_and_names_them_on_a_typo():
    assert sorted(TASKS) == ["arc_challenge", "gsm8k", "mmlu", "nq_open", "piqa", "synthetic", "synthetic_two_part",
                             "triviaqa"]
    with pytest.raises(KeyError, match="known tasks: arc_challenge, gsm8k, mmlu"):
        get_task("gsm9k")


def test_gsm8k_loader_extracts_the_final_number():
    examples = get_task("gsm8k").load("test", source=DATA / "gsm8k.jsonl")
    assert [e.answer for e in examples] == ["72", "2500", "-5"]
    assert [e.id for e in examples] == ["gsm8k/test/0", "pens", "gsm8k/test/2"]  # blank line skipped
    assert "Natalia sold clips" in examples[0].prompt and examples[0].choices == ()


@pytest.mark.parametrize("name, answers, num_choices", [
    ("arc_challenge", ["C", "B"], 4), ("mmlu", ["B", "C"], 4), ("piqa", ["A"], 2),
])
def test_multiple_choice_loaders(name, answers, num_choices):
    examples = get_task(name).load("validation", source=DATA / f"{name}.jsonl")
    assert [e.answer for e in examples] == answers
    assert all(len(e.choices) == num_choices for e in examples)
    assert f"\nB. {examples[0].choices[1]}\n" in examples[0].prompt


@pytest.mark.parametrize("name", ["triviaqa", "nq_open"])
def test_qa_loaders_keep_every_alias(name):
    examples = get_task(name).load("validation", source=DATA / f"{name}.jsonl")
    assert examples[-1].answer == examples[-1].aliases[0] and len(examples[-1].aliases) == 2


def test_folder_source_reads_split_file_and_limit_stops_early(tmp_path):
    (tmp_path / "train.jsonl").write_text((DATA / "nq_open.jsonl").read_text() + "not json at all\n")
    examples = get_task("nq_open").load("train", source=tmp_path, limit=2)
    assert [e.id for e in examples] == ["nq_open/train/0", "nq_open/train/1"]


@pytest.mark.parametrize("task, line, message", [
    ("gsm8k", '{"question": "q", "answer": "#### 1"', "invalid JSON"),
    ("gsm8k", '["question", "answer"]', "expected a JSON object, got list"),
    ("gsm8k", '{"answer": "#### 1"}', "missing field 'question'"),
    ("gsm8k", '{"question": 7, "answer": "#### 1"}', "field 'question' must be str, got int"),
    ("gsm8k", '{"question": "q", "answer": "no number here"}', "has no final number"),
    ("gsm8k", '{"question": "q", "answer": "3", "id": 5}', "field 'id' must be str"),
    ("mmlu", '{"question": "q", "choices": ["a"], "answer": 0}', "at least 2 non-empty strings"),
    ("mmlu", '{"question": "q", "choices": ["a", 2], "answer": 0}', "at least 2 non-empty strings"),
    ("mmlu", '{"question": "q", "choices": "ab", "answer": 0}', "field 'choices' must be list"),
    ("arc_challenge", '{"question": "q", "choices": ["a", "b"], "answer": 2}', "index 2 is outside 0..1"),
    ("arc_challenge", '{"question": "q", "choices": ["a", "b"], "answer": "C"}', "not one of the letters A, B"),
    ("piqa", '{"question": "q", "choices": ["a", "b"], "answer": true}', "must be str or int, got bool"),
    ("piqa", '{"question": "q", "choices": ["a", "b"], "answer": -1}', "index -1 is outside"),
    ("triviaqa", '{"question": "q", "answers": []}', "at least 1 non-empty strings"),
    ("nq_open", '{"question": "q", "answer": ["x"]}', "missing field 'answers'"),
])
def test_malformed_rows_name_file_line_and_problem(tmp_path, task, line, message):
    valid_row = {"gsm8k": {"question": "q", "answer": "#### 1"},
                 "mmlu": {"question": "q", "choices": ["a", "b"], "answer": 0},
                 "triviaqa": {"question": "q", "answers": ["x"]}}
    valid_row["arc_challenge"] = valid_row["piqa"] = valid_row["mmlu"]
    valid_row["nq_open"] = valid_row["triviaqa"]
    path = tmp_path / "rows.jsonl"
    path.write_text(f"{json.dumps(valid_row[task])}\n\n{line}\n")
    with pytest.raises(ValueError, match=f"rows.jsonl:3: .*{message}"):
        get_task(task).load("test", source=path)


HUB_ROWS = {  # one row per hub dataset, in the hub's own layout
    "gsm8k": {"question": "q", "answer": "work\n#### 1,024"},
    "arc_challenge": {"id": "Mercury_1", "question": "q", "answerKey": "2",
                      "choices": {"text": ["w", "x", "y", "z"], "label": ["1", "2", "3", "4"]}},
    "mmlu": {"question": "q", "subject": "s", "choices": ["w", "x", "y", "z"], "answer": 3},
    "piqa": {"goal": "g", "sol1": "s1", "sol2": "s2", "label": 1},
    "triviaqa": {"question_id": "tc_1", "question": "q",
                 "answer": {"value": "Paris", "aliases": ["Paris", "Paris, France"]}},
    "nq_open": {"question": "q", "answer": ["Paris", "City of Light"]},
}


@pytest.mark.parametrize("name, answer, aliases", [
    ("gsm8k", "1024", ("1024",)), ("arc_challenge", "B", ("B",)), ("mmlu", "D", ("D",)), ("piqa", "B", ("B",)),
    ("triviaqa", "Paris", ("Paris", "Paris, France")), ("nq_open", "Paris", ("Paris", "City of Light")),
])
def test_hub_rows_convert_to_examples(monkeypatch, name, answer, aliases):
    task = get_task(name)
    calls = []

    def load_dataset(*args, **kwargs):
        calls.append((args, kwargs))
        return [HUB_ROWS[name]]

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    (example,) = task.load("validation")
    assert calls == [((task.hub_path, task.hub_config), {"split": "validation"})]
    assert (example.answer, example.aliases) == (answer, aliases)


def test_hub_row_errors_name_dataset_split_and_row(monkeypatch):
    bad = dict(HUB_ROWS["piqa"], label=-1)  # PIQA's unlabelled test rows
    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=lambda *a, **k: [bad]))
    with pytest.raises(ValueError, match="ybisk/piqa test row 1: field 'answer' index -1"):
        get_task("piqa").load("test")


def test_hub_without_datasets_package_says_what_to_do(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # import fails, offline or not
    with pytest.raises(ImportError, match="pip install datasets"):
        get_task("gsm8k").load("test")


# ---------------------------------------------------------------- rendering
def test_render_plain_and_chat_template():
    task = get_task("arc_challenge")
    question, shot = task.load("test", source=DATA / "arc_challenge.jsonl")
    plain = task.render(question, word_level_tokenizer())
    assert plain == task.render(question) == f"{question.prompt}\nAnswer:"
    chat = task.render(question, word_level_tokenizer(CHAT_TEMPLATE))
    assert chat == f"<|user|>{question.prompt}<|end|><|assistant|>"
    with_shot = task.render(question, word_level_tokenizer(CHAT_TEMPLATE), shots=[shot])
    assert with_shot == (f"<|user|>{shot.prompt}<|end|><|assistant|>The answer is B.<|end|>"
                         f"<|user|>{question.prompt}<|end|><|assistant|>")
    assert task.render(question, shots=[shot]) == f"{shot.prompt}\nAnswer: The answer is B.\n\n{plain}"


def test_batched_rewards_are_float32_and_check_lengths():
    task = get_task("gsm8k")
    examples = task.load("test", source=DATA / "gsm8k.jsonl")
    rewards = task.rewards(["The answer is 72.", "#### 2,500", "I think it is 5."], examples)
    assert rewards.dtype == np.float32 and rewards.tolist() == [1.0, 1.0, 0.0]
    with pytest.raises(ValueError, match="2 completions for 3 examples"):
        task.rewards(["1", "2"], examples)


# ---------------------------------------------------------------- final number
@pytest.mark.parametrize("completion, expected", [
    ("Natalia sold 24 in May, so 48 + 24 = 72.\n#### 72", "72"),
    ("#### 1,234", "1234"),
    ("The answer is $1,234.50.", "1234.50"),
    ("answer: 42 apples", "42"),
    ("The answer is -7 degrees.", "-7"),
    ("It costs -$5 after the refund.", "-5"),
    ("It fell to −3 (unicode minus).", "-3"),
    ("The answer is 3.0", "3"),
    ("The answer is .5", "0.5"),
    ("She has 5 apples, buys 10 more, and has 15 left.", "15"),            # last-number fallback
    ("The answer is 12. Check: 3 * 4 = 12, and 12 + 0 = 12 too, 99", "12"),  # the phrase beats the last number
    ("The answer is below.\n 3 + 4 = 7", "7"),                             # phrase without a number
    ("The answer is:\n\n42\nCheck: 40 + 2 = 42, not 41", "42"),
    ("So the total is \\boxed{1,000} dollars, not 999.", "1000"),
    ("10-3 = 7", "7"),
    ("We used 2 bottles of H2O", "2"),
    ("Counts: 1,2,3", "3"),
    ("The final answer: 18.", "18"),
    ("The answer is 42.\n\nQuestion: Tom has 17 cats.", "42"),
    ("The answer is 5kg of flour.", "5"),
    ("####", None),
    ("", None),
    ("I don't know.", None),
])
def test_extract_final_number(completion, expected):
    got = extract_final_number(completion)
    assert got == (None if expected is None else Decimal(expected))


@pytest.mark.parametrize("completion, answer, reward", [
    ("The answer is 3.00", "3", 1.0),
    ("The answer is 1,000 dollars.", "1000", 1.0),
    ("#### 1000", "1,000", 1.0),
    ("The answer is 72.5", "72", 0.0),
    ("The answer is 72", "-72", 0.0),
    ("", "0", 0.0),
    ("no digits", "0", 0.0),
])
def test_number_reward(completion, answer, reward):
    assert number_reward(completion, answer) == reward


# ---------------------------------------------------------------- choice letter
FOUR = ("Paris", "London", "Berlin", "Rome")


@pytest.mark.parametrize("completion, expected", [
    ("The answer is (B)", "B"),
    ("The answer is (b).", "B"),
    ("B.", "B"),
    ("B", "B"),
    ("  b)", "B"),
    ("Answer: b", "B"),
    ("Answer: b\nBecause London is ...", "B"),
    ("**Answer:** C", "C"),
    ("(C) because Berlin is in Germany", "C"),
    ("[D] Rome", "D"),
    ("The correct answer is option D.", "D"),
    ("The answer is A because Paris is the capital.", "A"),
    ("A. Paris", "A"),
    ("The answer is not A. The answer is C.", "C"),
    ("Looking at it, I pick (C).", "C"),
    ("A cat sat on the mat.", None),                    # the article is no answer
    ("the answer is a bit unclear", None),              # nor is a lower-case article after "answer is"
    ("I think it is London.", "B"),                     # choice text fallback
    ("rome", "D"),
    ("Paris or London, hard to say.", None),            # two choice texts: ambiguous
    ("The answer is (E)", None),                        # out of range for four choices
    ("The answer is E. Sorry, (B).", "B"),
    ("The answer is: A) Paris", "A"),
    ("Answer: (d)\nRome is the capital of Italy.", "D"),
    ("Let me think. Paris is in France.\n\nThe answer is B", "B"),
    ("", None),
    ("I have no idea.", None),
])
def test_extract_choice(completion, expected):
    assert extract_choice(completion, FOUR) == expected


def test_choice_reward_is_zero_without_a_letter():
    assert choice_reward("The answer is (B)", "B", FOUR) == 1.0
    assert choice_reward("The answer is (B)", "A", FOUR) == 0.0
    assert choice_reward("", "A", FOUR) == 0.0


# ---------------------------------------------------------------- normalised exact match
@pytest.mark.parametrize("text, normalised", [
    ("The Beatles!", "beatles"),
    ("  An  apple a day ", "apple day"),
    ("U.S.", "us"),
    ("“Sunset Boulevard”", "sunset boulevard"),
    ("Theatre", "theatre"),
])
def test_normalize_answer(text, normalised):
    assert normalize_answer(text) == normalised


@pytest.mark.parametrize("completion, reward", [
    ("Sunset Boulevard", 1.0),
    ("sunset blvd.", 1.0),                              # any alias
    ("The answer is Sunset Boulevard.", 1.0),
    ("Answer: \"Sunset Boulevard\"\nIt opened in 1993.", 1.0),
    ("Sunset Boulevard. It premiered in 1993.", 1.0),   # first sentence
    ("I believe it was Sunset Boulevard", 0.0),         # exact match, not containment
    ("Sunset", 0.0),
    ("", 0.0),
    ("The answer is", 0.0),
])
def test_exact_match_reward(completion, reward):
    assert exact_match_reward(completion, ("Sunset Boulevard", "Sunset Blvd")) == reward


def test_exact_match_ignores_articles_and_empty_aliases():
    assert exact_match_reward("The answer is the Beatles", ("Beatles",)) == 1.0
    assert exact_match_reward("the", ("The",)) == 0.0


def test_task_rewards_use_example_fields():
    example = Example(id="x", prompt="p", answer="B", aliases=("B",), choices=FOUR)
    assert get_task("mmlu").reward("The answer is (B)", example) == 1.0
    qa = Example(id="y", prompt="p", answer="Beatles", aliases=("Beatles", "The Beatles"))
    assert get_task("triviaqa").reward("The Beatles.", qa) == 1.0
