"""A speed-up measured by alternating the baseline and the other artifact, block by block.

Two artifacts timed once each, minutes apart, give a ratio that says as much about what else the
machine was doing at those two moments as about the artifacts (issue 25: 12.3x in a report, 8.3x to
10.5x when re-timed). Here both are timed in `rounds` rounds of one block each, the order swapped
every round (baseline, other | other, baseline | ...) so that a load that grows or fades during the
measurement favours neither. Each round gives one ratio, baseline block median / other block median
(> 1: the other is faster); the headline is the median of those ratios, reported with its spread.

A figure is **noisy** when the rounds disagree (the largest per-round ratio above NOISY_RATIO_SPREAD
times the smallest), or when the baseline's own block medians do (above NOISY_BLOCK_SPREAD): both
show that something else took the CPU during the measurement, whatever the load average said.

A block is any callable `block(round_index) -> durations` (seconds or milliseconds, lower is
faster): batch-1 calls of a classifier, the per-token time of a decoder, or a fresh process each.
"""

from __future__ import annotations

import statistics
from typing import Callable, Sequence

ROUNDS = 5  # alternated rounds by default (each: one baseline block and one block of the other)
NOISY_RATIO_SPREAD = 1.3  # max / min of the per-round ratios above this: the rounds disagree
NOISY_BLOCK_SPREAD = 1.3  # max / min of the baseline's block medians above this: the baseline moved
MAX_ATTEMPTS = 3  # a noisy alternation is repeated at most this many times in all; the quietest kept

Block = Callable[[int], Sequence[float]]


def split_runs(runs: int, rounds: int = ROUNDS) -> tuple[int, int]:
    """(rounds, runs per block) for about `runs` timed calls of each artifact: the same number of
    timed calls as one plain loop, split into blocks (fewer rounds when there are fewer runs)."""
    rounds = max(1, min(rounds, runs))
    return rounds, -(-runs // rounds)


def alternate(base: Block, other: Block, rounds: int = ROUNDS) -> dict:
    """Time `base` and `other` alternately (`rounds` blocks each, order swapped every round) and
    summarize the per-round ratios (see `summarize`)."""
    base_blocks, other_blocks = [], []
    for r in range(rounds):
        if r % 2 == 0:
            base_blocks.append(list(base(r)))
            other_blocks.append(list(other(r)))
        else:
            other_blocks.append(list(other(r)))
            base_blocks.append(list(base(r)))
    return summarize(base_blocks, other_blocks)


def alternate_until_quiet(base: Block, other: Block, rounds: int = ROUNDS, attempts: int = MAX_ATTEMPTS) -> dict:
    """`alternate`, repeated while noisy (at most `attempts` in all). The quietest attempt is kept,
    judged by its spread alone: choosing by the ratio itself would pick the flattering one."""
    tried = []
    for _ in range(max(1, attempts)):
        tried.append(alternate(base, other, rounds))
        if not tried[-1]["noisy"]:
            break
    best = min(tried, key=lambda a: (a["noisy"], a["ratio_max"] / a["ratio_min"]))
    return best | {"attempts": len(tried), "attempt_kept": tried.index(best) + 1}


def summarize(base_blocks: Sequence[Sequence[float]], other_blocks: Sequence[Sequence[float]]) -> dict:
    """Median of the per-round ratios (baseline block median / other block median) with its
    spread, and whether the rounds (or the baseline's own blocks) varied too much to trust it."""
    base_med = [float(statistics.median(b)) for b in base_blocks]
    other_med = [float(statistics.median(b)) for b in other_blocks]
    ratios = [b / o for b, o in zip(base_med, other_med)]
    ratio_spread = max(ratios) / min(ratios)
    block_spread = max(base_med) / min(base_med)
    reasons = []
    if ratio_spread > NOISY_RATIO_SPREAD:
        reasons.append(f"per-round ratios {min(ratios):.2f}-{max(ratios):.2f} (max/min {ratio_spread:.2f} > {NOISY_RATIO_SPREAD})")
    if block_spread > NOISY_BLOCK_SPREAD:
        reasons.append(f"baseline blocks {min(base_med):.4g}-{max(base_med):.4g} (max/min {block_spread:.2f} > {NOISY_BLOCK_SPREAD})")
    q1, _, q3 = statistics.quantiles(ratios, n=4, method="inclusive") if len(ratios) > 1 else (ratios[0],) * 3
    return {
        "speedup": statistics.median(ratios),
        "rounds": len(ratios),
        "runs_per_block": len(base_blocks[0]),
        "ratio_min": min(ratios),
        "ratio_max": max(ratios),
        "ratio_iqr": [q1, q3],
        "ratios": ratios,
        "baseline_block_medians": base_med,
        "other_block_medians": other_med,
        "baseline_block_spread": block_spread,
        "noisy": bool(reasons),
        "noisy_reason": "; ".join(reasons),
    }


def compact(s: dict, itself: bool = False) -> str:
    """'9.21x (5 alternated rounds, 8.30–10.50)': the median ratio, then the rounds' min–max; a noisy
    figure is printed as such, not as a result: '≈9.21x noisy (5 alternated rounds, 6.10–10.50)'.
    `itself`: the baseline timed against itself, 1x by definition; its rounds' spread is the noise floor."""
    spread = f"{s['rounds']} alternated rounds, {s['ratio_min']:.2f}–{s['ratio_max']:.2f}"
    if itself:
        return f"1.00x (A/A: {spread})" + (" noisy" if s["noisy"] else "")
    return f"≈{s['speedup']:.2f}x noisy ({spread})" if s["noisy"] else f"{s['speedup']:.2f}x ({spread})"
