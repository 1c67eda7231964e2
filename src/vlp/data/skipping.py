"""Skip-and-count: bad input never ends a run, but it is never silent either.

A sample that cannot be used (a corrupt image, an empty caption, a malformed
JSON line, a truncated tar shard, ...) becomes a :class:`Skipped` record that
travels with the batch it would have been part of, so the counts are made in
the main process even when decoding happens in DataLoader workers. The loader
sums them in a :class:`SkipCounter` and logs ``skipped N: reason=count, ...``.
With ``strict: true`` the same problems raise :class:`SampleError` instead,
naming the file and the reason.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass

logger = logging.getLogger("vlp.data")

# The reasons a sample is skipped; every skip uses one of these names.
REASONS = (
    "missing_file",  # the image / region file does not exist
    "empty_file",  # zero bytes
    "not_an_image",  # PIL cannot identify the format (a text file named .jpg, ...)
    "corrupt_image",  # identified, but decoding fails (truncated, damaged data)
    "decompression_bomb",  # width * height above max_image_pixels
    "unsupported_mode",  # an image mode with no RGB conversion
    "empty_caption",
    "overlong_caption",
    "bad_encoding",  # text that is not valid UTF-8
    "malformed_json",  # a JSON line / JSON member that does not parse
    "missing_field",  # a record without a required key (no caption, no image, ...)
    "bad_record",  # a record whose values have the wrong type or shape
    "bad_regions",  # a region-feature file that is unreadable or inconsistent
    "truncated_shard",  # a tar shard that ends in the middle of a member
)


class SampleError(ValueError):
    """A bad sample met in ``strict`` mode; the message names the file and the reason."""

    def __init__(self, source: str, reason: str = "", detail: str = "") -> None:
        self.source = source
        self.reason = reason
        self.detail = detail
        # one-argument form: how DataLoader re-raises a worker's exception in the main process
        message = f"{source}: {reason}" + (f" ({detail})" if detail else "") if reason else source
        super().__init__(message)


@dataclass(frozen=True)
class Skipped:
    """Stands in for a sample that could not be used."""

    reason: str
    source: str
    detail: str = ""

    def error(self) -> SampleError:
        return SampleError(self.source, self.reason, self.detail)


def reject(reason: str, source: str, detail: str = "", strict: bool = False) -> Skipped:
    """The :class:`Skipped` record for a bad sample, or raise it when ``strict``."""
    if reason not in REASONS:
        raise ValueError(f"unknown skip reason {reason!r}; known: {', '.join(REASONS)}")
    skipped = Skipped(reason, str(source), detail)
    if strict:
        raise skipped.error()
    return skipped


class SkipCounter:
    """Counts skipped samples by reason and keeps the first few examples of each."""

    def __init__(self, keep_examples: int = 3) -> None:
        self.counts: Counter[str] = Counter()
        self.examples: dict[str, list[str]] = {}
        self.keep_examples = keep_examples

    def add(self, skipped: Skipped) -> None:
        self.counts[skipped.reason] += 1
        examples = self.examples.setdefault(skipped.reason, [])
        if len(examples) < self.keep_examples:
            examples.append(skipped.source + (f" ({skipped.detail})" if skipped.detail else ""))

    def extend(self, records: list[Skipped]) -> None:
        for record in records:
            self.add(record)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def summary(self) -> str:
        """``skipped N: reason=count, ...`` with the reasons in decreasing count order."""
        parts = ", ".join(
            f"{reason}={count}" for reason, count in sorted(self.counts.items(), key=lambda kv: (-kv[1], kv[0]))
        )
        return f"skipped {self.total}: {parts}" if self.total else "skipped 0"

    def log(self, prefix: str = "") -> None:
        """Log the summary (and one example per reason) when anything was skipped."""
        if not self.total:
            return
        examples = "; ".join(f"{reason}: {items[0]}" for reason, items in sorted(self.examples.items()) if items)
        logger.warning("%s%s (e.g. %s)", prefix, self.summary(), examples)

    def state_dict(self) -> dict[str, int]:
        return dict(self.counts)

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.counts = Counter({str(k): int(v) for k, v in state.items()})
