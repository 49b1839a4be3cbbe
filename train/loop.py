"""Pieces shared by the training loops: warm-up + cosine schedule, one optimizer step, CPU settings."""

from __future__ import annotations

import math

import torch


def setup_cpu(threads: int, seed: int) -> None:
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    torch.set_flush_denormal(True)  # denormals made CPU steps ~8x slower after a few dozen steps


def cosine_schedule(opt: torch.optim.Optimizer, warmup: int, steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over ``warmup`` steps, then cosine decay to 0 at ``steps``."""
    return torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / max(1, warmup)) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))


def optimize(model: torch.nn.Module, opt: torch.optim.Optimizer, sched, loss: torch.Tensor,
             max_norm: float = 1.0) -> float:
    """Backward, clip the gradient norm, step optimizer and schedule; returns the loss value."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    opt.step()
    sched.step()
    return loss.item()
