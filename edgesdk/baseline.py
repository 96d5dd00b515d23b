"""Release over release: each bundle's bytes, latency, agreement and accuracy against the
previous release's report.json."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .errors import InputError

__all__ = ["read_report", "compare_reports", "format_comparison"]


def read_report(path: str | Path) -> dict[str, Any]:
    """A report.json written by edgesdk (a conversion's, or the demo's folder of them)."""
    path = Path(path)
    if path.is_dir():
        path = path / "report.json"
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"cannot read the report {path} ({e}): give the report.json of an earlier conversion") from e
    if not isinstance(report, dict) or not isinstance(report.get("models"), list):
        raise InputError(f"{path} is not an edgesdk report.json (no 'models')")
    return {**report, "path": str(path)}


def _figures(bundle: dict[str, Any]) -> dict[str, Any]:
    parity = bundle.get("parity") or {}
    return {"status": bundle.get("status"), "bytes": bundle.get("bytes"),
            "latency_p50_ms": (bundle.get("latency_ms") or {}).get("p50"),
            "agreement": parity.get("agreement"), "accuracy": parity.get("accuracy_bundle")}


def compare_reports(baseline: dict[str, Any], current: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per bundle of ``current`` (model, bundle, then each figure before and now)."""
    before = {(m["name"], b["name"]): _figures(b) for m in baseline["models"] for b in m["bundles"]}
    rows = []
    for model in current["models"]:
        for bundle in model["bundles"]:
            old = before.get((model["name"], bundle["name"]))
            rows.append({"model": model["name"], "bundle": bundle["name"], "before": old, "now": _figures(bundle)})
    return rows


def _change(key: str, old: Any, new: Any) -> str:
    if new is None:
        return "–"
    if key == "status":
        return new if old in (None, new) else f"{old} → {new}"
    if key in ("agreement", "accuracy"):
        now = f"{new:.2%}"
        return now if old is None else f"{now} ({(new - old) * 100:+.2f} pt)"
    now = f"{new / 1e6:.2f} MB" if key == "bytes" else f"{new:.2f} ms"
    return now if not old else f"{now} ({(new - old) / old:+.1%})"


COLUMNS = ("status", "bytes", "latency_p50_ms", "agreement", "accuracy")


def format_comparison(rows: list[dict[str, Any]]) -> list[list[str]]:
    """The comparison as text cells: a header, then one row per bundle (new bundles say so)."""
    table = [["model", "bundle", *COLUMNS]]
    for r in rows:
        old = r["before"] or {}
        cells = [_change(k, old.get(k), r["now"][k]) for k in COLUMNS]
        if r["before"] is None:
            cells[0] += " (new)"
        table.append([r["model"], r["bundle"], *cells])
    return table
