#!/usr/bin/env python3
"""Writes the seed corpora of the fuzz targets (tests/fuzz/corpus/<target>/), deterministically
(gzip with mtime 0). Run from anywhere: python3 tests/fuzz/make_corpus.py"""
import gzip, json, os, struct

here = os.path.dirname(os.path.abspath(__file__))


def put(target, name, data):
    d = os.path.join(here, "corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def gz(b):
    return gzip.compress(b, compresslevel=9, mtime=0)


# --- IDX: byte 0 flags (1: the target gzips the images, 2: the labels), bytes 1-2 the label
# file's length (little-endian), the label file, then the image file (see fuzz_idx.cpp).
def idx_images(n, rows, cols, pixels, magic=0x803):
    return struct.pack(">IIII", magic, n, rows, cols) + pixels


def idx_labels(n, labels, magic=0x801):
    return struct.pack(">II", magic, n) + labels


def idx_input(flags, labels, images):
    return bytes([flags]) + struct.pack("<H", len(labels)) + labels + images


px = lambda n: bytes((i * 37 + 11) % 256 for i in range(n))
img3, lbl3 = idx_images(3, 4, 5, px(60)), idx_labels(3, bytes([7, 0, 9]))
img28, lbl28 = idx_images(1, 28, 28, px(784)), idx_labels(1, bytes([3]))
put("idx", "plain_3x4x5", idx_input(0, lbl3, img3))
put("idx", "plain_1x28x28", idx_input(0, lbl28, img28))
put("idx", "target_gzips_both", idx_input(3, lbl3, img3))
put("idx", "target_gzips_images", idx_input(1, lbl28, img28))
put("idx", "gzipped_files", idx_input(0, gz(lbl3), gz(img3)))
put("idx", "gzipped_28x28", idx_input(0, gz(lbl28), gz(img28)))
put("idx", "gzipped_images_plain_labels", idx_input(0, lbl3, gz(img3)))
put("idx", "bad_magic", idx_input(0, lbl3, idx_images(3, 4, 5, px(60), magic=0x801)))
put("idx", "truncated_pixels", idx_input(0, lbl3, img3[:40]))
put("idx", "label_out_of_range", idx_input(0, idx_labels(3, bytes([7, 10, 9])), img3))
put("idx", "count_mismatch", idx_input(0, idx_labels(2, bytes([1, 2])), img3))


# --- safetensors: the file, byte for byte.
def safetensors(tensors, metadata=None):
    """tensors: list of (name, dtype, shape, data bytes); data laid out in list order."""
    header, off, data = {}, 0, b""
    for name, dtype, shape, raw in tensors:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [off, off + len(raw)]}
        off += len(raw)
        data += raw
    if metadata is not None:
        header["__metadata__"] = metadata
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    return struct.pack("<Q", len(text)) + text + data


f32 = lambda *v: struct.pack("<%df" % len(v), *v)
f64 = lambda *v: struct.pack("<%dd" % len(v), *v)
put("safetensors", "f32", safetensors([("a", "F32", [2, 2], f32(1.5, -2, 3.25, 0))]))
put("safetensors", "f64",
    safetensors([("x", "F64", [3], f64(3.141592653589793, -1e300, 0.5))], {"format": "pt"}))
# Fits fuzz_safetensors.cpp's model, so read_checkpoint's checks run to the end.
ckpt = [("w", "F32", [2, 3], f32(1, 2, 3, 4, 5, 6)), ("b", "F32", [3], f32(0.5, 0, -1)),
        ("v", "F64", [2], f64(1e-3, 2))]
put("safetensors", "checkpoint", safetensors(ckpt, {"step": "10"}))
put("safetensors", "checkpoint_nan",
    safetensors([ckpt[0], ckpt[1], ("v", "F64", [2], f64(1, float("nan")))]))
put("safetensors", "checkpoint_wrong_shape",
    safetensors([("w", "F32", [3, 2], f32(1, 2, 3, 4, 5, 6)), ckpt[1], ckpt[2]]))
put("safetensors", "every_dtype", safetensors([
    ("h", "F16", [2], b"\x00\x3c\x00\xc0"), ("bf", "BF16", [1, 2], b"\x80\x3f\x00\x40"),
    ("i", "I32", [2], struct.pack("<2i", -1, 7)), ("l", "I64", [1], struct.pack("<q", 1 << 40)),
    ("u", "U8", [3], b"\x01\x02\x03"), ("s", "F32", [], f32(42)), ("e", "F32", [0, 3], b"")]))
put("safetensors", "empty_header", safetensors([]))


def st_raw(header):
    """A file from a literal header (no data), for headers safetensors() would not write."""
    text = json.dumps(header).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    return struct.pack("<Q", len(text)) + text


# Inputs of bugs fuzzing found (each also a test in tests/test_data_io.cpp).
put("safetensors", "regression_empty_shape_numel_overflow",
    st_raw({"x": {"dtype": "F32", "shape": [4611686018427387904, 4, 0], "data_offsets": [0, 0]}}))

# --- the command line: one argv word per line (after the program name).
cli = {
    "train_defaults": ["train"],
    "train_mlp": ["train", "--model", "mlp", "--epochs", "1", "--max-steps", "2", "--batch", "10", "--quiet"],
    "train_everything": ["train", "--model", "cnn", "--dtype", "f64", "--data", "synthetic", "--synthetic-train",
                         "100", "--lr", "0.1", "--optimizer", "sgd", "--momentum", "0.8", "--weight-decay",
                         "1e-4", "--lr-schedule", "step", "--warmup-steps", "3", "--device", "cpu", "--seed", "7",
                         "--threads", "2", "--metrics", "m.jsonl", "--metrics-every", "5", "--no-shuffle",
                         "--eval-batch", "50", "--collective", "ring", "--bucket-mb", "1.5", "--check-every", "2",
                         "--compress", "topk:0.1", "--compress-warmup", "2", "--compress-momentum", "0.5",
                         "--fuse-update", "off", "--fuse-epilogues", "off", "--cuda-graph", "off"],
    "train_powersgd": ["train", "--compress", "powersgd:4", "--timeline", "t.json", "--save", "c",
                       "--init-from", "i", "--no-gradient-exchange", "--cuda-graph"],
    "train_equals": ["train", "--batch=32", "--lr=1e-2", "--device=cuda:1", "--cuda-graph=auto"],
    "train_adam": ["train", "--optimizer", "adam", "--lr-schedule", "cosine", "--device", "auto", "--fuse-update",
                   "on", "--collective", "nccl", "--compress", "bf16", "--max-steps", "100"],
    "help": ["train", "--help"],
    "bad_flag": ["train", "--frobnicate", "3"],
    "bad_values": ["train", "--batch", "-4", "--lr", "fast", "--seed", "99999999999999999999"],
    "no_subcommand": ["--model", "mlp"],
}
for name, words in cli.items():
    put("cli", name, "\n".join(words).encode())
