"""Weighted mixtures of sources from YAML: exact quotas, repetition / subsets, determinism, streaming."""
from __future__ import annotations

from collections import Counter

import pytest
import yaml

from data_pipelines.mixture import MixtureSpec, SourceSpec, load_mixture, quotas
from data_pipelines.records import SkipStats
from tests._data_helpers import llava, write_json, write_lines


@pytest.fixture()
def sources(tmp_path):
    a = write_json(str(tmp_path / "a.json"),
                   [llava(f"a{i}", None, [("human", "q"), ("gpt", f"a{i}")]) for i in range(6)])
    b = write_lines(str(tmp_path / "b.jsonl"), [{"id": f"b{i}", "messages": [
        {"role": "user", "content": "q"}, {"role": "assistant", "content": f"b{i}"}]} for i in range(4)] + ["{bad"])
    return a, b


def test_quotas_are_exact():
    assert quotas(20, [3, 1]) == [15, 5]
    assert quotas(10, [1, 1, 1]) == [4, 3, 3]
    assert sum(quotas(997, [0.2, 0.5, 0.3])) == 997


def test_mixture_counts_follow_weights(sources):
    a, b = sources
    spec = MixtureSpec([SourceSpec(a, format="llava", weight=3), SourceSpec(b, weight=1)], seed=0, num_samples=20)
    stats = SkipStats()
    mix = load_mixture(spec, stats=stats)
    assert stats.as_dict() == {"total": 1, "by_reason": {"malformed_json": 1}}
    ids = [r.id for r in mix]
    per = Counter(i[0] for i in ids)
    assert per == {"a": 15, "b": 5}
    # a (6 records, quota 15): two full passes + 3 more; b (4, quota 5): one pass + 1
    ca = Counter(i for i in ids if i[0] == "a")
    assert set(ca) == {f"a{i}" for i in range(6)} and sorted(ca.values()) == [2, 2, 2, 3, 3, 3]
    assert sorted(Counter(i for i in ids if i[0] == "b").values()) == [1, 1, 1, 2]
    assert [r.id for r in load_mixture(spec)] == ids  # deterministic
    other = MixtureSpec(spec.sources, seed=1, num_samples=20)
    assert [r.id for r in load_mixture(other)] != ids
    # interleaved, not concatenated
    labels = [i[0] for i in ids]
    assert labels != sorted(labels) and labels != sorted(labels, reverse=True)


def test_default_size_max_samples_and_subset(sources):
    a, b = sources
    mix = load_mixture(MixtureSpec([SourceSpec(a), SourceSpec(b, max_samples=2)]))
    assert sorted(r.id for r in mix) == sorted([f"a{i}" for i in range(6)] + ["b0", "b1"])
    sub = load_mixture(MixtureSpec([SourceSpec(a, weight=1), SourceSpec(b, weight=1)], num_samples=4))
    assert len({r.id for r in sub}) == 4 and Counter(r.id[0] for r in sub) == {"a": 2, "b": 2}
    # without weights num_samples scales both sources by size: 6:4 of 5 -> 3:2
    assert Counter(r.id[0] for r in load_mixture(MixtureSpec([SourceSpec(a), SourceSpec(b)], num_samples=5))) \
        == {"a": 3, "b": 2}
    with pytest.raises(ValueError, match="give every source a weight or none"):
        MixtureSpec([SourceSpec(a, weight=2), SourceSpec(b)])


def test_yaml_spec_relative_paths_and_errors(sources, tmp_path):
    spec_path = tmp_path / "mix.yaml"
    spec_path.write_text(yaml.safe_dump({"seed": 4, "num_samples": 8, "sources": [
        {"path": "a.json", "format": "llava", "weight": 1}, {"path": "b.jsonl", "weight": 1, "max_samples": 3}]}))
    spec = MixtureSpec.from_yaml(str(spec_path))
    assert spec.sources[0].path == str(tmp_path / "a.json") and spec.seed == 4
    assert Counter(r.id[0] for r in load_mixture(spec)) == {"a": 4, "b": 4}
    spec_path.write_text(yaml.safe_dump({"sources": [{"path": "a.json", "wieght": 2}]}))
    with pytest.raises(ValueError, match="mix.yaml: sources\\[0\\]: unknown field\\(s\\) wieght"):
        MixtureSpec.from_yaml(str(spec_path))
    spec_path.write_text(yaml.safe_dump({"sources": [{"path": "a.json", "weight": -1}]}))
    with pytest.raises(ValueError, match="weight must be a positive number"):
        MixtureSpec.from_yaml(str(spec_path))


def test_streaming_interleave_is_seeded_and_stops_at_first_exhausted(sources):
    a, b = sources
    spec = MixtureSpec([SourceSpec(a, weight=1), SourceSpec(b, weight=1)], seed=3)
    stats = SkipStats()
    ids = [r.id for r in spec.stream(stats)]
    assert ids == [r.id for r in spec.stream(SkipStats())]
    a_ids, b_ids = [i for i in ids if i[0] == "a"], [i for i in ids if i[0] == "b"]
    assert a_ids == [f"a{i}" for i in range(len(a_ids))] and b_ids == [f"b{i}" for i in range(len(b_ids))]
    assert len(a_ids) == 6 or len(b_ids) == 4  # one source ran out, and that ended the stream
