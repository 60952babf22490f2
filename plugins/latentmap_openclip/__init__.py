"""latentmap_openclip: every open_clip model as a latentmap encoder, under the prefix ``openclip``.

``latentmap.get_encoder("openclip:ViT-B-32/openai")`` (the paper's CLIP), ``openclip:ViT-L-14/laion2b_s32b_b82k``,
``openclip:ViT-B-32@/path/to/weights.safetensors``, ``openclip:/path/to/config.json`` or ``openclip:hf-hub:org/repo``.
open_clip is imported only when an encoder is built, so listing plugins stays fast.
"""

from __future__ import annotations

from typing import Any

from latentmap.hookspecs import hookimpl

OPTIONS = {
    "weights": "local weights file (.safetensors, .pt, .bin; loaded without unpickling code), same as '@path'",
    "device": "cpu, cuda, cuda:1 ... (default: cuda when available)",
    "dtype": "float32 (default), float16 or bfloat16 for the model weights; embeddings are returned as float32",
    "autocast": "mixed precision on GPU (default: on for float32 weights on cuda)",
    "preprocess": "openclip (default: open_clip's resize/crop/mean-std) or clip2latent-double-norm (imported priors)",
    "presize": "clip2latent-double-norm only: area-resize to this square size first (256 reproduces its dataset)",
    "batch_size": "images per forward pass (default 64)",
    "text_batch_size": "prompts per forward pass (default 256)",
    "cache_dir": "Hugging Face cache folder for pretrained tags (default: the HF default)",
    "quick_gelu": "force QuickGELU on/off (default: what the pretrained tag was trained with)",
    "seed": "random-init seed for a custom config given without weights (default 0)",
}


def build_encoder(spec: str = "", **options: Any) -> Any:
    """``factory(spec, **options)`` for the ``openclip`` prefix: an ``OpenClipEncoder``."""
    from latentmap_openclip.encoder import OpenClipEncoder

    return OpenClipEncoder(spec or None, **options)


@hookimpl
def register_encoders(register: Any) -> None:
    register(
        "openclip",
        build_encoder,
        description="open_clip models: openclip:ARCH/TAG, openclip:ARCH@weights-file, openclip:config.json, openclip:hf-hub:repo",
        options=OPTIONS,
    )
