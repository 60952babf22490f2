"""latentmap_openclip: every open_clip model as a latentmap encoder, under the prefix ``openclip``.

``latentmap.get_encoder("openclip:ViT-B-32/openai")`` (the paper's CLIP), ``openclip:ViT-L-14/laion2b_s32b_b82k``,
``openclip:ViT-B-32@/path/to/weights.safetensors``, ``openclip:/path/to/config.json`` or ``openclip:hf-hub:org/repo``.
open_clip is imported only when an encoder is built, so listing plugins stays fast.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from latentmap import hookimpl, option

DTYPE_NAMES = ("float32", "float16", "bfloat16")
PREPROCESS_MODES = ("openclip", "clip2latent-double-norm")  # see preprocess.py (not imported here: it needs torch)


@dataclass
class OpenClipOptions:
    """Options of the ``openclip`` encoders (the model itself is named by the spec after ``openclip:``)."""

    weights: str | None = option(None, identity=False, path="file",
                                 help="local weights file (.safetensors, .pt, .bin; loaded without unpickling code), same as '@path'")
    device: str | None = option(None, placement=True, help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    dtype: str = option("float32", choices=DTYPE_NAMES, placement=True,
                        help="precision of the model weights; embeddings are returned as float32")
    autocast: bool | None = option(None, identity=False,
                                   help="mixed precision on GPU (default: on for float32 weights on cuda)")
    preprocess: str = option("openclip", choices=PREPROCESS_MODES,
                             help="openclip (open_clip's resize/crop/mean-std) or clip2latent-double-norm (imported priors)")
    presize: int | None = option(None, min=1, help="clip2latent-double-norm only: area-resize to this square size first "
                                                  "(256 reproduces its dataset)")
    batch_size: int = option(64, min=1, identity=False, help="images per forward pass")
    text_batch_size: int = option(256, min=1, identity=False, help="prompts per forward pass")
    cache_dir: str | None = option(None, identity=False,
                                   help="Hugging Face cache folder for pretrained tags (default: the HF default)")
    quick_gelu: bool | None = option(None, help="force QuickGELU on/off (default: what the pretrained tag was trained with)")
    seed: int = option(0, help="random-init seed for a custom config given without weights")


def build_encoder(spec: str, options: OpenClipOptions) -> Any:
    """``factory(spec, options)`` for the ``openclip`` prefix: an ``OpenClipEncoder``."""
    from latentmap_openclip.encoder import OpenClipEncoder

    return OpenClipEncoder(spec, options)


@hookimpl
def register_encoders(register: Any) -> None:
    register(
        "openclip",
        build_encoder,
        description="open_clip models: openclip:ARCH/TAG, openclip:ARCH@weights-file, openclip:config.json, openclip:hf-hub:repo",
        options=OpenClipOptions,
    )
