"""Why does text fidelity fall while the prior trains, and what fixes it? Curves over training, shapes world.

Each *setting* trains a shapes prior (the recipe's loop, in memory; see ``fidelity_common``) and scores its
EMA weights every ``--every`` steps on the TUNE prompt set (``bench/prompts/shapes-tune.jsonl``), without
re-ranking: 8 candidates per prompt, DDIM 25 steps, attributes decoded exactly from the latents.
Measures: colour+shape right on colour+shape prompts, all named right on 3-5-attribute prompts,
position right on those naming a position.

Two kinds of candidates:

- *sampling-time* (``fidelity_common.VARIANTS``, scored at every curve point on the same weights, since
  they change only the conditions handed to the sampler): the modality-gap correction from unpaired
  statistics (``latentmap.prior.condition_gap``: ``mean``, ``whiten``; text statistics from a caption
  corpus of random attributes, or from the tune prompts), guidance 1 and 2. ``--checkpoints`` scores
  saved weights (the README run's) instead of training;
- *training-time* (``--settings``, comma-separated names or groups of ``SETTINGS``/``GROUPS``): the recipe
  (``baseline``), LAFITE noise level (``alpha``), noise per dimension matched to the spread of unit text
  embeddings of an unpaired caption corpus (``shape``), raw conditions (``raw``), model size (``size``),
  data size (``data``).

Other modes: ``--goals`` (checkpoints on a prompt set, 16 candidates, no re-ranking and re-ranked),
``--retrofit`` (a checkpoint with the recipe's correction fitted, as ``latentmap train`` fits it),
``--write-corpus`` (the shapes recipe's text corpus and validation prompts).

Results go to ``bench/results/text_fidelity.json`` (one record per setting and seed, with the encoder's
SHA-256 and the load average); ``--plot`` redraws ``docs/img/text_fidelity*.png`` and prints the table.

    python bench/text_fidelity.py --settings baseline,gap --threads 1
    python bench/text_fidelity.py --plot
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fidelity_common import (  # noqa: E402
    REPO, VARIANTS, Scorer, Setting, caption_corpus, load_average, load_pairs, load_prompt_set, run_setting, sha256_of,
    summarise_curve,
)

RESULTS = REPO / "bench" / "results" / "text_fidelity.json"
RECIPE = REPO / "recipes" / "shapes.yaml"
IMAGES = REPO / "docs" / "img"

BASE = Setting("baseline")
SETTINGS: dict[str, Setting] = {s.name: s for s in [
    BASE,
    replace(BASE, name="alpha=0.5", noise_alpha=0.5),
    replace(BASE, name="alpha=1.5", noise_alpha=1.5),
    replace(BASE, name="alpha=2.0", noise_alpha=2.0),
    replace(BASE, name="noise=text-spread", noise_shape="text"),
    replace(BASE, name="noise=text-spread,alpha=1.5", noise_shape="text", noise_alpha=1.5),
    replace(BASE, name="raw conditions", normalize_cond=False),
    replace(BASE, name="alpha=0", noise_alpha=0.0),
    replace(BASE, name="model 64x2", dim=64, depth=2, heads=2),
    replace(BASE, name="model 256x4", dim=256, depth=4, heads=8),
    replace(BASE, name="data 10k", samples=10_000),
]}
GROUPS: dict[str, list[str]] = {
    "alpha": ["alpha=0.5", "alpha=1.5", "alpha=2.0"],
    "shape": ["noise=text-spread", "noise=text-spread,alpha=1.5"],
    "raw": ["raw conditions"],
    "size": ["model 64x2", "model 256x4"],
    "data": ["data 10k"],
}


def expand(names: str) -> list[str]:
    chosen: list[str] = []
    for name in [n.strip() for n in names.split(";" if ";" in names else ",") if n.strip()]:
        for item in GROUPS.get(name, [name]):
            if item not in SETTINGS:
                raise SystemExit(f"unknown setting {item!r}; known: {', '.join(SETTINGS)}; groups: {', '.join(GROUPS)}")
            chosen.append(item)
    return chosen


def read_results(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {"runs": {}}


def write_result(path: Path, key: str, record: dict) -> None:
    """Merge one record into the results file (re-read first: two processes may share it)."""
    data = read_results(path)
    data["runs"][key] = record
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    tmp.replace(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--settings", default="baseline")
    parser.add_argument("--data", type=Path, default=REPO / "data" / "shapes")
    parser.add_argument("--encoder", type=Path, default=None, help="shapes_clip.safetensors (default: the shipped one)")
    parser.add_argument("--prompts", default="shapes-tune")
    parser.add_argument("--steps", type=int, default=None, help="override every setting's steps")
    parser.add_argument("--batch-size", type=int, default=None, help="override every setting's batch size")
    parser.add_argument("--every", type=int, default=250)
    parser.add_argument("--candidates", type=int, default=8)
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--tag", default="", help="suffix of the result keys (e.g. the encoder version)")
    parser.add_argument("--force", action="store_true", help="re-run settings already in the results")
    parser.add_argument("--plot", action="store_true", help="only draw the plots and print the table")
    parser.add_argument("--write-corpus", type=Path, default=None,
                        help="write the unpaired caption corpus (random attributes) the shapes recipe's "
                             "train.text_corpus names, and the validation prompts file, then stop")
    parser.add_argument("--variants", default="all", help="sampling-time variants scored at each point "
                        "(comma-separated names of fidelity_common.VARIANTS, or all)")
    parser.add_argument("--checkpoints", nargs="*", type=Path, default=None,
                        help="score these saved priors (last.safetensors files, or training states: their EMA) "
                             "as one curve named --name instead of training")
    parser.add_argument("--name", default="README run (recipes/shapes.yaml)")
    parser.add_argument("--retrofit", nargs=2, metavar=("SOURCE", "OUT"), default=None,
                        help="write SOURCE's weights with recipes/shapes.yaml's text correction fitted (see retrofit)")
    parser.add_argument("--recipe-set", action="append", default=[], metavar="KEY=VALUE",
                        help="with --retrofit: recipe overrides (e.g. prior.text_correction=none)")
    parser.add_argument("--goals", nargs="*", type=Path, default=None,
                        help="checkpoints to measure on --prompts (16 candidates, recipe sampling, no re-ranking "
                             "and re-ranked); results under 'goals' in --out")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.plot:
        plot(read_results(args.out), IMAGES)
        return
    if args.write_corpus:
        write_corpus(args.write_corpus)
        return
    if args.retrofit:
        source, out = args.retrofit
        retrofit(Path(source), Path(out), RECIPE, [f"data.dir={args.data}", *args.recipe_set])
        return
    if args.goals:
        measure_goals(args)
        return

    from latentmap import get_encoder

    encoder = get_encoder("shapes-clip", weights=str(args.encoder) if args.encoder else None)
    encoder_sha = encoder.identity()["weights_sha256"]
    latents, embeds, info = load_pairs(args.data)
    if info["encoder_sha256"] != encoder_sha:
        raise SystemExit(f"{args.data} was built with encoder {info['encoder_sha256'][:12]}, not {encoder_sha[:12]}: "
                         "rebuild it (latentmap build-data) or pass --encoder")
    cases = load_prompt_set(args.prompts)
    text = encoder.embed_text([c.prompt for c in cases]).float()
    corpora = {"captions": encoder.embed_text(caption_corpus(4000)).float(), "tune": text}
    chosen = VARIANTS if args.variants == "all" else tuple(v for v in VARIANTS if v[0] in args.variants.split(","))
    scorer = Scorer(cases, text, corpora, candidates=args.candidates, variants=chosen)
    if args.checkpoints:
        score_checkpoints(args, scorer, embeds, encoder_sha)
        return
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for seed in [int(s) for s in args.seeds.split(",")]:
        for name in expand(args.settings):
            setting = replace(SETTINGS[name], seed=seed)
            if args.steps:
                setting = replace(setting, steps=args.steps)
            if args.batch_size:
                setting = replace(setting, batch_size=args.batch_size)
            scale = f"steps={setting.steps},batch={setting.batch_size}"
            key = f"{name}|seed={seed}|{scale}|{args.prompts}{args.tag}|enc={encoder_sha[:8]}"
            if key in read_results(args.out)["runs"] and not args.force:
                print(f"skip {key} (done)")
                continue
            print(f"run {key} (load {load_average()})", flush=True)
            record = run_setting(setting, latents, embeds, info, scorer, corpora["captions"], every=args.every,
                                 progress=lambda line: print(line, flush=True))
            record.update({"prompts": args.prompts, "candidates": args.candidates, "variants": scorer.variants,
                           "encoder_file_sha256": sha256_of(encoder.weights)})
            write_result(args.out, key, record)


def load_any_prior(path: Path, template: Path | None) -> tuple[object, int]:
    """A prior file (its EMA weights) or a training state's EMA weights (built like ``template``); with its step."""
    from safetensors import safe_open

    from latentmap.checkpoint import load_prior

    if path.name.startswith("state-"):
        prior, _ = load_prior(template)
        with safe_open(str(path), framework="pt") as handle:
            ema = {k[len("ema."):]: handle.get_tensor(k) for k in handle.keys() if k.startswith("ema.")}
        wanted = prior.state_dict()
        prior.load_state_dict({k: ema[k] for k in wanted})
        return prior.eval(), int(path.stem.split("-")[1])
    prior, document = load_prior(path)
    return prior, int(document.get("step", 0))


def score_checkpoints(args: argparse.Namespace, scorer: Scorer, embeds: torch.Tensor, encoder_sha: str) -> None:
    """One curve from saved priors (e.g. the README run's checkpoints), every variant at each."""
    template = next((p for p in args.checkpoints if not p.name.startswith("state-")), None)
    curve = []
    for path in args.checkpoints:
        prior, step = load_any_prior(path, template)
        point = {"step": step, **scorer(prior, embeds[:20_000])}
        curve.append(point)
        print(step, {k: round(v, 3) for k, v in point.items() if k.split("|")[0] in ("colour_shape", "all_3_5", "position_3_5")},
              flush=True)
    curve.sort(key=lambda p: p["step"])
    key = f"{args.name}|seed=0|steps={curve[-1]['step']},batch=256|{args.prompts}{args.tag}|enc={encoder_sha[:8]}"
    write_result(args.out, key, {"curve": curve, "checkpoints": [str(p) for p in args.checkpoints],
                                 "candidates": args.candidates, "variants": scorer.variants, "load_average": load_average(),
                                 "encoder_sha256": encoder_sha})


def retrofit(source: Path, out: Path, recipe_path: Path, overrides: list[str]) -> None:
    """``source``'s weights with the recipe's text correction, its statistics fitted as ``latentmap train`` does.

    The correction never enters the training loss, so a run trained without it has exactly the weights
    the same recipe trains with it (up to float rounding): this gives the README run's checkpoints the
    correction without training them again. Metadata (recipe, identities) become the recipe's.
    """
    from latentmap import get_encoder, get_generator, get_prior
    from latentmap.checkpoint import load_prior, read_metadata, save_prior
    from latentmap.data.manifest import load_manifest
    from latentmap.recipe import load_recipe
    from latentmap.training.text_statistics import fit_text_statistics

    recipe = load_recipe(recipe_path, overrides)
    if source.name.startswith("state-"):  # a training state: its EMA weights, built like the run's step-500 file
        trained, step = load_any_prior(source, source.parent / "step-500.safetensors")
        document = {**read_metadata(source.parent / "step-500.safetensors"), "step": step}
    else:
        trained, document = load_prior(source)
    prior = get_prior(recipe.prior.name, **trained.shape.to_dict(), **recipe.prior.factory_options())
    missing = prior.load_state_dict(trained.state_dict(), strict=False).missing_keys
    assert all(k.startswith("cond_") for k in missing), missing
    manifest = load_manifest(recipe.data.dir)
    fit_text_statistics(prior, recipe, manifest, torch.device("cpu"))
    generator = get_generator(recipe.generator.name, **recipe.generator.factory_options())
    encoder = get_encoder(recipe.encoder.name, **recipe.encoder.factory_options())
    save_prior(out, prior, metadata={"encoder": encoder.identity(), "generator": generator.identity(),
                                     "space": document["space"], "recipe": recipe.to_dict(), "ema": True,
                                     "step": document.get("step"), "retrofitted_from": str(source)})
    print(f"wrote {out} (step {document.get('step')}, text_correction {recipe.prior.options.text_correction})")


CORPUS_SIZE = 2000
VALIDATION_PROMPTS = REPO / "recipes" / "prompts" / "shapes-val.txt"


def write_corpus(path: Path) -> None:
    """The shapes recipe's text corpus (captions of random attribute draws) and validation prompts (the tune set's)."""
    lines = caption_corpus(CORPUS_SIZE, seed=1)
    header = ("# Text corpus of the shapes recipe's prior.text_correction (train.text_corpus): captions of RANDOM\n"
              "# attribute draws in the encoder's caption grammar, never paired with an image. Written by\n"
              "# python bench/text_fidelity.py --write-corpus recipes/prompts/shapes-corpus.txt\n")
    path.write_text(header + "\n".join(lines) + "\n", encoding="utf-8")
    cases = load_prompt_set("shapes-tune")
    header = ("# Validation prompts of the shapes recipe: the TUNE prompt set's wordings (bench/prompts/shapes-tune.jsonl);\n"
              "# their truth is read by the shapes generator (prompt_attributes) for val/attributes, which picks\n"
              "# best.safetensors. The held-out set is never used here. Written by bench/text_fidelity.py --write-corpus.\n")
    VALIDATION_PROMPTS.write_text(header + "\n".join(c.prompt for c in cases) + "\n", encoding="utf-8")
    print(f"wrote {path} ({len(lines)} captions) and {VALIDATION_PROMPTS} ({len(cases)} prompts)")


def measure_goals(args: argparse.Namespace) -> None:
    """Each checkpoint on the prompt set: accuracy without and with re-ranking, seconds, the encoder."""
    from fidelity_common import evaluate_checkpoint

    cases = load_prompt_set(args.prompts)
    for path in args.goals:
        for seed in [int(s) for s in args.seeds.split(",")]:
            key = f"{path}|{args.prompts}|sample-seed={seed}"
            print(f"goals {key} (load {load_average()})", flush=True)
            record = evaluate_checkpoint(path, cases, candidates=16, seed=seed)
            print(json.dumps({k: record[k] for k in ("no_rerank", "reranked", "seconds")}), flush=True)
            data = read_results(args.out)
            data.setdefault("goals", {})[key] = record
            tmp = args.out.with_suffix(".tmp")
            tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
            tmp.replace(args.out)


# ------------------------------------------------------------------------------------------------ report
MEASURES = (("colour_shape", "colour+shape right (colour+shape prompts)"),
            ("all_3_5", "all named right (3-5-attribute prompts)"),
            ("position_3_5", "position right (3-5-attribute prompts)"))


def variant_names(record: dict) -> list[str]:
    return [v[0] for v in record.get("variants", [["none"]])]


def measure_key(measure: str, variant: str) -> str:
    return measure if variant == "none" else f"{measure}|{variant}"


def plot(data: dict, folder: Path) -> None:
    """One figure per prompt set, encoder and scale: a panel per measure, a curve per setting and sampling
    variant (mean over seeds); the table of peak and last values printed for docs/shapes.md."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups: dict[str, dict[str, list[dict]]] = {}
    for key, record in data["runs"].items():
        name, _seed, scale, prompts, encoder = key.split("|")
        groups.setdefault(f"{prompts}|{encoder}|{scale}", {}).setdefault(name, []).append(record)
    folder.mkdir(parents=True, exist_ok=True)
    for group, settings in sorted(groups.items()):
        fig, axes = plt.subplots(1, len(MEASURES), figsize=(5.2 * len(MEASURES), 4.2), sharex=True)
        rows = []
        for name, records in sorted(settings.items()):
            for variant in variant_names(records[0]):
                steps = [p["step"] for p in records[0]["curve"]]
                label = name if variant == "none" else f"{name} + {variant}"
                label = label.replace("README run (recipes/shapes.yaml)", "README run")
                cells = []
                for ax, (measure, title) in zip(axes, MEASURES):
                    key = measure_key(measure, variant)
                    values = torch.tensor([[p.get(key, float("nan")) for p in r["curve"]] for r in records]).mean(0)
                    ax.plot(steps, values.tolist(), marker="o", ms=3, label=label,
                            lw=2.2 if "whiten@g2" in variant else 1.2, ls="--" if variant == "none" else "-")
                    ax.set_title(title, fontsize=9)
                    ax.set_xlabel("training step")
                    ax.grid(alpha=0.3)
                    summary = [summarise_curve(r["curve"], key) for r in records]
                    peak = sum(x["peak"] for x in summary) / len(summary)
                    last = sum(x["last"] for x in summary) / len(summary)
                    cells.append(f"{peak:.3f} ({summary[0]['peak_step']}) / {last:.3f}")
                rows.append(f"| {label} | {len(records)} | " + " | ".join(cells) + " |")
        axes[0].legend(fontsize=7)
        fig.suptitle(f"text fidelity over training, no re-ranking ({group.replace('|', ', ')})", fontsize=10)
        fig.tight_layout()
        slug = group.split("|")[1].replace("enc=", "enc-") + "-" + group.split("|")[2].split(",")[0].replace("=", "")
        fig.savefig(folder / f"text_fidelity-{slug}.png", dpi=80)
        plt.close(fig)
        print(f"\n{group} -> docs/img/text_fidelity-{slug}.png")
        print("| setting + sampling | seeds | " + " | ".join(f"{m}: peak (step) / last" for m, _ in MEASURES) + " |")
        print("|---|---|" + "---|" * len(MEASURES))
        print("\n".join(rows))


if __name__ == "__main__":
    main()
