"""``latentmap eval``: the paper's Table-1 protocol on a prompt list, printed and written as JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from latentmap.commands.pipeline_options import (
    build_pipeline, checkpoint_options, echo_json, gather_prompts, json_option, quiet_option, sampler_options,
    settings_from,
)
from latentmap.errors import LatentmapError


@click.command("eval")
@checkpoint_options()
@click.option("--prompts-file", default="paper-eval-64.txt", show_default=True,
              help="Prompts, one per line (a path or a packaged list: paper-eval-64.txt, face-val.txt ...).")
@click.option("--prefix", default="A photograph of", show_default=True, help="Put before every prompt ('' for none).")
@click.option("--candidates", type=int, default=16, show_default=True, help="Candidates per prompt (re-ranking pool).")
@sampler_options
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--prompts-per-batch", type=int, default=1, show_default=True,
              help="Prompts sampled together (1 = the paper's timing, no batching across prompts).")
@click.option("--batch-size", type=int, default=16, show_default=True, help="Images rendered and scored at once.")
@click.option("--report", type=click.Path(dir_okay=False), default=None, help="Write the JSON report here.")
@quiet_option
@json_option
def command(prompts_file: str, prefix: str, candidates: int, seed: int, prompts_per_batch: int, batch_size: int,
            report: str | None, quiet: bool, as_json: bool, **kwargs: Any) -> None:
    """Mean CLIP score with and without re-ranking, and seconds per prompt (paper, Table 1)."""
    from latentmap.evaluate import evaluate, format_report

    prompts = gather_prompts((), prompts_file)
    if candidates < 1:
        raise LatentmapError(f"--candidates must be at least 1, got {candidates}")
    pipeline = build_pipeline(kwargs)
    settings = settings_from(pipeline, kwargs)
    result = evaluate(pipeline, prompts, prefix=prefix or None, candidates=candidates, settings=settings, seed=seed,
                      prompts_per_batch=prompts_per_batch, batch_size=batch_size, progress=not quiet)
    result["prompts_file"] = prompts_file
    if report:
        path = Path(report)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    if as_json:  # the report itself (what --report writes)
        echo_json(result)
        return
    click.echo(format_report(result))
    if report:
        click.echo(f"report: {report}")
