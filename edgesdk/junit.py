"""The parity gates as a JUnit XML file, which CI systems show natively: one test case per
bundle x gate (and per model gate such as pruning fidelity)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .parity import ParityResult, gates

__all__ = ["write_junit", "junit_cases"]


def junit_cases(report: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(class name, gate, status, message) for every gate of one model's report section."""
    model = report["name"]
    cases = [(f"{model}.model", g["name"], g["status"], g["reason"]) for g in report.get("gates") or []]
    for b in report["bundles"]:
        name = f"{model}.{b['name']}"
        if b["status"] == "error" or b.get("parity") is None:
            cases.append((name, "build", "error", b["reason"]))
            continue
        cases += [(name, gate, status, message) for gate, status, message in
                  gates(ParityResult.from_dict(b["parity"]))]
    return cases


def write_junit(path: str | Path, reports: Iterable[dict[str, Any]]) -> Path:
    """Write one ``<testsuite>`` per model; failures, errors and skips carry edgesdk's reason."""
    suites = ET.Element("testsuites", name="edgesdk parity")
    for report in reports:
        cases = junit_cases(report)
        suite = ET.SubElement(suites, "testsuite", name=report["name"], tests=str(len(cases)),
                              failures=str(sum(c[2] == "fail" for c in cases)),
                              errors=str(sum(c[2] == "error" for c in cases)),
                              skipped=str(sum(c[2] == "skipped" for c in cases)))
        for classname, gate, status, message in cases:
            case = ET.SubElement(suite, "testcase", classname=classname, name=gate)
            if status != "pass":
                tag = {"fail": "failure", "error": "error", "skipped": "skipped"}[status]
                ET.SubElement(case, tag, message=message[:2000]).text = message
    for attr in ("tests", "failures", "errors", "skipped"):
        suites.set(attr, str(sum(int(s.get(attr)) for s in suites)))
    path = Path(path)
    ET.indent(suites)
    path.write_bytes(ET.tostring(suites, encoding="utf-8", xml_declaration=True) + b"\n")
    return path
