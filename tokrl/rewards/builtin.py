"""Built-in rewards, by name.

Each entry of ``BUILTIN`` is a factory: its keyword arguments are the options a
recipe writes beside the reward's name, and it returns a reward function with the
protocol's signature (``tokrl.rewards.base``). A reward that compares against the
data reads the column named by its ``column`` option; a column value may be a
list of acceptable answers / references.

| name           | level    | value                                                   |
| -------------- | -------- | ------------------------------------------------------- |
| exact_match    | sequence | 1 if the (extracted) completion equals the answer, else 0 |
| numeric_match  | sequence | 1 if the last number in the completion equals the answer |
| math           | sequence | 1 if math-verify finds the answers equal; None if the gold does not parse |
| bleu, chrf     | sequence | sacrebleu sentence BLEU / chrF, scaled to [0, 1]        |
| rouge          | sequence | rouge-score F-measure (or precision/recall), in [0, 1]  |
| sentiment      | sequence | VADER compound score in [-1, 1] (negated for target negative) |
| length         | sequence | 1 − |n − target| / target, floored at 0 (n in chars, words or tokens) |
| format         | sequence | 1 if a regular expression matches the completion, else 0 |
| repetition     | token    | −penalty on each token that completes an n-gram seen before in the completion |
| step_match     | token    | 1 / 0 per step of multi-step arithmetic, right or wrong (``rewards.step_match``) |

A factory with a ``tokenizer`` parameter is given the policy's tokenizer.

The optional packages (math-verify, sacrebleu, rouge-score, vaderSentiment) are
imported when a reward that needs one is built, with a message naming the
package if it is missing.
"""

from __future__ import annotations

import importlib
import math
import re
import threading
from collections.abc import Callable
from typing import Any

from tokrl.rewards.base import SEQUENCE, TOKEN
from tokrl.rewards.step_match import step_match

RewardFn = Callable[..., list]


def _require(module: str, package: str):
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ValueError(f"this reward needs the {package} package: pip install {package} "
                         f"(or pip install 'tokrl[rewards]')") from None


def _answers(value: Any) -> list[str]:
    """A column value as a list of strings (a list holds several acceptable ones)."""
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value]
    return [str(value)]


def _named(fn: RewardFn, name: str, columns: tuple[str, ...] = (), level: str = SEQUENCE) -> RewardFn:
    fn.__name__ = fn.__qualname__ = name
    fn.columns = columns
    fn.level = level
    return fn


def _extractor(pattern: str | None) -> Callable[[str], str | None]:
    """The text to compare: group 1 (or the whole match) of the first match of ``pattern``;
    without a pattern the whole completion. None when the pattern does not match."""
    if pattern is None:
        return lambda text: text
    regex = re.compile(pattern, re.DOTALL)

    def extract(text: str) -> str | None:
        m = regex.search(text)
        if m is None:
            return None
        return m.group(1) if regex.groups else m.group(0)
    return extract


# ---------------------------------------------------------------- matching answers

def _normalize(text: str, ignore_case: bool) -> str:
    text = " ".join(text.split())            # strip, and any run of whitespace is one space
    return text.casefold() if ignore_case else text


def exact_match(column: str = "answer", ignore_case: bool = False, pattern: str | None = None) -> RewardFn:
    """1.0 when the completion (or what ``pattern`` extracts from it) equals the answer in
    ``column`` after stripping and collapsing whitespace (and case folding), else 0.0."""
    extract = _extractor(pattern)

    def reward(completions, **columns):
        out = []
        for text, gold in zip(completions, columns[column]):
            got = extract(text)
            out.append(float(got is not None and any(
                _normalize(got, ignore_case) == _normalize(a, ignore_case) for a in _answers(gold))))
        return out
    return _named(reward, "exact_match", (column,))


NUMBER = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?|[-+]?\.\d+(?:[eE][-+]?\d+)?")
"""a decimal number: 42, -3.5, 1,234,567, .5, 6.02e23 (a trailing full stop is not part of it)"""


def parse_number(text: str) -> float | None:
    """The last number in ``text`` (thousands separators dropped), or None."""
    found = NUMBER.findall(text)
    if not found:
        return None
    return float(found[-1].replace(",", ""))


def numeric_match(column: str = "answer", rel_tol: float = 1e-6, abs_tol: float = 1e-9,
                  pattern: str | None = None) -> RewardFn:
    """1.0 when the last number in the completion (or in what ``pattern`` extracts) is
    within tolerance of the number in ``column``; 0.0 otherwise (no number: 0.0). None
    when the answer itself holds no number: that sample cannot be scored."""
    extract = _extractor(pattern)

    def reward(completions, **columns):
        out: list[float | None] = []
        for text, gold in zip(completions, columns[column]):
            golds = [g for g in (gold if isinstance(gold, (list, tuple)) else [gold])]
            targets = [float(g) if isinstance(g, (int, float)) and not isinstance(g, bool) else parse_number(str(g))
                       for g in golds]
            targets = [t for t in targets if t is not None]
            if not targets:
                out.append(None)
                continue
            got = extract(text)
            value = None if got is None else parse_number(got)
            out.append(float(value is not None and any(math.isclose(value, t, rel_tol=rel_tol, abs_tol=abs_tol)
                                                       for t in targets)))
        return out
    return _named(reward, "numeric_match", (column,))


def _parse_gold(mv, answer: str, timeout: int | None) -> list:
    """math-verify's parse of a gold answer. A bare answer (no $ and no \\boxed, as data
    sets usually store them: \\sqrt{8}, 2*sqrt(2)) is read as inline math first, where
    math-verify's plain parse would miss \\sqrt{8} and read 2*sqrt(2) as 2."""
    if "$" not in answer and "\\boxed" not in answer:
        parsed = mv.parse(f"${answer}$", fallback_mode="no_fallback", parsing_timeout=timeout)
        if parsed:
            return parsed
    return mv.parse(answer, parsing_timeout=timeout)


def math_answer(column: str = "answer", float_rounding: int = 6) -> RewardFn:
    """math-verify: 1.0 when the completion's final answer equals the gold answer in
    ``column`` (LaTeX, \\boxed{}, plain expressions; 0.5 = 1/2 = \\frac{2}{4}), else 0.0.
    None when the gold answer does not parse: that sample cannot be scored."""
    mv = _require("math_verify", "math-verify")

    def reward(completions, **columns):
        # math-verify times out with signal.alarm, which only the main thread may use
        timeout = 5 if threading.current_thread() is threading.main_thread() else None
        out: list[float | None] = []
        for text, gold in zip(completions, columns[column]):
            parsed = [g for a in _answers(gold) if (g := _parse_gold(mv, a, timeout))]
            if not parsed:
                out.append(None)
                continue
            answer = mv.parse(text, parsing_timeout=timeout)
            out.append(float(bool(answer) and any(
                mv.verify(g, answer, float_rounding=float_rounding, timeout_seconds=timeout) for g in parsed)))
        return out
    return _named(reward, "math", (column,))


# ---------------------------------------------------------------- text similarity

def bleu(column: str = "reference", tokenize: str = "13a", lowercase: bool = False) -> RewardFn:
    """sacrebleu sentence BLEU of the completion against the reference(s) in ``column``, / 100."""
    sacrebleu = _require("sacrebleu", "sacrebleu")
    metric = sacrebleu.metrics.BLEU(tokenize=tokenize, lowercase=lowercase, effective_order=True)

    def reward(completions, **columns):
        # sacrebleu's 100 can come out as 100.00000000000004: clip to the scale's end
        return [min(1.0, metric.sentence_score(text, _answers(refs)).score / 100.0)
                for text, refs in zip(completions, columns[column])]
    return _named(reward, "bleu", (column,))


def chrf(column: str = "reference", char_order: int = 6, word_order: int = 0, beta: int = 2) -> RewardFn:
    """sacrebleu sentence chrF (word_order=2: chrF++) against the reference(s) in ``column``, / 100."""
    sacrebleu = _require("sacrebleu", "sacrebleu")
    metric = sacrebleu.metrics.CHRF(char_order=char_order, word_order=word_order, beta=beta)

    def reward(completions, **columns):
        return [min(1.0, metric.sentence_score(text, _answers(refs)).score / 100.0)
                for text, refs in zip(completions, columns[column])]
    return _named(reward, "chrf", (column,))


def rouge(column: str = "reference", variant: str = "rougeL", measure: str = "fmeasure",
          stemmer: bool = True) -> RewardFn:
    """rouge-score's ``variant`` (rouge1, rouge2, rougeL, rougeLsum) between the completion and
    the reference in ``column`` (the best over several); ``measure``: fmeasure, precision, recall."""
    scoring = _require("rouge_score.rouge_scorer", "rouge-score")
    if measure not in ("fmeasure", "precision", "recall"):
        raise ValueError(f"rouge: measure must be fmeasure, precision or recall, got {measure!r}")
    if not re.fullmatch(r"rouge([1-9]|L|Lsum)", str(variant)):
        raise ValueError(f"rouge: unknown variant {variant!r}; use rouge1 ... rouge9, rougeL or rougeLsum")
    scorer = scoring.RougeScorer([variant], use_stemmer=stemmer)

    def reward(completions, **columns):
        return [max(getattr(scorer.score(ref, text)[variant], measure) for ref in _answers(refs))
                for text, refs in zip(completions, columns[column])]
    return _named(reward, "rouge", (column,))


def sentiment(target: str = "positive") -> RewardFn:
    """VADER's compound sentiment of the completion, in [-1, 1]; negated for target negative."""
    vader = _require("vaderSentiment.vaderSentiment", "vaderSentiment")
    if target not in ("positive", "negative"):
        raise ValueError(f"sentiment: target must be positive or negative, got {target!r}")
    analyzer = vader.SentimentIntensityAnalyzer()
    sign = 1.0 if target == "positive" else -1.0

    def reward(completions, **kwargs):
        return [sign * analyzer.polarity_scores(text)["compound"] for text in completions]
    return _named(reward, "sentiment")


# ---------------------------------------------------------------- shape of the text

def length(target: int, unit: str = "chars") -> RewardFn:
    """1 − |n − target| / target, floored at 0: 1.0 at the target length. n counts
    characters, whitespace-separated words, or generated tokens (unit tokens)."""
    if unit not in ("chars", "words", "tokens"):
        raise ValueError(f"length: unit must be chars, words or tokens, got {unit!r}")
    if isinstance(target, bool) or not isinstance(target, int) or target < 1:
        raise ValueError(f"length: target must be a positive integer, got {target!r}")

    def reward(completions, completion_ids, **kwargs):
        sizes = {"chars": lambda i: len(completions[i]), "words": lambda i: len(completions[i].split()),
                 "tokens": lambda i: len(completion_ids[i])}[unit]
        return [max(0.0, 1.0 - abs(sizes(i) - target) / target) for i in range(len(completions))]
    return _named(reward, "length")


FLAGS = {"i": re.IGNORECASE, "m": re.MULTILINE, "s": re.DOTALL, "x": re.VERBOSE}


def format_match(pattern: str, mode: str = "search", flags: str = "s") -> RewardFn:
    """1.0 when the regular expression ``pattern`` matches the completion, else 0.0.
    ``mode``: search (anywhere), match (at the start) or fullmatch (all of it);
    ``flags``: letters of i (ignore case), m (multiline), s (dot matches newline), x."""
    if mode not in ("search", "match", "fullmatch"):
        raise ValueError(f"format: mode must be search, match or fullmatch, got {mode!r}")
    bad = set(flags) - set(FLAGS)
    if bad:
        raise ValueError(f"format: unknown regex flags {''.join(sorted(bad))!r}; use some of imsx")
    try:
        regex = re.compile(pattern, sum((FLAGS[f] for f in set(flags)), 0))
    except re.error as e:
        raise ValueError(f"format: bad regular expression {pattern!r} ({e})") from None
    check = getattr(regex, mode)

    def reward(completions, **kwargs):
        return [float(check(text) is not None) for text in completions]
    return _named(reward, "format")


def repetition(ngram: int = 3, penalty: float = 1.0) -> RewardFn:
    """Token level: −penalty on each token that completes an n-gram of token ids that
    already occurred earlier in the same completion; 0 elsewhere (causal)."""
    if isinstance(ngram, bool) or not isinstance(ngram, int) or ngram < 1:
        raise ValueError(f"repetition: ngram must be a positive integer, got {ngram!r}")

    def reward(completion_ids, **kwargs):
        out = []
        for ids in completion_ids:
            seen: set[tuple[int, ...]] = set()
            row = []
            for t in range(len(ids)):
                gram = tuple(ids[t - ngram + 1: t + 1]) if t + 1 >= ngram else None
                row.append(-float(penalty) if gram in seen else 0.0)
                if gram is not None:
                    seen.add(gram)
            out.append(row)
        return out
    return _named(reward, "repetition", level=TOKEN)


BUILTIN: dict[str, Callable[..., RewardFn]] = {
    "exact_match": exact_match,
    "numeric_match": numeric_match,
    "math": math_answer,
    "bleu": bleu,
    "chrf": chrf,
    "rouge": rouge,
    "sentiment": sentiment,
    "length": length,
    "format": format_match,
    "repetition": repetition,
    "step_match": step_match,
}
