"""report.json and one self-contained report.html (plots inlined as PNG) per conversion."""

from __future__ import annotations

import base64
import functools
import io
import json
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__
from .baseline import compare_reports, format_comparison
from .figures import BundleFigures
from .parity import ParityResult, gates
from .spec import ModelSpec

__all__ = ["write_report", "render_html"]

MATRIX_GATES = ("logits", "top-1 agreement", "accuracy drop")

_CSS = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222;padding:0 1em}
table{border-collapse:collapse;margin:1em 0;width:100%}
th,td{border:1px solid #ccc;padding:4px 8px;text-align:right;font-size:14px}
th{background:#f3f3f3}td.l,th.l{text-align:left}
.pass{color:#0a7d2c;font-weight:bold}.fail,.error{color:#c0121b;font-weight:bold}.skipped{color:#8a6d00}
img{max-width:100%}.plots{display:flex;flex-wrap:wrap;gap:1em}.plots figure{margin:0;flex:1 1 320px}
code{background:#f3f3f3;padding:1px 4px}
"""


def _fmt(value: Any, kind: str = "g") -> str:
    if value is None:
        return "–"
    if kind in ("%", "+%"):
        return f"{value:+.2%}" if kind == "+%" else f"{value:.2%}"
    if kind == "bytes":
        return f"{value / 1e6:.2f} MB"
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _figure(width: float = 5, height: float = 3):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(width, height))


def _diff_histogram(name: str, figures: BundleFigures) -> str:
    counts, used = figures.diffs.counts, np.flatnonzero(figures.diffs.counts)
    edges = np.log10([max(figures.diffs.edge(i), figures.diffs.low) for i in range(used[0] - 1, used[-1] + 1)])
    fig, ax = _figure()
    ax.stairs(counts[used[0]:used[-1] + 1], edges, fill=True, color="#3b6ea8")
    ax.set_xlabel("log10 max |logit diff| per sample")
    ax.set_ylabel("samples")
    ax.set_title(f"{name}: PyTorch vs runtime")
    return _png(fig)


def _reliability(name: str, figures: BundleFigures) -> str | None:
    if not figures.labeled:
        return None
    fig, ax = _figure(4.2, 3.2)
    ax.plot([0, 1], [0, 1], color="#999", lw=1, ls="--")
    for (what, calibration), color in zip(figures.calibration.items(), ("#3b6ea8", "#d0703c")):
        rows = calibration.rows()
        ax.plot([r[0] for r in rows], [r[1] for r in rows], marker="o", color=color,
                label=f"{what} (ECE {calibration.ece():.3f})")
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_title(f"{name}: reliability")
    ax.legend(fontsize=8)
    return _png(fig)


def _per_class(name: str, details: dict[str, Any]) -> str:
    classes = list(details["per_class_agreement"])
    fig, ax = _figure(max(4.0, 0.5 * len(classes)), 3)
    ax.bar(range(len(classes)), [details["per_class_agreement"][c] for c in classes], color="#3b6ea8")
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right", fontsize=8)
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("top-1 agreement")
    ax.set_title(f"{name}: per PyTorch class")
    return _png(fig)


def _corpus_curve(name: str, heldout: dict[str, Any]) -> str:
    """Held-out texts tokenized exactly as before, against the share of the corpus used."""
    fractions, shares = zip(*heldout["curve"])
    fig, ax = _figure()
    ax.plot(fractions, shares, marker="o", color="#3b6ea8")
    ax.set_xscale("log")
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("fraction of the corpus used for pruning")
    ax.set_ylabel("held-out texts tokenized exactly")
    ax.set_title(f"{name}: vocabulary pruning")
    ax.grid(alpha=0.3)
    return _png(fig)


def _sizing_curve(name: str, sizing: dict[str, Any]) -> str:
    """Held-out exact share (and measured agreement) against the ranked pieces kept, with the choice."""
    fig, ax = _figure()
    ax.plot(*zip(*sizing["coverage_curve"]), marker="o", color="#3b6ea8", label="tokenized exactly")
    if sizing.get("agreement_measured"):
        ax.plot(*zip(*sizing["agreement_measured"]), marker="s", ls="", color="#c0392b", label="agreement")
    ax.axvline(sizing["pieces"], color="#555", ls="--", label=f"kept: {sizing['pieces']:,}")
    ax.set_ylim(0, 1.02)
    ax.set_xlabel(f"ranked pieces kept ({sizing['ranked_from_corpus']:,} from the corpus, then the prior's)")
    ax.set_ylabel("share of held-out texts")
    ax.set_title(f"{name}: vocabulary sized for {sizing['target']}")
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    return _png(fig)


def _thumbnail(image: np.ndarray) -> str:
    """A 64-pixel-wide PNG of an image sample, base64."""
    from PIL import Image

    pixels = image[..., 0] if image.shape[-1] == 1 else image
    im = Image.fromarray(pixels)
    im = im.resize((64, max(1, round(64 * im.height / im.width))), Image.NEAREST)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def _disagreements(figures: BundleFigures) -> list[dict[str, Any]]:
    """The worst disagreements with the sample shown: a text's first 160 characters or a thumbnail."""
    out = []
    for d in figures.disagreements():
        item = d.pop("item")
        out.append({**d, **({"text": item} if isinstance(item, str) else {"thumbnail": _thumbnail(item)})})
    return out


def _pass_figures(record: dict[str, Any]) -> dict[str, Any]:
    """A pass's figures for the report; lists of rewrites or skips as one line per item."""
    nested = ("heldout", "sizing")
    figures = {k: v for k, v in record.items() if k not in ("name", "changed", *nested)}
    for key in nested:
        figures.update({f"{key}_{k}": v for k, v in record.get(key, {}).items()
                        if k not in ("curve", "coverage_curve", "agreement_measured")})
    return {k: _readable(v) for k, v in figures.items()}


def _readable(value: Any) -> Any:
    if isinstance(value, dict):
        return ", ".join(f"{k} {_readable(v)}" for k, v in value.items())
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        return "; ".join(_readable(v) for v in value)
    if isinstance(value, list):
        return " → ".join(str(v) for v in value) if len(value) == 2 else ", ".join(map(str, value)) or "none"
    return value


def _verdicts(bundle: dict[str, Any]) -> dict[str, str]:
    """Each parity gate's verdict for the matrix."""
    if bundle.get("parity") is None:
        return {}
    return {gate: status for gate, status, _ in gates(ParityResult.from_dict(bundle["parity"]))}


@functools.cache
def _template() -> Any:
    import jinja2

    env = jinja2.Environment(loader=jinja2.PackageLoader("edgesdk", "templates"), autoescape=True,
                             undefined=jinja2.ChainableUndefined, trim_blocks=False)
    def given(value: Any) -> Any:
        return None if isinstance(value, jinja2.Undefined) else value

    env.filters.update(fmt=lambda v, kind="g": _fmt(given(v), kind))
    env.globals.update(verdicts=_verdicts, pass_figures=_pass_figures, comparison_table=format_comparison,
                       matrix_gates=MATRIX_GATES)
    return env.get_template("report.html.j2")


def render_html(models: list[dict[str, Any]], comparison: dict[str, Any] | None = None) -> str:
    """One self-contained HTML page (``templates/report.html.j2``) for one or more models: the
    comparison with a baseline and the matrix of every bundle's gates first."""
    return _template().render(models=models, comparison=comparison, version=__version__, css=_CSS) + "\n"


def write_report(folder: Path, spec: ModelSpec, records: list, passes: list[dict[str, Any]],
                 verification: Any, model_gates: list[dict[str, Any]] | None = None,
                 baseline: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write report.json and report.html for one model (compared with ``baseline``, an earlier
    report, when given); returns its section, plots included."""
    model: dict[str, Any] = {
        "name": spec.name,
        "kind": spec.kind,
        "labels": list(spec.labels),
        "passes": passes,
        "gates": model_gates or [],
        "bundles": [r.to_dict() for r in records],
    }
    if verification is not None:
        model["verification"] = {"source": verification.data.source, "samples": verification.count,
                                 "chosen": verification.data.rule(),
                                 "accuracy_reference": verification.accuracy_reference()}
    with_figures = {r.name: r.figures for r in records if r.figures is not None}
    for bundle in model["bundles"]:
        if bundle["name"] in with_figures:
            bundle["details"] = with_figures[bundle["name"]].details()
    report = {"edgesdk": __version__, "models": [model]}
    comparison = None
    if baseline is not None:
        comparison = {"report": baseline["path"], "bundles": compare_reports(baseline, report)}
        report["baseline"] = comparison
    (folder / "report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    for bundle in model["bundles"]:
        figures = with_figures.get(bundle["name"])
        if figures is None:
            continue
        title = f"{spec.name} {bundle['name']}"
        bundle["plots"] = {"logit differences": _diff_histogram(title, figures),
                           "per class": _per_class(title, bundle["details"])}
        reliability = _reliability(title, figures)
        if reliability:
            bundle["plots"]["reliability"] = reliability
        bundle["disagreements"] = _disagreements(figures)
    model["plots"] = {f"{p['name']} corpus curve": _corpus_curve(spec.name, p["heldout"])
                      for p in passes if "heldout" in p}
    model["plots"].update({f"{p['name']} sizing": _sizing_curve(spec.name, p["sizing"])
                           for p in passes if "sizing" in p})
    (folder / "report.html").write_text(render_html([model], comparison), encoding="utf-8")
    return model
