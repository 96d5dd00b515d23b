// Text encoding for edgesdk text bundles with @huggingface/tokenizers (Tokenizers.js), reading
// the bundle's own tokenizer.json: WordPiece, BPE and Unigram. Truncates as the Python runtime
// does (tokenizers' enable_truncation(max_length)): the text's pieces are cut to fit and the
// special tokens are kept. Used by the page (app.js) and by Node (tokenize.mjs).
import { Tokenizer } from "./node_modules/@huggingface/tokenizers/dist/tokenizers.mjs";
import { PrecompiledCharsmap } from "./precompiled.js";

export class TokenEncoder {
  constructor(tokenizerJson, maxLength) {
    this.tokenizer = new Tokenizer(tokenizerJson, {});
    matchRustNormalizers(this.tokenizer.normalizer);
    this.maxLength = maxLength;
  }

  // The input ids of one text: the same as Python's tokenizers.Tokenizer.encode(text).ids.
  encode(text) {
    const full = this.tokenizer.encode(text).ids;
    if (full.length <= this.maxLength) return full;
    const content = this.tokenizer.encode(text, { add_special_tokens: false }).ids;
    const special = full.length - content.length;
    const start = leadingSpecials(full, content, special);
    return [...full.slice(0, start), ...content.slice(0, Math.max(this.maxLength - special, 0)),
      ...full.slice(start + content.length)];
  }
}

// Make Tokenizers.js normalize as Rust's tokenizers does, where the two differ: the exact
// SentencePiece charsmap in place of NFKC, and lowercasing one character at a time (JavaScript's
// toLowerCase turns a word-final capital sigma into "ς", Rust's char-wise lowercase into "σ").
function matchRustNormalizers(normalizer) {
  if (!normalizer) return;
  const { type, precompiled_charsmap: charsmap, lowercase } = normalizer.config ?? {};
  if (type === "Precompiled" && charsmap) {
    const exact = new PrecompiledCharsmap(charsmap);
    normalizer.normalize = (text) => exact.normalize(text);
  } else if (type === "Lowercase" || (type === "BertNormalizer" && lowercase)) {
    const normalize = normalizer.normalize.bind(normalizer);
    normalizer.normalize = (text) => normalize(text.replaceAll("\u03a3", "\u03c3"));
  }
  for (const inner of normalizer.normalizers ?? []) matchRustNormalizers(inner);
}

// Where the text's own ids begin in its encoding with special tokens.
function leadingSpecials(full, content, special) {
  for (let start = 0; start <= special; start++) {
    if (content.every((id, i) => full[start + i] === id)) return start;
  }
  throw new Error("the post-processor changes the text's own ids: truncation is not supported for this tokenizer");
}
