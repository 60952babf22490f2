"""The parts of ``latentmap train`` (the entry point is :func:`latentmap.train.train`).

- ``loop``: the Trainer (step order, logging, checkpoints, validation calls, divergence stop)
- ``optim``: AdamW parameter groups, per-step random streams (mixed precision: ``latentmap.precision``)
- ``ema``: the EMA of the weights, with warm-up
- ``state``: full training state as safetensors + JSON, for exact resume
- ``validation``: CLIP score on text prompts and held-out images, image grids
- ``metrics``: metrics.jsonl, metrics.png, optional TensorBoard

The torchrun world (process group, rank, device) is :mod:`latentmap.distributed`, shared with build-data.
"""
