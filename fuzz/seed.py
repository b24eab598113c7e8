#!/usr/bin/env python3
"""Builds the fuzz targets' seed corpora into fuzz/corpus/<target>.

The request bodies come from the shared fixtures (real SDK requests, see
../shared/fixtures/README.md), read where they are at run time: they are
not copied into the repository. Seeds that are not HTTP bodies (Redis
replies, signature headers, runtime config documents) are written here or
taken from the repository's own docs.

Usage: fuzz/seed.py [FIXTURES_DIR]   (default: ../shared/fixtures beside the
repository, or $CAPTURE_FIXTURES)
"""

import base64
import gzip
import hashlib
import json
import os
import re
import sys
import urllib.parse
import zlib
from pathlib import Path

FUZZ = Path(__file__).resolve().parent
ROOT = FUZZ.parent
CORPUS = FUZZ / "corpus"

# The decode target's first byte: the low four bits pick the hint (index
# into HINTS in fuzz_targets/decode.rs), 0x10 marks a form body.
HINT = {None: 0, "gzip-js": 5, "lz64": 7, "base64": 10}
FORM = 0x10

B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/="


def lz_compress_to_base64(text):
    """lz-string's compressToBase64, for seeds of the lz64 paths (no fixture
    uses lz64; old posthog-js sends it)."""
    raw = text.encode("utf-16-le")
    units = [chr(int.from_bytes(raw[i : i + 2], "little")) for i in range(0, len(raw), 2)]
    out = []
    state = {"val": 0, "pos": 0}

    def write(value, count):
        for _ in range(count):
            state["val"] = (state["val"] << 1) | (value & 1)
            value >>= 1
            if state["pos"] == 5:
                out.append(B64[state["val"]])
                state["val"], state["pos"] = 0, 0
            else:
                state["pos"] += 1

    dictionary, to_create = {}, set()
    w, enlarge_in, size, bits = "", 2, 3, 2

    def enlarge():
        nonlocal enlarge_in, bits
        enlarge_in -= 1
        if enlarge_in == 0:
            enlarge_in = 1 << bits
            bits += 1

    def emit(w):
        if w in to_create:
            code = ord(w[0])
            if code < 256:
                write(0, bits)
                write(code, 8)
            else:
                write(1, bits)
                write(code, 16)
            enlarge()
            to_create.discard(w)
        else:
            write(dictionary[w], bits)
        enlarge()

    for c in units:
        if c not in dictionary:
            dictionary[c] = size
            size += 1
            to_create.add(c)
        if w + c in dictionary:
            w += c
        else:
            emit(w)
            dictionary[w + c] = size
            size += 1
            w = c
    if w:
        emit(w)
    write(2, bits)
    while True:
        state["val"] <<= 1
        if state["pos"] == 5:
            out.append(B64[state["val"]])
            break
        state["pos"] += 1
    result = "".join(out)
    return result + "=" * ((4 - len(result) % 4) % 4)


def save(target, data):
    if isinstance(data, str):
        data = data.encode()
    folder = CORPUS / target
    folder.mkdir(parents=True, exist_ok=True)
    (folder / hashlib.sha1(data).hexdigest()).write_bytes(data)


def decoded_json(body, form):
    """The JSON text of a fixture body, or None (as capture would decode it,
    for the paths the fixtures use: gzip, form, base64)."""
    if body[:2] == b"\x1f\x8b":
        body = gzip.decompress(body)
    if form and body[:1] not in (b"{", b"["):
        fields = urllib.parse.parse_qs(body.decode(), keep_blank_values=True)
        body = fields.get("data", [""])[0].encode()
    if body[:1] not in (b"{", b"["):
        body = base64.b64decode(body.replace(b" ", b"+") + b"==")
    if body[:2] == b"\x1f\x8b":
        body = gzip.decompress(body)
    return body.decode()


def requests(fixtures):
    path = Path(fixtures) / "posthog" / "requests_dump.jsonl"
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            yield json.loads(line)


def seed_bodies(fixtures):
    for request in requests(fixtures):
        body = base64.b64decode(request["body"])
        query = dict(urllib.parse.parse_qsl(urllib.parse.urlparse(request["path"]).query))
        hint = query.get("compression") or request["content_encoding"] or None
        form = "x-www-form-urlencoded" in request["content_type"]
        shape = HINT.get(hint, 0) | (FORM if form else 0)
        save("decode", bytes([shape]) + body)

        text = decoded_json(body, form)
        # Default cap, and a cap of one event so the cap is crossed.
        save("parse", b"\xff" + text.encode())
        save("parse", b"\x00" + text.encode())
        packed = lz_compress_to_base64(text)
        save("lzstring", packed)
        save("decode", bytes([HINT["lz64"]]) + packed.encode())
        save("decode", bytes([HINT["base64"]]) + base64.b64encode(text.encode()))
        form_body = urllib.parse.urlencode({"data": packed, "compression": "lz64"})
        save("decode", bytes([FORM]) + form_body.encode())
        # GET: the data in the query (0x20), as posthog-js sends small events.
        save("decode", bytes([0x20]) + base64.b64encode(text.encode()))

        # Each event the old endpoint produced, alone, in an array, in a batch.
        events = [json.loads(out["data"]) for out in request.get("output", [])]
        for event in events[:3]:
            save("parse", b"\xff" + json.dumps(event).encode())
        if events:
            batch = {"api_key": "phc_seed", "batch": events, "sent_at": "2023-09-15T09:15:05Z"}
            save("parse", b"\xff" + json.dumps(batch).encode())
            save("parse", b"\x01" + json.dumps(events).encode())
            save("lzstring", lz_compress_to_base64(json.dumps(events)))
            for encoding, body in v1_bodies(events):
                save("v1", bytes([encoding]) + body)


def v1_bodies(events):
    """The events as a v1 batch (as posthog-python's v1 mode shapes them),
    plain, gzipped, zlib-deflated and, with zstandard at hand, zstd: the
    first byte picks the encoding in fuzz_targets/v1.rs."""
    batch = []
    for i, event in enumerate(events):
        properties = dict(event.get("properties") or {})
        session = properties.pop("$session_id", None)
        batch.append({
            "event": event.get("event", ""),
            "uuid": event.get("uuid") or f"0190b0e1-0000-7000-8000-{i:012d}",
            "distinct_id": str(event.get("distinct_id") or properties.get("distinct_id") or "seed"),
            "timestamp": event.get("timestamp") or "2023-09-15T09:15:05Z",
            "session_id": session if isinstance(session, str) else None,
            "options": {"process_person_profile": i % 2 == 0},
            "properties": properties,
        })
    text = json.dumps({"created_at": "2023-09-15T09:15:05Z", "batch": batch}).encode()
    yield 0, text
    yield 1, gzip.compress(text)
    yield 2, zlib.compress(text)
    try:
        import zstandard

        yield 3, zstandard.ZstdCompressor().compress(text)
    except ImportError:
        pass


def seed_others():
    # Runtime config documents: every YAML example in the docs.
    for doc in (ROOT / "docs").glob("*.md"):
        for block in re.findall(r"```ya?ml\n(.*?)```", doc.read_text(), re.S):
            save("runtime_config", block)
    save("runtime_config", "version: 1\n")
    save("runtime_config", '{"version":1,"plugins":[{"sample":{"rate":0.5,"events":{"a":0.1}}}]}')

    # Redis replies as the policy checks get them.
    for reply in [
        b"+OK\r\n",
        b"-NOSCRIPT No matching script. Please use EVAL.\r\n",
        b":42\r\n",
        b"$5\r\nhello\r\n",
        b"$-1\r\n",
        b"*-1\r\n",
        b"*3\r\n:1\r\n$3\r\nabc\r\n*2\r\n:0\r\n$-1\r\n",
        b"*2\r\n*2\r\n:1\r\n:2\r\n*1\r\n+QUEUED\r\n",
    ]:
        for cut in (0, len(reply) // 2):
            save("resp", cut.to_bytes(2, "little") + reply)

    # Signature headers.
    mac = hashlib.sha256(b"seed").hexdigest()
    for header in [
        f"t=1700000000,v2={mac}",
        f" v2={mac} , t=1700000000 ",
        f"t=1700000000,v1={mac}",
        f"t=1700000000,v2={mac},v2={mac.upper()}",
        "t=,v2=",
    ]:
        save("signature", header)

    # Spool segments: the first byte picks the check (even: the bytes as a
    # segment; odd: messages cut where the next two bytes say).
    for text in [b"$pageview user-1 https://example.com", "évènement ☃".encode() * 5, b""]:
        for cut in (0, 7, 60, 65535):
            save("spool", b"\x01" + cut.to_bytes(2, "little") + text)
    for raw in [b"CSP1", b"CSP1\x05\x00\x00\x00\x00\x00\x00\x00abcde", b"xxCSP1" * 3]:
        save("spool", b"\x00" + raw)


def main():
    fixtures = (
        sys.argv[1]
        if len(sys.argv) > 1
        else os.environ.get("CAPTURE_FIXTURES", str(ROOT.parent / "shared" / "fixtures"))
    )
    if Path(fixtures).is_dir():
        seed_bodies(fixtures)
    else:
        print(f"seed: no fixtures at {fixtures}; seeding without request bodies", file=sys.stderr)
    seed_others()
    for target in sorted(p.name for p in CORPUS.iterdir()):
        print(f"seed: {target}: {len(list((CORPUS / target).iterdir()))} inputs", file=sys.stderr)


if __name__ == "__main__":
    main()
