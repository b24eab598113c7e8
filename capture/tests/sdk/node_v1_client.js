// Sends events with the real posthog-node SDK in its v1 capture mode.
//
// Run by `capture/tests/sdk_v1.rs` with POSTHOG_CAPTURE_MODE=v1 (the only
// switch posthog-node has for v1) and NODE_PATH pointing at the
// node_modules `.ci/setup` installs posthog-node into:
//
//     node node_v1_client.js HOST TOKEN COUNT
//
// Every HTTP exchange goes through a recording `fetch`; a JSON summary of
// the events sent, the exchanges and the errors the SDK reported is
// printed to stdout.

const { PostHog } = require('posthog-node');

const [host, token, count] = process.argv.slice(2);
const exchanges = [];
const errors = [];

async function recordingFetch(url, options) {
  const response = await fetch(url, options);
  const text = await response.clone().text();
  const headers = {};
  for (const [name, value] of Object.entries(options.headers || {})) {
    headers[name] = name.toLowerCase() === 'authorization' ? 'Bearer ***' : value;
  }
  exchanges.push({
    url: String(url),
    status: response.status,
    request_headers: headers,
    retry_after: response.headers.get('Retry-After'),
    response: text,
  });
  return response;
}

const client = new PostHog(token, {
  host,
  flushAt: 5,
  flushInterval: 0,
  fetch: recordingFetch,
  fetchRetryCount: 0,
});
client.on('error', (error) => errors.push(String(error && (error.stack || error))));

const sent = [];
for (let i = 0; i < Number(count); i += 1) {
  const uuid = crypto.randomUUID();
  client.capture({
    distinctId: `node-v1-user-${i % 3}`,
    event: 'node v1 step',
    uuid,
    properties: { step: i, $set: { seen: i } },
  });
  sent.push({ event: 'node v1 step', uuid });
}
client.shutdown().then(() => {
  process.stdout.write(`${JSON.stringify({ sent, exchanges, errors })}\n`);
});
