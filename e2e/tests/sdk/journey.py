"""Sends events through a capture Service with the real PostHog Python SDK.

Run by `e2e/tests/journey.rs`:

    python journey.py HOST TOKEN COUNT

Each event goes through the SDK's public `capture` and its background
consumer; `flush()` and `shutdown()` deliver them before the script exits.
It exits non-zero when the SDK reported an error.
"""

import sys

from posthog import Posthog

host, token, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
errors = []
client = Posthog(token, host=host, on_error=lambda error, items: errors.append(str(error)))
for i in range(count):
    client.capture(
        "journey step",
        distinct_id=f"sdk-user-{i}",
        properties={"email": f"user{i}@example.com", "step": i},
    )
client.flush()
client.shutdown()
if errors:
    print("the SDK reported errors:", errors)
    sys.exit(1)
print(f"sent {count}")
