// A WordPiece tokenizer (BERT, MiniLM) that reads a Hugging Face tokenizer.json:
// BertNormalizer, BertPreTokenizer, WordPiece, and the [CLS] ... [SEP] post-processor.
// Enough for the demo's text bundle; other families need their own model here.

function isPunctuation(ch) {
  const c = ch.codePointAt(0);
  if ((c >= 33 && c <= 47) || (c >= 58 && c <= 64) || (c >= 91 && c <= 96) || (c >= 123 && c <= 126)) return true;
  return /\p{P}/u.test(ch);
}

function isChinese(c) {
  return (c >= 0x4e00 && c <= 0x9fff) || (c >= 0x3400 && c <= 0x4dbf) || (c >= 0x20000 && c <= 0x2a6df) ||
    (c >= 0x2a700 && c <= 0x2b73f) || (c >= 0x2b740 && c <= 0x2b81f) || (c >= 0x2b820 && c <= 0x2ceaf) ||
    (c >= 0xf900 && c <= 0xfaff) || (c >= 0x2f800 && c <= 0x2fa1f);
}

function normalize(text, options) {
  let out = "";
  for (const ch of text) {
    const c = ch.codePointAt(0);
    if (options.clean_text) {
      if (c === 0 || c === 0xfffd || (/\p{C}/u.test(ch) && !"\t\n\r".includes(ch))) continue;
      if (/\s/u.test(ch)) { out += " "; continue; }
    }
    out += options.handle_chinese_chars && isChinese(c) ? ` ${ch} ` : ch;
  }
  const lowercase = options.lowercase;
  const strip = options.strip_accents === null || options.strip_accents === undefined ? lowercase : options.strip_accents;
  if (strip) out = out.normalize("NFD").replace(/\p{Mn}/gu, "");
  return lowercase ? out.toLowerCase() : out;
}

function preTokenize(text) {
  const words = [];
  for (const piece of text.split(/\s+/u)) {
    let word = "";
    for (const ch of piece) {
      if (isPunctuation(ch)) {
        if (word) words.push(word);
        words.push(ch);
        word = "";
      } else word += ch;
    }
    if (word) words.push(word);
  }
  return words;
}

export class WordPieceTokenizer {
  constructor(json) {
    if (json.model.type !== "WordPiece") throw new Error(`this sample reads WordPiece tokenizers, not ${json.model.type}`);
    this.vocab = new Map(Object.entries(json.model.vocab));
    this.unk = this.vocab.get(json.model.unk_token);
    this.prefix = json.model.continuing_subword_prefix;
    this.maxChars = json.model.max_input_chars_per_word;
    this.normalizer = json.normalizer;
    const post = json.post_processor;  // TemplateProcessing or BertProcessing
    this.cls = post.special_tokens ? post.special_tokens["[CLS]"].ids[0] : post.cls[1];
    this.sep = post.special_tokens ? post.special_tokens["[SEP]"].ids[0] : post.sep[1];
  }

  wordPiece(word) {
    const chars = Array.from(word);
    if (chars.length > this.maxChars) return [this.unk];
    const ids = [];
    for (let start = 0; start < chars.length;) {
      let end = chars.length;
      let id;
      for (; end > start; end--) {
        const piece = (start > 0 ? this.prefix : "") + chars.slice(start, end).join("");
        if (this.vocab.has(piece)) { id = this.vocab.get(piece); break; }
      }
      if (id === undefined) return [this.unk];
      ids.push(id);
      start = end;
    }
    return ids;
  }

  encode(text, maxLength) {
    const words = preTokenize(normalize(text, this.normalizer));
    const ids = words.flatMap((w) => this.wordPiece(w)).slice(0, maxLength - 2);
    return [this.cls, ...ids, this.sep];
  }
}
