"""Direct optimisation in the real small world: the shapes generator and its shipped tiny CLIP.

Starting from random latents, optimising against "a red circle" must raise the CLIP score, and the
best optimised latents must render red shapes (the world decodes the truth of every latent).
Needs the shipped shapes-clip weights.
"""

from __future__ import annotations

import torch

import latentmap
from latentmap.optimize import OptimizeSettings, initial_latents, optimize
from latentmap.scoring import image_text_scores


def test_optimisation_turns_shapes_the_prompted_colour():
    from latentmap_shapes import class_index

    torch.set_num_threads(1)
    generator = latentmap.get_generator("shapes")
    encoder = latentmap.get_encoder("shapes-clip")
    prompt = "a red circle"
    start = initial_latents(generator, 6, "random", seed=0)
    with torch.no_grad():
        before = image_text_scores(encoder, generator.synthesize(start), encoder.embed_text([prompt]).expand(6, -1))
    result = optimize(generator, encoder, [prompt], settings=OptimizeSettings(steps=40, lr=0.1, init="random"),
                      candidates=6, keep=3, seed=0, progress=False)
    assert result.candidate_scores.mean().item() > before.mean().item() + 0.1
    # some starts get stuck (the renderer's choices are soft but saturate); the best by CLIP score are red
    colours = generator.decode_attributes(result.per_layer[0])["colour"]
    assert (colours == class_index("colour", "red")).all(), colours.tolist()  # chance: 1/8 each
