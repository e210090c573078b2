"""Value types of ``gpuwarden/model.py``: label sets, their matching and their spelling."""

from __future__ import annotations

from gpuwarden.model import labels_json, labels_match, make_labels


def test_matchers_are_exact_equalities() -> None:
    labels = make_labels(gpu="0", node="a")
    assert labels_match(labels, None) and labels_match(labels, {})
    assert labels_match(labels, {"gpu": "0", "node": "a"})
    assert not labels_match(labels, {"gpu": "1"})
    assert not labels_match(labels, {"model": ""})  # an absent label is not an empty one


def test_label_sets_have_one_spelling_whatever_their_order() -> None:
    labels = make_labels({"node": "a", "gpu": "0"}, model="m\u00e9")
    assert labels == make_labels(model="m\u00e9", gpu="0", node="a")
    assert labels_json(labels) == '{"gpu":"0","model":"m\u00e9","node":"a"}'
