"""Train the tiny shapes CLIP from scratch on CPU (``python -m latentmap_shapes.train_clip``).

Every step renders a fresh batch of random latents with the ``shapes`` generator, writes one varied
caption per image (random subset of its attributes, template and synonyms) and takes one AdamW step
on open_clip's contrastive ``ClipLoss``. No dataset on disk: the world is the data. The run is
reproducible from ``--seed`` (bit-for-bit on the same machine and thread count). At the end the
weights are written in float16 safetensors with a JSON config holding the vocabulary, the training
settings and the zero-shot accuracy measured on the written file.

``--init W --lock-image`` is locked-image tuning: start from the weights ``W`` (new words of a
larger vocabulary start random) and train the text tower only, so the image tower, and with it
every image embedding, stays exactly ``W``'s. This is how the shipped weights learned the varied
caption grammar without losing what the image tower knew (docs/shapes.md).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import open_clip
import torch
from open_clip.loss import ClipLoss
from tqdm import tqdm

from latentmap import Encoder
from latentmap_shapes.captions import training_caption
from latentmap_shapes.clip_model import (
    DEFAULT_WEIGHTS,
    build_model,
    default_config,
    save_weights,
)
from latentmap_shapes.generator import ShapesGenerator
from latentmap_shapes.tokenizer import WordTokenizer


@dataclass
class TrainSettings:
    """Everything that decides the trained weights (with the model config)."""

    steps: int = 3000
    batch_size: int = 64
    lr: float = 1e-3
    warmup: int = 30
    weight_decay: float = 0.05
    seed: int = 0
    init: str | None = None     # start from these weights (see initialise_from) instead of from scratch
    lock_image: bool = False    # freeze the image tower: only the text tower (and temperature) learn


def learning_rate(step: int, settings: TrainSettings) -> float:
    """Linear warm-up, then cosine decay to zero."""
    if step < settings.warmup:
        return settings.lr * (step + 1) / settings.warmup
    progress = (step - settings.warmup) / max(1, settings.steps - settings.warmup)
    return 0.5 * settings.lr * (1 + math.cos(math.pi * progress))


def _parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Decay matrices and kernels only; not biases, norms, embeddings or the temperature."""
    decay, no_decay = [], []
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        skip = parameter.ndim < 2 or "embedding" in name or "logit_scale" in name
        (no_decay if skip else decay).append(parameter)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def initialise_from(model: Any, tokenizer: WordTokenizer, weights: Path) -> dict[str, Any]:
    """Copy trained weights into a fresh ``model`` whose vocabulary or context may be larger.

    Tensors of equal shape are copied as they are (the whole image tower, the text transformer);
    token embeddings are copied row by row for the tokens both vocabularies have (new words keep
    their random initialisation); positional embeddings for the positions both contexts have.
    Returns a record of what was copied, for the JSON next to the weights.
    """
    from latentmap import sha256_file
    from latentmap_shapes.clip_model import load_model

    source, source_tokenizer, _ = load_model(weights)
    source_state, state = source.state_dict(), model.state_dict()
    copied, partial = 0, []
    with torch.no_grad():
        for key, value in source_state.items():
            target = state[key]
            if target.shape == value.shape:
                target.copy_(value)
                copied += 1
            elif key == "token_embedding.weight":
                shared = [token for token in source_tokenizer.itos if token in tokenizer.stoi]
                for token in shared:
                    target[tokenizer.stoi[token]] = value[source_tokenizer.stoi[token]]
                partial.append(f"{key}: {len(shared)} of {len(tokenizer.itos)} tokens")
            elif key == "positional_embedding":
                rows = min(len(value), len(target))
                target[:rows] = value[:rows]
                partial.append(f"{key}: {rows} of {len(target)} positions")
            else:
                raise ValueError(f"cannot initialise {key} {tuple(target.shape)} from {tuple(value.shape)} in {weights}")
    return {"weights": Path(weights).name, "sha256": sha256_file(weights), "copied": copied, "partial": partial}


class _ModelAsEncoder(Encoder):
    """The model being trained, seen through the Encoder contract (for progress checks)."""

    name = "shapes-clip (training)"

    def __init__(self, model: Any, tokenizer: WordTokenizer) -> None:
        self.model, self.tokenizer, self.embed_dim = model, tokenizer, model.text_projection.shape[-1]

    def embed_text(self, prompts: list[str], *, normalize: bool = False) -> torch.Tensor:
        return self.model.encode_text(self.tokenizer(prompts), normalize=normalize)

    def embed_image(self, images: torch.Tensor, *, normalize: bool = False) -> torch.Tensor:
        return self.model.encode_image(images.contiguous(memory_format=torch.channels_last), normalize=normalize)


def _progress_check(model: Any, tokenizer: WordTokenizer, samples: int, lock_image: bool = False) -> dict[str, float]:
    from latentmap_shapes.evaluate_clip import zero_shot_report

    model.eval()
    with torch.no_grad():
        report = zero_shot_report(_ModelAsEncoder(model, tokenizer), samples=samples, seed=99)
    model.train()
    if lock_image:
        model.visual.eval()
    return report


def train(
    settings: TrainSettings, config: dict[str, Any] | None = None, *, progress: bool = True, check_every: int = 0
) -> tuple[Any, dict]:
    """Train a fresh model; returns (model, config with a ``training`` record). Does not write files.

    ``check_every`` > 0 prints a quick zero-shot check (512 images, another seed) that often; it
    does not change the training (its random draws use their own generators).
    """
    config = dict(config or default_config())
    torch.manual_seed(settings.seed)
    model, tokenizer = build_model(config)
    initialised = initialise_from(model, tokenizer, Path(settings.init)) if settings.init else None
    model.visual.to(memory_format=torch.channels_last)
    model.train()
    if settings.lock_image:  # locked-image tuning: the image embedding space stays exactly as it was
        model.visual.requires_grad_(False)
        model.visual.eval()  # its batch norms keep their statistics
    world = ShapesGenerator(resolution=config["vision"]["image_size"])
    latent_rng = torch.Generator().manual_seed(settings.seed)
    caption_rng = random.Random(settings.seed)
    optimizer = torch.optim.AdamW(_parameter_groups(model, settings.weight_decay), lr=settings.lr, betas=(0.9, 0.98))
    loss_fn = ClipLoss()

    started = time.time()
    losses: list[float] = []
    bar = tqdm(range(settings.steps), desc="shapes-clip", disable=not progress)
    for step in bar:
        latents = world.sample_latents(settings.batch_size, generator=latent_rng)
        with torch.no_grad():
            images = world.synthesize(latents).contiguous(memory_format=torch.channels_last)
        truth = world.decode_attributes(latents)
        captions = [
            training_caption({name: int(values[i]) for name, values in truth.items()}, caption_rng)
            for i in range(settings.batch_size)
        ]
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, settings)
        with torch.set_grad_enabled(not settings.lock_image):
            image_features = model.encode_image(images, normalize=True)
        text_features = model.encode_text(tokenizer(captions), normalize=True)
        loss = loss_fn(image_features, text_features, model.logit_scale.exp())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        losses.append(loss.item())
        if step % 10 == 0:
            bar.set_postfix(loss=f"{sum(losses[-50:]) / len(losses[-50:]):.3f}")
        if check_every and (step + 1) % check_every == 0:
            check = _progress_check(model, tokenizer, 512, settings.lock_image)
            bar.write(f"step {step + 1}: " + ", ".join(f"{k} {100 * v:.0f}%" for k, v in list(check.items())[:6]))

    model.eval()
    config["training"] = {
        **asdict(settings),
        "init": Path(settings.init).name if settings.init else None,
        "seconds": round(time.time() - started, 1),
        "threads": torch.get_num_threads(),
        "first_loss": round(sum(losses[:20]) / max(1, len(losses[:20])), 4),
        "final_loss": round(sum(losses[-50:]) / max(1, len(losses[-50:])), 4),
        **({"initialised_from": initialised} if initialised else {}),
        "torch": torch.__version__,
        "open_clip": open_clip.__version__,
    }
    return model, config


def main(argv: list[str] | None = None) -> None:
    defaults = TrainSettings()
    parser = argparse.ArgumentParser(description="Train the tiny shapes CLIP on CPU and write its weights.")
    parser.add_argument("--steps", type=int, default=defaults.steps)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--lr", type=float, default=defaults.lr)
    parser.add_argument("--warmup", type=int, default=defaults.warmup)
    parser.add_argument("--weight-decay", type=float, default=defaults.weight_decay)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--init", type=Path, default=None,
                        help="start from these weights (e.g. an earlier shapes_clip.safetensors) instead of from scratch")
    parser.add_argument("--lock-image", action="store_true",
                        help="freeze the image tower: only the text tower learns (keeps image embeddings as they were)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--out", type=Path, default=DEFAULT_WEIGHTS, help="weights file (a .json is written next to it)")
    parser.add_argument("--check-every", type=int, default=0, help="print a quick zero-shot check every N steps")
    parser.add_argument("--eval-samples", type=int, default=2048, help="images for the zero-shot check (0: skip)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    settings = TrainSettings(args.steps, args.batch_size, args.lr, args.warmup, args.weight_decay, args.seed,
                             str(args.init) if args.init else None, args.lock_image)
    model, config = train(settings, check_every=args.check_every)
    save_weights(model, config, args.out)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB) after {config['training']['seconds']} s; "
          f"loss {config['training']['first_loss']} -> {config['training']['final_loss']}")
    if args.eval_samples > 0:
        from latentmap_shapes.encoder import ShapesClipEncoder
        from latentmap_shapes.evaluate_clip import markdown_table, zero_shot_report

        report = zero_shot_report(ShapesClipEncoder(args.out), samples=args.eval_samples)
        config["zero_shot"] = {task: round(value, 4) for task, value in report.items()}
        args.out.with_suffix(".json").write_text(json.dumps(config, indent=2) + "\n")
        print(markdown_table(report))


if __name__ == "__main__":
    main()
