// Print the input ids Tokenizers.js gives for each text, for comparison with Python's tokenizers.
// Usage: node tokenize.mjs TOKENIZER_JSON MAX_LENGTH < texts.json (a JSON list of strings);
// prints a JSON list of id lists.
import { readFileSync } from "node:fs";
import { TokenEncoder } from "./encode.js";

const [file, maxLength] = process.argv.slice(2);
const encoder = new TokenEncoder(JSON.parse(readFileSync(file, "utf8")), Number(maxLength));
const texts = JSON.parse(readFileSync(0, "utf8"));
console.log(JSON.stringify(texts.map((text) => encoder.encode(text))));
