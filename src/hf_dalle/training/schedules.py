"""Schedules of the dVAE's relaxation: the gumbel-softmax temperature (annealed 1 -> 1/16) and the KL weight
(raised 0 -> 6.6), both cosine in the paper (appendix A.2)."""

import math


SCHEDULE_KINDS = ("cosine", "linear", "exponential")


def annealed_value(step: int, start: float, end: float, num_steps: int, kind: str = "cosine") -> float:
    """
    The value at optimizer step `step` of a schedule that moves from `start` (step 0) to `end` (step `num_steps`) and
    stays at `end` afterwards. `kind`: `"cosine"` (half a cosine period), `"linear"`, or `"exponential"` (geometric
    interpolation; `start` and `end` must be positive).
    """
    if kind not in SCHEDULE_KINDS:
        raise ValueError(f"Unknown schedule {kind!r}; expected one of {SCHEDULE_KINDS}.")
    if kind == "exponential" and (start <= 0 or end <= 0):
        raise ValueError(f"An exponential schedule needs positive end points, got start={start}, end={end}.")
    if num_steps <= 0 or step >= num_steps:
        return end
    progress = max(step, 0) / num_steps
    if kind == "cosine":
        return end + (start - end) * 0.5 * (1 + math.cos(math.pi * progress))
    if kind == "linear":
        return start + (end - start) * progress
    return start * (end / start) ** progress


__all__ = ["SCHEDULE_KINDS", "annealed_value"]
