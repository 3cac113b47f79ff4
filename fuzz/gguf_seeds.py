#!/usr/bin/env python3
"""Writes fuzz/corpus/gguf/: small GGUF v3 (and one v2) files in both diffusion flavours: city96's (a
general.architecture, BFL names, a 5-D tensor flattened with its comfy.gguf.orig_shape, F32/F16/BF16 and block
types) and stable-diffusion.cpp's (no metadata, names under model.diffusion_model.). Laid out as ggml writes them:
header, metadata, tensor infos, padding to general.alignment (default 32), each tensor at an aligned offset."""
import os, random, struct

BLOCK = {0: (1, 4), 1: (1, 2), 30: (1, 2), 2: (32, 18), 3: (32, 20), 6: (32, 22), 7: (32, 24), 8: (32, 34),
         10: (256, 84), 11: (256, 110), 12: (256, 144), 13: (256, 176), 14: (256, 210), 15: (256, 292)}


def s(x):
    b = x.encode()
    return struct.pack("<Q", len(b)) + b


def kv_str(k, v):
    return s(k) + struct.pack("<I", 8) + s(v)


def kv_u32(k, v):
    return s(k) + struct.pack("<II", 4, v)


def kv_i32_array(k, vals):
    return s(k) + struct.pack("<IIQ", 9, 5, len(vals)) + b"".join(struct.pack("<i", v) for v in vals)


def gguf(kvs, tensors, version=3, align=32, rng=random.Random(0)):
    """tensors: (name, ne innermost first, ggml type)."""
    infos, data = b"", b""
    for name, ne, t in tensors:
        while len(data) % align:
            data += b"\0"
        n = 1
        for d in ne:
            n *= d
        blk, nbytes = BLOCK[t]
        payload = bytearray(rng.getrandbits(8) for _ in range(n // blk * nbytes))
        if t in (1, 2, 3, 6, 7, 8):  # small finite fp16 scales where the block starts with them
            for o in range(0, len(payload), nbytes):
                payload[o:o + 2] = struct.pack("<e", 0.01)
        infos += s(name) + struct.pack("<I", len(ne)) + b"".join(struct.pack("<Q", d) for d in ne)
        infos += struct.pack("<IQ", t, len(data))
        data += bytes(payload)
    head = b"GGUF" + struct.pack("<IQQ", version, len(tensors), len(kvs)) + b"".join(kvs) + infos
    while len(head) % align:
        head += b"\0"
    return head + data


def main():
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus", "gguf")
    os.makedirs(out, exist_ok=True)
    seeds = {
        "city96_flux_q8_0.gguf": gguf(
            [kv_str("general.architecture", "flux"), kv_u32("general.quantization_version", 2)],
            [("img_in.weight", [64, 4], 30), ("img_in.bias", [4], 0),
             ("double_blocks.0.img_attn.qkv.weight", [64, 6], 8), ("final_layer.linear.weight", [32, 2], 1)]),
        "city96_wan_5d.gguf": gguf(
            [kv_str("general.architecture", "wan"), kv_i32_array("comfy.gguf.orig_shape.patch_embedding.weight",
                                                                  [4, 2, 1, 2, 2])],
            [("patch_embedding.weight", [4, 1, 2, 4], 0), ("blocks.0.self_attn.q.weight", [256, 2], 12)]),
        "sdcpp_k_types.gguf": gguf(
            [],
            [("model.diffusion_model.a", [256], 10), ("model.diffusion_model.b", [256], 11),
             ("model.diffusion_model.c", [256], 13), ("model.diffusion_model.d", [256], 14),
             ("model.diffusion_model.e", [256], 15), ("model.diffusion_model.f", [32, 2], 2),
             ("model.diffusion_model.g", [32], 3), ("model.diffusion_model.h", [32], 6),
             ("model.diffusion_model.i", [32], 7)]),
        "v2_aligned_64.gguf": gguf([kv_u32("general.alignment", 64)], [("x", [8, 2], 0), ("y", [3], 0)], version=2,
                                   align=64),
        "empty.gguf": gguf([], []),
    }
    for name, data in seeds.items():
        with open(os.path.join(out, name), "wb") as f:
            f.write(data)


if __name__ == "__main__":
    main()
