"""Host-side reward functions: pure Python, 1.0 for a correct completion and 0.0 otherwise.

Rules (each extractor returns None when it finds nothing, and None scores 0):

Answer spans, `answer_spans`: where a completion states its answer, in priority order:
  1. the text after the last `####` (to the end of its line); then
  2. the inside of the last `\\boxed{...}` (nested braces balanced); then
  3. the inside of the last `<answer>...</answer>` (reasoning-gym's own format); then
  4. the text after the last answer phrase ("answer is", "answer:", "final answer", ...) to the end
     of its line, or the next non-blank line when the phrase ends its line.

Answer text (reasoning-gym tasks), `extract_answer`: the first non-empty span, else the last number
in the text, else (no marker at all and no number: a bare word answer) the first non-blank line,
else None; then trimmed of spaces, `**`/`*` emphasis, one pair of surrounding quotes or
`$...$`, and a trailing sentence mark (`.`, `!`, `;`, `,`): "The answer is **-7**." gives "-7".

Final number (GSM8K), `extract_final_number`: the first number in the first span that has one; else
  (no marker, or no number where one points) the last number in the text.
  A number may carry a sign (`-`, `−`), a `$`, thousands commas and decimals: "-$1,234.50" is
  -1234.50. Units and trailing words are ignored ("42 apples"). Values are compared exactly as
  decimals, so "3.0" == "3" and "1,000" == "1000". Digits after a letter ("H2O", "x2") are not
  numbers, "10-3" reads as 10 and 3 (not -3), and "1,2,3" reads as 1, 2 and 3.

Choice letter (ARC, MMLU, PIQA), `extract_choice`: letters run A, B, ... over the choices; a letter
outside that range never counts.
  1. after the last answer phrase ("answer is", "answer:", "answer is option", ...) whose next token
     is a letter: "(b)" / "[b]" in any case, an upper-case letter not followed by another letter
     ("The answer is B because"), or a lower-case letter followed by punctuation, a newline or the
     end ("Answer: b", "answer is a." — but not "the answer is a bit unclear"); else
  2. a letter opening the completion that is bracketed ("(C) because ...") or followed by
     punctuation or the end ("B.", "B)", "c:", "D") — so the article in "A cat ..." is no answer;
     else
  3. the last bracketed letter anywhere ("I pick (C)"); else
  4. choice text: the choice whose normalised text equals the normalised completion, else the only
     choice whose normalised text occurs (as whole words) in the completion.

Normalised exact match (TriviaQA, Natural Questions), `exact_match_reward`: SQuAD-style
normalisation (`normalize_answer`: lower-case, drop punctuation, drop the articles a/an/the,
collapse whitespace). The predicted span is the text after the last "answer is"/"answer:" (else the
whole completion), first non-empty line; it matches when it, or its first sentence, equals any
alias after normalisation. An empty prediction never matches.
"""

from __future__ import annotations

import re
import string
import unicodedata
from decimal import Decimal
from typing import Sequence

NUMBER = re.compile(
    r"(?<![\w.])(?P<sign>[-−]?)\$?"
    r"(?P<digits>\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)(?!\d)"
)
ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
NUMBER_ANSWER_PHRASE = re.compile(
    r"\b(?:final answer|answer\s*(?:is|would be|should be|will be|:|=))\s*[:=]?", re.IGNORECASE
)
CHOICE_ANSWER = re.compile(
    r"\banswer(?:\s+(?:is|would be|should be|will be))?[\s*_:=\-]*(?:(?:option|choice)\s*)?"
    r"[*_]*(?:[(\[](?P<bracketed>[A-Za-z])[)\]]"
    r"|(?P<bare>[A-Za-z])(?![A-Za-z0-9])(?P<after>[*_]*.?))",
    re.IGNORECASE | re.DOTALL,
)
LEADING_LETTER = re.compile(
    r"\s*[*_]*(?:[(\[](?P<bracketed>[A-Za-z])[)\]]|(?P<bare>[A-Za-z])(?=[*_]*(?:[.):,;]|\s*$)))"
)
BRACKETED_LETTER = re.compile(r"[(\[]([A-Za-z])[)\]]")
SHORT_ANSWER_PHRASE = re.compile(r"\banswer\s*(?:is|:)", re.IGNORECASE)
SENTENCE_END = re.compile(r"[.!?](?:\s|$)")
ARTICLES = re.compile(r"\b(?:a|an|the)\b")
PUNCTUATION = frozenset(string.punctuation)


# ---------------------------------------------------------------- final number (GSM8K)
def parse_number(text: str) -> Decimal | None:
    """The first number in `text` as a Decimal ("-$1,234.50" → -1234.50), or None."""
    match = NUMBER.search(text)
    return _to_decimal(match) if match else None


def _to_decimal(match: re.Match) -> Decimal:
    value = Decimal(match["digits"].replace(",", ""))
    return -value if match["sign"] else value


def answer_spans(completion: str) -> list[str]:
    """Where the completion states its answer, highest priority first (rules in the module
    docstring); each span stripped, possibly empty."""
    spans = []
    if "####" in completion:
        spans.append(_line_after(completion.rsplit("####", 1)[1]))
    if (boxed := _last_boxed(completion)) is not None:
        spans.append(boxed.strip())
    if tags := ANSWER_TAG.findall(completion):
        spans.append(tags[-1].strip())
    if phrases := list(NUMBER_ANSWER_PHRASE.finditer(completion)):
        spans.append(_line_after(completion[phrases[-1].end() :]))
    return spans


def _line_after(text: str) -> str:
    """The rest of the marker's line, or the next non-blank line when the marker ends its line."""
    return text.lstrip().split("\n", 1)[0].strip()


def _last_boxed(text: str) -> str | None:
    """The inside of the last `\\boxed{...}`, braces balanced; None when absent (or unclosed)."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth, begin = 0, start + len("\\boxed{")
    for index in range(begin, len(text)):
        depth += {"{": 1, "}": -1}.get(text[index], 0)
        if depth < 0:
            return text[begin:index]
    return None


def extract_answer(completion: str) -> str | None:
    """The completion's answer text (rules in the module docstring), or None."""
    spans = answer_spans(completion)
    span = next((span for span in spans if span), None)
    if span is None:
        numbers = list(NUMBER.finditer(completion))
        span = numbers[-1].group(0) if numbers else "" if spans else _line_after(completion)
    return _trim(span) or None


def _trim(span: str) -> str:
    span = span.strip().strip("*").strip()
    span = re.sub(r"[.!;,]+$", "", span).strip().strip("*").strip()
    for left, right in ('""', "''", "“”", "$$"):
        if len(span) > 1 and span[0] == left and span[-1] == right:
            return span[1:-1].strip()
    return span


def extract_final_number(completion: str) -> Decimal | None:
    """The completion's final answer as a Decimal (rules in the module docstring), or None."""
    for span in answer_spans(completion):
        if (value := parse_number(span)) is not None:
            return value
    numbers = list(NUMBER.finditer(completion))
    return _to_decimal(numbers[-1]) if numbers else None


def number_reward(completion: str, answer: str) -> float:
    """1.0 when the completion's final number equals the one in `answer` (exact decimals)."""
    predicted, target = extract_final_number(completion), parse_number(answer)
    return float(predicted is not None and target is not None and predicted == target)


# ---------------------------------------------------------------- choice letter (ARC, MMLU, PIQA)
def choice_letters(num_choices: int) -> str:
    """ "ABCD..." for `num_choices` choices (at most 26)."""
    if not 1 <= num_choices <= 26:
        raise ValueError(f"need 1..26 choices, got {num_choices}")
    return string.ascii_uppercase[:num_choices]


def extract_choice(completion: str, choices: Sequence[str]) -> str | None:
    """The chosen letter ("A", "B", ...) under the rules in the module docstring, or None."""
    letters = choice_letters(len(choices))
    for match in reversed(list(CHOICE_ANSWER.finditer(completion))):
        letter = match["bracketed"] or match["bare"]
        accepted = (
            match["bracketed"] or letter.isupper() or match["after"].strip("*_") in ".):,;!?\n"
        )
        if accepted and letter.upper() in letters:
            return letter.upper()
    leading = LEADING_LETTER.match(completion)
    if leading and (leading["bracketed"] or leading["bare"]).upper() in letters:
        return (leading["bracketed"] or leading["bare"]).upper()
    for letter in reversed(BRACKETED_LETTER.findall(completion)):
        if letter.upper() in letters:
            return letter.upper()
    return _choice_by_text(completion, choices, letters)


def _choice_by_text(completion: str, choices: Sequence[str], letters: str) -> str | None:
    said = normalize_answer(completion)
    if not said:
        return None
    normalised = [normalize_answer(choice) for choice in choices]
    for letter, text in zip(letters, normalised):
        if text and text == said:
            return letter
    contained = [
        letter for letter, text in zip(letters, normalised) if text and f" {text} " in f" {said} "
    ]
    return contained[0] if len(contained) == 1 else None


def choice_reward(completion: str, answer: str, choices: Sequence[str]) -> float:
    """1.0 when the extracted letter is `answer` (a letter "A".."Z")."""
    return float(extract_choice(completion, choices) == answer)


# ---------------------------------------------------------------- exact match (TriviaQA, NQ)
def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lower-case, delete punctuation (ASCII and Unicode), articles, extra
    spaces."""
    text = "".join(
        ch
        for ch in text.lower()
        if ch not in PUNCTUATION and not unicodedata.category(ch).startswith("P")
    )
    return " ".join(ARTICLES.sub(" ", text).split())


def extract_short_answers(completion: str) -> tuple[str, ...]:
    """Candidate answer spans: the answer line (after the last "answer is"/"answer:") and its
    first sentence."""
    phrases = list(SHORT_ANSWER_PHRASE.finditer(completion))
    text = completion[phrases[-1].end() :] if phrases else completion
    line = next((line.strip() for line in text.splitlines() if line.strip()), "")
    first_sentence = SENTENCE_END.split(line, maxsplit=1)[0].strip()
    return (line, first_sentence) if first_sentence != line else (line,)


def exact_match_reward(completion: str, aliases: Sequence[str]) -> float:
    """1.0 when a candidate span of the completion equals any alias after `normalize_answer`."""
    targets = {normalize_answer(alias) for alias in aliases} - {""}
    spans = extract_short_answers(completion)
    return float(any(normalize_answer(span) in targets for span in spans))
