"""Learning-rate schedules: a linear warm-up followed by multi-step, cosine or constant decay, as one
LambdaLR factor per optimiser step."""
import math

import torch

SCHEDULES = ("multistep", "cosine", "constant")


def lr_factor(step, total, *, schedule="multistep", warmup=0.0, milestones=(), gamma=0.1, final=0.0):
    """The lr multiplier after `step` optimiser steps of `total`.

    warm-up: (step + 1) / W for the first W = round(warmup * total) steps (warmup a fraction in [0, 1));
    multistep: gamma ** (milestones passed), milestones as fractions of total;
    cosine: from 1 down to `final` over the steps after the warm-up; constant: 1."""
    warm = max(1, round(warmup * total))
    ramp = min(1.0, (step + 1) / warm)
    if schedule == "multistep":
        marks = [max(1, int(f * total)) for f in milestones]
        return ramp * gamma ** sum(step >= m for m in marks)
    if schedule == "cosine":
        span = max(1, total - warm)
        t = min(1.0, max(0.0, (step - warm) / span))
        return ramp * (final + (1 - final) * 0.5 * (1 + math.cos(math.pi * t)))
    if schedule == "constant":
        return ramp
    raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, got {schedule!r}")


def make_scheduler(optimizer, total, **kw):
    """A LambdaLR stepping lr_factor(step, total, **kw) (validated here, once)."""
    lr_factor(0, total, **kw)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, total, **kw))
