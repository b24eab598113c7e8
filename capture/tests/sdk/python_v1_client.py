"""Sends events with the real PostHog Python SDK in its v1 capture mode.

Run by `capture/tests/sdk_v1.rs`:

    python python_v1_client.py --host http://127.0.0.1:PORT --token phc_... \
        --compression gzip --count 12 [--max-retries 8]

The SDK is configured with `capture_mode="v1"` and the given
`capture_compression`, so it posts to `/i/v1/analytics/events` and resends
only the events the server answers `retry`. Every HTTP exchange is recorded
(status, the PostHog-* request headers, the decoded request body and the
response), and a JSON summary is printed to stdout: the events asked for,
the exchanges, and the errors the SDK reported through `on_error`.
"""

import argparse
import gzip
import json
import sys
import threading
import uuid as uuid_lib
import zlib

import requests

try:
    import posthog
    from posthog import Posthog
except ImportError as err:
    sys.stderr.write(f"cannot import the posthog SDK ({err})\n")
    sys.exit(3)

EXCHANGES = []
ERRORS = []
LOCK = threading.Lock()
HEADERS = (
    "Authorization",
    "Content-Type",
    "Content-Encoding",
    "PostHog-Sdk-Info",
    "PostHog-Attempt",
    "PostHog-Request-Id",
    "PostHog-Request-Timestamp",
)


def decode_body(body, encoding):
    if body is None:
        return None
    if isinstance(body, str):
        body = body.encode("utf-8")
    if encoding == "gzip":
        body = gzip.decompress(body)
    elif encoding == "deflate":
        body = zlib.decompress(body)
    elif encoding == "zstd":
        import zstandard

        body = zstandard.ZstdDecompressor().decompressobj().decompress(body)
    return json.loads(body)


def record_exchanges():
    original = requests.Session.send

    def send(session, request, **kwargs):
        headers = {name: request.headers.get(name) for name in HEADERS}
        if headers["Authorization"]:
            headers["Authorization"] = headers["Authorization"].split(" ")[0] + " ***"
        entry = {
            "method": request.method,
            "url": request.url,
            "request_headers": headers,
            "body": decode_body(request.body, request.headers.get("Content-Encoding")),
        }
        try:
            response = original(session, request, **kwargs)
        except Exception as err:
            entry["exception"] = repr(err)
            with LOCK:
                EXCHANGES.append(entry)
            raise
        entry["status"] = response.status_code
        entry["retry_after"] = response.headers.get("Retry-After")
        entry["response"] = response.text
        with LOCK:
            EXCHANGES.append(entry)
        return response

    requests.Session.send = send


def on_error(err, batch):
    with LOCK:
        ERRORS.append({"error": repr(err), "events": [i.get("event") for i in batch]})


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--compression", default="none")
    parser.add_argument("--count", type=int, default=12)
    parser.add_argument("--flush-at", type=int, default=6)
    parser.add_argument("--max-retries", type=int, default=0)
    parser.add_argument("--run-id", default=uuid_lib.uuid4().hex[:8])
    args = parser.parse_args()
    record_exchanges()

    client = Posthog(
        project_api_key=args.token,
        host=args.host,
        on_error=on_error,
        max_retries=args.max_retries,
        timeout=10,
        flush_at=args.flush_at,
        flush_interval=0.5,
        capture_mode="v1",
        capture_compression=args.compression,
        enable_exception_autocapture=False,
    )
    user = f"sdk-v1-{args.run_id}"
    sent = []
    for i in range(args.count):
        event_uuid = str(uuid_lib.uuid4())
        # Every third event an exception: its own topic.
        if i % 3 == 2:
            name = "$exception"
            properties = {"$exception_list": [{"type": "ValueError", "value": f"boom {i}"}]}
        else:
            name = "$pageview"
            properties = {"$current_url": f"https://example.com/{i}", "n": i, "$set": {"seen": i}}
        returned = client.capture(
            name,
            distinct_id=user,
            properties=properties,
            uuid=event_uuid,
            groups={"company": "acme"} if i == 0 else None,
        )
        sent.append(
            {"event": name, "uuid": event_uuid, "returned_uuid": returned, "properties": properties}
        )
    client.flush()
    client.shutdown()
    with LOCK:
        summary = {
            "posthog_version": posthog.VERSION,
            "distinct_id": user,
            "sent": sent,
            "exchanges": list(EXCHANGES),
            "errors": list(ERRORS),
        }
    json.dump(summary, sys.stdout, indent=1, sort_keys=True)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
