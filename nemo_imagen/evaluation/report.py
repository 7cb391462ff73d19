"""The evaluation's outputs: a CSV row per guidance scale and the FID-against-CLIP-score plot."""
import csv
from pathlib import Path
from typing import List, NamedTuple

# the CSV keeps the YAML's word for the guidance scale (`cfg`) as its first column
COLUMNS = ("cfg", "fid", "clip_score", "feature_extractor", "clip_model", "n")


class Row(NamedTuple):
    guidance_scale: float
    fid: float
    clip_score: float
    feature_extractor: str
    clip_model: str
    n: int


def write_csv(rows: List[Row], path) -> Path:
    path = Path(path)
    with path.open("w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(COLUMNS)
        for row in rows:
            writer.writerow([f"{row.guidance_scale:g}", f"{row.fid:.6f}", f"{row.clip_score:.6f}", row.feature_extractor,
                             row.clip_model, row.n])
    return path


def plot_fid_clip(rows: List[Row], path) -> Path:
    """FID (y) against CLIP score (x), one point per guidance scale, labelled with it."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    rows = sorted(rows, key=lambda row: row.guidance_scale)
    figure, axes = plt.subplots(figsize=(5, 4), dpi=120)
    axes.plot([row.clip_score for row in rows], [row.fid for row in rows], "o-")
    for row in rows:
        axes.annotate(f"cfg {row.guidance_scale:g}", (row.clip_score, row.fid), textcoords="offset points", xytext=(5, 5))
    axes.set_xlabel(f"CLIP score ({rows[0].clip_model}, mean cosine)")
    axes.set_ylabel(f"FID-{rows[0].n} ({rows[0].feature_extractor})")
    axes.margins(0.15)  # room for the labels of the outermost points
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return Path(path)
