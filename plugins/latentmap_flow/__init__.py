"""The ``flow`` prior: flow matching (rectified flow) from condition embeddings to generator latents.

A second prior beside the core's ``diffusion``, with the same transformer, trained on the straight
path from Gaussian noise to the z-normalised latents and sampled by integrating its velocity with a
few ODE solver steps (``euler``, ``heun``, ``midpoint``). With ``teacher`` it distils another flow
checkpoint for one or two steps (reflow; ``FlowPrior.teacher_latents``). It comes in through the ``latentmap``
entry-point group (``flow = "latentmap_flow"``) and uses only the public plugin API. See docs/flow.md.

This module imports no torch (``latentmap --help`` loads every plugin): the prior's module is
imported when the prior registry is first consulted, and the names below on first use.
"""

from __future__ import annotations

from typing import Any

from latentmap import hookimpl

# name -> submodule; imported on first use, so loading the plugin stays light.
_LAZY = {
    "FlowOptions": "prior", "FlowPrior": "prior", "FlowSampling": "prior", "TimeEmbedding": "prior",
    "TIME_SAMPLING": "prior", "load_teacher": "prior",
    "SOLVERS": "samplers", "euler": "samplers", "heun": "samplers", "midpoint": "samplers",
    "solver_names": "samplers", "time_grid": "samplers",
}

__all__ = [
    "SOLVERS", "TIME_SAMPLING", "FlowOptions", "FlowPrior", "FlowSampling", "TimeEmbedding",
    "euler", "heun", "load_teacher", "midpoint", "register_priors", "solver_names", "time_grid",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"latentmap_flow.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'latentmap_flow' has no attribute {name!r}")


@hookimpl
def register_priors(register) -> None:
    from latentmap_flow.prior import FlowPrior

    register("flow", FlowPrior,
             description="flow matching (rectified flow) prior transformer, ODE solvers, classifier-free guidance")
