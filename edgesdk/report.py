"""report.json and one self-contained report.html (plots inlined as PNG) per conversion."""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__
from .spec import ModelSpec

__all__ = ["write_report", "render_html"]

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
    if kind == "%":
        return f"{value:.2%}"
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


def _diff_histogram(name: str, reference: np.ndarray, logits: np.ndarray) -> str:
    diff = np.abs(reference.astype(np.float64) - logits).max(1)
    fig, ax = _figure()
    floor = 1e-9
    ax.hist(np.log10(np.maximum(diff, floor)), bins=40, color="#3b6ea8")
    ax.set_xlabel("log10 max |logit diff| per sample")
    ax.set_ylabel("samples")
    ax.set_title(f"{name}: PyTorch vs runtime")
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


def _pass_item(record: dict[str, Any]) -> str:
    e = html.escape
    figures = {k: v for k, v in record.items() if k not in ("name", "changed", "heldout")}
    if "heldout" in record:
        figures.update({f"heldout_{k}": v for k, v in record["heldout"].items() if k != "curve"})
    cells = "".join(f"<tr><td class=l>{e(k)}</td><td class=l>{e(_fmt(v))}</td></tr>" for k, v in figures.items())
    return (f"<li><code>{e(record['name'])}</code>: {'changed' if record.get('changed') else 'no change'}"
            f"<table>{cells}</table></li>")


def _section(model: dict[str, Any]) -> str:
    e = html.escape
    rows = []
    for b in model["bundles"]:
        p = b.get("parity") or {}
        lat = b.get("latency_ms") or {}
        acc_delta = None
        if p.get("accuracy_bundle") is not None and p.get("accuracy_reference") is not None:
            acc_delta = p["accuracy_bundle"] - p["accuracy_reference"]
        rows.append(
            f"<tr><td class=l>{e(b['name'])}</td><td>{_fmt(b['bytes'], 'bytes')}</td>"
            f"<td>{_fmt(p.get('max_abs_diff'))}</td><td>{_fmt(p.get('mean_abs_diff'))}</td>"
            f"<td>{_fmt(p.get('agreement'), '%')}</td><td>{_fmt(p.get('accuracy_bundle'), '%')}</td>"
            f"<td>{'–' if acc_delta is None else f'{acc_delta:+.2%}'}</td>"
            f"<td>{_fmt(lat.get('p50'))}</td><td>{_fmt(lat.get('p90'))}</td>"
            f"<td class='l {e(b['status'])}'>{e(b['status'])}</td><td class=l>{e(b['reason'])}</td></tr>"
        )
    passes = "".join(_pass_item(r) for r in model["passes"]) or "<li>none</li>"
    plots = "".join(
        f"<figure><img alt='{e(name)}' src='data:image/png;base64,{png}'></figure>"
        for name, png in model.get("plots", {}).items()
    )
    ver = model.get("verification") or {}
    return f"""
<h2>{e(model['name'])} <small>({e(model['kind'])}, {len(model['labels'])} labels)</small></h2>
<p>Verification data: {e(str(ver.get('source', 'none')))}, {ver.get('samples', 0)} samples;
PyTorch accuracy {_fmt(ver.get('accuracy_reference'), '%')}.</p>
<table><tr><th class=l>bundle</th><th>size</th><th>max |Δlogit|</th><th>mean |Δlogit|</th>
<th>top-1 agreement</th><th>accuracy</th><th>Δ accuracy</th><th>p50 ms</th><th>p90 ms</th>
<th class=l>status</th><th class=l>reason</th></tr>{''.join(rows)}</table>
<h3>Passes</h3><ul>{passes}</ul>
<div class=plots>{plots}</div>"""


def render_html(models: list[dict[str, Any]]) -> str:
    """One self-contained HTML page for one or more models' report sections."""
    body = "".join(_section(m) for m in models)
    return (f"<!doctype html><html><head><meta charset=utf-8><title>edgesdk parity report</title>"
            f"<style>{_CSS}</style></head><body><h1>edgesdk parity report</h1>"
            f"<p>edgesdk {__version__}. Parity compares each bundle, run in its own runtime, with "
            f"PyTorch on the same inputs. Latencies are batch 1 on the machine that converted.</p>"
            f"{body}</body></html>\n")


def write_report(folder: Path, spec: ModelSpec, records: list, passes: list[dict[str, Any]],
                 verification: Any) -> dict[str, Any]:
    """Write report.json and report.html for one model; returns its section, plots included."""
    model: dict[str, Any] = {
        "name": spec.name,
        "kind": spec.kind,
        "labels": list(spec.labels),
        "passes": passes,
        "bundles": [r.to_dict() for r in records],
    }
    if verification is not None:
        labels = verification.samples.labels
        known = labels >= 0
        acc = float((verification.reference.argmax(1)[known] == labels[known]).mean()) if known.any() else None
        model["verification"] = {"source": verification.samples.source, "samples": len(verification.rows),
                                 "accuracy_reference": acc}
    report = {"edgesdk": __version__, "models": [model]}
    (folder / "report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    model["plots"] = {f"{r.name} logit differences": _diff_histogram(f"{spec.name} {r.name}",
                                                                      verification.reference, r.logits)
                      for r in records if r.logits is not None}
    model["plots"].update({f"{p['name']} corpus curve": _corpus_curve(spec.name, p["heldout"])
                           for p in passes if "heldout" in p})
    (folder / "report.html").write_text(render_html([model]), encoding="utf-8")
    return model
