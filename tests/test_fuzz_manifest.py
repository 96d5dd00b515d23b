"""Fuzz the loader from valid bundles: mutate one, then it loads and runs or is refused with an
EdgeSDKError; no file outside the bundle is ever opened (audited), whatever the manifest names."""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections import Counter
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgesdk.bundle import write_manifest
from edgesdk.errors import EdgeSDKError
from edgesdk.runtime import load_bundle

scalars = st.none() | st.booleans() | st.integers(-5, 10**6) | st.floats(allow_nan=True) | st.text(max_size=12)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                                             max_size=3), max_leaves=8)
paths = st.sampled_from(["../secret.txt", "{secret}", "/dev/zero", "a/../../secret.txt", "", "model.onnx",
                         "tokenizer.json", "golden.npz", "sub/f", "~/f", "a\\b", "manifest.json"]
                        ) | st.text(max_size=10)
FIELDS = [("model_file",), ("spec", "preprocessing", "tokenizer"), ("golden", "file"), ("reference", "file"),
          ("spec", "labels"), ("spec", "outputs"), ("spec", "inputs"), ("precision",), ("target",),
          ("golden", "samples"), ("golden", "tolerance"), ("parity", "thresholds"), ("schema_version",)]


class OpenAudit:
    """Records every path Python opens while active (sys.addaudithook; hooks cannot be removed)."""

    opened: list[str] = []
    active = False

    @classmethod
    def hook(cls, event: str, args: tuple) -> None:
        if cls.active and event == "open" and isinstance(args[0], (str, bytes, Path)):
            cls.opened.append(os.fsdecode(args[0]))


sys.addaudithook(OpenAudit.hook)


def _mutate(folder: Path, secret: Path, where: tuple[str, ...], value, rehash: bool, data: bytes | None,
            victim: str) -> None:
    manifest = json.loads((folder / "manifest.json").read_text())
    value = str(secret) if value == "{secret}" else value
    node = manifest
    for key in where[:-1]:
        node = node.setdefault(key, {}) if isinstance(node, dict) else node
    if isinstance(node, dict):
        node[where[-1]] = value
    if data is not None and (folder / victim).is_file():
        (folder / victim).write_bytes(data)
    if rehash:  # an attacker who rewrites the whole bundle consistently
        manifest.pop("files", None)
        manifest.pop("schema_version", None)
        write_manifest(folder, manifest)
        manifest = json.loads((folder / "manifest.json").read_text())
        if where == ("schema_version",):
            manifest["schema_version"] = value
    (folder / "manifest.json").write_text(json.dumps(manifest))


def test_mutated_bundles_load_or_are_refused_and_never_read_outside(demo_out, tmp_path_factory):
    outcomes: Counter = Counter()

    @settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
    @given(kind=st.sampled_from(["text", "image"]), where=st.sampled_from(FIELDS), value=paths | values,
           keep=st.booleans(), rehash=st.booleans(), victim=st.sampled_from(["tokenizer.json", "golden.npz",
                                                                              "reference.safetensors", "model.onnx"]),
           data=st.none() | st.binary(max_size=64))
    def run(kind, where, value, keep, rehash, victim, data):
        root = tmp_path_factory.mktemp("fuzz")
        secret = root / "secret.txt"
        secret.write_text("outside the bundle")
        folder = root / "b"
        shutil.copytree(demo_out / kind / "onnx-fp32", folder)
        if not keep:
            _mutate(folder, secret, where, value, rehash, data, victim)
        OpenAudit.opened, OpenAudit.active = [], True
        try:
            bundle = load_bundle(folder, self_test=True)
            item = "hello there" if kind == "text" else np.zeros((8, 8, 1), np.uint8)
            assert len(bundle.classify([item])) == 1
            outcomes["loaded"] += 1
        except EdgeSDKError:
            outcomes["refused"] += 1
        finally:
            OpenAudit.active = False
        inside = str(folder.resolve())
        escapes = [p for p in OpenAudit.opened if p.startswith(str(root)) and not str(Path(p).resolve()).startswith(
            inside) or p.startswith("/dev/") or p.endswith("secret.txt")]
        assert not escapes, escapes

    run()
    assert outcomes["loaded"] >= 5 and outcomes["refused"] >= 20, outcomes
