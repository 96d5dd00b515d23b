"""Conversion through the Python API on tiny models; bad input leaves nothing written."""

from __future__ import annotations

import json
import random
import re
import shutil

import numpy as np
import pytest
import torch
from conftest import run_cli, tiny_cnn

import edgesdk
from edgesdk import ImageClassifier, ImagePreprocessing, TextClassifier
from edgesdk.errors import EdgeSDKError, InputError, ModelError
from edgesdk.runtime import load_bundle

PRE = ImagePreprocessing(size=(16, 16), mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))


def test_text_convert_api(tiny_text_dir, text_tsv, tmp_path):
    model = TextClassifier.from_pretrained(tiny_text_dir)
    assert [t.name for t in model.spec.inputs] == ["input_ids", "attention_mask", "token_type_ids"]
    result = edgesdk.convert(model, tmp_path / "dist", verify_on=text_tsv, quiet=True)
    (record,) = result.bundles
    assert record.status == "pass" and record.parity.max_abs_diff <= 1e-4
    assert record.parity.samples == 6 and record.parity.accuracy_reference is not None
    manifest = json.loads((result.out / "onnx-fp32" / "manifest.json").read_text())
    assert manifest["spec"]["labels"] == ["neg", "neu", "pos"]
    assert manifest["spec"]["preprocessing"]["max_length"] == 128
    assert manifest["parity"]["status"] == "pass"
    assert set(manifest["files"]) == {"model.onnx", "tokenizer.json", "reference.safetensors", "golden.npz"}
    assert result.report_path.is_file() and (result.out / "report.json").is_file()
    # the 400-word line is truncated to max_length by the bundle's own tokenizer
    bundle = load_bundle(result.out / "onnx-fp32")
    assert len(bundle.encoder.encode(["long " * 400])[0]["input_ids"]) == 128


def test_image_convert_any_size_and_topk(image_npz, tmp_path):
    model = ImageClassifier.create(tiny_cnn(), ["a", "b", "c", "d"], PRE)
    result = edgesdk.convert(model, tmp_path / "dist", verify_on=image_npz, quiet=True)
    assert result.ok
    bundle = load_bundle(result.out / "onnx-fp32")
    rows = bundle.encoder.encode([np.zeros((5, 9, 3), np.uint8), np.full((300, 200, 3), 255, np.uint8)])
    for row in rows:
        out = bundle.run_rows([row])
        ref = model.reference_logits([row], bundle.encoder)
        assert np.abs(out["logits"] - ref).max() <= 1e-4
        assert out["top_k"].shape == (1, 4)


class _BranchingNet(torch.nn.Module):
    """A conv net whose forward checks its input's shape in Python, as HF's ViT does: torch.export
    follows that, torch.fx's symbolic tracing cannot."""

    def __init__(self) -> None:
        super().__init__()
        self.net = tiny_cnn()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] != 3:
            raise ValueError(f"expected 3 channels, got {x.shape[1]}")
        return self.net(x)


def test_default_graph_passes_that_cannot_trace_the_model_say_so_and_conversion_goes_on(image_npz, tmp_path):
    """A model torch.fx cannot trace (HF's ViT) still converts with the default passes: each graph
    pass's record says why it did not run; naming a pass makes it an error that says what to do."""
    model = ImageClassifier.create(_BranchingNet().eval(), ["a", "b", "c", "d"], PRE)
    result = edgesdk.convert(model, tmp_path / "dist", verify_on=image_npz, quiet=True)
    assert result.ok
    not_run = {r["name"]: r["not_run"] for r in result.passes}
    assert set(not_run) == {"fold_batchnorm", "fuse_branches"}
    assert all("cannot trace _BranchingNet with torch.fx" in why for why in not_run.values())
    (report,) = json.loads((result.out / "report.json").read_text())["models"]
    assert {p["name"] for p in report["passes"] if "not_run" in p} == set(not_run)
    assert "not_run" in (result.out / "report.html").read_text(encoding="utf-8")
    with pytest.raises(EdgeSDKError, match="pass 'fold_batchnorm' failed .*cannot trace.*passes=\\[\\]"):
        edgesdk.convert(model, tmp_path / "named", verify_on=image_npz, passes=["fold_batchnorm"], quiet=True)
    _assert_nothing_written(tmp_path / "named")


class _ValueBranchingNet(_BranchingNet):
    """Branches on a tensor's value, which torch.export cannot follow either."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 1e9:
            x = x * 0
        return self.net(x)


def test_a_failed_onnx_export_is_reported_in_one_readable_line(image_npz, tmp_path):
    """torch.onnx's failure report (colour codes, advice to file issues) becomes its exception
    summary and the line of the model where it arose."""
    model = ImageClassifier.create(_ValueBranchingNet().eval(), ["a", "b", "c", "d"], PRE)
    (bundle,) = edgesdk.convert(model, tmp_path / "dist", verify_on=image_npz, passes=[], quiet=True).bundles
    assert bundle.status == "error"
    cause = r"ONNX export of 'image-classifier' failed: .*data-dependent.* \(at test_convert\.py:\d+ in forward\)"
    assert re.fullmatch(cause, bundle.reason), bundle.reason
    assert "\x1b" not in bundle.reason and "issue" not in bundle.reason


def test_no_verification_data_is_reported_as_skipped(tmp_path):
    model = ImageClassifier.create(tiny_cnn(), ["a", "b", "c", "d"], PRE)
    result = edgesdk.convert(model, tmp_path / "dist", quiet=True)
    assert result.bundles[0].status == "skipped"
    assert "verification data" in result.bundles[0].reason


def test_labels_must_match_head():
    with pytest.raises(ModelError, match="4 logits but 3 labels"):
        ImageClassifier.create(tiny_cnn(), ["a", "b", "c"], PRE)


def _assert_nothing_written(dest):
    assert not dest.exists()
    assert not [p for p in dest.parent.iterdir() if p.name.startswith(f".{dest.name}")]


@pytest.mark.parametrize("breakage", ["base_model", "no_tokenizer", "pickle_only", "bad_labels", "no_config"])
def test_bad_model_folders(tiny_text_dir, tmp_path, breakage):
    folder = tmp_path / "model"
    shutil.copytree(tiny_text_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    expected = {"base_model": "not a sequence classifier", "no_tokenizer": "no tokenizer.json",
                "pickle_only": "pickle", "bad_labels": "labels", "no_config": "no config.json"}[breakage]
    if breakage == "base_model":
        config["architectures"] = ["BertModel"]
    elif breakage == "no_tokenizer":
        (folder / "tokenizer.json").unlink()
    elif breakage == "pickle_only":
        (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    elif breakage == "bad_labels":
        config["id2label"] = {"0": "only", "1": "two"}
        config["label2id"] = {"only": 0, "two": 1}
    elif breakage == "no_config":
        (folder / "config.json").unlink()
    if (folder / "config.json").exists():
        (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelError, match=expected):
        TextClassifier.from_pretrained(folder)
    r = run_cli("convert", "--model", str(folder), "--out", str(tmp_path / "dist"))
    assert r.returncode == 2 and expected in r.stderr and "Traceback" not in r.stderr
    _assert_nothing_written(tmp_path / "dist")


def test_tokenizer_larger_than_embedding(tiny_text_dir, tmp_path):
    from transformers import BertConfig, BertForSequenceClassification

    folder = tmp_path / "small-vocab"
    config = BertConfig.from_pretrained(tiny_text_dir)
    config.vocab_size = 1000
    BertForSequenceClassification(config).save_pretrained(folder)
    shutil.copyfile(tiny_text_dir / "tokenizer.json", folder / "tokenizer.json")
    with pytest.raises(ModelError, match="tokenizer belongs to another model"):
        TextClassifier.from_pretrained(folder)


def test_bad_data_files(tiny_text_dir, tmp_path, image_npz):
    model = TextClassifier.from_pretrained(tiny_text_dir)
    bad = tmp_path / "bad.tsv"
    bad.write_bytes(b"fine line\tpos\nbroken \xff\xfe line\tneg\n")
    with pytest.raises(InputError, match="line 2 is not UTF-8"):
        edgesdk.convert(model, tmp_path / "dist", verify_on=bad, quiet=True)
    empty = tmp_path / "empty.tsv"
    empty.write_text("")
    with pytest.raises(InputError, match="no samples"):
        edgesdk.convert(model, tmp_path / "dist", verify_on=empty, quiet=True)
    unknown = tmp_path / "unknown.tsv"
    unknown.write_text("text\tbogus-label\n")
    with pytest.raises(InputError, match="bogus-label"):
        edgesdk.convert(model, tmp_path / "dist", verify_on=unknown, quiet=True)
    with pytest.raises(InputError, match="image data"):
        edgesdk.convert(model, tmp_path / "dist", verify_on=image_npz, quiet=True)
    _assert_nothing_written(tmp_path / "dist")


def test_gray_model_refuses_rgb_arrays(tmp_path, image_npz):
    pre = ImagePreprocessing(size=(8, 8), mean=(0.5,), std=(0.5,), channels=1)
    model = ImageClassifier.create(tiny_cnn(channels=1), ["a", "b", "c", "d"], pre)
    with pytest.raises(InputError, match="x 1 uint8"):
        edgesdk.convert(model, tmp_path / "dist", verify_on=image_npz, quiet=True)


def test_existing_output_needs_overwrite_and_failure_keeps_previous(tmp_path, image_npz, monkeypatch):
    model = ImageClassifier.create(tiny_cnn(), ["a", "b", "c", "d"], PRE)
    dest = tmp_path / "dist"
    edgesdk.convert(model, dest, verify_on=image_npz, quiet=True)
    before = (dest / "onnx-fp32" / "manifest.json").read_bytes()
    with pytest.raises(InputError, match="--overwrite"):
        edgesdk.convert(model, dest, verify_on=image_npz, quiet=True)

    import edgesdk.pipeline as pipeline

    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "write_report", boom)
    with pytest.raises(KeyboardInterrupt):
        edgesdk.convert(model, dest, verify_on=image_npz, overwrite=True, quiet=True)
    assert (dest / "onnx-fp32" / "manifest.json").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dist", "images.npz"]


def test_concurrent_conversion_is_refused(tmp_path):
    import fcntl

    model = ImageClassifier.create(tiny_cnn(), ["a", "b", "c", "d"], PRE)
    lock = open(tmp_path / ".dist.lock", "w")
    fcntl.flock(lock, fcntl.LOCK_EX)
    with pytest.raises(InputError, match="another edgesdk conversion"):
        edgesdk.convert(model, tmp_path / "dist", quiet=True)
    assert not (tmp_path / "dist").exists()


def test_weights_are_never_unpickled(tmp_path):
    from edgesdk.models import load_weights

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.pt"
    torch.save({"x": Evil()}, path)
    with pytest.raises(EdgeSDKError, match="tensors only"):
        load_weights(tiny_cnn(), path)


def test_unknown_target_and_precision(tmp_path):
    model = ImageClassifier.create(tiny_cnn(), ["a", "b", "c", "d"], PRE)
    with pytest.raises(InputError, match="unknown target"):
        edgesdk.convert(model, tmp_path / "d", targets=["coreml"], quiet=True)
    with pytest.raises(InputError, match="unknown precision"):
        edgesdk.convert(model, tmp_path / "d", precisions=["fp7"], quiet=True)


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT", "SIGKILL"])
def test_killed_conversion_leaves_destination_untouched(tiny_text_dir, text_tsv, tmp_path, sig):
    import signal
    import subprocess
    import sys
    import time

    from conftest import ROOT

    dest = tmp_path / "dist"
    cmd = [sys.executable, "-m", "edgesdk.cli", "convert", "--model", str(tiny_text_dir), "--out", str(dest),
           "--verify-on", str(text_tsv), "--quiet"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while not list(tmp_path.glob(".dist.tmp-*")) and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)  # somewhere inside the export
    proc.send_signal(getattr(signal, sig))
    proc.communicate(timeout=120)
    assert proc.returncode == {"SIGINT": 130, "SIGTERM": 143, "SIGKILL": -9}[sig]  # the CLI's documented codes
    assert not dest.exists()
    if sig != "SIGKILL":  # a caught signal cleans up at once
        assert not list(tmp_path.glob(".dist*"))
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".dist")) == []


def test_a_full_disk_is_named_and_leaves_no_half_written_bundle(tiny_text_dir, text_tsv, tmp_path):
    import resource
    import signal
    import subprocess
    import sys

    def small_disk() -> None:  # files may not grow past 200 kB, as on a full disk
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))

    out = tmp_path / "dist"
    r = subprocess.run([sys.executable, "-m", "edgesdk.cli", "convert", "--model", str(tiny_text_dir), "--out",
                        str(out), "--verify-on", str(text_tsv), "--quiet"], capture_output=True, text=True,
                       preexec_fn=small_disk, timeout=600)
    assert r.returncode == 1
    assert re.search(r"onnx-fp32 +error +writing the bundle failed \(File too large\): free disk space", r.stdout)
    assert not (out / "onnx-fp32").exists()  # the bundle that could not be written is gone
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dist", "val.tsv"]  # no temporary folders left


@pytest.mark.parametrize("delay", [round(random.Random(seed).uniform(0.2, 4.0), 2) for seed in range(3)])
def test_sigkill_at_a_random_moment_of_an_overwrite_keeps_the_previous_bundles(tiny_text_dir, text_tsv, tmp_path,
                                                                                delay):
    import signal
    import subprocess
    import sys
    import time

    from edgesdk.runtime import load_bundle

    dest = tmp_path / "dist"
    cmd = [sys.executable, "-m", "edgesdk.cli", "convert", "--model", str(tiny_text_dir), "--out", str(dest),
           "--verify-on", str(text_tsv), "--quiet", "--overwrite"]
    assert subprocess.run(cmd, capture_output=True, text=True, timeout=300).returncode == 0
    before = (dest / "onnx-fp32" / "manifest.json").read_bytes()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    time.sleep(delay)  # a seeded random moment: start-up, export, verification or the final move
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=120)
    # either the kill came first and the previous bundles stand, or the run finished: both are whole bundles
    assert (dest / "onnx-fp32" / "manifest.json").read_bytes() == before
    load_bundle(dest / "onnx-fp32", self_test=True)


def test_a_read_only_output_folder_is_refused_clearly(tiny_text_dir, text_tsv, tmp_path):
    import os
    import subprocess

    locked = tmp_path / "locked"
    locked.mkdir()
    if os.geteuid() == 0:  # root ignores permissions: make the folder a read-only bind mount instead
        made = all(subprocess.run(cmd, capture_output=True).returncode == 0 for cmd in (
            ["mount", "--bind", str(locked), str(locked)], ["mount", "-o", "remount,bind,ro", str(locked)]))
        if not made:
            pytest.skip("root without mount rights here: no way to make a read-only folder")
    else:
        locked.chmod(0o555)
    try:
        r = run_cli("convert", "--model", str(tiny_text_dir), "--out", str(locked / "dist"), "--verify-on",
                    str(text_tsv), "--quiet")
        assert r.returncode == 2, r.stderr
        assert f"cannot write {locked / 'dist'}" in r.stderr and "check permissions and free space" in r.stderr
        assert list(locked.iterdir()) == []
    finally:
        if os.geteuid() == 0:
            subprocess.run(["umount", str(locked)], capture_output=True)
        locked.chmod(0o755)
