"""Tasks: JSONL loaders on fixtures, malformed-row errors, split overlap, prompt rendering and
per-member prompts, reasoning-gym tasks, and tricky reward cases."""

import dataclasses
import importlib.util
import json
import os
import pathlib
import re
import subprocess
import sys
import threading
import types
import warnings
from decimal import Decimal

import numpy as np
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from rlae_jax.models.prompts import encode_prompts, member_prompts, plain_prompt
from rlae_jax.tasks import TASKS, Example, get_task, reasoning_gym_task, rgym
from rlae_jax.tasks.rewards import (
    choice_reward,
    exact_match_reward,
    extract_answer,
    extract_choice,
    extract_final_number,
    normalize_answer,
    number_reward,
)

DATA = pathlib.Path(__file__).parent / "data" / "tasks"
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def word_level_tokenizer(chat_template=None) -> PreTrainedTokenizerFast:
    """A one-token tokenizer (no downloads), optionally with a chat template."""
    backend = Tokenizer(models.WordLevel({"<unk>": 0}, unk_token="<unk>"))
    return PreTrainedTokenizerFast(tokenizer_object=backend, chat_template=chat_template)


# ---------------------------------------------------------------- loaders
def test_registry_knows_every_task_and_names_them_on_a_typo():
    assert sorted(TASKS) == [
        "arc_challenge",
        "gsm8k",
        "gsm_symbolic",
        "mmlu",
        "nq_open",
        "piqa",
        "synthetic",
        "synthetic_capitalize",
        "synthetic_reverse",
        "synthetic_two_part",
        "triviaqa",
    ]
    with pytest.raises(KeyError, match="known tasks: arc_challenge, gsm8k, gsm_symbolic, mmlu"):
        get_task("gsm9k")


def test_gsm8k_loader_extracts_the_final_number():
    examples = get_task("gsm8k").load("test", source=DATA / "gsm8k.jsonl")
    assert [e.answer for e in examples] == ["72", "2500", "-5"]
    # the blank line is skipped
    assert [e.id for e in examples] == ["gsm8k/test/0", "pens", "gsm8k/test/2"]
    assert "Natalia sold clips" in examples[0].prompt and examples[0].choices == ()


@pytest.mark.parametrize(
    "name, answers, num_choices",
    [
        ("arc_challenge", ["C", "B"], 4),
        ("mmlu", ["B", "C"], 4),
        ("piqa", ["A"], 2),
    ],
)
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
    text = (DATA / "nq_open.jsonl").read_text()
    (tmp_path / "train.jsonl").write_text(text + "not json at all\n")
    examples = get_task("nq_open").load("train", source=tmp_path, limit=2)
    assert [e.id for e in examples] == ["nq_open/train/0", "nq_open/train/1"]


@pytest.mark.parametrize(
    "task, line, message",
    [
        ("gsm8k", '{"question": "q", "answer": "#### 1"', "invalid JSON"),
        ("gsm8k", '["question", "answer"]', "expected a JSON object, got list"),
        ("gsm8k", '{"answer": "#### 1"}', "missing field 'question'"),
        ("gsm8k", '{"question": 7, "answer": "#### 1"}', "field 'question' must be str, got int"),
        ("gsm8k", '{"question": "q", "answer": "no number here"}', "has no final number"),
        ("gsm8k", '{"question": "q", "answer": "3", "id": 5}', "field 'id' must be str"),
        (
            "mmlu",
            '{"question": "q", "choices": ["a"], "answer": 0}',
            "at least 2 non-empty strings",
        ),
        (
            "mmlu",
            '{"question": "q", "choices": ["a", 2], "answer": 0}',
            "at least 2 non-empty strings",
        ),
        ("mmlu", '{"question": "q", "choices": "ab", "answer": 0}', "field 'choices' must be list"),
        (
            "arc_challenge",
            '{"question": "q", "choices": ["a", "b"], "answer": 2}',
            "index 2 is outside 0..1",
        ),
        (
            "arc_challenge",
            '{"question": "q", "choices": ["a", "b"], "answer": "C"}',
            "not one of the letters A, B",
        ),
        (
            "piqa",
            '{"question": "q", "choices": ["a", "b"], "answer": true}',
            "must be str or int, got bool",
        ),
        ("piqa", '{"question": "q", "choices": ["a", "b"], "answer": -1}', "index -1 is outside"),
        ("triviaqa", '{"question": "q", "answers": []}', "at least 1 non-empty strings"),
        ("nq_open", '{"question": "q", "answer": ["x"]}', "missing field 'answers'"),
    ],
)
def test_malformed_rows_name_file_line_and_problem(tmp_path, task, line, message):
    valid_row = {
        "gsm8k": {"question": "q", "answer": "#### 1"},
        "mmlu": {"question": "q", "choices": ["a", "b"], "answer": 0},
        "triviaqa": {"question": "q", "answers": ["x"]},
    }
    valid_row["arc_challenge"] = valid_row["piqa"] = valid_row["mmlu"]
    valid_row["nq_open"] = valid_row["triviaqa"]
    path = tmp_path / "rows.jsonl"
    path.write_text(f"{json.dumps(valid_row[task])}\n\n{line}\n")
    with pytest.raises(ValueError, match=f"rows.jsonl:3: .*{message}"):
        get_task(task).load("test", source=path)


HUB_ROWS = {  # one row per hub dataset, in the hub's own layout
    "gsm8k": {"question": "q", "answer": "work\n#### 1,024"},
    "arc_challenge": {
        "id": "Mercury_1",
        "question": "q",
        "answerKey": "2",
        "choices": {"text": ["w", "x", "y", "z"], "label": ["1", "2", "3", "4"]},
    },
    "mmlu": {"question": "q", "subject": "s", "choices": ["w", "x", "y", "z"], "answer": 3},
    "piqa": {"goal": "g", "sol1": "s1", "sol2": "s2", "label": 1},
    "triviaqa": {
        "question_id": "tc_1",
        "question": "q",
        "answer": {"value": "Paris", "aliases": ["Paris", "Paris, France"]},
    },
    "nq_open": {"question": "q", "answer": ["Paris", "City of Light"]},
}


TRAIN_ROW = {
    "gsm8k": {"question": "t", "answer": "#### 2"},
    "arc_challenge": dict(HUB_ROWS["arc_challenge"], question="t"),
    "mmlu": dict(HUB_ROWS["mmlu"], question="t"),
    "piqa": dict(HUB_ROWS["piqa"], goal="t"),
    "triviaqa": dict(HUB_ROWS["triviaqa"], question="t"),
    "nq_open": dict(HUB_ROWS["nq_open"], question="t"),
}


def fake_hub(monkeypatch, rows_of_split):
    """Replace `datasets` by a fake whose load_dataset returns `rows_of_split(split)`; returns the
    calls."""
    calls = []

    def load_dataset(*args, split):
        calls.append((args, split))
        return rows_of_split(split)

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    return calls


@pytest.mark.parametrize(
    "name, answer, aliases",
    [
        ("gsm8k", "1024", ("1024",)),
        ("arc_challenge", "B", ("B",)),
        ("mmlu", "D", ("D",)),
        ("piqa", "B", ("B",)),
        ("triviaqa", "Paris", ("Paris", "Paris, France")),
        ("nq_open", "Paris", ("Paris", "City of Light")),
    ],
)
def test_hub_rows_convert_to_examples_and_are_checked_against_train(
    monkeypatch, name, answer, aliases
):
    task = get_task(name)
    calls = fake_hub(
        monkeypatch,
        lambda split: [TRAIN_ROW[name] if split == task.train_split else HUB_ROWS[name]],
    )
    (example,) = task.load("validation")
    hub = (task.hub_path, task.hub_config)
    assert calls == [(hub, "validation"), (hub, task.train_split)]
    assert (example.answer, example.aliases) == (answer, aliases)


def test_hub_split_sharing_a_training_prompt_is_refused(monkeypatch):
    row, train_row = HUB_ROWS["nq_open"], TRAIN_ROW["nq_open"]
    fake_hub(
        monkeypatch,
        lambda split: [row, train_row] if split == "train" else [row, dict(row, question="new")],
    )
    message = "^nq_open: 1 of 2 validation prompts also occur in the training split$"
    with pytest.raises(ValueError, match=message):
        get_task("nq_open").load("validation")


def test_hub_row_errors_name_dataset_split_and_row(monkeypatch):
    bad = dict(HUB_ROWS["piqa"], label=-1)  # PIQA's unlabelled test rows
    fake_hub(monkeypatch, lambda split: [bad])
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
    assert with_shot == (
        f"<|user|>{shot.prompt}<|end|><|assistant|>The answer is B.<|end|>"
        f"<|user|>{question.prompt}<|end|><|assistant|>"
    )
    plain_with_shot = f"{shot.prompt}\nAnswer: The answer is B.\n\n{plain}"
    assert task.render(question, shots=[shot]) == plain_with_shot


def test_batched_rewards_are_float32_and_check_lengths():
    task = get_task("gsm8k")
    examples = task.load("test", source=DATA / "gsm8k.jsonl")
    rewards = task.rewards(["The answer is 72.", "#### 2,500", "I think it is 5."], examples)
    assert rewards.dtype == np.float32 and rewards.tolist() == [1.0, 1.0, 0.0]
    with pytest.raises(ValueError, match="2 completions for 3 examples"):
        task.rewards(["1", "2"], examples)


# ---------------------------------------------------------------- final number
@pytest.mark.parametrize(
    "completion, expected",
    [
        ("Natalia sold 24 in May, so 48 + 24 = 72.\n#### 72", "72"),
        ("#### 1,234", "1234"),
        ("The answer is $1,234.50.", "1234.50"),
        ("answer: 42 apples", "42"),
        ("The answer is -7 degrees.", "-7"),
        ("It costs -$5 after the refund.", "-5"),
        ("It fell to −3 (unicode minus).", "-3"),
        ("The answer is 3.0", "3"),
        ("The answer is .5", "0.5"),
        ("She has 5 apples, buys 10 more, and has 15 left.", "15"),  # last-number fallback
        # the phrase beats the last number
        ("The answer is 12. Check: 3 * 4 = 12, and 12 + 0 = 12 too, 99", "12"),
        ("The answer is below.\n 3 + 4 = 7", "7"),  # phrase without a number
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
    ],
)
def test_extract_final_number(completion, expected):
    got = extract_final_number(completion)
    assert got == (None if expected is None else Decimal(expected))


@pytest.mark.parametrize(
    "completion, answer, reward",
    [
        ("The answer is 3.00", "3", 1.0),
        ("The answer is 1,000 dollars.", "1000", 1.0),
        ("#### 1000", "1,000", 1.0),
        ("The answer is 72.5", "72", 0.0),
        ("The answer is 72", "-72", 0.0),
        ("", "0", 0.0),
        ("no digits", "0", 0.0),
    ],
)
def test_number_reward(completion, answer, reward):
    assert number_reward(completion, answer) == reward


# ---------------------------------------------------------------- choice letter
FOUR = ("Paris", "London", "Berlin", "Rome")


@pytest.mark.parametrize(
    "completion, expected",
    [
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
        ("A cat sat on the mat.", None),  # the article is no answer
        ("the answer is a bit unclear", None),  # nor is a lower-case article after "answer is"
        ("I think it is London.", "B"),  # choice text fallback
        ("rome", "D"),
        ("Paris or London, hard to say.", None),  # two choice texts: ambiguous
        ("The answer is (E)", None),  # out of range for four choices
        ("The answer is E. Sorry, (B).", "B"),
        ("The answer is: A) Paris", "A"),
        ("Answer: (d)\nRome is the capital of Italy.", "D"),
        ("Let me think. Paris is in France.\n\nThe answer is B", "B"),
        ("", None),
        ("I have no idea.", None),
    ],
)
def test_extract_choice(completion, expected):
    assert extract_choice(completion, FOUR) == expected


def test_choice_reward_is_zero_without_a_letter():
    assert choice_reward("The answer is (B)", "B", FOUR) == 1.0
    assert choice_reward("The answer is (B)", "A", FOUR) == 0.0
    assert choice_reward("", "A", FOUR) == 0.0


# ---------------------------------------------------------------- normalised exact match
@pytest.mark.parametrize(
    "text, normalised",
    [
        ("The Beatles!", "beatles"),
        ("  An  apple a day ", "apple day"),
        ("U.S.", "us"),
        ("“Sunset Boulevard”", "sunset boulevard"),
        ("Theatre", "theatre"),
    ],
)
def test_normalize_answer(text, normalised):
    assert normalize_answer(text) == normalised


@pytest.mark.parametrize(
    "completion, reward",
    [
        ("Sunset Boulevard", 1.0),
        ("sunset blvd.", 1.0),  # any alias
        ("The answer is Sunset Boulevard.", 1.0),
        ('Answer: "Sunset Boulevard"\nIt opened in 1993.', 1.0),
        ("Sunset Boulevard. It premiered in 1993.", 1.0),  # first sentence
        ("I believe it was Sunset Boulevard", 0.0),  # exact match, not containment
        ("Sunset", 0.0),
        ("", 0.0),
        ("The answer is", 0.0),
    ],
)
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


# ---------------------------------------------------------------- split overlap
def write_split(folder: pathlib.Path, split: str, questions) -> None:
    folder.mkdir(exist_ok=True)
    (folder / f"{split}.jsonl").write_text(
        "".join(
            json.dumps({"question": q, "answer": f"#### {i}"}) + "\n"
            for i, q in enumerate(questions)
        )
    )


def test_leaking_folder_split_is_refused_with_the_count(tmp_path):
    write_split(tmp_path, "train", [f"q{i}" for i in range(10)])
    write_split(tmp_path, "test", ["q3", "new", "q7  ", "other"])  # whitespace does not hide a leak
    message = "^gsm8k: 2 of 4 test prompts also occur in the training split$"
    with pytest.raises(ValueError, match=message):
        get_task("gsm8k").load("test", source=tmp_path)
    # a single file names no training split
    assert len(get_task("gsm8k").load("test", source=tmp_path / "test.jsonl")) == 4
    assert len(get_task("gsm8k").load("train", source=tmp_path)) == 10


def test_disjoint_folder_splits_load(tmp_path):
    write_split(tmp_path, "train", ["a", "b"])
    write_split(tmp_path, "test", ["c"])
    assert [e.answer for e in get_task("gsm8k").load("test", source=tmp_path)] == ["0"]


# ---------------------------------------------------------------- answer text
@pytest.mark.parametrize(
    "completion, expected",
    [
        ("The answer is 42.", "42"),
        ("The answer is **-7**.", "-7"),
        ("The answer is 1,000.", "1,000"),
        ("Answer: olleh", "olleh"),
        ('The answer is "nus".', "nus"),
        ("so x = \\boxed{\\frac{3}{4}} and done", "\\frac{3}{4}"),
        ("The answer is $-17$.", "-17"),
        ("The answer is $5.", "$5"),  # a price keeps its $
        ("<answer> 12 </answer>", "12"),
        ("work\n#### 3/4\nmore text", "3/4"),
        ("The answer is:\n\n15 kg", "15 kg"),  # units stay: the verifier decides
        ("We get 5, then 6, then 72.", "72"),  # no marker: the last number
        ("It dropped to −3 degrees", "−3"),
        ("#### 5\nThe answer is 6", "5"),  # #### beats a later answer phrase
        ("\\boxed{8} ... The answer is 6", "8"),  # \boxed beats an answer phrase
        ("  liav.\nIt is the word reversed", "liav"),  # no marker, no number: first line
        ("The answer is", None),
        ("The answer is:\n\n", None),
        (" \n ", None),
        ("", None),
    ],
)
def test_extract_answer(completion, expected):
    assert extract_answer(completion) == expected


# ---------------------------------------------------------------- messages, per-member prompts
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def test_messages_and_plain_format():
    task = get_task("gsm8k")
    question, shot, _ = task.load("test", source=DATA / "gsm8k.jsonl")
    assert task.messages(question, shots=[shot]) == [
        {"role": "user", "content": shot.prompt},
        {"role": "assistant", "content": "The answer is 2500."},
        {"role": "user", "content": question.prompt},
    ]
    system = [{"role": "system", "content": "Be brief."}]
    with_system = plain_prompt(system + task.messages(question))
    assert with_system == f"Be brief.\n\n{question.prompt}\nAnswer:"
    for bad in (
        [],
        system,
        [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}],
        [{"role": "assistant", "content": "a"}, {"role": "user", "content": "b"}],
    ):
        with pytest.raises(ValueError, match="user turn|breaks the plain format"):
            plain_prompt(bad)


class FakeMember:
    def __init__(self, tokenizer):
        self.tokenizer = tokenizer


class ChatMember(FakeMember):
    def chat_prompt(self, messages):
        return "|".join(m["content"] for m in messages) + "|go"


def test_member_prompts_use_each_members_format():
    task = get_task("triviaqa")
    examples = task.load("validation", source=DATA / "triviaqa.jsonl")
    members = [
        FakeMember(word_level_tokenizer(CHATML)),
        FakeMember(word_level_tokenizer()),
        ChatMember(word_level_tokenizer(CHATML)),
    ]
    chatml, plain, own = member_prompts(members, task, examples)
    assert chatml == [
        f"<|im_start|>user\n{e.prompt}<|im_end|>\n<|im_start|>assistant\n" for e in examples
    ]
    assert plain == [f"{e.prompt}\nAnswer:" for e in examples]
    assert own == [f"{e.prompt}|go" for e in examples]
    assert plain == [task.render(e) for e in examples]  # as the single-tokenizer render


def test_encoding_a_template_prompt_keeps_one_bos():
    backend = Tokenizer(models.WordLevel({"<unk>": 0, "<bos>": 1, "hi": 2}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.post_processor = processors.TemplateProcessing(
        single="<bos> $A", special_tokens=[("<bos>", 1)]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<bos>", unk_token="<unk>"
    )
    assert encode_prompts(tokenizer, ["<bos> hi", "hi", "hi <bos>"]) == [[1, 2], [1, 2], [1, 2, 1]]


# ---------------------------------------------------------------- reasoning-gym
needs_gym = pytest.mark.skipif(
    not (importlib.util.find_spec("reasoning_gym") and importlib.util.find_spec("math_verify")),
    reason="reasoning-gym tasks need the tasks extra: pip install 'rlae_jax[tasks]'",
)


@needs_gym
def test_reasoning_gym_splits_are_disjoint_and_deterministic():
    task = dataclasses.replace(get_task("rg/basic_arithmetic:easy"), train_size=1000)
    train, test = task.load("train"), task.load("test", limit=300)
    assert len(train) == task.train_size and len(test) == 300
    assert not {e.prompt for e in train} & {e.prompt for e in test}
    assert test == task.load("test", limit=300) and train[:5] == task.load("train", limit=5)
    assert all(
        e.prompt.startswith("Calculate ") and e.prompt.endswith(rgym.INSTRUCTION) for e in test
    )
    assert {e.id for e in test[:2]} <= {f"rg/basic_arithmetic:easy/test/{i}" for i in range(1000)}
    other_seed = dataclasses.replace(task, seed=1).load("train", limit=50)
    assert [e.prompt for e in other_seed] != [e.prompt for e in train[:50]]


HASHED_PROBLEMS = """
import hashlib, sys
from configs import control, probe, probe_zero_shot, study, study_zero_shot
from rlae_jax.tasks import get_task
specs = list(probe.FAMILIES) + list(probe_zero_shot.get_config().families)
for config in (study.get_config(), control.get_config(), study_zero_shot.get_config()):
    specs += [spec for _, spec in (*config.families, *config.holdout)]
for spec in specs:
    problems = repr(get_task(spec).load("train", limit=8)).encode()
    print(spec, hashlib.md5(problems).hexdigest())
"""


@needs_gym
def test_every_configured_family_generates_the_same_problems_under_any_hash_seed():
    """ransom_note draws letters from a set of strings: without `with_sorted_sets` its problems
    changed from process to process (Python's hash seed), and so did the study's transfer row."""
    repo = pathlib.Path(__file__).parents[1]

    def problems(seed: str) -> list[str]:
        env = {**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": str(repo)}
        run = subprocess.run(
            [sys.executable, "-c", HASHED_PROBLEMS], env=env, capture_output=True, text=True
        )
        assert run.returncode == 0, run.stderr[-2000:]
        return run.stdout.splitlines()

    first = problems("1")
    assert len(first) >= 30 and any("ransom_note" in line for line in first)
    assert problems("2") == first


@needs_gym
def test_sorted_sets_iterate_in_order_and_keep_their_type():
    letters = rgym.SortedSet("dbca")
    assert list(letters) == ["a", "b", "c", "d"] and list(letters - {"b"}) == ["a", "c", "d"]
    assert isinstance(letters | {"e"}, rgym.SortedSet)
    assert isinstance(letters & {"a"}, rgym.SortedSet)
    dataset = types.SimpleNamespace(letters={"b", "a"}, sizes={3, 1})
    rgym.with_sorted_sets(dataset)
    assert isinstance(dataset.letters, rgym.SortedSet) and type(dataset.sizes) is set


@needs_gym
def test_a_hash_seeded_dataset_warns_unless_the_hash_seed_is_set(monkeypatch):
    monkeypatch.delenv("PYTHONHASHSEED", raising=False)
    with pytest.warns(UserWarning, match="word_ladder problems change .* PYTHONHASHSEED"):
        reasoning_gym_task("word_ladder")
    monkeypatch.setenv("PYTHONHASHSEED", "0")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        reasoning_gym_task("word_ladder")


@needs_gym
def test_a_limit_of_zero_loads_nothing():
    """`limit=0` (a study with no worked examples) once loaded the whole training split as shots."""
    task = get_task("rg/gcd:easy")
    assert task.load("train", limit=0) == [] and task.load("test", limit=0) == []
    assert get_task("synthetic").load("validation", limit=0) == []


@needs_gym
def test_reasoning_gym_small_problem_space():
    # at most 100 distinct questions
    tiny = dict(
        min_terms=2,
        max_terms=2,
        min_digits=1,
        max_digits=1,
        operators=["+"],
        allow_parentheses=False,
        allow_negation=False,
    )
    task = reasoning_gym_task("basic_arithmetic", train_size=40, **tiny)
    test = task.load("test", limit=20)
    # repeats of training problems were skipped
    assert not {e.prompt for e in test} & {e.prompt for e in task.load("train")}
    with pytest.raises(ValueError, match="problem space is too small: lower train_size"):
        reasoning_gym_task("basic_arithmetic", train_size=2000, **tiny).load("test", limit=200)
    with pytest.raises(ValueError, match="training split has 40 problems, 41 were asked for"):
        task.load("train", limit=41)


@needs_gym
def test_reasoning_gym_check_refuses_a_leaking_split(monkeypatch):
    task = reasoning_gym_task(
        "basic_arithmetic",
        train_size=40,
        min_terms=2,
        max_terms=2,
        max_digits=1,
        operators=["+"],
        allow_parentheses=False,
        allow_negation=False,
    )

    def without_skipping(self, split, count, training):
        entries = self.generator(split, count)
        return [self.example(split, i, entry) for i, entry in enumerate(entries)]

    monkeypatch.setattr(rgym.ReasoningGymTask, "held_out", without_skipping)
    message = r"^rg/basic_arithmetic: \d+ of 60 test prompts also occur in the training split$"
    with pytest.raises(ValueError, match=message):
        task.load("test", limit=60)


@needs_gym
def test_reasoning_gym_rewards_are_its_verifier_in_0_1():
    task = get_task("rg/spell_backward:easy")
    examples = task.load("test", limit=4)
    right = [f"Reversed letter by letter. The answer is {e.answer}." for e in examples]
    assert task.rewards(right, examples).tolist() == [1.0] * 4
    assert task.reward(f" {examples[1].answer}\n", examples[1]) == 1.0  # a bare word answer
    wrong = [
        f"The answer is {examples[0].answer}x.",
        "The answer is",
        f"<answer>{examples[2].answer[::-1]}</answer>",
        "",
    ]  # [2] is no palindrome
    # partial credit ("...x" contains the answer) scores 0
    assert task.rewards(wrong, examples).tolist() == [0.0] * 4
    arithmetic = get_task("rg/basic_arithmetic:easy")
    (example,) = arithmetic.load("test", limit=1)
    value = int(example.answer)
    for completion, reward in [
        (f"The answer is {value}.", 1.0),
        (f"#### {value:,}", 1.0),
        (f"The answer is \\boxed{{{value}.0}}", 1.0),
        (f"The answer is {value + 1}", 0.0),
        (f"The answer is {value} or {value + 1}", 1.0),
        (f"The answer is {value + 1} or {value}", 0.0),
    ]:
        assert arithmetic.reward(completion, example) == reward, completion


@needs_gym
def test_gsm_symbolic_items_load_and_score():
    task = get_task("gsm_symbolic")
    examples = task.load("test", limit=5)
    assert len({e.prompt for e in examples}) == 5
    assert all(e.answer.lstrip("-").isdigit() for e in examples)
    assert "Give the result as your final answer" in examples[0].prompt
    # the generator's worked solutions, ending "#### N"
    cot = [e.entry["metadata"]["answer_cot"] for e in examples]
    assert task.rewards(cot, examples).tolist() == [1.0] * 5
    off_by_one = [f"The answer is {int(e.answer) + 1}." for e in examples]
    assert task.rewards(off_by_one, examples).tolist() == [0.0] * 5


@needs_gym
@pytest.mark.parametrize(
    "answer, predicted, same",
    [
        ("1000", "1,000", True),
        ("1000", "$1,000", True),
        ("-3", "−3 degrees", True),
        ("0.5", "1/2", True),
        ("0.5", "\\frac{1}{2}", True),
        ("3", "3.0", True),
        ("4", "3 or 4", False),
        ("4", "4 or 3", True),
        ("0.5", "3 or 1/2", False),
        ("0.5", "1/2 or 3", True),
        ("45a", "45", False),
        ("3, 5", "3", False),
        ("7", "seven", False),
        ("12", "x", False),
    ],
)
def test_same_number(answer, predicted, same):
    assert rgym.same_number(answer, predicted) is same


@needs_gym
def test_same_number_works_off_the_main_thread():
    results = []
    thread = threading.Thread(
        target=lambda: results.append(rgym.same_number("0.5", "\\frac{1}{2}"))
    )
    thread.start()
    thread.join()
    assert results == [True]


@needs_gym
def test_reasoning_gym_specs():
    easy = get_task('rg/chain_sum:easy{"train_size": 80, "max_terms": 2}')
    config = dict(easy.config)
    assert (easy.train_size, config["max_terms"], config["max_digits"]) == (80, 2, 2)
    assert dict(get_task("rg/chain_sum:easy").config) == rgym.EASY["chain_sum"]
    assert get_task("rg/chain_sum").config == () and get_task("rg/chain_sum").train_size == 5000
    operators = get_task('rg/basic_arithmetic:{"operators": ["+"]}').config
    assert operators == (("operators", ("+",)),)  # lists become tuples: the task stays hashable


@pytest.mark.parametrize(
    "spec, message",
    [
        ("rg/no_such_dataset", "unknown reasoning-gym dataset 'no_such_dataset'; known: "),
        ("rg/gsm_symbolic:{bad", "is not JSON"),
        ("rg/gsm_symbolic:[1]", "must be a JSON object"),
        ("rg/word_ladder:easy", "no easy preset for 'word_ladder'"),
    ],
)
@needs_gym
def test_reasoning_gym_spec_errors(spec, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        get_task(spec)


def test_reasoning_gym_missing_says_which_pip_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "reasoning_gym", None)
    with pytest.raises(ImportError, match=re.escape("pip install 'rlae_jax[tasks]'")):
        get_task("gsm_symbolic").load("test", limit=1)
