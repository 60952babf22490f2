"""``OpenClipEncoder``: any open_clip model as a latentmap ``Encoder``.

Text goes through open_clip's tokenizer and the text tower under ``torch.inference_mode`` (the result is
cloned out of inference mode, so it can be a target in a loss that back-propagates into images). Images
go through a differentiable re-implementation of open_clip's preprocessing, so direct optimisation can
back-propagate from a CLIP score into generator latents. The model itself is frozen and in eval mode.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any, ContextManager

import open_clip
import torch
import torch.nn.functional as F
from torch import Tensor

from latentmap import Encoder, LatentmapError, build_options, sha256_file
from latentmap_openclip import OpenClipOptions
from latentmap_openclip.loading import LoadedModel, load_model
from latentmap_openclip.preprocess import (
    Clip2LatentPreprocess,
    OpenClipPreprocess,
    check_images,
)
from latentmap_openclip.spec import EncoderSpec, parse_spec


class OpenClipEncoder(Encoder):
    """A frozen open_clip model: ``embed_text`` and differentiable ``embed_image`` -> (B, embed_dim) float32.

    Embeddings are raw (as the model's projection outputs them) unless ``normalize=True`` asks for unit L2
    norm. They are returned in float32 on the encoder's device whatever ``dtype`` the model runs in.
    """

    def __init__(self, spec: str | None = None, options: OpenClipOptions | None = None, **values: Any) -> None:
        """``options`` as the registry validated them, or the same as keywords (``device="cpu"``)."""
        if options is None:
            options = build_options(OpenClipOptions, values, where="OpenClipEncoder", owner="encoder 'openclip'")
        elif values:
            raise TypeError("OpenClipEncoder takes options or keyword options, not both")
        self.spec: EncoderSpec = parse_spec(spec, weights=options.weights)
        self.name = f"openclip:{self.spec.text}"
        self.preprocess_mode = options.preprocess
        self.batch_size = options.batch_size
        self.text_batch_size = options.text_batch_size
        self._dtype = getattr(torch, options.dtype)
        self._autocast_option = options.autocast

        loaded: LoadedModel = load_model(self.spec, cache_dir=options.cache_dir, quick_gelu=options.quick_gelu,
                                         seed=options.seed)
        self.model = loaded.model.to(dtype=self._dtype)
        self.tokenizer = loaded.tokenizer
        self._loaded = loaded
        self.embed_dim = _embed_dim(self.model)

        base = OpenClipPreprocess.from_config(loaded.preprocess_cfg)
        self.image_size: tuple[int, int] = base.size
        if options.preprocess == "clip2latent-double-norm":
            self.preprocess_images = Clip2LatentPreprocess(
                size=base.size, mean=tuple(open_clip.OPENAI_DATASET_MEAN), std=tuple(open_clip.OPENAI_DATASET_STD),
                presize=options.presize,
            )
        else:
            if options.presize is not None:
                raise LatentmapError("openclip option presize only applies to preprocess='clip2latent-double-norm'")
            self.preprocess_images = base
        self._device = torch.device("cpu")
        self.to(options.device if options.device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))

    # ------------------------------------------------------------------------------------------ Encoder API

    def embed_text(self, prompts: list[str], *, normalize: bool = False) -> Tensor:
        """Prompts -> (B, embed_dim) float32, in chunks of ``text_batch_size``; no gradient."""
        if isinstance(prompts, str):
            prompts = [prompts]
        prompts = list(prompts)
        if not all(isinstance(p, str) for p in prompts):
            raise LatentmapError("embed_text expects a list of strings")
        with torch.inference_mode():
            chunks = []
            for start in range(0, len(prompts), self.text_batch_size):
                tokens = self.tokenizer(prompts[start : start + self.text_batch_size]).to(self._device)
                with self._autocast():
                    chunks.append(self.model.encode_text(tokens).float())
            embeddings = torch.cat(chunks) if chunks else torch.empty(0, self.embed_dim, device=self._device)
            if normalize:
                embeddings = F.normalize(embeddings, dim=-1)
        return embeddings.clone()  # an ordinary tensor: usable next to tensors that require grad

    def embed_image(self, images: Tensor, *, normalize: bool = False) -> Tensor:
        """Images (B, 3, H, W) in [-1, 1], any size -> (B, embed_dim) float32; differentiable w.r.t. ``images``."""
        check_images(images)
        chunks = []
        for chunk in images.split(self.batch_size) if images.shape[0] else ():
            pixels = self.preprocess_images(chunk.to(device=self._device, dtype=torch.float32))
            with self._autocast():
                chunks.append(self.model.encode_image(pixels.to(self._dtype)).float())
        embeddings = torch.cat(chunks) if chunks else torch.empty(0, self.embed_dim, device=self._device)
        return F.normalize(embeddings, dim=-1) if normalize else embeddings

    def identity(self) -> dict[str, Any]:
        """Name, spec, weights (source, file name, SHA-256), preprocessing: what makes these embeddings these."""
        loaded = self._loaded
        identity: dict[str, Any] = {
            **super().identity(),  # name and options as latentmap.get_encoder was called, so it can be rebuilt
            "family": "openclip",
            "spec": self.spec.text,
            "embed_dim": self.embed_dim,
            "image_size": list(self.image_size),
            "preprocess": self.preprocess_mode,
            "weights": loaded.weights_source,
            **loaded.extra_identity,
        }
        if isinstance(self.preprocess_images, Clip2LatentPreprocess) and self.preprocess_images.presize:
            identity["presize"] = self.preprocess_images.presize
        if loaded.weights_file is not None:
            identity["weights_file"] = loaded.weights_file.name
            identity["weights_sha256"] = sha256_file(loaded.weights_file)
        return identity

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def dtype(self) -> torch.dtype:
        """The dtype the model's weights run in (embeddings are always returned as float32)."""
        return self._dtype

    def to(self, device: torch.device | str) -> "OpenClipEncoder":
        """Move the model to ``device``; returns self."""
        target = torch.device(device)
        if target.type == "cuda" and not torch.cuda.is_available():
            raise LatentmapError(f"openclip option device={str(device)!r} but CUDA is not available here")
        self.model.to(target)
        self._device = target
        return self

    # ------------------------------------------------------------------------------------------- helpers

    def _autocast(self) -> ContextManager[Any]:
        """Mixed precision on GPU by default (bfloat16 where supported) when the weights are float32."""
        enabled = self._autocast_option
        if enabled is None:
            enabled = self._device.type == "cuda" and self._dtype == torch.float32
        if not enabled or self._device.type != "cuda":
            return nullcontext()
        half = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast(device_type="cuda", dtype=half)

    def __repr__(self) -> str:
        return f"OpenClipEncoder({self.spec.text!r}, embed_dim={self.embed_dim}, device={self._device}, dtype={self._dtype})"


def _embed_dim(model: torch.nn.Module) -> int:
    visual_dim = getattr(getattr(model, "visual", None), "output_dim", None)
    if isinstance(visual_dim, int):
        return visual_dim
    projection = getattr(model, "text_projection", None)
    if isinstance(projection, torch.Tensor):
        return int(projection.shape[-1])
    raise LatentmapError(f"cannot tell the embedding size of open_clip model {type(model).__name__}")
