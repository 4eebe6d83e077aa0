#!/usr/bin/env python3
"""Writes the seed corpus of the fuzz targets (fuzz/corpus/<target>/).

The request seeds are protobuf encodings of user.v1 messages, written by
hand here (the wire format is small) so no protobuf package is needed.
Run from the repository root: python3 fuzz/seeds.py
"""
import pathlib
import shutil

ROOT = pathlib.Path(__file__).resolve().parent
ID = "0192f1c4-7b3a-7c1e-9d2f-3a4b5c6d7e8f"


def varint(n):
    n &= (1 << 64) - 1  # negative int32 values are sign-extended to 64 bits
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def field_varint(number, value):
    return varint(number << 3) + varint(value)


def field_bytes(number, value):
    if isinstance(value, str):
        value = value.encode()
    return varint(number << 3 | 2) + varint(len(value)) + value


def write(target, name, data):
    d = ROOT / "corpus" / target
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_bytes(data)


def requests():
    t = "decode_requests"
    write(t, "create", field_bytes(1, "ada@example.com") + field_bytes(2, "Ada Lovelace")
          + field_bytes(3, "correct horse battery"))
    write(t, "create_unicode", field_bytes(1, "zoë@exämple.org") + field_bytes(2, " Zoë ")
          + field_bytes(3, "pässwörd-long-enough"))
    write(t, "get", field_bytes(1, ID))
    mask = field_bytes(1, "name") + field_bytes(1, "status")
    write(t, "update_mask", field_bytes(1, ID) + field_bytes(2, "Ada") + field_varint(3, 2)
          + field_bytes(4, mask))
    write(t, "update_no_mask", field_bytes(1, ID) + field_varint(3, 1))
    write(t, "update_unknown_status", field_bytes(1, ID) + field_varint(3, 99)
          + field_bytes(4, field_bytes(1, "email")))
    write(t, "list", field_varint(1, 50) + field_bytes(2, ID))
    write(t, "list_negative", field_varint(1, -1))
    write(t, "watch", field_bytes(1, ID) + field_bytes(1, "not-an-id") + field_varint(2, 42))
    write(t, "empty", b"")


def ids():
    t = "ids_and_page_tokens"
    for name, text in [
        ("hyphenated", ID),
        ("upper", ID.upper()),
        ("simple", ID.replace("-", "")),
        ("braced", "{" + ID + "}"),
        ("urn", "urn:uuid:" + ID),
        ("nil", "00000000-0000-0000-0000-000000000000"),
        ("short", ID[:-1]),
        ("empty", ""),
    ]:
        write(t, name, text.encode())


def config():
    t = "config"
    write(t, "minimal", b'[grpc]\naddr = "127.0.0.1:50051"\n')
    write(t, "limits_zero", b"[limits]\nbulk_max_items = 0\n")
    write(t, "bad_duration", b'[shutdown]\ntimeout = "soon"\n')
    write(t, "wrong_type", b'[store]\nmax_connections = "ten"\n')
    write(t, "unknown_key", b"[grpc]\nadress = 1\n")
    write(t, "broken_table", b"[grpc\naddr = \n")
    write(t, "auth_two_sources", b'[auth]\njwt_secret = "s"\njwks_url = "https://idp.example/jwks"\n')
    write(t, "log_filter", b'[log]\nlevel = "user_service=debug,info"\n')
    shutil.copy(ROOT.parent / "config" / "example.toml", ROOT / "corpus" / t / "example.toml")


requests()
ids()
config()
