"""Render the shapes benchmark's JSON into docs/benchmarks.md (its own section) and two plots.

    python bench/shapes_report.py                      # bench/results/shapes.json -> docs
    python bench/shapes_report.py --print              # only print the markdown

Only the section headed ``## Shapes world: does the method work?`` is replaced; the rest of the
file (other engineers' sections) is kept as it is read at the moment of writing.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
HEADING = "## Shapes world: does the method work?"
ALPHA_PLOT = "img/shapes_alpha.png"
STEPS_PLOT = "img/shapes_steps.png"


def pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def settings_table(settings: dict[str, Any]) -> list[str]:
    lines = [
        "| setting | prompts | colour+shape | colour+shape, re-ranked | all named | all named, re-ranked "
        "| CLIP score | CLIP score, re-ranked | s / prompt, batched | s / prompt, one at a time |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in settings.items():
        lines.append(
            f"| {name} | {r.get('prompts', 64)} | {pct(r['colour_shape'])} | {pct(r['colour_shape_reranked'])} "
            f"| {pct(r['all_named'])} | {pct(r['all_named_reranked'])} | {r['clip_score']:.3f} "
            f"| {r['clip_score_reranked']:.3f} | {r['seconds_per_prompt']:.3f} "
            f"| {_seconds(r.get('seconds_per_prompt_single'))} |"
        )
    return lines


def goals(results: dict[str, Any]) -> list[str]:
    """The issue's goals, each with the measured numbers and whether it is met."""
    s = results["settings"]
    alpha = results.get("best_alpha")
    lines = []

    def row(goal: str, measured: str, met: bool | None) -> None:
        verdict = "n/a" if met is None else ("met" if met else "**not met**")
        lines.append(f"| {goal} | {measured} | {verdict} |")

    prior_rows = {k: v for k, v in s.items() if v.get("kind") == "prior" and v.get("prompts", 64) == 64}
    if prior_rows:
        best_name = max(prior_rows, key=lambda k: prior_rows[k]["colour_shape_reranked"])
        best = prior_rows[best_name]
        row(">= 90% colour+shape with re-ranking (best prior setting)",
            f"{pct(best['colour_shape_reranked'])} ({best_name})", best["colour_shape_reranked"] >= 0.9)
        best_name = max(prior_rows, key=lambda k: prior_rows[k]["colour_shape"])
        best = prior_rows[best_name]
        row(">= 60% colour+shape without re-ranking", f"{pct(best['colour_shape'])} ({best_name})",
            best["colour_shape"] >= 0.6)
    if "alpha=0" in s and alpha is not None and f"alpha={alpha:g}" in s:
        zero, top = s["alpha=0"]["colour_shape"], s[f"alpha={alpha:g}"]["colour_shape"]
        row("alpha = 0 clearly worse than the best alpha",
            f"{pct(zero)} vs {pct(top)} (alpha {alpha:g})", top - zero >= 0.05)
    four = s.get("best alpha, guidance 1, steps 4")
    many = s.get("best alpha, guidance 1, steps 250")
    if four and many:
        gap = many["colour_shape"] - four["colour_shape"]
        row("4 steps within 3 points of 250 (guidance 1, no re-ranking)",
            f"{pct(four['colour_shape'])} vs {pct(many['colour_shape'])}", gap <= 0.03)
    prior, optimise = s.get("prior, optimisation prompts"), next(
        (v for k, v in s.items() if v.get("kind") == "optimise"), None)
    if prior and optimise:
        row("prior at least as accurate as direct optimisation (re-ranked, same prompts)",
            f"{pct(prior['colour_shape_reranked'])} vs {pct(optimise['colour_shape_reranked'])}",
            prior["colour_shape_reranked"] >= optimise["colour_shape_reranked"])
        ratio = optimise["seconds_per_prompt"] / prior["seconds_per_prompt"]
        row("prior >= 20x faster per prompt than optimisation",
            f"{prior['seconds_per_prompt']:.3f} s vs {optimise['seconds_per_prompt']:.2f} s ({ratio:.0f}x)",
            ratio >= 20)
    return ["| goal (issue 9) | measured | verdict |", "|---|---|---|", *lines]


def plot(results: dict[str, Any], docs: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = results["settings"]
    chance = s.get("random", {}).get("colour_shape")
    alphas = sorted(float(k.split("=")[1]) for k in s if k.startswith("alpha="))
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for key, label, style in (("colour_shape", "no re-ranking", "o-"), ("colour_shape_reranked", "best of 16", "s--")):
        ax.plot(alphas, [100 * s[f"alpha={a:g}"][key] for a in alphas], style, label=label)
    if chance is not None:
        ax.axhline(100 * chance, color="grey", lw=1, ls=":", label="random latents")
    ax.set_xlabel("LAFITE noise level alpha (training)")
    ax.set_ylabel("colour+shape accuracy (%)")
    ax.set_title("Text prompts in the shapes world vs alpha")
    ax.set_ylim(0, 100)
    ax.legend()
    fig.tight_layout()
    fig.savefig(docs / ALPHA_PLOT, dpi=110)
    plt.close(fig)

    grid = {k: v for k, v in s.items() if k.startswith("best alpha, guidance")}
    if not grid:
        return
    fig, (left, right) = plt.subplots(1, 2, figsize=(9.5, 3.6))
    for guidance in sorted({v["guidance"] for v in grid.values()}):
        rows = sorted((v for v in grid.values() if v["guidance"] == guidance), key=lambda v: v["steps"])
        steps = [v["steps"] for v in rows]
        left.plot(steps, [100 * v["colour_shape"] for v in rows], "o-", label=f"guidance {guidance:g}")
        right.plot(steps, [v["seconds_per_prompt"] for v in rows], "o-", label=f"guidance {guidance:g}")
    for axis in (left, right):
        axis.set_xscale("log")
        axis.set_xlabel("DDIM steps")
        axis.legend()
    left.set_ylabel("colour+shape accuracy, no re-ranking (%)")
    left.set_ylim(0, 100)
    right.set_ylabel("seconds per prompt (16 samples)")
    right.set_yscale("log")
    fig.suptitle(f"Best alpha ({results.get('best_alpha', '?'):g}): quality and time vs sampling steps")
    fig.tight_layout()
    fig.savefig(docs / STEPS_PLOT, dpi=110)
    plt.close(fig)


def section(results: dict[str, Any], notes: str) -> str:
    c = results["config"]
    training = results.get("training", {})
    train_lines = [f"alpha {a}: {t['steps']} steps, final loss {t['final_loss']:.3f}, {t['seconds'] / 60:.0f} min"
                   for a, t in sorted(training.items(), key=lambda kv: float(kv[0]))]
    parts = [
        HEADING,
        "",
        "Reproduce: `python bench/shapes_benchmark.py` (every stage: data, one prior per alpha, every "
        "setting; resumable), then `python bench/shapes_report.py`. The evaluation commands of this run: "
        + ", ".join(f"`{command}`" for command in results["commands"]) + ".",
        f"Machine: {results['machine']}. Encoder: `{c['encoder']}`. Dataset: {c['samples']:,} samples; "
        f"one prior per alpha, {c['train_steps']} steps each; {c['prompts']} prompts x {c['candidates']} samples "
        "(seconds per prompt, batched: one run over all the setting's prompts, divided by their number; "
        "one at a time: median over prompts sampled alone after a warm-up, the paper's timing protocol; "
        "both include text embedding, sampling, rendering and scoring all 16 candidates).",
        "",
        notes.strip(),
        "",
        *goals(results),
        "",
        *settings_table(results["settings"]),
        "",
        f"![accuracy vs alpha]({ALPHA_PLOT})",
        "",
        f"![accuracy and time vs steps]({STEPS_PLOT})",
        "",
        "Training: " + "; ".join(train_lines) + "." if train_lines else "",
        "",
    ]
    return "\n".join(parts)


def replace_section(document: str, text: str) -> str:
    """``document`` with the shapes section replaced by ``text`` (appended if absent)."""
    start = document.find(HEADING)
    if start < 0:
        return document.rstrip("\n") + "\n\n" + text
    end = document.find("\n## ", start + len(HEADING))
    tail = "" if end < 0 else document[end + 1:]
    return document[:start] + text + ("\n" + tail if tail else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--results", type=Path, default=REPO / "bench" / "results" / "shapes.json")
    parser.add_argument("--notes", type=Path, default=REPO / "bench" / "shapes_notes.md",
                        help="hand-written reading of the numbers, inserted under the heading")
    parser.add_argument("--print", action="store_true", help="print the section instead of writing files")
    args = parser.parse_args()
    results = json.loads(args.results.read_text())
    notes = args.notes.read_text() if args.notes.is_file() else ""
    text = section(results, notes)
    if args.print:
        print(text)
        return
    docs = REPO / "docs"
    (docs / "img").mkdir(parents=True, exist_ok=True)
    plot(results, docs)
    target = docs / "benchmarks.md"
    target.write_text(replace_section(target.read_text(), text))
    print(f"wrote {target} ({HEADING!r}) and {docs / ALPHA_PLOT}, {docs / STEPS_PLOT}")


if __name__ == "__main__":
    main()
