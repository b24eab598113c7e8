// Sends events through a capture Service with the real posthog-node SDK.
//
// Run by `e2e/tests/journey.rs`, with NODE_PATH pointing at the
// node_modules `.ci/setup` installs posthog-node into:
//
//     node node_client.js HOST TOKEN COUNT
//
// Each event goes through the SDK's `capture` and its own queue;
// `shutdown()` delivers them before the script exits. It exits non-zero
// when the SDK reported an error.

const { PostHog } = require('posthog-node');

const [host, token, count] = process.argv.slice(2);
const client = new PostHog(token, { host, flushAt: 10, flushInterval: 0 });
let failure = null;
client.on('error', (error) => {
  failure = error;
});
for (let i = 0; i < Number(count); i += 1) {
  client.capture({
    distinctId: `node-user-${i}`,
    event: 'journey step (node)',
    properties: { email: `node${i}@example.com`, step: i },
  });
}
client.shutdown().then(() => {
  if (failure) {
    console.error('the SDK reported an error:', failure);
    process.exit(1);
  }
  console.log(`sent ${count}`);
});
