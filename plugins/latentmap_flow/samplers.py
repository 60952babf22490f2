"""ODE solvers for the flow prior: integrate dx/dt = v(x, t) from t = 0 (noise) to t = 1 (latents).

Every solver has one signature, ``solver(velocity, x, times) -> x``: ``velocity(x, t)`` is the
(guided) velocity field at the float time ``t``, ``x`` the start noise and ``times`` the grid
0 = t_0 < t_1 < ... < t_N = 1 it steps along. ``SOLVERS`` is the one registry; the prior's
``sampler`` setting picks from it. With h = t_{i+1} − t_i:

- ``euler``: x += h·v(x, t_i). First order (global error O(h)); N velocity evaluations.
- ``midpoint``: x += h·v(x + h/2·v(x, t_i), t_i + h/2). Second order; 2N evaluations.
- ``heun``: the trapezoid rule with an Euler predictor, x̃ = x + h·v(x, t_i),
  x += h/2·(v(x, t_i) + v(x̃, t_{i+1})), on every step but the last, which is plain Euler (as
  Karras et al. 2022 end theirs). Still second order: the one Euler step adds a local error O(h²),
  the order the N − 1 trapezoid steps' O(h³) each add up to. And it never asks for v at t = 1,
  where the field of a condition that nearly fixes its latent (spread σ ≪ h) turns within the last σ
  of time: a trapezoid over that last interval errs by about h/2·|x0|, Euler by about σ·|x0|.
  2N − 1 velocity evaluations (1 step: Euler).
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import pairwise

from torch import Tensor

Velocity = Callable[[Tensor, float], Tensor]
Solver = Callable[[Velocity, Tensor, "list[float]"], Tensor]

__all__ = ["SOLVERS", "Solver", "Velocity", "euler", "heun", "midpoint", "solver_names", "time_grid"]


def time_grid(steps: int) -> list[float]:
    """``steps`` equal intervals of [0, 1]: the ``steps + 1`` times a solver visits."""
    return [i / steps for i in range(steps + 1)]


def euler(velocity: Velocity, x: Tensor, times: list[float]) -> Tensor:
    """Explicit Euler along ``times``."""
    for t, t_next in pairwise(times):
        x = x + (t_next - t) * velocity(x, t)
    return x


def midpoint(velocity: Velocity, x: Tensor, times: list[float]) -> Tensor:
    """The explicit midpoint rule (second-order Runge-Kutta) along ``times``."""
    for t, t_next in pairwise(times):
        h = t_next - t
        x = x + h * velocity(x + 0.5 * h * velocity(x, t), t + 0.5 * h)
    return x


def heun(velocity: Velocity, x: Tensor, times: list[float]) -> Tensor:
    """Heun's method (trapezoid rule, Euler predictor) along ``times``, the last step Euler."""
    for t, t_next in pairwise(times[:-1]):
        h = t_next - t
        slope = velocity(x, t)
        x = x + 0.5 * h * (slope + velocity(x + h * slope, t_next))
    return euler(velocity, x, times[-2:])


SOLVERS: dict[str, Solver] = {"euler": euler, "heun": heun, "midpoint": midpoint}


def solver_names() -> tuple[str, ...]:
    """The registered solver names (the ``sampler`` setting's choices)."""
    return tuple(SOLVERS)
