"""Load the shapes world's prompt sets (``bench/prompts/*.jsonl``) with the truth of every prompt.

``load_prompt_set("shapes-heldout")`` -> a list of :class:`PromptCase`. The sets and why there are
two (``shapes-tune`` may be tuned on, ``shapes-heldout`` is reported on only) are described in
``bench/prompts/make_prompt_sets.py``, which writes them. A prompt's truth is the attribute names
stored with it, never a parser's reading of its text. Import with ``bench/`` on ``sys.path``
(``sys.path.insert(0, "bench")``; ``import prompt_sets``), as the other benchmark scripts do.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from latentmap import LatentmapError

PROMPTS_DIR = Path(__file__).resolve().parent / "prompts"
GROUPS = ("colour+shape", "3-5", "other")


@dataclass(frozen=True)
class PromptCase:
    """One prompt, the classes it names (attribute -> class name) and its group."""

    prompt: str
    attributes: dict[str, str]
    group: str = field(default="")

    @property
    def text(self) -> str:
        """The prompt (the name ``bench/shapes_common.PromptCase`` uses)."""
        return self.prompt

    @property
    def truth(self) -> dict[str, int]:
        """Attribute -> class index, as ``latentmap_shapes.decode_attributes`` reports them."""
        from latentmap_shapes import class_index

        return {name: class_index(name, value) for name, value in self.attributes.items()}


def available_prompt_sets() -> list[str]:
    """Names of the prompt sets in ``bench/prompts`` (file names without ``.jsonl``)."""
    return sorted(path.stem for path in PROMPTS_DIR.glob("*.jsonl"))


def load_prompt_set(name: str) -> list[PromptCase]:
    """The prompt set ``name`` (e.g. ``"shapes-tune"``, ``"shapes-heldout"``) or a path to a ``.jsonl``."""
    path = Path(name) if name.endswith(".jsonl") else PROMPTS_DIR / f"{name}.jsonl"
    if not path.is_file():
        raise LatentmapError(f"prompt set {name!r} not found at {path}; available: {', '.join(available_prompt_sets())}")
    cases = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            case = PromptCase(str(record["prompt"]), dict(record["attributes"]), str(record.get("group", "")))
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise LatentmapError(f"{path}:{number}: expected {{\"prompt\": ..., \"attributes\": {{...}}}}: {exc}") from None
        case.truth  # noqa: B018 - validates every attribute name and class now, with a clear error
        cases.append(case)
    return cases
