"""Sends events to a capture server with the real PostHog Python SDK.

Run by `capture/tests/sdk.rs`:

    python python_client.py --host http://127.0.0.1:PORT --token phc_... [--gzip] [--historical]

Every event goes through the SDK's public API (capture, set, set_once, alias,
group_identify, capture_exception) and its own background consumer, then
`flush()` and `shutdown()` deliver everything before the script exits.

Every HTTP exchange the SDK makes is recorded (method, URL, status, response
body, request headers and the decoded request body), and a JSON summary of
what was sent and what went over the wire is printed to stdout. The script
exits non-zero, after printing the summary, when the SDK reported an error
through `on_error`, when any response was not a 200, or when what went over
the wire does not match what was asked for.
"""

import argparse
import datetime
import gzip
import json
import logging
import sys
import threading
import uuid as uuid_lib
from urllib.parse import urlsplit

import requests

try:
    import posthog
    from posthog import Posthog
except ImportError as err:  # the Rust test checks this first; be clear anyway
    sys.stderr.write(
        f"cannot import the posthog SDK ({err}); install it with "
        "`pip install -r capture/tests/sdk/requirements.txt`\n"
    )
    sys.exit(3)


EXCHANGES = []
ERRORS = []
LOCK = threading.Lock()


def record_exchanges():
    """Wraps `requests.Session.send` so that every exchange is recorded."""
    original = requests.Session.send

    def send(session, request, **kwargs):
        entry = {
            "method": request.method,
            "url": request.url,
            "request_headers": {
                name: request.headers.get(name)
                for name in ("Content-Type", "Content-Encoding", "User-Agent")
            },
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
        entry["response"] = response.text
        with LOCK:
            EXCHANGES.append(entry)
        return response

    requests.Session.send = send


def decode_body(body, encoding):
    if body is None:
        return None
    if isinstance(body, str):
        body = body.encode("utf-8")
    if encoding == "gzip":
        body = gzip.decompress(body)
    try:
        return json.loads(body)
    except ValueError:
        return {"undecodable": body.decode("utf-8", "replace")}


def on_error(err, batch):
    with LOCK:
        ERRORS.append(
            {
                "error": repr(err),
                "status": getattr(err, "status", None),
                "message": getattr(err, "message", None),
                "events": [item.get("event") for item in batch],
            }
        )


def new_uuid():
    return str(uuid_lib.uuid4())


def raise_and_catch():
    try:
        raise ValueError("boom from the sdk test")
    except ValueError as err:
        return err


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", required=True, help="capture base URL")
    parser.add_argument("--token", required=True, help="project token")
    parser.add_argument("--run-id", default=new_uuid()[:8], help="suffix for distinct ids")
    parser.add_argument("--gzip", action="store_true", help="gzip request bodies")
    parser.add_argument(
        "--historical", action="store_true", help="send with historical_migration"
    )
    parser.add_argument("--flush-at", type=int, default=4, help="events per request")
    args = parser.parse_args()

    logging.basicConfig(
        stream=sys.stderr,
        level=logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    record_exchanges()

    client = Posthog(
        project_api_key=args.token,
        host=args.host,
        debug=False,
        on_error=on_error,
        # No retries: a refusal must surface at once, through on_error.
        max_retries=0,
        timeout=5,
        gzip=args.gzip,
        flush_at=args.flush_at,
        flush_interval=0.5,
        historical_migration=args.historical,
        # The legacy /batch/ protocol, whatever POSTHOG_CAPTURE_MODE says.
        capture_mode="v0",
        enable_exception_autocapture=False,
    )

    user = f"sdk-user-{args.run_id}"
    unicode_user = f"sdk-ünïcødé-✓-{args.run_id}"
    alias_target = f"sdk-alias-{args.run_id}"
    anonymous = f"sdk-anon-{args.run_id}"
    sent = []

    def note(call, event, distinct_id, passed_uuid, returned, **extra):
        entry = {
            "call": call,
            "event": event,
            "distinct_id": distinct_id,
            "uuid": passed_uuid,
            "returned_uuid": returned,
        }
        entry.update(extra)
        sent.append(entry)

    def capture(event, distinct_id=None, properties=None, **kwargs):
        passed_uuid = new_uuid()
        returned = client.capture(
            event,
            distinct_id=distinct_id,
            properties=properties,
            uuid=passed_uuid,
            **kwargs,
        )
        extra = {"properties": properties or {}}
        if "timestamp" in kwargs:
            extra["timestamp"] = kwargs["timestamp"].isoformat()
        if "groups" in kwargs:
            extra["groups"] = kwargs["groups"]
        note("capture", event, distinct_id, passed_uuid, returned, **extra)

    capture(
        "$pageview",
        user,
        {
            "$current_url": "https://example.com/sdk?q=1",
            "plan": "pro",
            "count": 3,
            "ratio": 0.25,
            "big": 2**53 + 1,
            "enabled": True,
            "nothing": None,
            "text": "héllo wörld ✓ \"quoted\" \\ back\nslash",
            "nested": {"list": [1, "two", None, {"three": 3.5}], "flag": False},
        },
    )
    capture("signed_up", user, {"method": "email"}, groups={"company": "acme"})
    capture(
        "backdated",
        user,
        {"why": "an hour ago"},
        timestamp=datetime.datetime.now(datetime.timezone.utc)
        - datetime.timedelta(hours=1),
    )
    capture("purchase", unicode_user, {"amount": 12.5, "currency": "EUR"})
    # No distinct id: the SDK makes one up and marks the event personless.
    capture("anonymous ping", None, {"source": "cron"})
    # What posthog-js sends on identify(): person properties under $set.
    capture(
        "$identify",
        user,
        {
            "$anon_distinct_id": anonymous,
            "$set": {"email": "sdk@example.com", "name": "SDK Test"},
            "$set_once": {"first_seen_by": "sdk-test"},
        },
    )

    person = {"email": "sdk@example.com", "plan": "pro", "logins": 7}
    passed_uuid = new_uuid()
    returned = client.set(distinct_id=user, properties=person, uuid=passed_uuid)
    note("set", "$set", user, passed_uuid, returned, set=person)

    once = {"initial_referrer": "https://example.org/"}
    passed_uuid = new_uuid()
    returned = client.set_once(distinct_id=user, properties=once, uuid=passed_uuid)
    note("set_once", "$set_once", user, passed_uuid, returned, set_once=once)

    passed_uuid = new_uuid()
    returned = client.alias(previous_id=user, distinct_id=alias_target, uuid=passed_uuid)
    note("alias", "$create_alias", user, passed_uuid, returned, alias=alias_target)

    group = {"name": "Acme Inc", "employees": 11}
    passed_uuid = new_uuid()
    returned = client.group_identify(
        "company", "acme", group, uuid=passed_uuid, distinct_id=user
    )
    note(
        "group_identify",
        "$groupidentify",
        user,
        passed_uuid,
        returned,
        group_type="company",
        group_key="acme",
        group_set=group,
    )

    error = raise_and_catch()
    passed_uuid = new_uuid()
    where = {"where": "sdk-test"}
    if hasattr(client, "capture_exception"):
        returned = client.capture_exception(
            error, distinct_id=user, properties=where, uuid=passed_uuid
        )
        note(
            "capture_exception",
            "$exception",
            user,
            passed_uuid,
            returned,
            properties=where,
            exception_type=type(error).__name__,
            exception_message=str(error),
        )
    else:  # an SDK without error tracking: send the event by hand
        properties = dict(
            where,
            **{
                "$exception_list": [
                    {"type": type(error).__name__, "value": str(error)}
                ]
            },
        )
        returned = client.capture(
            "$exception", distinct_id=user, properties=properties, uuid=passed_uuid
        )
        note(
            "capture",
            "$exception",
            user,
            passed_uuid,
            returned,
            properties=properties,
            exception_type=type(error).__name__,
            exception_message=str(error),
        )

    client.flush()
    client.shutdown()

    with LOCK:
        exchanges = list(EXCHANGES)
        errors = list(ERRORS)

    problems = check(args, sent, exchanges, errors)
    summary = {
        "posthog_version": posthog.VERSION,
        "python_version": sys.version.split()[0],
        "gzip": args.gzip,
        "historical": args.historical,
        "sent": sent,
        "exchanges": exchanges,
        "errors": errors,
        "problems": problems,
    }
    json.dump(summary, sys.stdout, indent=1, sort_keys=True)
    sys.stdout.write("\n")
    sys.stdout.flush()
    for problem in problems:
        sys.stderr.write(f"problem: {problem}\n")
    return 1 if problems else 0


def check(args, sent, exchanges, errors):
    """What went wrong on the client side, as text; empty when all is well."""
    problems = [f"the SDK reported an error: {e}" for e in errors]
    host = urlsplit(args.host).netloc
    wire = {}
    for exchange in exchanges:
        url = urlsplit(exchange["url"])
        what = f"{exchange['method']} {exchange['url']}"
        if url.netloc != host:
            problems.append(f"{what}: request to a host other than capture")
        if "exception" in exchange:
            problems.append(f"{what}: {exchange['exception']}")
            continue
        if exchange["status"] != 200:
            problems.append(
                f"{what}: status {exchange['status']}: {exchange['response']}"
            )
        body = exchange["body"] or {}
        for event in body.get("batch", []):
            key = event.get("uuid")
            if key in wire:
                problems.append(f"{what}: event {key} sent twice")
            wire[key] = event
    if not exchanges:
        problems.append("the SDK made no request at all")
    for entry in sent:
        if entry["returned_uuid"] != entry["uuid"]:
            problems.append(
                f"{entry['call']} returned uuid {entry['returned_uuid']!r}, "
                f"not the one passed, {entry['uuid']!r}"
            )
        if entry["uuid"] not in wire:
            problems.append(f"{entry['call']} {entry['event']!r}: never sent")
    if len(wire) != len(sent):
        problems.append(f"{len(wire)} events went over the wire, {len(sent)} were sent")
    return problems


if __name__ == "__main__":
    sys.exit(main())
