#!/usr/bin/env python3
"""Writes a synthetic checkpoint in the layout orbax gives the TTT-E2E authors' weights,
without jax or orbax: for timing `ttt convert orbax` where those are not installed
(bench/convert_orbax.sh uses bench/make_orbax_checkpoint.py, real orbax, where they are).

<out>/<step>/model_weights/ gets _METADATA (the authors' leaves, stacked as theirs),
manifest.ocdbt and d/ (an OCDBT store: one uncompressed B+tree leaf node, .zarray documents
inline in it) and ocdbt.process_0/d/ (one data file of zstd-compressed chunks, one chunk
per array, as an unsharded save writes them). Values are float32 with random sign and
mantissa and exponents of weights of about 0.01-0.06 (zstd level 1 shrinks them by about
as much as it does real weights); norm gains are 1. Needs the `zstd` program.

Usage: python3 bench/make_synthetic_orbax.py --size 125m --out results/orbax_bench/125m-synthetic
"""
import argparse
import json
import os
import struct
import subprocess

from make_orbax_checkpoint import SIZES, VOCAB

PIECE = 64 << 20  # bytes generated and compressed at a time


def leaves(n_layers, d_model, n_heads, d_ff, suffix_len):
    """(path under language_model.model., shape, is a norm gain), in the authors' order."""
    L, D, F, S = n_layers, d_model, d_ff, suffix_len
    blocks, prime = "h.blocks.", "h.prime_storage."
    out = [("wte.weight", [VOCAB, D], False), ("ln_f.weight", [D], True)]
    out += [(blocks + f"seq_modeling_block.{w}.weight", [L, D, D], False) for w in ("wq", "wk", "wv", "wo")]
    out += [(blocks + f"seq_modeling_block.{n}.weight", [L, D // n_heads], True) for n in ("q_norm", "k_norm")]
    out += [(blocks + "feed_forward.w1.weight", [L, D, F], False), (blocks + "feed_forward.w2.weight", [L, F, D], False),
            (blocks + "feed_forward.w3.weight", [L, D, F], False)]
    out += [(blocks + f"{n}.weight", [L, D], True) for n in ("seq_norm", "ffn_norm", "seq_post_norm", "ffn_post_norm")]
    out += [(prime + f"{n}.weight", [S, D], True) for n in ("ffn_prime_norm", "ffn_prime_post_norm")]
    out += [(prime + "feed_forward_prime.w1.weight", [S, D, F], False),
            (prime + "feed_forward_prime.w2.weight", [S, F, D], False),
            (prime + "feed_forward_prime.w3.weight", [S, D, F], False)]
    return out


# Byte 3 of a little-endian float32: the sign and the exponent's high bits (2^-7 .. 2^-4).
EXPONENT_BYTE = bytes((0x3C if b & 1 else 0x3D) | (0x80 if b & 2 else 0) for b in range(256))


def pieces(count, gain):
    left = 4 * count
    while left:
        n = min(left, PIECE)
        if gain:
            yield struct.pack("<f", 1.0) * (n // 4)
        else:
            data = bytearray(os.urandom(n))
            data[3::4] = bytes(data[3::4]).translate(EXPONENT_BYTE)
            yield bytes(data)
        left -= n


def crc32c(data):
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 & -(crc & 1))
    return crc ^ 0xFFFFFFFF


def varint(value):
    out = bytearray()
    while True:
        out.append((value & 0x7F) | (0x80 if value >= 0x80 else 0))
        value >>= 7
        if not value:
            return bytes(out)


def envelope(magic, body):
    """tensorstore/kvstore/ocdbt: magic, length, version 0, uncompressed, body, CRC-32C."""
    out = struct.pack(">I", magic) + struct.pack("<Q", 12 + 2 + len(body) + 4) + b"\0\0" + body
    return out + struct.pack("<I", crc32c(out))


def table(path, base):
    return varint(1) + varint(len(path)) + varint(len(base)) + path.encode()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=sorted(SIZES), default="125m")
    parser.add_argument("--out", required=True, help="folder of step folders to create")
    parser.add_argument("--step", type=int, default=100)
    args = parser.parse_args()

    root = os.path.join(args.out, str(args.step), "model_weights")
    os.makedirs(os.path.join(root, "d"))
    os.makedirs(os.path.join(root, "ocdbt.process_0", "d"))
    data_name = "d/" + os.urandom(16).hex()
    values = {}  # key -> bytes (inline) or (offset, length) in the data file
    tree = {}
    with open(os.path.join(root, "ocdbt.process_0", data_name), "wb") as data:
        for path, shape, gain in leaves(**SIZES[args.size]):
            name = "language_model.model." + path
            count = 1
            for d in shape:
                count *= d
            start = data.tell()
            zstd = subprocess.Popen(["zstd", "-1", "-q", "-c"], stdin=subprocess.PIPE, stdout=data)
            for piece in pieces(count, gain):
                zstd.stdin.write(piece)
            zstd.stdin.close()
            assert zstd.wait() == 0, "zstd failed"
            data.seek(0, 2)
            values[name + "/" + ".".join("0" * len(shape))] = (start, data.tell() - start)
            values[name + "/.zarray"] = json.dumps({
                "chunks": shape, "compressor": {"id": "zstd", "level": 1}, "dimension_separator": ".",
                "dtype": "<f4", "fill_value": None, "filters": None, "order": "C", "shape": shape,
                "zarr_format": 2}, separators=(",", ":")).encode()
            keys = name.split(".")
            tree[str(tuple(keys))] = {"key_metadata": [{"key": k, "key_type": 2} for k in keys],
                                      "value_metadata": {"value_type": "jax.Array", "skip_deserialize": False,
                                                         "write_shape": shape}}

    keys = sorted(values)
    indirect = [k for k in keys if isinstance(values[k], tuple)]
    node = b"\0" + table("ocdbt.process_0/" + data_name, "ocdbt.process_0/") + varint(len(keys))
    node += b"".join(varint(0) for _ in keys[1:]) + b"".join(varint(len(k)) for k in keys)
    node += b"".join(k.encode() for k in keys)
    node += b"".join(varint(values[k][1] if k in indirect else len(values[k])) for k in keys)
    node += bytes(1 if k in indirect else 0 for k in keys)
    node += b"".join(varint(0) for _ in indirect) + b"".join(varint(values[k][0]) for k in indirect)
    node += b"".join(values[k] for k in keys if k not in indirect)
    node = envelope(0x0CDB20DE, node)
    node_name = "d/" + os.urandom(16).hex()
    with open(os.path.join(root, node_name), "wb") as f:
        f.write(node)

    manifest = bytes(16) + b"\0" + varint(4096) + varint(100_000_000) + b"\x04" + varint(0)
    manifest += table(node_name, "") + varint(1) + varint(1) + b"\0" + varint(0) + varint(0) + varint(len(node))
    manifest += varint(len(keys)) + varint(len(node)) + varint(sum(values[k][1] for k in indirect))
    manifest += bytes(8) + varint(0)
    with open(os.path.join(root, "manifest.ocdbt"), "wb") as f:
        f.write(envelope(0x0CDB3A2A, manifest))
    with open(os.path.join(root, "_METADATA"), "w") as f:
        json.dump({"tree_metadata": tree, "use_ocdbt": True, "use_zarr3": False}, f)
    stored = sum(values[k][1] for k in indirect)
    print(f"wrote {root}: {args.size}, {stored / 1e6:.0f} MB of zstd chunks")


if __name__ == "__main__":
    main()
