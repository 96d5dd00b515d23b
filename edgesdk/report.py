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
from .baseline import compare_reports, format_comparison
from .parity import ParityResult, gates
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


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = np.exp(logits - logits.max(1, keepdims=True))
    return z / z.sum(1, keepdims=True)


def _calibration_bins(probs: np.ndarray, labels: np.ndarray, bins: int = 10):
    """Per confidence bin: mean confidence, accuracy, count; and the expected calibration error."""
    confidence, correct = probs.max(1), (probs.argmax(1) == labels)
    which = np.minimum((confidence * bins).astype(int), bins - 1)
    rows = [(confidence[which == b].mean(), correct[which == b].mean(), int((which == b).sum()))
            for b in range(bins) if (which == b).any()]
    ece = sum(n * abs(acc - conf) for conf, acc, n in rows) / len(labels)
    return rows, float(ece)


def bundle_details(samples: Any, reference: np.ndarray, logits: np.ndarray, classes: list[str],
                   limit: int = 8) -> dict[str, Any]:
    """Figures a person checks per bundle: calibration (ECE), per-class agreement, disagreements."""
    labels = samples.labels
    known = labels >= 0
    details: dict[str, Any] = {"per_class_agreement": {
        c: float((logits.argmax(1)[reference.argmax(1) == i] == i).mean())
        for i, c in enumerate(classes) if (reference.argmax(1) == i).any()}}
    if known.any():
        details["ece_reference"] = _calibration_bins(_softmax(reference[known]), labels[known])[1]
        details["ece_bundle"] = _calibration_bins(_softmax(logits[known]), labels[known])[1]
    flips = np.flatnonzero(reference.argmax(1) != logits.argmax(1))
    worst = flips[np.argsort(-np.abs(reference[flips] - logits[flips]).max(1), kind="stable")][:limit]
    ref_p, bun_p = _softmax(reference), _softmax(logits)
    details["disagreements"] = [{
        "index": int(i),
        "pytorch": [classes[int(ref_p[i].argmax())], float(ref_p[i].max())],
        "bundle": [classes[int(bun_p[i].argmax())], float(bun_p[i].max())],
        "max_abs_diff": float(np.abs(reference[i] - logits[i]).max()),
    } for i in worst]
    return details


def _reliability(name: str, samples: Any, reference: np.ndarray, logits: np.ndarray) -> str | None:
    known = samples.labels >= 0
    if not known.any():
        return None
    fig, ax = _figure(4.2, 3.2)
    ax.plot([0, 1], [0, 1], color="#999", lw=1, ls="--")
    for what, values, color in (("PyTorch", reference, "#3b6ea8"), ("bundle", logits, "#d0703c")):
        rows, ece = _calibration_bins(_softmax(values[known]), samples.labels[known])
        ax.plot([r[0] for r in rows], [r[1] for r in rows], marker="o", color=color, label=f"{what} (ECE {ece:.3f})")
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


def _thumbnail(image: np.ndarray) -> str:
    from PIL import Image

    pixels = image[..., 0] if image.shape[-1] == 1 else image
    im = Image.fromarray(pixels)
    im = im.resize((64, max(1, round(64 * im.height / im.width))), Image.NEAREST)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return f"<img alt='sample' src='data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}'>"


def _disagreement_rows(details: dict[str, Any], samples: Any) -> str:
    e = html.escape
    rows = []
    for d in details["disagreements"]:
        item = samples.items[d["index"]]
        shown = e(item[:160]) if isinstance(item, str) else _thumbnail(item)
        rows.append(f"<tr><td class=l>{shown}</td><td class=l>{e(d['pytorch'][0])} ({d['pytorch'][1]:.2f})</td>"
                    f"<td class=l>{e(d['bundle'][0])} ({d['bundle'][1]:.2f})</td><td>{d['max_abs_diff']:.3g}</td></tr>")
    if not rows:
        return "<p>No disagreements with PyTorch.</p>"
    return ("<h4>Disagreements with PyTorch, worst first</h4>"
            "<table><tr><th class=l>sample</th><th class=l>PyTorch</th><th class=l>bundle</th>"
            f"<th>max |Δlogit|</th></tr>{''.join(rows)}</table>")


def _robustness_table(robustness: dict[str, dict[str, float]]) -> str:
    if not robustness:
        return ""
    rows = "".join(f"<tr><td class=l>{html.escape(name)}</td><td>{r['agreement']:.2%}</td>"
                   f"<td>{r['pytorch_changed']:.2%}</td><td>{r['bundle_changed']:.2%}</td></tr>"
                   for name, r in robustness.items())
    return ("<h4>Robustness: small perturbations of the verification data</h4>"
            "<table><tr><th class=l>perturbation</th><th>agreement with PyTorch</th>"
            f"<th>PyTorch answers changed</th><th>bundle answers changed</th></tr>{rows}</table>")


def _int8_table(int8: dict[str, Any] | None) -> str:
    if not int8:
        return ""
    e = html.escape
    if "recipes_tried" in int8:
        tried = ", ".join(f"<code>{e(r['recipe'])}</code> {r['agreeing']}/{r['samples']}"
                          for r in int8["recipes_tried"])
        return (f"<p>int8: {e(int8['what'])}. Recipes tried (answers kept on the {e(str(int8.get('judged_on')))}): "
                f"{tried}.</p>")
    layers = "".join(f"<tr><td class=l>{e(f['layer'])}</td><td>{f['local_snr_db']:.1f}</td>"
                     f"<td class=l>{'your --float-layers' if f['forced'] else 'the budget'}</td></tr>"
                     for f in int8["float_layers"])
    smoothing = int8.get("smoothing") or {}
    judged = int8.get("judged_effect") or {}
    head = (f"<p>int8: {e(int8['what'])}. Range method <code>{e(str(int8['method']))}</code>; "
            f"{int8['quantized_layers']} of {int8['quantizable_layers']} layers int8; "
            f"{smoothing.get('activations', 0)} activations smoothed into their weights "
            f"(alpha {smoothing.get('alpha', 0)}). Float layers chosen on {e(str(int8.get('judged_on')))}: "
            f"{judged.get('agreeing', 0)}/{judged.get('samples', 0)} answers kept, "
            f"{judged.get('expected_changes', 0):.2f} changes expected from the logit noise.</p>")
    if layers:
        head += ("<table><tr><th class=l>kept in float</th><th>its own SNR when int8 (dB)</th>"
                 f"<th class=l>why</th></tr>{layers}</table>")
    return head + _divergence_html(int8.get("divergence"))


def _divergence_html(d: dict[str, Any] | None) -> str:
    if not d:
        return ""
    e = html.escape
    first = d["first_below_floor"]
    verdict = (f"first layer below {d['snr_floor_db']:.0f} dB SNR: <code>{e(first)}</code>" if first else
               f"every layer stays above {d['snr_floor_db']:.0f} dB SNR")
    if d["suggested_fallback"]:
        verdict += f"; keeping <code>{e(d['suggested_fallback'])}</code> in float is the fallback to try"
    rows = "".join(f"<tr><td class=l>{e(r['layer'])}</td><td>{'int8' if r['int8'] else 'float'}</td>"
                   f"<td>{r['cosine']:.5f}</td><td>{r['snr_db']:.1f}</td></tr>" for r in d["lowest_snr"])
    return (f"<p>Layer by layer against the float model (onnxruntime, {d['samples']} held-aside samples): "
            f"{verdict}.</p><table><tr><th class=l>lowest-SNR layers</th><th>precision</th><th>cosine</th>"
            f"<th>SNR dB</th></tr>{rows}</table>")


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


def _figures(plots: dict[str, str]) -> str:
    figures = "".join(f"<figure><img alt='{html.escape(name)}' src='data:image/png;base64,{png}'></figure>"
                      for name, png in plots.items())
    return f"<div class=plots>{figures}</div>" if figures else ""


def _agreement_cell(p: dict[str, Any]) -> str:
    """Top-1 agreement as a count with its one-sided lower bound."""
    if p.get("agreement") is None:
        return "–"
    if p.get("agreeing") is None:
        return _fmt(p["agreement"], "%")
    confidence = (p.get("thresholds") or {}).get("confidence") or 0.95
    return (f"{p['agreement']:.2%} ({p['agreeing']}/{p['samples']})<br><small>{confidence:.0%} lower bound "
            f"{p['agreement_lower']:.2%}</small>")


def _accuracy_cell(p: dict[str, Any]) -> str:
    """Accuracy change with the answers lost and gained and the drop's upper bound."""
    if p.get("accuracy_bundle") is None or p.get("accuracy_reference") is None:
        return "–"
    delta = p["accuracy_bundle"] - p["accuracy_reference"]
    if p.get("accuracy_drop_upper") is None:
        return f"{delta:+.2%}"
    return (f"{delta:+.2%} (−{p['lost']} +{p['gained']} of {p['labeled']})<br><small>drop upper bound "
            f"{p['accuracy_drop_upper']:.2%}</small>")


def _section(model: dict[str, Any]) -> str:
    e = html.escape
    rows = []
    for b in model["bundles"]:
        p = b.get("parity") or {}
        lat = b.get("latency_ms") or {}
        notes = "".join(f"<br><small>{e(n)}</small>" for n in p.get("notes") or [])
        rows.append(
            f"<tr><td class=l>{e(b['name'])}</td><td>{_fmt(b['bytes'], 'bytes')}</td>"
            f"<td>{_fmt(p.get('max_abs_diff'))}</td><td>{_fmt(p.get('mean_abs_diff'))}</td>"
            f"<td>{_agreement_cell(p)}</td><td>{_fmt(p.get('accuracy_bundle'), '%')}</td>"
            f"<td>{_accuracy_cell(p)}</td>"
            f"<td>{_fmt(lat.get('p50'))}</td><td>{_fmt(lat.get('p90'))}</td>"
            f"<td class='l {e(b['status'])}'>{e(b['status'])}</td>"
            f"<td class=l>{e(b['reason'])}{notes}</td></tr>"
        )
    passes = "".join(_pass_item(r) for r in model["passes"]) or "<li>none</li>"
    gates = "".join(
        f"<tr><td class=l>{e(g['name'])}</td><td>{_agreement_cell(g['parity'])}</td>"
        f"<td>{_accuracy_cell(g['parity'])}</td>"
        f"<td>{g['texts_exact']}/{g['texts']}</td><td class='l {e(g['status'])}'>{e(g['status'])}</td>"
        f"<td class=l>{e(g['reason'])}</td></tr>" for g in model.get("gates") or [])
    if gates:
        gates = ("<h3>Model gates</h3><p>The pruned PyTorch model against the original, on the verification data; "
                 "the bundles above are compared with the pruned model.</p><table><tr><th class=l>gate</th>"
                 "<th>agreement (count, bound)</th><th>Δ accuracy</th><th>texts tokenized exactly</th>"
                 f"<th class=l>status</th><th class=l>reason</th></tr>{gates}</table>")
    per_bundle = "".join(
        f"<h3>{e(b['name'])}</h3>{_int8_table(b.get('int8'))}{_robustness_table(b.get('robustness', {}))}"
        f"{_figures(b.get('plots', {}))}{b.get('disagreements_html', '')}"
        for b in model["bundles"] if b.get("plots") or b.get("int8")
    )
    ver = model.get("verification") or {}
    return f"""
<h2>{e(model['name'])} <small>({e(model['kind'])}, {len(model['labels'])} labels)</small></h2>
<p>Verification data: {e(str(ver.get('source', 'none')))}, {ver.get('samples', 0)} samples;
PyTorch accuracy {_fmt(ver.get('accuracy_reference'), '%')}.</p>
<table><tr><th class=l>bundle</th><th>size</th><th>max |Δlogit|</th><th>mean |Δlogit|</th>
<th>top-1 agreement (count, bound)</th><th>accuracy</th><th>Δ accuracy (lost, gained, bound)</th>
<th>p50 ms</th><th>p90 ms</th>
<th class=l>status</th><th class=l>reason</th></tr>{''.join(rows)}</table>
{gates}
<h3>Passes</h3><ul>{passes}</ul>
{_figures(model.get("plots", {}))}
{per_bundle}"""


def _matrix(models: list[dict[str, Any]]) -> str:
    """Every bundle of every model in one table: each gate's verdict, size and latency at a glance."""
    e = html.escape
    names = ["logits", "top-1 agreement", "accuracy drop"]
    rows = []
    for m in models:
        for g in m.get("gates") or []:
            rows.append(f"<tr><td class=l>{e(m['name'])}</td><td class=l>{e(g['name'])} (model)</td>"
                        f"<td class='l {e(g['status'])}'>{e(g['status'])}</td>"
                        + "".join("<td>–</td>" for _ in names) + "<td>–</td><td>–</td></tr>")
        for b in m["bundles"]:
            verdicts = {} if b.get("parity") is None else {
                gate: status for gate, status, _ in gates(ParityResult.from_dict(b["parity"]))}
            cells = "".join(f"<td class='{e(verdicts.get(n, ''))}'>{e(verdicts.get(n, '–'))}</td>" for n in names)
            rows.append(f"<tr><td class=l>{e(m['name'])}</td><td class=l>{e(b['name'])}</td>"
                        f"<td class='l {e(b['status'])}'>{e(b['status'])}</td>{cells}"
                        f"<td>{_fmt(b['bytes'], 'bytes')}</td><td>{_fmt((b.get('latency_ms') or {}).get('p50'))}</td>"
                        "</tr>")
    head = "".join(f"<th>{e(n)}</th>" for n in names)
    return (f"<table><tr><th class=l>model</th><th class=l>bundle</th><th class=l>status</th>{head}"
            f"<th>size</th><th>p50 ms</th></tr>{''.join(rows)}</table>")


def _baseline(comparison: dict[str, Any] | None) -> str:
    if not comparison:
        return ""
    e = html.escape
    table = format_comparison(comparison["bundles"])
    head = "".join(f"<th class=l>{e(c)}</th>" for c in table[0])
    body = "".join("<tr>" + "".join(f"<td class=l>{e(c)}</td>" for c in row) + "</tr>" for row in table[1:])
    return f"<h2>Since {e(comparison['report'])}</h2><table><tr>{head}</tr>{body}</table>"


def render_html(models: list[dict[str, Any]], comparison: dict[str, Any] | None = None) -> str:
    """One self-contained HTML page for one or more models' report sections: the comparison
    with a baseline and the matrix of every bundle's gates first."""
    body = _baseline(comparison) + _matrix(models) + "".join(_section(m) for m in models)
    return (f"<!doctype html><html><head><meta charset=utf-8><title>edgesdk parity report</title>"
            f"<style>{_CSS}</style></head><body><h1>edgesdk parity report</h1>"
            f"<p>edgesdk {__version__}. Parity compares each bundle, run in its own runtime, with "
            f"PyTorch on the same inputs. Latencies are batch 1 on the machine that converted.</p>"
            f"{body}</body></html>\n")


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
        labels = verification.samples.labels
        known = labels >= 0
        acc = float((verification.reference.argmax(1)[known] == labels[known]).mean()) if known.any() else None
        model["verification"] = {"source": verification.samples.source, "samples": len(verification.rows),
                                 "accuracy_reference": acc}
    with_logits = {r.name: r for r in records if r.logits is not None}
    for bundle in model["bundles"]:
        if bundle["name"] in with_logits:
            bundle["details"] = bundle_details(verification.samples, verification.reference,
                                               with_logits[bundle["name"]].logits, list(spec.labels))
    report = {"edgesdk": __version__, "models": [model]}
    comparison = None
    if baseline is not None:
        comparison = {"report": baseline["path"], "bundles": compare_reports(baseline, report)}
        report["baseline"] = comparison
    (folder / "report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    for bundle in model["bundles"]:
        record = with_logits.get(bundle["name"])
        if record is None:
            continue
        title = f"{spec.name} {record.name}"
        bundle["plots"] = {"logit differences": _diff_histogram(title, verification.reference, record.logits),
                           "per class": _per_class(title, bundle["details"])}
        reliability = _reliability(title, verification.samples, verification.reference, record.logits)
        if reliability:
            bundle["plots"]["reliability"] = reliability
        bundle["disagreements_html"] = _disagreement_rows(bundle["details"], verification.samples)
    model["plots"] = {f"{p['name']} corpus curve": _corpus_curve(spec.name, p["heldout"])
                      for p in passes if "heldout" in p}
    (folder / "report.html").write_text(render_html([model], comparison), encoding="utf-8")
    return model
