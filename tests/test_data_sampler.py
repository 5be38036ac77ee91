"""LengthGroupedSampler: modality grouping, length sorting, determinism, ranks, and exact resume."""
from __future__ import annotations

import random
from collections import Counter

import pytest
from torch.utils.data import DataLoader

from data_pipelines.sampler import LengthGroupedSampler

N = 103
_rng = random.Random(0)
LENGTHS = [_rng.randint(5, 500) for _ in range(N)]
MODALITIES = ["image" if _rng.random() < 0.6 else "text" for _ in range(N)]


def _batches(indices, b):
    return [indices[i:i + b] for i in range(0, len(indices), b)]


def test_batches_hold_one_modality_and_are_length_sorted():
    s = LengthGroupedSampler(LENGTHS, MODALITIES, batch_size=4, seed=3)
    order = list(s)
    assert sorted(order) == list(range(N))  # one epoch is a permutation
    batches = _batches(order, 4)
    n_img = MODALITIES.count("image")
    leftovers = n_img % 4 + (N - n_img) % 4
    tail = -(-leftovers // 4)
    mixed = [k for k, b in enumerate(batches) if len({MODALITIES[i] for i in b}) > 1]
    assert all(k >= len(batches) - tail for k in mixed)  # only the leftover batch(es) at the end mix
    for b in batches:
        assert [LENGTHS[i] for i in b] == sorted((LENGTHS[i] for i in b), reverse=True)
    flat = LengthGroupedSampler(LENGTHS, MODALITIES, batch_size=4, seed=3, group_by_modality=False)
    assert any(len({MODALITIES[i] for i in b}) > 1 for b in _batches(list(flat), 4)[:-1])


def test_deterministic_from_seed_and_epoch():
    a = LengthGroupedSampler(LENGTHS, MODALITIES, batch_size=4, seed=1)
    b = LengthGroupedSampler(LENGTHS, MODALITIES, batch_size=4, seed=1)
    assert list(a) == list(b)
    e0 = list(a)
    a.set_epoch(1)
    b.set_epoch(1)
    assert list(a) == list(b) != e0
    assert list(LengthGroupedSampler(LENGTHS, MODALITIES, batch_size=4, seed=2)) != e0


def test_ranks_split_the_epoch_evenly_and_in_step():
    W, B = 3, 4
    ranks = [LengthGroupedSampler(LENGTHS, MODALITIES, batch_size=B, world_size=W, rank=r, seed=5) for r in range(W)]
    seqs = [list(s) for s in ranks]
    assert [len(x) for x in seqs] == [len(s) for s in ranks] == [35, 35, 35]  # ceil(103 / 3)
    counts = Counter(i for x in seqs for i in x)
    assert set(counts) == set(range(N)) and sum(counts.values()) == N + 2  # padded by 2 repeats
    assert sum(1 for c in counts.values() if c == 2) == 2
    # step k of every rank comes from the same megabatch: the same modality on all ranks
    n_img = MODALITIES.count("image")
    full_megabatches = n_img // (W * B) + (N - n_img) // (W * B)
    assert full_megabatches >= 5
    for k in range(full_megabatches):
        mods = {MODALITIES[i] for x in seqs for i in x[k * B:(k + 1) * B]}
        assert len(mods) == 1
    dropped = [LengthGroupedSampler(LENGTHS, MODALITIES, batch_size=B, world_size=W, rank=r, drop_last=True)
               for r in range(W)]
    assert sorted(i for s in dropped for i in s) == sorted(set(i for s in dropped for i in s))  # no repeats
    assert [len(list(s)) for s in dropped] == [34, 34, 34]


def test_resume_mid_epoch_yields_exactly_the_rest():
    ds = list(range(N))
    s = LengthGroupedSampler(LENGTHS, MODALITIES, batch_size=4, seed=7)
    s.set_epoch(2)
    full = list(s.rank_indices())
    loader = DataLoader(ds, batch_size=4, sampler=s, num_workers=0)
    seen = []
    for k, batch in enumerate(loader):
        seen += batch.tolist()
        if k == 4:
            break
    state = s.state_dict()
    assert state["epoch"] == 2 and state["position"] == 20 and seen == full[:20]
    resumed = LengthGroupedSampler(LENGTHS, MODALITIES, batch_size=4, seed=7)
    resumed.load_state_dict(state)
    rest = [i for b in DataLoader(ds, batch_size=4, sampler=resumed) for i in b.tolist()]
    assert seen + rest == full
    # the next epoch starts from the top
    resumed.set_epoch(3)
    assert list(resumed) == resumed.rank_indices(3)


def test_resume_with_prefetching_workers_uses_consumed_count():
    ds = list(range(N))
    s = LengthGroupedSampler(LENGTHS, MODALITIES, batch_size=4, seed=7)
    full = s.rank_indices()
    it = iter(DataLoader(ds, batch_size=4, sampler=s, num_workers=2))
    seen = [i for _ in range(3) for i in next(it).tolist()]
    assert s.position > 12  # the workers ran ahead: the sampler's own count overshoots
    state = s.state_dict(consumed=12)
    del it
    resumed = LengthGroupedSampler(LENGTHS, MODALITIES, batch_size=4, seed=7)
    resumed.load_state_dict(state)
    assert seen + list(resumed) == full


def test_state_mismatch_is_refused():
    s = LengthGroupedSampler(LENGTHS, MODALITIES, batch_size=4)
    other = LengthGroupedSampler(LENGTHS[:-1], MODALITIES[:-1], batch_size=4)
    with pytest.raises(ValueError, match="num_samples=103 but this sampler has 102"):
        other.load_state_dict(s.state_dict())
    with pytest.raises(ValueError, match="consumed=500 is outside"):
        s.state_dict(consumed=500)
