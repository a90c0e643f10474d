"""Data streams are deterministic and resumable; the Betty version guard explains the fix."""

import importlib
from importlib import metadata

import pytest
import torch

from engines import DataStream
from engines.data import mix_seed


class Seeded(torch.utils.data.Dataset):
    def __len__(self):
        return 10

    def sample(self, index, seed):
        return torch.tensor(
            [index, torch.randint(0, 10**6, (1,), generator=torch.Generator().manual_seed(seed)).item()]
        )


def take(stream, n):
    return [next(stream) for _ in range(n)]


def test_batches_depend_only_on_seed_and_position():
    a, b = DataStream(Seeded(), 3, seed=5), DataStream(Seeded(), 3, seed=5)
    assert all(torch.equal(x, y) for x, y in zip(take(a, 7), take(b, 7)))
    c = DataStream(Seeded(), 3, seed=6)
    assert not all(torch.equal(x, y) for x, y in zip(take(DataStream(Seeded(), 3, seed=5), 3), take(c, 3)))


def test_every_epoch_is_a_permutation_and_epochs_differ():
    s = DataStream(Seeded(), 5, seed=1)
    first, second = torch.cat(take(s, 2))[:, 0], torch.cat(take(s, 2))[:, 0]
    assert sorted(first.tolist()) == list(range(10)) == sorted(second.tolist())
    assert first.tolist() != second.tolist()


def test_state_dict_resumes_the_exact_stream():
    s = DataStream(Seeded(), 3, seed=2)
    take(s, 4)
    state = s.state_dict()
    rest = take(s, 6)
    t = DataStream(Seeded(), 3, seed=2)
    t.load_state_dict(state)
    assert all(torch.equal(x, y) for x, y in zip(rest, take(t, 6)))


def test_item_randomness_does_not_depend_on_workers():
    single = take(DataStream(Seeded(), 2, seed=3, num_workers=0), 5)
    multi = take(DataStream(Seeded(), 2, seed=3, num_workers=2), 5)
    assert all(torch.equal(x, y) for x, y in zip(single, multi))


def test_errors_for_unusable_streams():
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        DataStream(Seeded(), 0)
    with pytest.raises(ValueError, match="give no full batch of 11"):
        next(DataStream(Seeded(), 11))


def test_mix_seed_is_stable_and_spreads():
    assert mix_seed(1, 2) == mix_seed(1, 2) and mix_seed(1, 2) != mix_seed(2, 1)
    assert 0 <= mix_seed(123) < 2**63


def test_wrong_betty_version_is_refused_with_the_install_command(monkeypatch):
    import engines._betty as guard

    real = metadata.version
    monkeypatch.setattr(metadata, "version", lambda name: "0.1.1" if name == "betty-ml" else real(name))
    with pytest.raises(ImportError, match=r"(?s)found betty-ml 0\.1\.1.*--ignore-requires-python betty-ml==0\.2\.1"):
        importlib.reload(guard)
