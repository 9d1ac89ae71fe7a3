"""The search-based inverse: from the aggregated anchor distribution back to the main member's tokens.

Contract (DeePEn §1.4, the official code's hyperparameters): start from the main member's logits
``z0`` restricted to its top-k candidate tokens; minimise ``KL(target || softmax(z) @ R) / |A|``
(``KLDivLoss`` with reduction ``mean``) with AdamW (lr η, betas (0.9, 0.999), eps 1e-8,
weight decay 0.01) under ``CosineAnnealingLR(T_max=10, eta_min=η/4)`` for ``steps`` (5) steps; return
``z_T``. With the candidates = the whole vocabulary this is the official dense search.

Skip rule (``can_flip``): each Adam step moves a coordinate by at most ``lr_t * c_t``, where
``c_t`` bounds ``|m̂_t| / sqrt(v̂_t)`` (Cauchy-Schwarz on the bias-corrected moments; 1 at t = 1,
1.0108 at t = 5), and weight decay scales every gap by ``prod(1 - wd * lr_t)``. So the argmax cannot
change when ``gap * prod(1 - wd * lr_t) > 2 * sum_t lr_t * c_t`` (≈ 1.36 nats at η = 0.15): the search
is skipped there, exactly (greedy decoding gives the same token; ``decoder`` does not skip when
sampling, since the whole distribution matters then).

One deliberate deviation: when ``z0`` already matches the target (loss <= ``converged``, e.g. a
self-ensemble or weight 1 on the main member) ``z0`` is returned unchanged. The official loop would
still run: weight decay then shrinks ``z``, which changes ``softmax(z)``, and Adam's sign-like steps
pull each coordinate back by ~lr_t with its own sign, which can reorder tokens within ~1e-3 of each
other (seen on random embeddings); a start that is already optimal has nothing to search for.

The search runs in float64 on exactly row-stochastic rows (``relative.stochastic64``; see
``relative.relative_vector`` for why). A target that is positive where ``q`` underflows would make the
official loss infinite; ``q`` is floored at the smallest normal float64 inside the log, which changes
nothing where the official loss is finite.
Imports: torch.
"""

from __future__ import annotations

import math

import torch

from der_ray.fusion.relative import stochastic64

ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8
_TINY = torch.finfo(torch.float64).tiny


def lr_schedule(lr: float, steps: int, *, t_max: int = 10, eta_min_ratio: float = 0.25) -> list[float]:
    """The learning rate at each step: cosine annealing from η to η·eta_min_ratio over ``t_max``."""
    eta_min = lr * eta_min_ratio
    return [eta_min + (lr - eta_min) * (1 + math.cos(math.pi * t / t_max)) / 2 for t in range(steps)]


def adam_step_bound(t: int, betas: tuple[float, float] = ADAM_BETAS) -> float:
    """An upper bound of ``|m̂_t| / sqrt(v̂_t)`` at step ``t`` (1-based) over all gradient sequences."""
    b1, b2 = betas
    ratio = b1 * b1 / b2
    series = sum(ratio**i for i in range(t))
    return (1 - b1) / (1 - b1**t) * math.sqrt((1 - b2**t) / (1 - b2)) * math.sqrt(series)


def flip_threshold(lr: float, steps: int, *, weight_decay: float = 0.01, t_max: int = 10,
                   eta_min_ratio: float = 0.25) -> float:
    """The smallest top-1/top-2 logit gap at which the inverse can never change the argmax."""
    lrs = lr_schedule(lr, steps, t_max=t_max, eta_min_ratio=eta_min_ratio)
    shift = sum(a * adam_step_bound(t + 1) for t, a in enumerate(lrs))
    decay = math.prod(1 - weight_decay * a for a in lrs)
    return 2 * shift / decay if decay > 0 else math.inf


def can_flip(z0: torch.Tensor, *, lr: float, steps: int, weight_decay: float = 0.01, t_max: int = 10,
             eta_min_ratio: float = 0.25) -> bool:
    """Whether the search could change ``argmax z0`` (``z0``: ``(k,)`` logits of the candidates)."""
    if z0.numel() < 2 or lr <= 0 or steps <= 0:
        return False
    top2 = torch.topk(z0.float(), 2).values  # (2,)
    gap = float(top2[0] - top2[1])
    return gap <= flip_threshold(lr, steps, weight_decay=weight_decay, t_max=t_max,
                                 eta_min_ratio=eta_min_ratio)


def inverse_search(z0: torch.Tensor, rows: torch.Tensor, target: torch.Tensor, *, lr: float = 0.15,
                   steps: int = 5, weight_decay: float = 0.01, t_max: int = 10,
                   eta_min_ratio: float = 0.25, converged: float = 1e-15) -> torch.Tensor:
    """Search logits whose anchor distribution matches ``target``, starting from ``z0``.

    Args:
        z0: ``(k,)`` the main member's logits (or log-probs) of its candidate tokens.
        rows: ``(k, A)`` the candidates' relative rows in the main member's vocabulary.
        target: ``(A,)`` the aggregated anchor distribution.
        lr, steps, weight_decay, t_max, eta_min_ratio: AdamW + cosine schedule knobs (official values).
        converged: a loss at ``z0`` at or below this returns ``z0`` (see the module docstring).
    Returns:
        ``(k,)`` float64 ``z_T`` (detached); ``z0`` itself (a copy) when ``steps == 0``, ``lr <= 0`` or
        ``z0`` already matches the target.
    """
    z = z0.detach().double().clone()  # (k,)
    if steps <= 0 or lr <= 0:
        return z
    z.requires_grad_(True)
    opt = torch.optim.AdamW([z], lr=lr, betas=ADAM_BETAS, eps=ADAM_EPS, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=t_max, eta_min=lr * eta_min_ratio)
    target = target.detach().double()  # (A,)
    rows = stochastic64(rows.detach())  # (k, A)
    n_anchors = rows.shape[-1]
    t_log_t = torch.xlogy(target, target).sum()  # constant part of KL(target || q)
    with torch.enable_grad():
        for step in range(steps):
            opt.zero_grad(set_to_none=True)
            q = torch.softmax(z, dim=-1) @ rows  # (A,) same expression as relative.relative_vector
            # KLDivLoss(reduction="mean"): the sum over anchors divided by |A|
            loss = (t_log_t - (target * q.clamp_min(_TINY).log()).sum()) / n_anchors
            if step == 0 and float(loss.detach()) <= converged:
                return z.detach()
            loss.backward()
            opt.step()
            sched.step()
    return z.detach()
