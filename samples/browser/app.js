// Loads an edgesdk ONNX bundle (manifest.json, model, tokenizer.json), checks every file's
// sha256 against the manifest, and classifies text or a picked image with onnxruntime-web.
import { TokenEncoder } from "./encode.js";

const params = new URLSearchParams(location.search);
const base = (params.get("bundle") || "../bundle").replace(/\/$/, "") + "/";
document.getElementById("bundle").textContent = base;
ort.env.wasm.wasmPaths = new URL("node_modules/onnxruntime-web/dist/", location.href).href;
ort.env.wasm.numThreads = 1;

async function fetchChecked(name, manifest) {
  const bytes = await (await fetch(base + name)).arrayBuffer();
  const digest = Array.from(new Uint8Array(await crypto.subtle.digest("SHA-256", bytes)))
    .map((b) => b.toString(16).padStart(2, "0")).join("");
  if (digest !== manifest.files[name].sha256) throw new Error(`${name}: sha256 mismatch, the bundle was altered`);
  return bytes;
}

function softmax(logits) {
  const max = Math.max(...logits);
  const exps = logits.map((v) => Math.exp(v - max));
  const sum = exps.reduce((a, b) => a + b, 0);
  return exps.map((v) => v / sum);
}

function show(results) {
  document.getElementById("out").textContent = JSON.stringify(results, null, 1);
}

async function load() {
  const manifest = await (await fetch(base + "manifest.json")).json();
  if (manifest.spec.preprocessing.text_input === "string") {
    throw new Error("this bundle tokenizes inside its graph with onnxruntime-extensions, which onnxruntime-web "
      + "does not have: convert with --text-input ids for the browser (it tokenizes with Tokenizers.js)");
  }
  const session = await ort.InferenceSession.create(await fetchChecked(manifest.model_file, manifest));
  const spec = manifest.spec;
  const tokenizer = spec.kind === "text"
    ? new TokenEncoder(JSON.parse(new TextDecoder().decode(await fetchChecked(spec.preprocessing.tokenizer, manifest))),
      spec.preprocessing.max_length)
    : null;
  return { manifest, session, spec, tokenizer };
}

async function run(bundle, feeds) {
  const out = await bundle.session.run(feeds);
  const logits = Array.from(out.logits.data);
  const probs = softmax(logits);
  const best = probs.indexOf(Math.max(...probs));
  return { label: bundle.spec.labels[best], probabilities: Object.fromEntries(bundle.spec.labels.map((l, i) => [l, probs[i]])) };
}

async function classifyText(bundle, text) {
  const ids = bundle.tokenizer.encode(text);
  const tensor = (values) => new ort.Tensor("int64", BigInt64Array.from(values.map(BigInt)), [1, values.length]);
  const all = { input_ids: ids, attention_mask: ids.map(() => 1), token_type_ids: ids.map(() => 0) };
  const feeds = Object.fromEntries(bundle.spec.inputs.map((t) => [t.name, tensor(all[t.name])]));
  return { input: text, input_ids: ids, ...(await run(bundle, feeds)) };
}

async function classifyImage(bundle, file) {
  const bitmap = await createImageBitmap(file);
  const canvas = new OffscreenCanvas(bitmap.width, bitmap.height);
  const context = canvas.getContext("2d");
  context.drawImage(bitmap, 0, 0);
  const rgba = context.getImageData(0, 0, bitmap.width, bitmap.height).data;
  const channels = bundle.spec.preprocessing.channels;
  const pixels = new Uint8Array(bitmap.width * bitmap.height * channels);
  for (let i = 0; i < bitmap.width * bitmap.height; i++) {
    if (channels === 1) {  // PIL's convert("L"): ITU-R 601-2 luma in 16-bit fixed point
      pixels[i] = (rgba[4 * i] * 19595 + rgba[4 * i + 1] * 38470 + rgba[4 * i + 2] * 7471 + 0x8000) >> 16;
    } else {
      for (let c = 0; c < 3; c++) pixels[3 * i + c] = rgba[4 * i + c];
    }
  }
  const tensor = new ort.Tensor("uint8", pixels, [1, bitmap.height, bitmap.width, channels]);
  return { input: file.name, ...(await run(bundle, { [bundle.spec.inputs[0].name]: tensor })) };
}

const ready = load().catch((e) => { show({ error: String(e) }); throw e; });
document.getElementById("classify").onclick = async () => {
  const bundle = await ready;
  const lines = document.getElementById("text").value.split("\n").filter((l) => l.trim());
  const results = [];
  for (const line of lines) results.push(await classifyText(bundle, line));
  show(results);
};
document.getElementById("image").onchange = async (event) => {
  const bundle = await ready;
  const results = [];
  for (const file of event.target.files) results.push(await classifyImage(bundle, file));
  show(results);
};
ready.then(() => document.body.dataset.ready = "yes");
