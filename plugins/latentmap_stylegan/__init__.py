"""latentmap_stylegan: StyleGAN2 and StyleGAN3 generators in plain PyTorch, loaded safely from NVIDIA's pickles.

Registers the generators ``stylegan2`` and ``stylegan3`` (any network file, ``weights=``), the
zoo entries ``stylegan2-ffhq`` and ``stylegan3-lhq``, and the ``convert-stylegan`` command. Their
options are declared once, in ``StyleGANOptions`` (options.py) and ``ZooOptions`` (zoo.py). The
network definitions (and torch) are imported only when a generator is built or the command runs.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from latentmap import hookimpl
from latentmap_stylegan.options import StyleGANOptions
from latentmap_stylegan.zoo import ZOO, ZooOptions, build_generator, build_zoo_generator


@hookimpl
def register_generators(register: Any) -> None:
    register("stylegan2", partial(build_generator, "stylegan2", "stylegan2"),
             description="any StyleGAN2 network (NVIDIA .pkl read safely, or converted .safetensors)",
             options=StyleGANOptions)
    register("stylegan3", partial(build_generator, "stylegan3", "stylegan3"),
             description="any StyleGAN3 (T or R) network (NVIDIA .pkl read safely, or converted .safetensors)",
             options=StyleGANOptions)
    for name, entry in ZOO.items():
        register(name, partial(build_zoo_generator, name), description=entry.description, options=ZooOptions)


@hookimpl
def register_commands(cli: Any) -> None:
    from latentmap_stylegan.convert_command import command

    cli.add_command(command)
