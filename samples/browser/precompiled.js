// SentencePiece's precompiled normalizer (the "Precompiled" normalizer of Unigram tokenizers
// such as XLM-R and multilingual-e5), as Hugging Face tokenizers runs it. Tokenizers.js stands
// in NFKC for it, which reorders combining marks that the charsmap leaves alone, so ids differ.
//
// The charsmap is a darts-clone double-array trie over UTF-8 bytes and a blob of
// NUL-terminated replacements. Each grapheme shorter than 6 bytes is replaced whole when a
// prefix of it is in the trie (the shortest such prefix decides, as in Rust's spm_precompiled);
// otherwise each of its characters is replaced on its own or kept.

const utf8 = new globalThis.TextEncoder();
const graphemes = new Intl.Segmenter(undefined, { granularity: "grapheme" });

export class PrecompiledCharsmap {
  constructor(base64) {
    const bytes = Uint8Array.from(atob(base64), (c) => c.charCodeAt(0));
    const view = new DataView(bytes.buffer);
    const trieBytes = view.getUint32(0, true);
    this.units = new Uint32Array(trieBytes / 4);
    for (let i = 0; i < this.units.length; i++) this.units[i] = view.getUint32(4 + 4 * i, true);
    this.replacements = bytes.subarray(4 + trieBytes);
    this.decoder = new globalThis.TextDecoder();
  }

  normalize(text) {
    let out = "";
    for (const { segment } of graphemes.segment(text)) {
      const whole = utf8.encode(segment).length < 6 ? this.replacement(segment) : null;
      if (whole !== null) { out += whole; continue; }
      for (const ch of segment) out += this.replacement(ch) ?? ch;
    }
    return out;
  }

  // The replacement of the shortest prefix of `chunk` that the trie holds, or null.
  replacement(chunk) {
    const value = this.shortestPrefixValue(utf8.encode(chunk));
    if (value === null) return null;
    const end = this.replacements.indexOf(0, value);
    return this.decoder.decode(this.replacements.subarray(value, end < 0 ? undefined : end));
  }

  shortestPrefixValue(key) {
    const offset = (unit) => (unit >>> 10) << ((unit & (1 << 9)) >>> 6);
    let node = offset(this.units[0]);
    for (const byte of key) {
      if (byte === 0) break;
      node ^= byte;
      const unit = this.units[node];
      if (unit === undefined || (unit & 0x800000ff) >>> 0 !== byte) return null;
      node ^= offset(unit);
      if ((unit >>> 8) & 1) return this.units[node] & 0x7fffffff;
    }
    return null;
  }
}
