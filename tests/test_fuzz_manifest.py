"""Fuzz the manifest parser and loader: any manifest is loaded or refused with BundleError."""

from __future__ import annotations

import json
import shutil

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgesdk.errors import BundleError
from edgesdk.runtime import load_bundle

scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=12)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                                             max_size=3), max_leaves=8)
names = st.sampled_from(["model.onnx", "../x", "/etc/passwd", "a/../../b", "", "reference.safetensors",
                         "sub/f", "~/f", "a\\b"]) | st.text(max_size=10)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(field=st.sampled_from(["schema_version", "target", "precision", "model_file", "spec", "files",
                              "reference", "parity"]),
       value=values, file_name=names, sha=st.text(max_size=70))
def test_any_manifest_is_loaded_or_refused(demo_out, tmp_path_factory, field, value, file_name, sha):
    folder = tmp_path_factory.mktemp("fuzz") / "b"
    shutil.copytree(demo_out / "image" / "onnx-fp32", folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest[field] = value
    if isinstance(manifest.get("files"), dict):
        manifest["files"][file_name] = {"sha256": sha, "bytes": 1}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    try:
        bundle = load_bundle(folder)
    except BundleError:
        return
    # loaded: every listed path stays inside the bundle
    for name in bundle.manifest["files"]:
        assert (folder / name).resolve().is_relative_to(folder.resolve())
