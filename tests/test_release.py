"""edgesdk in a release job: a replayable config, byte-identical manifests, exit codes, a quiet
terminal, JSON and JUnit results, and the comparison with the previous release."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET

import pytest
from conftest import run_cli

from edgesdk.cli import EXIT_BAD_INPUT, EXIT_GATE_FAILED, EXIT_INTERNAL, EXIT_OK
from edgesdk.config import CONFIG_VERSION, ConvertConfig
from edgesdk.errors import InputError

TARGETS = ("onnx", "openvino", "tflite")
EDGESDK_STDERR = re.compile(r"^(✓ |✗ |  [✓✗–] |  pruning fidelity: )")
EDGESDK_STDOUT = re.compile(r"^(model +bundle|tiny-bert +|report: |junit: |since |$)")


@pytest.fixture(scope="module")
def release(tiny_text_dir, tmp_path_factory):
    """Two releases of one model: the first from a TOML config, the second replayed from the first's
    manifest with --baseline, --json and --junit."""
    root = tmp_path_factory.mktemp("release")
    (root / "val.tsv").write_text("a great movie\tpos\nterrible, just terrible\tneg\nit was fine\tpos\n"
                                  "ÜNÏCÖDE and emoji 🙂 too\tneg\n", encoding="utf-8")
    (root / "release.toml").write_text(
        f'model = "{tiny_text_dir}"\ntargets = {list(TARGETS)!r}\nverify_on = "{root / "val.tsv"}"\n'
        'max_length = 32\n'.replace("'", '"'), encoding="utf-8")
    first = run_cli("convert", "--config", str(root / "release.toml"), "--out", str(root / "v1"))
    second = run_cli("convert", "--config", str(root / "v1" / "onnx-fp32" / "manifest.json"), "--out", str(root / "v2"),
                     "--baseline", str(root / "v1" / "report.json"), "--json", "--junit", str(root / "gates.xml"))
    return root, first, second


def test_a_release_exits_0_and_prints_only_edgesdk_lines(release):
    _, first, _ = release
    assert first.returncode == EXIT_OK, first.stderr
    assert all(EDGESDK_STDERR.match(line) for line in first.stderr.splitlines()), first.stderr
    assert all(EDGESDK_STDOUT.match(line) for line in first.stdout.splitlines()), first.stdout
    assert sum(" pass " in line and "-fp32 " in line for line in first.stdout.splitlines()) == len(TARGETS)


def test_a_replayed_config_gives_byte_identical_manifests(release):
    root, _, second = release
    assert second.returncode == EXIT_OK, second.stderr
    for target in TARGETS:
        one = (root / "v1" / f"{target}-fp32" / "manifest.json").read_bytes()
        two = (root / "v2" / f"{target}-fp32" / "manifest.json").read_bytes()
        assert one == two, target
        manifest = json.loads(one)
        assert manifest["config"]["config_version"] == CONFIG_VERSION and manifest["config"]["max_length"] == 32
        assert "timing" not in json.dumps(manifest) and str(root) not in json.dumps(manifest["passes"])
    report = json.loads((root / "v1" / "report.json").read_text())
    assert all("timing" not in json.dumps(b) for b in report["models"][0]["bundles"])


def test_json_summary_junit_file_and_baseline(release):
    root, _, second = release
    summary = json.loads(second.stdout)  # --json: stdout is the JSON document alone
    assert summary["ok"] and len(summary["models"][0]["bundles"]) == len(TARGETS)
    suite = ET.parse(root / "gates.xml").getroot()
    assert suite.tag == "testsuites" and int(suite.get("failures")) == 0 and int(suite.get("errors")) == 0
    cases = suite.findall("testsuite/testcase")
    assert int(suite.get("tests")) == len(cases) >= 2 * len(TARGETS)  # logits and agreement per bundle
    assert {c.get("classname") for c in cases} == {f"tiny-bert.{t}-fp32" for t in TARGETS} | {"tiny-bert.model"}
    rows = summary["baseline"]["bundles"]
    assert [r["bundle"] for r in rows] == [f"{t}-fp32" for t in TARGETS]
    assert all(r["before"]["bytes"] == r["now"]["bytes"] for r in rows)
    report = json.loads((root / "v2" / "report.json").read_text())
    assert report["baseline"]["bundles"] == rows
    assert "Since" in (root / "v2" / "report.html").read_text()
    compared = run_cli("compare", str(root / "v1"), str(root / "v2"))
    assert compared.returncode == EXIT_OK and "onnx-fp32" in compared.stdout and "+0.00 pt" in compared.stdout


def test_a_failed_gate_exits_1(release, tiny_text_dir, tmp_path):
    import torch
    from transformers import BertForSequenceClassification

    root, _, _ = release
    torch.manual_seed(1)  # another network of the same shape: its logits are far from the bundle's
    other = BertForSequenceClassification.from_pretrained(tiny_text_dir)
    for p in other.parameters():
        p.data.normal_(0, 0.5)
    other.save_pretrained(tmp_path / "other")
    (tmp_path / "other" / "tokenizer.json").write_bytes((tiny_text_dir / "tokenizer.json").read_bytes())
    r = run_cli("verify", str(root / "v1" / "onnx-fp32"), "--data", str(root / "val.tsv"),
                "--model", str(tmp_path / "other"))
    assert r.returncode == EXIT_GATE_FAILED and ": fail:" in r.stdout, r.stdout + r.stderr


def test_bad_input_exits_2_and_names_the_file(tmp_path):
    r = run_cli("convert", "--model", "edgesdk.demo:digits_classifier", "--weights", str(tmp_path / "nope.safetensors"),
                "--out", str(tmp_path / "dist"))
    assert r.returncode == EXIT_BAD_INPUT and "nope.safetensors" in r.stderr and "Traceback" not in r.stderr
    (tmp_path / "bad.toml").write_text('targets = ["onnx"]\nprecission = ["fp32"]\n', encoding="utf-8")
    r = run_cli("convert", "--config", str(tmp_path / "bad.toml"), "--out", str(tmp_path / "dist"))
    assert r.returncode == EXIT_BAD_INPUT and "unknown option(s) precission" in r.stderr
    assert not (tmp_path / "dist").exists()


def test_an_internal_error_exits_3_and_debug_shows_the_traceback(tmp_path):
    (tmp_path / "broken_factory.py").write_text("def make():\n    raise ZeroDivisionError('a bug')\n")
    args = ("convert", "--model", "broken_factory:make", "--out", str(tmp_path / "dist"))
    env_path = f"import sys; sys.path.insert(0, {str(tmp_path)!r})\n"
    r = run_cli(*args, prelude=env_path)
    assert r.returncode == EXIT_INTERNAL and "internal error: ZeroDivisionError: a bug" in r.stderr
    assert "Traceback" not in r.stderr
    r = run_cli(*args, "--debug", prelude=env_path)
    assert r.returncode == EXIT_INTERNAL and "Traceback" in r.stderr


def test_version_and_help_list_the_choices():
    r = run_cli("--version")
    assert r.returncode == 0 and re.fullmatch(r"edgesdk \d+\.\d+\.\d+\n", r.stdout)
    r = run_cli("convert", "--help")
    for name in ("onnx, openvino, tensorrt, tflite", "prune_vocabulary", "entropy"):
        assert name in " ".join(r.stdout.split()), name


def test_config_is_checked_and_frozen():
    config = ConvertConfig.from_dict({"targets": ["onnx", "tflite"], "corpus": ["a.txt"]})
    assert config.targets == ("onnx", "tflite") and ConvertConfig.from_dict(config.to_dict()) == config
    with pytest.raises(InputError, match="config_version 99"):
        ConvertConfig.from_dict({"config_version": 99})
    with pytest.raises(InputError, match="option calibration_samples must be a whole number"):
        ConvertConfig.from_dict({"calibration_samples": "300"})
    with pytest.raises(InputError, match="option targets must be a list of strings"):
        ConvertConfig.from_dict({"targets": None})
    with pytest.raises(AttributeError):
        config.targets = ("onnx",)
