"""``latentmap export-hub``: a folder ready for a Hugging Face model repository (checkpoint + model card)."""

from __future__ import annotations

import click


@click.command("export-hub")
@click.argument("checkpoint")
@click.option("--out", type=click.Path(file_okay=False), required=True, help="Folder to write (created if needed).")
@click.option("--eval", "eval_report", type=click.Path(exists=True, dir_okay=False), default=None,
              help="A `latentmap eval --report` JSON whose figures go into the model card.")
@click.option("--repo-id", default=None, metavar="OWNER/REPO", help="The Hub repository, for the card's usage examples.")
def command(checkpoint: str, out: str, eval_report: str | None, repo_id: str | None) -> None:
    """Write CHECKPOINT and a README.md model card into --out, for `hf upload OWNER/REPO FOLDER`.

    The card states the generator, encoder, latent space, prior and its options, the training recipe
    and the evaluation figures found (validation scores in the checkpoint, --eval). Nothing is uploaded.

    \b
    latentmap eval --checkpoint runs/ffhq/best.safetensors --report eval.json
    latentmap export-hub runs/ffhq/best.safetensors --eval eval.json --repo-id me/ffhq-prior --out hub/
    hf upload me/ffhq-prior hub/
    """
    from latentmap.hub import save_for_hub

    card = save_for_hub(checkpoint, out, eval_report=eval_report, repo_id=repo_id)
    click.echo(f"wrote {card.parent}: the checkpoint and {card.name}; upload with: "
               f"hf upload {repo_id or 'OWNER/REPO'} {card.parent}")
