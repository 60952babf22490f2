"""A DALLE2-pytorch 0.2.38 prior holding the same weights as a latentmap ``DiffusionPrior`` (benchmarks only).

The weights travel through latentmap's importer key table run backwards
(:func:`latentmap.prior.clip2latent.dalle2_state_dict`), so the two sides are the same model by
construction, and :func:`compare` checks it numerically. One latent token builds DALLE2's own
``DiffusionPriorNetwork``; several build clip2latent's ``WPlusPriorNetwork`` (its w+ extension).
``latent_prior=True`` wraps the network in clip2latent's ``LatentPrior`` (a DALLE2 ``DiffusionPrior``
subclass with latent statistics and the timestep-skip sampler) instead of DALLE2's ``DiffusionPrior``.

Runs only under the peers' virtualenv (``bash bench/peers/setup.sh``)::

    bench/.peers/bin/python bench/peers/dalle2_weights.py            # paper config, prints max abs diffs
    bench/.peers/bin/python bench/peers/dalle2_weights.py --tiny     # a small model, quick

Importable from other benchmarks: ``sys.path.insert(0, "bench/peers")``, then
``from dalle2_weights import dalle2_prior, compare``.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import torch
from torch import Tensor, nn

from latentmap.interfaces import PriorShape
from latentmap.prior import DiffusionPrior
from latentmap.prior.clip2latent import dalle2_state_dict

PAPER_SHAPE = PriorShape(tokens=1, latent_dim=512, cond_dim=512)  # one w of StyleGAN2 FFHQ, CLIP ViT-B/32


def dalle2_network(prior: DiffusionPrior) -> nn.Module:
    """An (untrained) DALLE2/clip2latent prior network of the same size as ``prior``'s."""
    from dalle2_pytorch import DiffusionPriorNetwork

    o, s = prior.options, prior.shape
    if not (s.latent_dim == s.cond_dim == o.dim):
        raise ValueError(f"DALLE2's network needs latent, condition and model widths equal, got {s} and dim {o.dim}")
    kwargs = dict(dim=o.dim, num_timesteps=o.timesteps, depth=o.depth, dim_head=o.dim_head, heads=o.heads,
                  ff_mult=o.ff_mult)
    if s.tokens == 1:
        return DiffusionPriorNetwork(**kwargs)
    from clip2latent.latent_prior import WPlusPriorNetwork

    return WPlusPriorNetwork(n_latents=s.tokens, **kwargs)


def dalle2_prior(prior: DiffusionPrior, *, latent_prior: bool = False) -> nn.Module:
    """DALLE2's ``DiffusionPrior`` (or clip2latent's ``LatentPrior``) with ``prior``'s weights, buffers, device, eval mode.

    Conditions enter unscaled (``image_embed_scale`` 1, no text encodings), as latentmap's priors
    work. DALLE2's ``DiffusionPrior`` has no latent statistics: it works in latentmap's normalised
    space (identical to generator units only when ``latent_mean``/``latent_std`` are 0/1).
    """
    from dalle2_pytorch import DiffusionPrior as Dalle2DiffusionPrior

    o, s = prior.options, prior.shape
    device = prior.latent_mean.device
    kwargs: dict[str, Any] = dict(
        image_embed_dim=s.latent_dim, timesteps=o.timesteps, cond_drop_prob=o.cond_drop_prob,
        predict_x_start=o.objective == "x0", beta_schedule=o.schedule, condition_on_text_encodings=False,
        image_embed_scale=1.0,
    )
    net = dalle2_network(prior)
    if latent_prior:
        from clip2latent.latent_prior import LatentPrior

        stats = (prior.latent_mean.detach().cpu().reshape(-1) if s.tokens == 1 else prior.latent_mean.detach().cpu(),
                 prior.latent_std.detach().cpu().reshape(-1) if s.tokens == 1 else prior.latent_std.detach().cpu())
        peer = LatentPrior(net, num_latents=s.tokens, latent_repeats=(1,) * s.tokens, latent_stats=stats, **kwargs)
    else:
        peer = Dalle2DiffusionPrior(net, **kwargs)
    state = dalle2_state_dict(prior.cpu() if device.type != "cpu" else prior, latent_stats=latent_prior)
    prior.to(device)
    peer.load_state_dict(state, strict=True)
    return peer.to(device).eval()


def _flat(x: Tensor, tokens: int) -> Tensor:
    """latentmap's (B, tokens, dim) as DALLE2 takes it: (B, dim) for one token."""
    return x[:, 0] if tokens == 1 else x


@torch.no_grad()
def compare(prior: DiffusionPrior, peer: nn.Module, *, batch: int = 4, guidance: float = 2.0, seed: int = 0) -> dict[str, float]:
    """Max abs differences between latentmap and the peer on the same inputs (network, null, guided, loss)."""
    s = prior.shape
    device = prior.latent_mean.device
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, s.tokens, s.latent_dim, generator=g).to(device)
    cond = torch.randn(batch, s.cond_dim, generator=g).to(device)
    t = torch.randint(0, prior.options.timesteps, (batch,), generator=g).to(device)
    keep = torch.ones(batch, dtype=torch.bool, device=device)
    ours_cond = prior.net(x, t, cond, keep)
    ours_null = prior.net(x, t, cond, ~keep)
    ours_guided = prior.guided_output(x, t, cond, guidance=guidance)
    theirs_cond = peer.net(_flat(x, s.tokens), t, text_embed=cond, cond_drop_prob=0.0)
    theirs_null = peer.net(_flat(x, s.tokens), t, text_embed=cond, cond_drop_prob=1.0)
    theirs_guided = peer.net.forward_with_cond_scale(_flat(x, s.tokens), t, text_embed=cond, cond_scale=guidance)
    noise = torch.randn(batch, s.tokens, s.latent_dim, generator=g).to(device)
    ours_loss = prior.loss_given(x, cond, t=t, noise=noise, keep=keep)
    drop, peer.cond_drop_prob = peer.cond_drop_prob, 0.0  # its loss draws its own keep mask; keep all, as ours
    try:
        theirs_loss = peer.p_losses(_flat(x, s.tokens), t, text_cond={"text_embed": cond}, noise=_flat(noise, s.tokens))
    finally:
        peer.cond_drop_prob = drop

    def diff(a: Tensor, b: Tensor) -> float:
        return float((a.reshape(b.shape).float() - b.float()).abs().max())

    return {
        "net_cond": diff(ours_cond, theirs_cond),
        "net_null": diff(ours_null, theirs_null),
        "guided": diff(ours_guided, theirs_guided),
        "loss": diff(ours_loss, theirs_loss),
        "output_scale": float(theirs_guided.abs().max()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="dim 64, depth 2 instead of the paper config")
    parser.add_argument("--tokens", type=int, default=1, help="latent tokens (>1: clip2latent's w+ network)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.manual_seed(0)
    dim = 64 if args.tiny else 512
    options = dict(dim=dim, depth=2, heads=3, dim_head=40, timesteps=100) if args.tiny else {}
    prior = DiffusionPrior(PriorShape(tokens=args.tokens, latent_dim=dim, cond_dim=dim),
                           DiffusionPrior.Options(**options)).to(args.device).eval()
    for latent_prior in (False, True):
        peer = dalle2_prior(prior, latent_prior=latent_prior)
        name = "clip2latent.LatentPrior" if latent_prior else "dalle2_pytorch.DiffusionPrior"
        print(json.dumps({"peer": name, **compare(prior, peer)}))


if __name__ == "__main__":
    main()
