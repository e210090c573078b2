"""The memo's template keeps a skipped family's name once, not a prefix per line (and a
value slice per prefix length, not per line): every change to a skipped family's lines
still reads exactly as a full parse does.

A line of a family ``only=`` skips fits the template when it starts with the family's
name (``promtext_memo``'s docstring says why that is what ``parse`` looks at); these
payloads change everything after that, or the name itself, and compare the memo's
answer with ``parse`` and the mapping, bit for bit (``Reference.check``).
"""

from __future__ import annotations

import random

from gpuwarden.collector.promtext import parse
from gpuwarden.collector.promtext_memo import learn
from tests.collector.test_scrape_memo import VLLM, Reference, with_values

ONLY = Reference("vllm").only


def _skipped_lines(text: str) -> list[int]:
    """Indices of the lines ``parse`` skips unread (families of ``only=`` none reads)."""
    exp = parse(text, only=ONLY)
    assert exp.skipped_lines > 100  # the recorded payload is mostly such histograms
    lines = text.split("\n")
    families = [ln.split(" ")[2] for ln in lines if ln.startswith("# TYPE ")]
    unread = tuple(f for f in families if f not in exp.types)
    return [i for i, ln in enumerate(lines) if ln.startswith(unread)]


def _mutated(text: str, rng: random.Random) -> str:
    lines = text.split("\n")
    i = rng.choice(_skipped_lines(text))
    what = rng.randrange(6)
    line = lines[i]
    if what == 0:  # a timestamp after the value
        lines[i] = line + " 1700000000000"
    elif what == 1:  # another label value
        lines[i] = line.replace('model_name="tiny-llama"', 'model_name="other"')
    elif what == 2:  # garbage after the family's name
        lines[i] = line.split("{", 1)[0] + "{{{ not a sample"
    elif what == 3:  # a sample of another family in the middle of the section
        lines[i] = 'vllm:num_requests_running{engine="0",model_name="m"} 3'
    elif what == 4:  # a blank line
        lines[i] = ""
    else:  # a comment
        lines[i] = "# " + line
    return "\n".join(lines)


def test_changes_inside_skipped_families_read_as_a_full_parse() -> None:
    rng = random.Random(1414)
    ref = Reference("vllm")
    for _ in range(60):
        layout = _mutated(VLLM, rng)
        for _ in range(rng.randrange(1, 4)):  # the changed layout stays a few scrapes
            ref.check(with_values(layout, rng, ["0", "1", "2.5", "-0.0"]).encode())
            ref.check(with_values(VLLM, rng, ["0", "3", "7.5"]).encode())
    assert ref.memo.hits > 60


def test_a_skipped_family_costs_its_name_once() -> None:
    exp = parse(VLLM, only=ONLY)
    template = learn(VLLM, exp, ONLY)
    assert template is not None
    free = template.prefixes[len(template.value_slices):]
    assert len(free) == exp.skipped_lines
    # One string object per family, shared by all of its lines.
    assert len({id(p) for p in free}) == len(set(free)) < len(free) // 2


def test_prefixes_of_one_length_share_their_value_slice() -> None:
    """A slice object per sample line was 56 bytes of a template's ~1 MiB per server at
    280 KB payloads; the slices are shared by length, and still cut each line's value."""
    exp = parse(VLLM, only=ONLY)
    template = learn(VLLM, exp, ONLY)
    assert template is not None
    slices = template.value_slices
    assert len({id(s) for s in slices}) == len({s.start for s in slices}) < len(slices) // 2
    assert all(s.start == len(p) for s, p in zip(slices, template.prefixes, strict=False))
