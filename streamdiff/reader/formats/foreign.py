"""Formats people point a checkpoint diff at that streamdiff does not read: told apart by file names
and first bytes, so they are refused by name (one line, exit 2) or, inside a step, reported as not
compared, instead of being misread ("unreadable msgpack") or skipped.
"""

from __future__ import annotations

import re
import zipfile

TF_DATA = re.compile(r"\.data-\d{5}-of-\d{5}$")
TORCH_SUFFIXES = (".pt", ".pth", ".bin")


def is_tf_file(name: str) -> bool:
    """A TensorFlow checkpoint's `.index` or `.data-NNNNN-of-NNNNN` file."""
    return name.endswith(".index") or bool(TF_DATA.search(name))


def _has_tf_bundle(files: list[str]) -> bool:
    return any(n.endswith(".index") for n in files) and any(TF_DATA.search(n) for n in files)


def dir_refusal(files: list[str]) -> str | None:
    """What a directory that is no checkpoint we read holds, from its file names; None if not foreign."""
    if "_METADATA" in files or "manifest.ocdbt" in files or "checkpoint" in files:
        # A `checkpoint` file is T5X's / orbax's msgpack (T5X keeps tf.data state beside it) or TF's
        # text state file: the tree reader tells them apart by its first bytes.
        return None
    if _has_tf_bundle(files):
        return "a TensorFlow checkpoint (.index + .data-*-of-*)"
    if any(n.endswith(".safetensors") for n in files):
        return "safetensors files"
    if any(n.endswith(TORCH_SUFFIXES) for n in files):
        return "PyTorch checkpoint files (.pt/.pth/.bin)"
    return None


def describe_dir(children: dict[str, str]) -> str:
    """Why a directory inside a step is not compared."""
    files = [n for n, k in children.items() if k == "file"]
    if _has_tf_bundle(files):
        return "a TensorFlow checkpoint (e.g. a tf.data iterator), not supported"
    return "a directory in no format streamdiff reads (" + ", ".join(sorted(children)[:5]) + ")"


def describe_file(name: str) -> str:
    """Why a file inside a step or a T5X checkpoint is not compared."""
    if is_tf_file(name):
        return "a file (part of a TensorFlow checkpoint, e.g. a tf.data iterator), not supported"
    return "a file in no format streamdiff reads"


def file_refusal(head: bytes, name: str, local_path: str | None) -> str | None:
    """Name the format of a file from its first bytes (and name); None when it is none of these."""
    if is_tf_file(name):
        return "part of a TensorFlow checkpoint"
    if head.startswith(b"model_checkpoint_path"):
        return "a TensorFlow checkpoint state file"
    if len(head) > 9 and head[8:10] in (b'{"', b"{}") and int.from_bytes(head[:8], "little") > 1:
        return "a safetensors file"  # u64 header length, then the JSON header
    if head.startswith(b"PK\x03\x04"):
        torch = name.endswith(TORCH_SUFFIXES) or (local_path is not None and _zip_has(local_path, "/data.pkl"))
        return "a PyTorch checkpoint (torch.save zip)" if torch else "a zip archive"
    if len(head) > 1 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return "a PyTorch checkpoint (legacy pickle)" if name.endswith(TORCH_SUFFIXES) else "a Python pickle"
    return None


def _zip_has(path: str, suffix: str) -> bool:
    try:
        with zipfile.ZipFile(path) as z:
            return any(n.endswith(suffix) for n in z.namelist())
    except (OSError, zipfile.BadZipFile):
        return False
