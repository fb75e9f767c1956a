// Reference encodings from the JavaScript packages the vocabularies come from, for
// tests/text/bpe_reference_test.cpp. Usage: node reference_encode.js VOCAB_DIR IN.json OUT.json
// IN.json: {"cases": [text, ...]}; OUT.json: {encoding: {"ordinary": [[id, ...], ...],
// "special": [[id, ...], ...]}}, where "ordinary" encodes special tokens' text as text and
// "special" turns it into the special ids. Llama 3 (transformers.js, as Hugging Face's
// tokenizers) always splits out its added tokens, so it has "special" only.
'use strict';
const fs = require('fs');
const path = require('path');
const [vocabDir, inPath, outPath] = process.argv.slice(2);
const modules = path.resolve(vocabDir, 'node_modules');
const cases = JSON.parse(fs.readFileSync(inPath, 'utf8')).cases;
const out = {};
// The special tokens an encoding module knows: the package's exported names whose values look
// like special tokens and that encode to one id when allowed.
function specialTokens(tokenizer) {
  return Object.values(tokenizer)
    .filter((v) => typeof v === 'string' && /^<\|.*\|>$/.test(v))
    .filter((v) => tokenizer.encode(v, { allowedSpecial: 'all' }).length === 1);
}
for (const encoding of ['r50k_base', 'p50k_base', 'cl100k_base', 'o200k_base']) {
  const tokenizer = require(path.join(modules, 'gpt-tokenizer', 'cjs', 'encoding', encoding + '.js'));
  const ordinary = (text) => tokenizer.encode(text, { allowedSpecial: new Set(), disallowedSpecial: new Set() });
  // gpt-tokenizer 4.0.0 (and 3.4.0) find an allowed special token only at the very start of the
  // text (findNextSpecialToken runs a sticky regex from the search index), so the text is cut at
  // special tokens here, leftmost first and longest there, as tiktoken does, and each special
  // token's id is the package's own encoding of it alone.
  const specials = specialTokens(tokenizer);
  const special = (text) => {
    const ids = [];
    let start = 0;
    let pos = 0;
    while (pos < text.length) {
      const found = specials.filter((s) => text.startsWith(s, pos)).sort((a, b) => b.length - a.length)[0];
      if (!found) {
        pos += 1;
        continue;
      }
      ids.push(...ordinary(text.slice(start, pos)));
      const id = tokenizer.encode(found, { allowedSpecial: 'all' });
      if (id.length !== 1) throw new Error(`special token ${found} encodes to ${id}`);
      ids.push(id[0]);
      pos += found.length;
      start = pos;
    }
    ids.push(...ordinary(text.slice(start)));
    return ids;
  };
  out[encoding] = { ordinary: cases.map(ordinary), special: cases.map(special) };
}
const { fromPreTrained } = require(path.join(modules, '@lenml', 'tokenizer-llama3'));
const llama3 = fromPreTrained();
const llama3Ids = cases.map((text) => llama3.encode(text, { add_special_tokens: false }));
out.llama3 = { special: llama3Ids, ordinary_from_special: llama3Ids };
fs.writeFileSync(outPath, JSON.stringify(out));
