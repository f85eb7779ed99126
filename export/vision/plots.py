"""`make eval`'s figures: a reliability diagram and a risk–coverage plot (matplotlib, Agg)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from export.vision.metrics import reliability, risk_coverage  # noqa: E402

NAMES = {"single": "single view", "multi": "multi-view", "multi_flip": "multi-view + flip"}


def reliability_png(result: dict, out: Path) -> Path:
    """One panel per view pipeline: accuracy against confidence per bin, for the uncalibrated
    distribution, temperature scaling and the default calibrator (marker size ∝ bin count)."""
    labels = result["labels"]
    curves = result["curves"]
    fig, axes = plt.subplots(1, len(curves), figsize=(4.2 * len(curves), 4.2), sharey=True)
    for ax, (pipeline, by_cal) in zip(np.atleast_1d(axes), curves.items(), strict=True):
        ax.plot([0, 1], [0, 1], color="0.6", linestyle="--", linewidth=1, label="perfect")
        default = result["defaults"][pipeline]
        for name in sorted(by_cal, key=lambda n: (n != "none", n != "temperature", n)):  # stable colours
            rel = reliability(by_cal[name], labels)
            pts = [(c, a, n) for c, a, n in zip(rel["confidence"], rel["accuracy"], rel["count"], strict=True) if n]
            conf, acc, cnt = (np.array(v) for v in zip(*pts, strict=True))
            ece = result["calibrators"][pipeline][name]["ece"]
            tag = f"{name}{' (default)' if name == default else ''}, ECE {ece:.3f}"
            ax.plot(conf, acc, marker="o", markersize=3, linewidth=1.2, label=tag)
            ax.scatter(conf, acc, s=4 + 60 * cnt / cnt.max(), alpha=0.35)
        ax.set_title(NAMES[pipeline])
        ax.set_xlabel("confidence (top-1 probability)")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.legend(fontsize=7, loc="upper left")
    np.atleast_1d(axes)[0].set_ylabel("accuracy")
    fig.suptitle(f"Reliability on {len(labels)} test scenes (15 bins)")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def risk_coverage_png(result: dict, out: Path) -> Path:
    """Error rate among the most confident images against the share answered, per pipeline
    (default calibrator), with each curve's AURC."""
    labels = result["labels"]
    fig, ax = plt.subplots(figsize=(6, 4.2))
    for pipeline, by_cal in result["curves"].items():
        default = result["defaults"][pipeline]
        cov, risk = risk_coverage(by_cal[default], labels)
        aurc = result["calibrators"][pipeline][default]["aurc"]
        ax.plot(cov, risk, linewidth=1.5, label=f"{NAMES[pipeline]} ({default}), AURC {aurc:.3f}")
    ax.set_xlabel("coverage (share of images answered, most confident first)")
    ax.set_ylabel("risk (error rate among them)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"Risk–coverage on {len(labels)} test scenes")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
