"""Property-based fuzzing of the safetensors reader against the safetensors library itself.

Every generated or mutated file is either read exactly as ``safetensors.safe_open`` reads it (same names, dtypes,
shapes and bytes) or refused with the tool's own :class:`CheckpointError` naming the file — never another exception,
never a tensor the library would not give. Every file the library refuses, the reader refuses too. Seeded
(``derandomize=True``) and bounded, a few seconds.
"""
from __future__ import annotations

import json
import re
import struct
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.torch import save_file

from opd_dynamics.errors import CheckpointError
from opd_dynamics.io.safetensors_file import DTYPES, SafetensorsFile

FUZZ = settings(max_examples=250, derandomize=True, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
_DIR = Path(tempfile.mkdtemp(prefix="st-fuzz-"))


def _raw(t: torch.Tensor) -> bytes:
    return t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def _read_theirs(path: Path):
    try:
        with safe_open(str(path), "pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}
    except Exception:  # the library's refusal (SafetensorError and friends): the file is invalid
        return None


def check(blob: bytes) -> str:
    """Write ``blob``, read it both ways, assert the property; return 'read' or 'refused' (for coverage checks)."""
    path = _DIR / "fuzz.safetensors"
    path.write_bytes(blob)
    theirs = _read_theirs(path)
    try:
        f = SafetensorsFile(path)
        ours = {k: f.get_tensor(k) for k in f.keys()}
    except CheckpointError as e:
        assert str(e).startswith(str(path)), str(e)  # names the file
        return "refused"
    assert theirs is not None, "read a file the safetensors library refuses"
    assert sorted(ours) == sorted(theirs)
    for k, t in ours.items():
        assert t.dtype == theirs[k].dtype and tuple(t.shape) == tuple(theirs[k].shape), k
        assert _raw(t) == _raw(theirs[k]), k
    return "read"


def _file(header: dict, data: bytes) -> bytes:
    h = json.dumps(header).encode()
    return struct.pack("<Q", len(h)) + h + data


# --- 1. headers built from parts, some well-formed, most not --------------------------------------------------------
JUNK = st.one_of(st.none(), st.booleans(), st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=4),
                 st.integers(-3, 2**65), st.lists(st.integers(-1, 4), max_size=3), st.just({}))
DTYPE = st.one_of(st.sampled_from(sorted(DTYPES)), st.sampled_from(["f32", "U16", "F4", "", "F32 "]), JUNK)
SHAPE = st.one_of(st.lists(st.integers(0, 4), max_size=3), st.lists(st.integers(-1, 2**64 + 1), max_size=3), JUNK)


@st.composite
def built_files(draw):
    n = draw(st.integers(0, 3))
    header, offset = {}, 0
    for i in range(n):
        dtype, shape = draw(DTYPE), draw(SHAPE)
        try:
            size = DTYPES[dtype].itemsize
            for d in shape:
                size *= d
        except (KeyError, TypeError):
            size = draw(st.integers(0, 16))
        size = size if 0 <= size < 4096 else draw(st.integers(0, 16))
        mode = draw(st.sampled_from(["tiled", "tiled", "tiled", "random", "junk", "shifted"]))
        offsets = {"tiled": [offset, offset + size], "random": [draw(st.integers(0, 64)), draw(st.integers(0, 64))],
                   "junk": draw(JUNK), "shifted": [offset + draw(st.integers(-4, 4)), offset + size]}[mode]
        entry = {"dtype": dtype, "shape": shape, "data_offsets": offsets}
        for key in draw(st.sets(st.sampled_from(["dtype", "shape", "data_offsets", "extra"]), max_size=1)):
            if key == "extra":
                entry["extra"] = draw(JUNK)
            else:
                del entry[key]
        header[draw(st.sampled_from(["w", "b", "x.weight", "__metadata__", "é"])) + str(i)] = entry
        offset += size
    meta = draw(st.sampled_from(["absent", "none", "strings", "ints", "list"]))
    if meta != "absent":
        header["__metadata__"] = {"none": None, "strings": {"format": "pt"}, "ints": {"a": 1}, "list": ["pt"]}[meta]
    data_len = offset + draw(st.sampled_from([0, 0, 0, -1, 1, -4]))
    return _file(header, draw(st.binary(min_size=max(0, data_len), max_size=max(0, data_len))))


@FUZZ
@given(built_files())
def test_built_headers_read_as_the_library_or_refused(blob):
    check(blob)


# --- 2. a real file, mutated ------------------------------------------------------------------------------------
def _valid() -> bytes:
    g = torch.Generator().manual_seed(0)
    tensors = {"model.layers.0.mlp.up_proj.weight": torch.randn(3, 4, generator=g),
               "model.layers.0.self_attn.k_proj.weight": torch.randn(2, 4, generator=g).to(torch.bfloat16),
               "model.layers.0.self_attn.v_proj.weight": torch.randn(2, 4, generator=g).to(torch.float16),
               "ids": torch.arange(3, dtype=torch.int64), "mask": torch.tensor([True, False, True]),
               "scale": torch.tensor(2.5, dtype=torch.float64), "empty": torch.zeros(0, 3, dtype=torch.uint8),
               "fp8": torch.randn(2, 2, generator=g).to(torch.float8_e4m3fn)}
    path = _DIR / "valid.safetensors"
    save_file(tensors, str(path), metadata={"format": "pt"})
    return path.read_bytes()


VALID = _valid()
HEADER_LEN = 8 + struct.unpack("<Q", VALID[:8])[0]


def _edit_json(blob: bytes, edit) -> bytes:
    n = struct.unpack("<Q", blob[:8])[0]
    header = json.loads(blob[8:8 + n])
    edit(header)
    return _file(header, blob[8 + n:])


@st.composite
def mutation(draw):
    kind = draw(st.sampled_from(["flip_header", "flip_header", "flip_data", "truncate", "append", "length",
                                 "field", "field", "swap_offsets", "shift_offset"]))
    names = sorted(json.loads(VALID[8:HEADER_LEN]).keys() - {"__metadata__"})
    if kind == "flip_header":
        return kind, draw(st.integers(8, HEADER_LEN - 1)), draw(st.integers(0, 255))
    if kind == "flip_data":
        return kind, draw(st.integers(HEADER_LEN, len(VALID) - 1)), draw(st.integers(0, 255))
    if kind == "truncate":
        return kind, draw(st.integers(0, len(VALID) - 1))
    if kind == "append":
        return kind, draw(st.binary(min_size=1, max_size=8))
    if kind == "length":
        return kind, draw(st.one_of(st.integers(0, len(VALID) + 8), st.integers(0, 2**64 - 1)))
    if kind == "field":
        field = draw(st.sampled_from(["dtype", "shape", "data_offsets"]))
        value = draw(st.one_of(JUNK, DTYPE if field == "dtype" else SHAPE,
                               st.lists(st.integers(0, 200), min_size=2, max_size=2)))
        return kind, draw(st.sampled_from(names)), field, value
    if kind == "swap_offsets":
        return kind, draw(st.sampled_from(names)), draw(st.sampled_from(names))
    return kind, draw(st.sampled_from(names)), draw(st.integers(0, 1)), draw(st.integers(-8, 8))


def apply(blob: bytes, m) -> bytes:
    kind, *a = m
    if kind in ("flip_header", "flip_data"):
        pos, byte = a
        return blob[:pos] + bytes([byte]) + blob[pos + 1:] if pos < len(blob) else blob
    if kind == "truncate":
        return blob[:a[0]]
    if kind == "append":
        return blob + a[0]
    if kind == "length":
        return struct.pack("<Q", a[0]) + blob[8:]
    try:
        json.loads(blob[8:8 + struct.unpack("<Q", blob[:8])[0]])
    except (ValueError, struct.error):
        return blob  # an earlier mutation broke the JSON: no structural edit possible
    if kind == "field":
        name, field, value = a
        return _edit_json(blob, lambda h: h.get(name, {}).__setitem__(field, value) if isinstance(h.get(name), dict)
                          else None)
    if kind == "swap_offsets":
        def swap(h):
            x, y = h[a[0]], h[a[1]]
            x["data_offsets"], y["data_offsets"] = y["data_offsets"], x["data_offsets"]  # v_proj reads k_proj's bytes
        return _edit_json(blob, swap)
    name, which, delta = a
    return _edit_json(blob, lambda h: h[name]["data_offsets"].__setitem__(which, h[name]["data_offsets"][which] + delta))


@FUZZ
@given(st.lists(mutation(), min_size=1, max_size=3))
def test_mutated_files_read_as_the_library_or_refused(mutations):
    blob = VALID
    for m in mutations:
        blob = apply(blob, m)
    check(blob)


# --- 3. the findings, as named cases ----------------------------------------------------------------------------
def _with(edit) -> bytes:
    return _edit_json(VALID, edit)


def _set(name, field, value):
    return lambda h: h[name].__setitem__(field, value)


K, V = "model.layers.0.self_attn.k_proj.weight", "model.layers.0.self_attn.v_proj.weight"
FINDINGS = {
    "overlapping offsets (v_proj over k_proj's bytes)": (
        _with(lambda h: h[V].__setitem__("data_offsets", list(h[K]["data_offsets"]))), "overlaps"),
    "shape as a string": (_with(_set(K, "shape", "2,4")), "shape '2,4'"),
    "offsets as strings": (_with(lambda h: h[K].__setitem__("data_offsets", [str(o) for o in h[K]["data_offsets"]])),
                           "data_offsets"),
    "dtype as a list": (_with(_set(K, "dtype", ["BF16"])), "dtype ['BF16']"),
    "size disagreeing with dtype x shape": (_with(_set(K, "dtype", "F32")), "needs"),
    "offsets past the end of the file": (VALID[:-3], "truncated"),
    "bytes after the last tensor": (VALID + b"\0\0", "not covered"),
}


@pytest.mark.parametrize("case", sorted(FINDINGS))
def test_findings_are_refused_like_the_library_does(case):
    blob, expect = FINDINGS[case]
    path = _DIR / "finding.safetensors"
    path.write_bytes(blob)
    assert _read_theirs(path) is None  # the library refuses it too
    with pytest.raises(CheckpointError, match=re.escape(expect)) as e:
        SafetensorsFile(path)
    assert str(e.value).startswith(str(path))


def test_fuzz_reaches_both_outcomes():
    """The strategies are not degenerate: some mutated files are still read, most are refused."""
    outcomes = {check(VALID)}
    outcomes.add(check(apply(VALID, ("flip_data", len(VALID) - 1, 7))))
    outcomes.add(check(apply(VALID, ("truncate", HEADER_LEN))))
    assert outcomes == {"read", "refused"}
