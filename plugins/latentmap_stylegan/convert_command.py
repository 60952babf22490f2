"""``latentmap convert-stylegan network.pkl out.safetensors``: convert once, never unpickle again."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("convert-stylegan")
@click.argument("pickle_path", metavar="NETWORK.pkl", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("out", metavar="OUT.safetensors", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--network", "network_key", default="G_ema", show_default=True,
              help="Which network of the pickle to convert (G_ema or G).")
def command(pickle_path: Path, out: Path, network_key: str) -> None:
    """Convert an NVIDIA StyleGAN2/StyleGAN3 network pickle to safetensors + JSON metadata.

    The pickle is read by latentmap's restricted unpickler (no code from the file runs); the
    result loads with generator option weights=OUT.safetensors and needs no pickle at all.
    """
    from latentmap import LatentmapError
    from latentmap_stylegan.converted import save_converted, tensors_sha256
    from latentmap_stylegan.pickle_loader import load_network_pickle

    if out.suffix.lower() != ".safetensors":
        raise LatentmapError(f"output {out} must end in .safetensors")
    loaded = load_network_pickle(pickle_path, key=network_key)
    save_converted(loaded, out, source=pickle_path.name, network_key=network_key)
    net = loaded.network
    click.echo(
        f"wrote {out}: {loaded.kind} {net.img_resolution}px, {net.num_ws} style layers, w_dim {net.w_dim}, "
        f"tensors sha256 {tensors_sha256(net)[:16]}"
    )
