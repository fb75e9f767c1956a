// The official OpenAI client library (npm's `openai`), unmodified, against `ttt serve`:
// completions.create plain and streamed, and models.list. Prints what it got as one JSON line.
// Usage: node openai_client.js BASE_URL REQUEST_JSON   (NODE_PATH: where `openai` is installed)
const OpenAI = require('openai');

async function main() {
  const [baseURL, requestText] = process.argv.slice(2);
  const client = new OpenAI({baseURL, apiKey: 'test-key', maxRetries: 0});
  const request = JSON.parse(requestText);
  const plain = await client.completions.create(request);
  const stream = await client.completions.create({...request, stream: true});
  let text = '';
  const tokens = [];
  let finish = null;
  for await (const chunk of stream) {
    const choice = chunk.choices[0];
    if (!choice) continue;
    text += choice.text;
    tokens.push(...(choice.tokens || []));
    if (choice.finish_reason) finish = choice.finish_reason;
  }
  const models = await client.models.list();
  console.log(JSON.stringify({
    plain: {
      text: plain.choices[0].text,
      tokens: plain.choices[0].tokens,
      finish: plain.choices[0].finish_reason,
      usage: plain.usage,
      object: plain.object
    },
    stream: {text, tokens, finish},
    models: models.data.map((m) => m.id),
  }));
}

main().catch((error) => {
  console.error(`openai client: ${error.status || ''} ${error.message}`);
  process.exit(1);
});
