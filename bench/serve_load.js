// Load on `ttt serve` from N concurrent clients for a bounded time: a mix of session creations
// (a document each), questions on sessions, plain and streamed completions, and deletions.
// Node's own http module (keep-alive), no packages. Prints one JSON line: requests and
// failures (anything but 200 and a deliberate 429), p50/p99 latency per kind, time to first
// token of streams, throughput.
// Usage: node bench/serve_load.js BASE_URL CLIENTS SECONDS DOCUMENT_FILE
const http = require('http');
const fs = require('fs');

const [base, clientsText, secondsText, documentFile] = process.argv.slice(2);
const clients = Number(clientsText);
const deadline = Date.now() + 1000 * Number(secondsText);
const document = fs.readFileSync(documentFile, 'utf8');
const agent = new http.Agent({keepAlive: true, maxSockets: clients});
const url = new URL(base);

// A request; resolves {status, body, firstByteMs} (the first body byte: a stream's first token).
function request(method, path, body) {
  return new Promise((resolve) => {
    const start = Date.now();
    let firstByteMs = null;
    const data = body === undefined ? undefined : JSON.stringify(body);
    const req = http.request(
        {
          host: url.hostname,
          port: url.port,
          method,
          path,
          agent,
          headers: data ? {'Content-Type': 'application/json'} : {}
        },
        (res) => {
          let text = '';
          res.setEncoding('utf8');
          res.on('data', (chunk) => {
            if (firstByteMs === null) firstByteMs = Date.now() - start;
            text += chunk;
          });
          res.on('end', () => resolve({status: res.statusCode, body: text, firstByteMs}));
        });
    req.on('error', (error) => resolve({status: 0, body: String(error), firstByteMs}));
    if (data) req.write(data);
    req.end();
  });
}

const latencies = {};
const firstToken = [];
const counts = {
  requests: 0,
  ok: 0,
  rejected_429: 0,
  failures: 0,
  generated_tokens: 0
};
const failureSamples = [];
const sessions = [];
let seed = 1;

function record(kind, ms, reply) {
  counts.requests += 1;
  if (reply.status === 200) {
    counts.ok += 1;
    (latencies[kind] = latencies[kind] || []).push(ms);
  } else if (reply.status === 429) {
    counts.rejected_429 += 1;
  } else {
    counts.failures += 1;
    if (failureSamples.length < 5) failureSamples.push(`${kind}: ${reply.status} ${reply.body.slice(0, 200)}`);
  }
}

function countTokens(reply, streamed) {
  if (reply.status !== 200) return;
  if (!streamed) {
    counts.generated_tokens += JSON.parse(reply.body).usage.completion_tokens;
    return;
  }
  for (const line of reply.body.split('\n')) {
    if (!line.startsWith('data: {')) continue;
    const chunk = JSON.parse(line.slice(6));
    if (chunk.choices && chunk.choices[0]) counts.generated_tokens += chunk.choices[0].tokens.length;
  }
}

async function client(index) {
  let draw = index * 7919 + 1;
  const random = () => {
    draw = (draw * 1103515245 + 12345) % 2147483648;
    return draw / 2147483648;
  };
  while (Date.now() < deadline) {
    const r = random();
    const start = Date.now();
    const sampling = {max_tokens: 16, temperature: 0.8, top_p: 0.95, seed: seed++};
    if (r < 0.1 || sessions.length === 0) {
      const offset = Math.floor(random() * (document.length / 2));
      const reply =
          await request('POST', '/v1/sessions', {prompt: document.slice(offset, offset + document.length / 2)});
      record('create_session', Date.now() - start, reply);
      if (reply.status === 200) sessions.push(JSON.parse(reply.body).id);
    } else if (r < 0.55) {
      const session = sessions[Math.floor(random() * sessions.length)];
      const reply =
          await request('POST', '/v1/completions', {prompt: '\nQuestion: who?\nAnswer:', session, ...sampling});
      // A session another client deleted meanwhile is a 404 the mix causes, not a failure.
      if (reply.status === 404) continue;
      record('session_completion', Date.now() - start, reply);
      countTokens(reply, false);
    } else if (r < 0.85) {
      const reply = await request('POST', '/v1/completions', {prompt: 'Once upon a time', stream: true, ...sampling});
      record('stream', Date.now() - start, reply);
      if (reply.status === 200 && reply.firstByteMs !== null) firstToken.push(reply.firstByteMs);
      countTokens(reply, true);
    } else if (r < 0.97) {
      const reply = await request('POST', '/v1/completions', {prompt: 'The end of the story', ...sampling});
      record('completion', Date.now() - start, reply);
      countTokens(reply, false);
    } else if (sessions.length > 4) {
      const session = sessions.splice(Math.floor(random() * sessions.length), 1)[0];
      const reply = await request('DELETE', `/v1/sessions/${session}`);
      record('delete_session', Date.now() - start, reply);
    }
  }
}

function percentile(values, p) {
  if (values.length === 0) return null;
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
}

(async () => {
  const started = Date.now();
  await Promise.all(Array.from({length: clients}, (_, i) => client(i)));
  const seconds = (Date.now() - started) / 1000;
  const all = Object.values(latencies).flat();
  const kinds = {};
  for (const [kind, values] of Object.entries(latencies)) {
    kinds[kind] = {n: values.length, p50_ms: percentile(values, 50), p99_ms: percentile(values, 99)};
  }
  console.log(JSON.stringify({
    clients,
    seconds,
    ...counts,
    requests_per_s: +(counts.ok / seconds).toFixed(2),
    generated_tokens_per_s: +(counts.generated_tokens / seconds).toFixed(1),
    p50_ms: percentile(all, 50),
    p99_ms: percentile(all, 99),
    stream_first_token_p50_ms: percentile(firstToken, 50),
    stream_first_token_p99_ms: percentile(firstToken, 99),
    kinds,
    failure_samples: failureSamples,
  }));
})();
