"""Training metrics: JSON lines on disk, a PNG plot, and TensorBoard when it is installed.

``metrics.jsonl`` holds one JSON object per line, each with ``step`` and any of ``loss``,
``lr``, ``steps_per_s``, ``val/text_clip``, ``val/image_clip``, ``val/loss``. On resume the lines
written after the resumed step (by the interrupted run) are dropped, so the file reads as one run.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any


class MetricsLog:
    """Append-only metrics of one run (only rank 0 writes)."""

    def __init__(self, folder: Path, *, resume_step: int | None = None, tensorboard: bool = True) -> None:
        self.folder = folder
        self.path = folder / "metrics.jsonl"
        self.plot_path = folder / "metrics.png"
        folder.mkdir(parents=True, exist_ok=True)
        if resume_step is None:
            self.path.write_text("")
        else:
            self._truncate_after(resume_step)
        self.writer = _tensorboard_writer(folder / "tensorboard") if tensorboard else None

    def _truncate_after(self, step: int) -> None:
        kept = [line for line in self.read() if line.get("step", 0) <= step]
        self.path.write_text("".join(json.dumps(line) + "\n" for line in kept))

    def log(self, step: int, values: dict[str, float]) -> None:
        """Append one line; also to TensorBoard."""
        record: dict[str, Any] = {"step": step}
        record.update({k: (float(v) if math.isfinite(float(v)) else str(v)) for k, v in values.items()})
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
        if self.writer is not None:
            for key, value in values.items():
                self.writer.add_scalar(key, float(value), step)
            self.writer.flush()

    def read(self) -> list[dict[str, Any]]:
        """Every record so far."""
        if not self.path.is_file():
            return []
        return [json.loads(line) for line in self.path.read_text(encoding="utf-8").splitlines() if line.strip()]

    def plot(self) -> Path:
        """(Re)draw ``metrics.png``: training loss (log scale) and validation CLIP scores over steps."""
        import matplotlib.pyplot as plt

        figure = self.figure()
        tmp = self.plot_path.with_name(".metrics.png.tmp")
        figure.savefig(tmp, dpi=100, format="png")
        plt.close(figure)
        tmp.replace(self.plot_path)
        return self.plot_path

    def figure(self) -> Any:
        """The matplotlib figure :meth:`plot` saves. Legends sit below the axes, so no point (the newest
        one least of all) is ever hidden behind them."""
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt

        records = self.read()
        figure, (loss_ax, val_ax) = plt.subplots(1, 2, figsize=(11, 4.5), layout="constrained")
        losses = [(r["step"], r["loss"]) for r in records if isinstance(r.get("loss"), float)]
        if losses:
            loss_ax.plot(*zip(*losses), label="train loss", linewidth=1)
        val_losses = [(r["step"], r["val/loss"]) for r in records if isinstance(r.get("val/loss"), float)]
        if val_losses:
            loss_ax.plot(*zip(*val_losses), "o-", label="held-out loss (EMA)", markersize=3)
        if losses or val_losses:
            loss_ax.set_yscale("log")
        loss_ax.set_title("loss")
        for key, label in (("val/attributes", "attributes right (text prompts)"), ("val/text_clip", "text prompts"),
                           ("val/image_clip", "held-out images")):
            points = [(r["step"], r[key]) for r in records if isinstance(r.get(key), float)]
            if points:
                val_ax.plot(*zip(*points), "o-", label=label, markersize=3)
        val_ax.set_title("validation (EMA): CLIP score, attribute accuracy where known")
        for ax in (loss_ax, val_ax):
            ax.set_xlabel("step")
            if ax.get_legend_handles_labels()[0]:
                ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=2, frameon=False)
        return figure

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _tensorboard_writer(folder: Path) -> Any:
    """A SummaryWriter if TensorBoard is installed, else None (it is optional)."""
    try:
        import tensorboard  # noqa: F401  (torch's writer needs the package)
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(log_dir=str(folder))
