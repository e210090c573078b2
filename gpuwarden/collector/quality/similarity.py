"""How close a canary answer is to its reference, in [0, 1].

Why a hand-rolled lexical embedding and not a sentence-embedding model by default:
canaries run at temperature 0 with a fixed seed, so a healthy deployment answers with
(nearly) the reference itself, and the failures worth catching -- a bad checkpoint,
a broken quantisation, kernels falling back to lower precision -- show up as surface
damage first: looping, token soup, cut-off answers, the wrong language. A character
n-gram embedding sees all of that, is deterministic across machines and versions
(``zlib.crc32``, not Python's salted ``hash``), costs well under a millisecond per
answer and pulls in nothing. What it does not see is a fluent answer that is
*semantically* wrong while reusing the reference's words ("Paris is not the capital");
a sentence-embedding model (e.g. all-MiniLM-L6-v2) would rank such pairs somewhat
better but needs torch (~1 GB installed), ~100 MB of weights that must ship inside an
installed package (no download at run time on a GPU node), tens of milliseconds per
answer on a CPU, and its scores move when the library or weights are upgraded, which
resets every baseline. :class:`Scorer` is the seam for such a backend; none ships.

The score is ``calibrate(cosine) * penalties``:

* ``cosine``: TF-weighted (sublinear, ``1 + ln tf``) character 3-5-gram counts hashed
  into 2**18 dimensions, plus word bigrams so that a word salad of the reference's
  own words does not look like the reference.
* ``calibrate``: a monotone piecewise-linear map fitted on the labelled pairs in
  ``tests/fixtures/quality/similarity-pairs.jsonl`` so that close rewordings land at
  >= 0.95 and unrelated answers below 0.8; raw lexical cosine of a faithful rewording
  is only ~0.6-0.9, which would otherwise sit on top of the alerting threshold 0.92.
* penalties (each a factor in [0, 1], 1 when the answer looks like its reference):
  repetition (share of repeated word trigrams / character 8-grams beyond the
  reference's own), gibberish (share of letters among non-space characters below the
  reference's), word order (a salad of the reference's own words), length
  (truncated below 0.75x, rambling above 2.5x), script (Latin vs Cyrillic vs CJK ...
  histogram overlap) and language (stop-word vote, for a wrong language in the same
  script).
"""

from __future__ import annotations

import itertools
import math
import re
import unicodedata
import zlib
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

DIM_BITS = 18
DIM_MASK = (1 << DIM_BITS) - 1
NGRAM_SIZES = (3, 4, 5)
BIGRAM_WEIGHT = 0.5  # word-bigram features count half as much as character n-grams

# Calibration knots (raw cosine -> score), fitted on the labelled pairs; see module doc.
CALIBRATION: tuple[tuple[float, float], ...] = (
    (0.0, 0.0), (0.3, 0.25), (0.55, 0.8), (0.72, 0.95), (1.0, 1.0))

_WORD = re.compile(r"\w+", re.UNICODE)

# A handful of very frequent function words per language: enough for a majority vote
# on a sentence or two, which is all a wrong-language check on canary answers needs.
def _words(text: str) -> list[str]:
    return text.split(" ")


_STOPWORDS: dict[str, frozenset[str]] = {
    "en": frozenset(_words("the and is of to in it that with for are on as by this be from")),
    "de": frozenset(_words("der die das und ist nicht ein eine mit auf den zu von im sie es")),
    "fr": frozenset(_words("le la les et est un une des du dans pour que qui sur au avec ce")),
    "es": frozenset(_words("el la los las y es un una de en para que por con se su del")),
    "it": frozenset(_words("il lo la gli le e è un una di che per con non sono del della")),
    "pt": frozenset(_words("o a os as e é um uma de que em para com não do da dos")),
    "nl": frozenset(_words("de het een en is van in dat op te met zijn voor niet")),
}


class Scorer(Protocol):
    """What the canary collector needs: a deterministic score in [0, 1]."""

    def __call__(self, answer: str, reference: str) -> float: ...


def normalize(text: str) -> str:
    """NFKC, case-folded, whitespace collapsed: formatting noise is not a quality change."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def _bucket(feature: str) -> int:
    return zlib.crc32(feature.encode("utf-8")) & DIM_MASK


def embed(text: str) -> dict[int, float]:
    """Sparse, L2-normalised hashed n-gram vector of ``text`` (empty text -> empty)."""
    norm = normalize(text)
    if not norm:
        return {}
    padded = f" {norm} "
    counts: Counter[int] = Counter()
    for n in NGRAM_SIZES:
        for i in range(len(padded) - n + 1):
            counts[_bucket(padded[i:i + n])] += 1
    weights: dict[int, float] = {k: 1.0 + math.log(c) for k, c in counts.items()}
    words = _WORD.findall(norm)
    bigrams: Counter[int] = Counter(
        _bucket(f"\x01{a}\x02{b}") for a, b in itertools.pairwise(words))
    for k, c in bigrams.items():
        weights[k] = weights.get(k, 0.0) + BIGRAM_WEIGHT * (1.0 + math.log(c))
    length = math.sqrt(sum(w * w for w in weights.values()))
    return {k: w / length for k, w in weights.items()}


def cosine(a: Mapping[int, float], b: Mapping[int, float]) -> float:
    if len(a) > len(b):
        a, b = b, a
    return max(0.0, min(1.0, sum(w * b.get(k, 0.0) for k, w in a.items())))


def calibrate(raw: float) -> float:
    """Monotone piecewise-linear map of a raw cosine onto the score scale."""
    for (x0, y0), (x1, y1) in itertools.pairwise(CALIBRATION):
        if raw <= x1:
            return y0 + (y1 - y0) * (raw - x0) / (x1 - x0)
    return 1.0


# --- degenerate-output features ----------------------------------------------------


def repetition_ratio(text: str) -> float:
    """Share of repeated units: word trigrams for text with words, else character 8-grams.

    0 for text without repeats, approaching 1 for a loop ("the the the ...").
    """
    norm = normalize(text)
    words = _WORD.findall(norm)
    if len(words) >= 8:
        units = [tuple(words[i:i + 3]) for i in range(len(words) - 2)]
        return 1.0 - len(set(units)) / len(units)
    compact = norm.replace(" ", "")
    if len(compact) >= 24:
        grams = [compact[i:i + 8] for i in range(len(compact) - 7)]
        return 1.0 - len(set(grams)) / len(grams)
    return 0.0


def word_order(answer: str, reference: str) -> float:
    """Share of shared words that also keep their neighbour, relative to a rewording's.

    A word salad of the reference's own words shares nearly every word but almost no
    word pair; a rewording keeps most pairs. 1.0 when there is too little overlap to
    judge (an unrelated answer is the cosine's business, not this factor's).
    """
    wa, wr = _WORD.findall(normalize(answer)), _WORD.findall(normalize(reference))
    if len(wa) < 4 or len(wr) < 4:
        return 1.0
    shared_words = len(set(wa) & set(wr)) / len(set(wr))
    if shared_words < 0.3:
        return 1.0
    ba = set(itertools.pairwise(wa))
    br = set(itertools.pairwise(wr))
    shared_pairs = len(ba & br) / len(br)
    return min(1.0, shared_pairs / shared_words / 0.4)


def letter_ratio(text: str) -> float:
    """Share of letters among non-space characters (digits count half: "144" is fine)."""
    chars = [c for c in text if not c.isspace()]
    if not chars:
        return 0.0
    score = sum(1.0 if c.isalpha() else 0.5 if c.isdigit() else 0.0 for c in chars)
    return score / len(chars)


def script_histogram(text: str) -> dict[str, float]:
    """Share of letters per Unicode script (the first word of the character's name)."""
    counts: Counter[str] = Counter()
    for c in text:
        if c.isalpha():
            name = unicodedata.name(c, "UNKNOWN")
            script = name.split(" ", 1)[0]
            if script in ("HIRAGANA", "KATAKANA", "CJK"):
                script = "CJK"
            counts[script] += 1
    total = sum(counts.values())
    return {k: v / total for k, v in counts.items()} if total else {}


def language(text: str) -> str | None:
    """The stop-word vote's winner, or None when too few stop words to tell."""
    words = _WORD.findall(normalize(text))
    votes = {lang: sum(w in stops for w in words) for lang, stops in _STOPWORDS.items()}
    best = max(votes, key=lambda k: votes[k])
    ranked = sorted(votes.values(), reverse=True)
    if ranked[0] < 3 or ranked[0] < 1.5 * ranked[1]:
        return None
    return best


@dataclass(frozen=True, slots=True)
class Breakdown:
    """Every factor of a score, for tests and for tuning (never the texts themselves)."""

    raw_cosine: float
    calibrated: float
    repetition: float
    gibberish: float
    order: float
    length: float
    script: float
    language: float

    @property
    def score(self) -> float:
        value = (self.calibrated * self.repetition * self.gibberish * self.order * self.length
                 * self.script * self.language)
        return max(0.0, min(1.0, value))


def breakdown(answer: str, reference: str) -> Breakdown:
    """Score ``answer`` against ``reference`` and say which factor cost what."""
    na, nr = normalize(answer), normalize(reference)
    if na == nr or not na or not nr:  # the verbatim answer is exactly 1.0, not 1 - 1e-16
        same = 1.0 if na == nr else 0.0
        return Breakdown(same, same, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0)
    raw = cosine(embed(answer), embed(reference))
    # Repetition beyond what the reference itself has (a list answer repeats a bit).
    excess = repetition_ratio(answer) - repetition_ratio(reference) - 0.05
    repetition = 1.0 - min(1.0, max(0.0, 1.5 * excess))
    # Gibberish: letters replaced by symbols, control tokens, mojibake.
    deficit = letter_ratio(reference) - letter_ratio(answer) - 0.08
    gibberish = 1.0 - min(1.0, max(0.0, 2.0 * deficit))
    ratio = len(normalize(answer)) / len(normalize(reference))
    if ratio < 0.75:
        length = ratio / 0.75
    elif ratio > 2.5:
        length = math.sqrt(2.5 / ratio)
    else:
        length = 1.0
    ha, hr = script_histogram(answer), script_histogram(reference)
    script = sum(min(v, ha.get(k, 0.0)) for k, v in hr.items()) if ha and hr else 1.0
    la, lr = language(answer), language(reference)
    lang = 0.5 if la is not None and lr is not None and la != lr else 1.0
    order = word_order(answer, reference)
    return Breakdown(raw, calibrate(raw), repetition, gibberish, order, length, script, lang)


def similarity(answer: str, reference: str) -> float:
    """The default :class:`Scorer`: see the module docstring."""
    return breakdown(answer, reference).score
