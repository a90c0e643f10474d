"""Subject splits of DuMeta++: train/validation of a meta-training domain (80/20 in the paper) and
the one-/few-shot split of a meta-test domain (support subjects to fine-tune the head on, the rest
to test on).

A longitudinal series is one person: its scans always land in the same part, so no test scan
shares a person with a support scan. A support set takes the first time point of each of its
people.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .subjects import BrainDataError, BrainDomain, Subject

__all__ = ["FewShotSplit", "few_shot_split", "train_val_split"]


@dataclass(frozen=True)
class FewShotSplit:
    """Subjects of a meta-test domain: ``support`` (fine-tuning), ``val`` (model selection), ``test``."""

    support: list[Subject]
    val: list[Subject]
    test: list[Subject]


def _people(domain: BrainDomain, seed: int) -> list[list[Subject]]:
    """The domain's scans grouped by person (series, else subject), in a seeded random order."""
    groups: dict[str, list[Subject]] = {}
    for subject in domain.subjects:
        groups.setdefault(subject.series or f"subject:{subject.subject_id}", []).append(subject)
    people = [sorted(scans, key=lambda s: (s.time_point or 0, s.subject_id)) for _, scans in sorted(groups.items())]
    order = np.random.default_rng(seed).permutation(len(people))
    return [people[i] for i in order]


def few_shot_split(domain: BrainDomain, shots: int, *, n_val: int = 0, seed: int = 0) -> FewShotSplit:
    """``shots`` support scans (one per person), ``n_val`` people for validation, the rest for test."""
    people = _people(domain, seed)
    if shots < 1 or n_val < 0 or shots + n_val >= len(people):
        raise BrainDataError(
            f"domain {domain.name!r} has {len(people)} people; cannot take {shots} shot(s) and "
            f"{n_val} validation people and still keep one for test"
        )
    return FewShotSplit(
        support=[scans[0] for scans in people[:shots]],
        val=[s for scans in people[shots : shots + n_val] for s in scans],
        test=[s for scans in people[shots + n_val :] for s in scans],
    )


def train_val_split(
    domain: BrainDomain, *, val_fraction: float = 0.2, seed: int = 0
) -> tuple[list[Subject], list[Subject]]:
    """Meta-training scans and validation scans, ``round(val_fraction * people)`` people held out.

    At least one person stays in training; a domain of one person has no validation part.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise BrainDataError(f"val_fraction: expected a value in [0, 1), got {val_fraction}")
    people = _people(domain, seed)
    n_val = min(round(val_fraction * len(people)), len(people) - 1)
    return ([s for scans in people[n_val:] for s in scans], [s for scans in people[:n_val] for s in scans])
