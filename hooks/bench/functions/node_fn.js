// SPDX-License-Identifier: GPL-2.0-or-later
// node: a Node.js function of `upm bench` (nodejs from Debian).
//
//   node node_fn.js --socket PATH
//
// Cold start: builds its in-memory data the way a function loads a catalogue
// at start (200 000 records from a seeded generator, an index by category,
// and a precompiled set of regular expressions), then serves HTTP on a unix
// socket: GET /invoke?seed=N filters, sorts and serialises one category and
// answers one JSON line; GET /ping answers at once.  Under the ksm-* modes
// the bench starts it through merge_exec.py (PR_SET_MEMORY_MERGE, then exec).
'use strict';
const http = require('http');
const fs = require('fs');

const args = process.argv.slice(2);
const sock = args[args.indexOf('--socket') + 1];
const t0 = process.hrtime.bigint();

function mulberry32(a) {
  return function () {
    a |= 0; a = (a + 0x6D2B79F5) | 0;
    let t = Math.imul(a ^ (a >>> 15), 1 | a);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
const rnd = mulberry32(1);
const words = ['red', 'blue', 'fast', 'quiet', 'smart', 'steel', 'wood', 'solar', 'mini', 'max', 'pro', 'eco'];
const pick = () => words[Math.floor(rnd() * words.length)];
const records = [];
for (let i = 0; i < 200000; i++) {
  records.push({ id: i, name: `${pick()} ${pick()} ${pick()}`, category: `cat${i % 500}`,
                 price: Math.round(rnd() * 50000) / 100, tags: [pick(), pick(), pick()] });
}
const byCat = new Map();
for (const r of records) {
  if (!byCat.has(r.category)) byCat.set(r.category, []);
  byCat.get(r.category).push(r);
}
const patterns = words.map((w) => new RegExp(`\\b${w}\\b`, 'i'));
const cold = Number(process.hrtime.bigint() - t0) / 1e9;
process.stderr.write(`serve: node: cold start ${cold.toFixed(2)} s\n`);

function invoke(seed) {
  const items = byCat.get(`cat${seed % 500}`);
  const re = patterns[seed % patterns.length];
  const hits = items.filter((r) => re.test(r.name)).sort((a, b) => a.price - b.price);
  const body = JSON.stringify(hits);
  return { category: `cat${seed % 500}`, hits: hits.length, bytes: body.length };
}

const server = http.createServer((req, res) => {
  const url = new URL(req.url, 'http://localhost');
  let body;
  if (url.pathname === '/ping') {
    body = { ok: true, pid: process.pid, cold_start_s: cold };
  } else if (url.pathname === '/invoke') {
    const t = process.hrtime.bigint();
    body = { ok: true, result: invoke(Number(url.searchParams.get('seed') || 0)) };
    body.seconds = Number(process.hrtime.bigint() - t) / 1e9;
  } else {
    res.writeHead(404); res.end(); return;
  }
  const data = JSON.stringify(body) + '\n';
  res.writeHead(200, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(data) });
  res.end(data);
});
try { fs.unlinkSync(sock); } catch (e) { /* none */ }
const tmp = sock + '.tmp';
try { fs.unlinkSync(tmp); } catch (e) { /* none */ }
server.listen(tmp, () => fs.renameSync(tmp, sock));   // visible only once it listens
