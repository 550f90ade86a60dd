"""Fuzz campaign against the .d3 reader: every mutant reads fine or raises a D3Error.

    python tools/fuzz_reader.py --mutants 100000 --seed 1   # the campaign (~15 min on one core)
    python tools/fuzz_reader.py --mutants 2000 --no-write    # a quick look, nothing written

Each mutant of one of several valid files (the golden files and freshly written
containers with real decoder configs, every encoding, raw and zstd sections, plain and
compressed headers) is opened with D3Reader, verified (verify(): hashes, every section
decoded, decoders checked) and loaded; the outcome is "ok", the D3Error class, or a
crash (any other exception). Mutations:

- bytes: bit flips, byte sets, truncations, insertions, deletions, splices (a range of
  another input), integer overwrites of the 48-byte preamble's fields;
- header: the JSON is parsed and edited (shapes, offsets, sizes, dtypes, codecs, names,
  decoder configs, subtask fields; huge and negative integers, 1e999, integers written
  as 4.0, deep nesting, long arrays, deleted keys, swapped or duplicated sections), then
  FIXED UP so the mutant reaches the deepest checks: section hashes, stored_bytes and
  offsets (the spec's fixed point), bytes_used, the header length, raw length and hash;
- sections: a section's bytes are replaced (random, bit-flipped, zstd of random data,
  zstd truncated, int8 scales forced huge or negative, NaN floats), with the fix-up.

Per mutant it measures wall time and the peak of Python-tracked memory (tracemalloc, which
numpy reports to) and compares the peak with the largest section the mutant declares.
Writes benchmarks/fuzz.json (also every --checkpoint mutants, so a stopped run keeps its
numbers) and benchmarks/fuzz.md; crashing mutants go to --crash-dir.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import random
import resource
import struct
import sys
import tempfile
import time
import traceback
import tracemalloc
from pathlib import Path

import numpy as np
import zstandard

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from craft_d3 import craft  # noqa: E402  (tools/, next to this file)

from d3fmt.errors import D3Error  # noqa: E402
from d3fmt.format import D3Reader, encode_d3  # noqa: E402
from d3fmt.format.example import example_container  # noqa: E402

PREAMBLE = struct.Struct("<8sHHIQQ16s")
FIELDS = {"major": (8, "<H"), "minor": (10, "<H"), "flags": (12, "<I"), "stored": (16, "<Q"), "raw": (24, "<Q")}
INTS = [0, 1, -1, 2, 7, 8, 9, 255, 256, 4096, 65535, 65536, 2**20, 2**30, 2**30 + 1, 2**31, 2**32,
        2**53 + 1, 2**62, 2**63 - 1, 2**64, -(2**63)]
TOKENS = ["1e400", "1e999", "-1e999", "4.0", "1e1", "9" * 5000, "-" + "9" * 30, "NaN", "Infinity",
          "1" + "0" * 19, "0.0", "-0", "1e-400", "123456789012345678901234567890e-10"]
STRINGS = ["", "float32", "float16", "int8", "uint8", "int16", "int32", "bfloat16", "raw", "zstd", "lz4",
           "small", "medium", "large", "linear", "group", "none", "hard", "soft", "a" * 300, "s0.mu", "\u00e9\u4e2d"]
BIG_LISTS = [[0, 2**62], [2**30] * 8, [1] * 9, [], [0], [2**31, 2**31], [0, 2**30, 2**30], [3, 0], [-1, 2]]


# --------------------------------------------------------------------------- inputs


def inputs() -> dict[str, bytes]:
    """Several valid files: golden bytes and fresh containers with d3fmt decoder configs."""
    files = {p.name: p.read_bytes() for p in sorted((ROOT / "tests" / "golden").glob("*.d3"))}
    files["small-int8-zstd"] = encode_d3(example_container(
        num_classes=4, image_shape=(1, 8, 8), num_subtasks=2, latents_per_class=2, soft=True, encoding="int8",
        family="small"))
    files["medium-f16-raw"] = encode_d3(example_container(
        num_classes=3, image_shape=(3, 8, 8), encoding="float16", family="medium", width=16),
        codec="raw", compress_header=False)
    files["large-f32"] = encode_d3(example_container(
        num_classes=5, image_shape=(1, 8, 8), num_subtasks=3, z_dim=16, family="large", width=8))
    return files


# --------------------------------------------------------------------------- file assembly


def split(data: bytes) -> tuple[dict, list[bytes], bool]:
    """(header dict, stored bytes of each section in header order, header compressed?)."""
    _, _, _, flags, stored, raw, _ = PREAMBLE.unpack_from(data)
    hb = data[48:48 + stored]
    text = zstandard.ZstdDecompressor().decompress(hb) if flags & 1 else hb
    header = json.loads(text)
    return header, [data[s["offset"]:s["offset"] + s["stored_bytes"]] for s in header["sections"]], bool(flags & 1)


def assemble(header: dict, stored: list[bytes], compress: bool, tokens: dict[str, str], fix: set[str]) -> bytes:
    """File bytes for an edited header (:func:`craft_d3.craft`): what ``fix`` names is made
    consistent again: "hash" (section hashes), "layout" (stored_bytes and offsets, the fixed
    point), "used" (bytes_used). ``tokens`` maps placeholder strings in the header to raw JSON text.
    """
    def with_tokens(raw: bytes) -> bytes:
        for key, token in tokens.items():
            raw = raw.replace(json.dumps(key).encode(), token.encode())
        return raw

    return craft(header, stored, layout="layout" in fix, used="used" in fix, hashes="hash" in fix,
                 compress=compress, header_json=with_tokens if tokens else None)


# --------------------------------------------------------------------------- mutations


def byte_mutant(rng: random.Random, data: bytes, others: list[bytes]) -> tuple[bytes, str]:
    data = bytearray(data)
    kinds = []
    for _ in range(rng.randint(1, 4)):
        kind = rng.choice(["flip", "set", "truncate", "insert", "delete", "splice", "preamble"])
        kinds.append(kind)
        if not data:
            break
        at = rng.randrange(len(data))
        if kind == "flip":
            data[at] ^= 1 << rng.randrange(8)
        elif kind == "set":
            data[at] = rng.randrange(256)
        elif kind == "truncate":
            del data[at:]
        elif kind == "insert":
            data[at:at] = rng.randbytes(rng.randint(1, 32))
        elif kind == "delete":
            del data[at:at + rng.randint(1, 64)]
        elif kind == "splice":
            src = rng.choice(others)
            a = rng.randrange(len(src))
            data[at:at + rng.randint(0, 64)] = src[a:a + rng.randint(1, 256)]
        else:
            name = rng.choice(sorted(FIELDS))
            off, fmt = FIELDS[name]
            bits = struct.calcsize(fmt) * 8
            value = rng.choice([0, 1, 2, 7, 8, 48, 2**bits - 1, 2**(bits - 1), 16 * 2**20, 16 * 2**20 + 1,
                                rng.randrange(2**bits)]) % 2**bits
            if len(data) >= off + struct.calcsize(fmt):
                struct.pack_into(fmt, data, off, value)
            kinds[-1] = f"preamble.{name}"
    return bytes(data), "bytes:" + ",".join(kinds)


def _paths(node, prefix=()):
    """Every path to a value in a JSON tree (iterative)."""
    stack = [(node, prefix)]
    while stack:
        value, path = stack.pop()
        yield path
        if isinstance(value, dict):
            stack.extend((v, path + (k,)) for k, v in value.items())
        elif isinstance(value, list):
            stack.extend((v, path + (i,)) for i, v in enumerate(value))


def _new_value(rng: random.Random, old, tokens: dict[str, str]):
    """A hostile replacement for ``old``; raw-text tokens go through ``tokens``."""
    kind = rng.random()
    if isinstance(old, int) and not isinstance(old, bool) and kind < 0.35:
        return old + rng.choice([-1, 1, -8, 8, 2**32, 2**62]) if rng.random() < 0.5 else rng.choice(INTS)
    if kind < 0.5:
        key = f"\u0001FUZZ{len(tokens)}"
        if rng.random() < 0.4:
            levels = rng.choice([63, 64, 65, 100, 500, 5000])
            tokens[key] = "[" * levels + "]" * levels
        elif rng.random() < 0.2:
            tokens[key] = "[" + ",".join(["0"] * rng.choice([1000, 100_001])) + "]"
        else:
            tokens[key] = rng.choice(TOKENS)
        return key
    if kind < 0.65:
        return rng.choice(INTS)
    if kind < 0.8:
        return rng.choice(STRINGS)
    if kind < 0.92:
        return list(rng.choice(BIG_LISTS))
    return rng.choice([None, True, {}, {"family": "small"}, 0.5, -1.5, 1e308])


def header_mutant(rng: random.Random, header: dict, stored: list[bytes], compress: bool) -> tuple[bytes, str]:
    header = json.loads(json.dumps(header))
    stored = list(stored)
    tokens: dict[str, str] = {}
    kinds = []
    for _ in range(rng.randint(1, 3)):
        try:
            _edit(rng, header, stored, tokens, kinds)
        except (AttributeError, IndexError, KeyError, TypeError, ValueError):
            continue  # an earlier edit removed or retyped what this one wanted to change
    fix = {"hash", "layout", "used"} if rng.random() < 0.85 else set(rng.sample(["hash", "layout", "used"], 2))
    return assemble(header, stored, compress if rng.random() < 0.9 else not compress, tokens, fix), (
        "header:" + ",".join(kinds) + ("" if len(fix) == 3 else ":partial-fix"))


def _edit(rng: random.Random, header: dict, stored: list[bytes], tokens: dict[str, str], kinds: list[str]) -> None:
    """One header edit, in place."""
    r = rng.random()
    secs = header.get("sections", [])
    if r < 0.3 and secs:  # the fields that drive allocation and decoding
        i = rng.randrange(len(secs))
        key = rng.choice(["shape", "shape", "dtype", "codec", "raw_bytes", "offset", "stored_bytes", "name"])
        old = secs[i].get(key)
        if key == "shape" and isinstance(old, list) and old and rng.random() < 0.5:
            old[rng.randrange(len(old))] = rng.choice(INTS)
        else:
            secs[i][key] = _new_value(rng, old, tokens)
        kinds.append(f"section.{key}")
    elif r < 0.38 and len(secs) > 1:
        i, j = rng.sample(range(len(secs)), 2)
        if rng.random() < 0.5:
            secs[i], secs[j] = secs[j], secs[i]
            stored[i], stored[j] = stored[j], stored[i]
            kinds.append("sections.swap")
        else:
            secs[j] = dict(secs[i])
            kinds.append("sections.duplicate")
    elif r < 0.5 and header.get("subtasks"):
        sub = rng.choice(header["subtasks"])
        key = rng.choice(["latents_per_class", "z_dim", "classes", "id", "decoder", "tensors"])
        target = sub.get(key)
        if isinstance(target, dict) and target and rng.random() < 0.7:
            k = rng.choice(sorted(target))
            if rng.random() < 0.3:
                del target[k]
            else:
                target[k] = _new_value(rng, target[k], tokens)
            kinds.append(f"subtask.{key}.{k}")
        else:
            sub[key] = _new_value(rng, target, tokens)
            kinds.append(f"subtask.{key}")
    else:
        paths = [p for p in _paths(header) if p]
        path = rng.choice(paths)
        parent = header
        for key in path[:-1]:
            parent = parent[key]
        if isinstance(parent, dict) and rng.random() < 0.2:
            del parent[path[-1]]
            kinds.append("delete:" + "/".join(map(str, path[:3])))
        else:
            parent[path[-1]] = _new_value(rng, parent[path[-1]], tokens)
            kinds.append("set:" + "/".join(map(str, path[:3])))


def section_mutant(rng: random.Random, header: dict, stored: list[bytes], compress: bool) -> tuple[bytes, str]:
    header = json.loads(json.dumps(header))
    stored = list(stored)
    i = rng.randrange(len(stored))
    s = header["sections"][i]
    raw_len = s["raw_bytes"]
    kind = rng.choice(["random", "flip", "zstd-random", "zstd-truncated", "zstd-other-size", "int8-scale",
                       "nan", "as-zstd", "as-raw"])
    if kind == "random":
        stored[i] = rng.randbytes(raw_len if rng.random() < 0.7 else rng.randint(0, 2 * raw_len + 8))
    elif kind == "flip" and stored[i]:
        b = bytearray(stored[i])
        b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
        stored[i] = bytes(b)
    elif kind.startswith("zstd"):
        size = raw_len if kind != "zstd-other-size" else rng.choice([0, raw_len + 1, raw_len * 4, 2**20])
        frame = zstandard.ZstdCompressor(level=1).compress(rng.randbytes(min(size, 1 << 16)) + bytes(max(0, size - (1 << 16))))
        stored[i] = frame[:rng.randrange(len(frame))] if kind == "zstd-truncated" else frame
        s["codec"] = "zstd"
    elif kind == "int8-scale" and s["dtype"] == "int8" and s["shape"]:
        b = bytearray(_raw(stored[i], s))
        n = s["shape"][0]
        for j in range(n):
            struct.pack_into("<f", b, 4 * j, rng.choice([3.4e38, -1.0, float("inf"), float("nan"), 2.7e36, 0.0]))
        stored[i], s["codec"] = bytes(b), "raw"
    elif kind == "nan" and s["dtype"] in ("float32", "float16"):
        b = bytearray(_raw(stored[i], s))
        wire = "<f" if s["dtype"] == "float32" else "<e"
        if b:
            struct.pack_into(wire, b, 0, rng.choice([float("nan"), float("inf")]))
        stored[i], s["codec"] = bytes(b), "raw"
    elif kind == "as-zstd":
        stored[i], s["codec"] = zstandard.ZstdCompressor(level=1).compress(_raw(stored[i], s)), "zstd"
    else:
        stored[i], s["codec"] = _raw(stored[i], s), "raw"
    return assemble(header, stored, compress, {}, {"hash", "layout", "used"}), f"section:{kind}:{s['dtype']}"


def _raw(stored: bytes, s: dict) -> bytes:
    return zstandard.ZstdDecompressor().decompress(stored) if s["codec"] == "zstd" else stored


# --------------------------------------------------------------------------- running


def largest_declared(data: bytes) -> int:
    """Largest decoded size (bytes) any section of ``data`` declares, capped at 1 GiB; 0 if unreadable."""
    try:
        header, _, _ = split(data)
        best = 0
        for s in header["sections"]:
            n = int(np.prod([min(int(d), 2**30) for d in s["shape"]], dtype=np.float64))
            width = 4 if s["dtype"] in ("float32", "float16", "int8", "int32") else 2 if s["dtype"] == "int16" else 1
            best = max(best, min(int(n * width), 2**30))
        return best
    except Exception:  # noqa: BLE001 - a mangled header declares nothing we can measure
        return 0


def read_everything(path: str) -> str:
    """'ok' or the D3Error class name; raises anything else."""
    try:
        reader = D3Reader(path)
        reader.verify()
        reader.load()
        return "ok"
    except D3Error as exc:
        message = str(exc)
        if not message or "\n" in message:
            raise AssertionError(f"D3Error message is not one line: {message!r}") from None
        return type(exc).__name__


def run(mutants: int, seed: int, crash_dir: Path | None, checkpoint, progress=None) -> dict:
    files = inputs()
    parsed = {name: split(data) for name, data in files.items()}
    names = sorted(files)
    rng = random.Random(seed)
    outcomes: dict[str, int] = {}
    kinds: dict[str, int] = {}
    crashes: list[dict] = []
    slowest = {"seconds": 0.0}
    peak_worst = {"peak_bytes": 0}
    over_memory = 0
    slow = 0
    fd, path = tempfile.mkstemp(suffix=".d3", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    os.close(fd)
    start = time.time()
    try:
        for k in range(mutants):
            name = rng.choice(names)
            r = rng.random()
            if r < 0.35:
                data, what = byte_mutant(rng, files[name], list(files.values()))
            elif r < 0.8:
                data, what = header_mutant(rng, *parsed[name])
            else:
                data, what = section_mutant(rng, *parsed[name])
            kinds[what.split(":")[0]] = kinds.get(what.split(":")[0], 0) + 1
            with open(path, "wb") as f:
                f.write(data)
            tracemalloc.start()
            t0 = time.perf_counter()
            try:
                outcome = read_everything(path)
            except Exception as exc:  # noqa: BLE001 - the point: anything outside D3Error is a crash
                outcome = "CRASH:" + type(exc).__name__
                frame = traceback.extract_tb(exc.__traceback__)[-1]
                crash = {"mutant": k, "input": name, "mutation": what, "exception": type(exc).__name__,
                         "message": str(exc)[:200], "where": f"{Path(frame.filename).name}:{frame.lineno}"}
                crashes.append(crash)
                if crash_dir is not None and len(crashes) <= 200:
                    crash_dir.mkdir(parents=True, exist_ok=True)
                    (crash_dir / f"crash-{k}.d3").write_bytes(data)
            seconds = time.perf_counter() - t0
            _, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
            declared = largest_declared(data) if peak > 4 * 2**20 else 0
            if peak > 4 * 2**20 and peak > 2 * declared + 4 * 2**20:
                over_memory += 1
            if peak > peak_worst["peak_bytes"]:
                peak_worst = {"peak_bytes": peak, "largest_declared_section": largest_declared(data), "mutant": k,
                              "input": name, "mutation": what, "outcome": outcome}
            if seconds > 1.0:
                slow += 1
            if seconds > slowest["seconds"]:
                slowest = {"seconds": round(seconds, 4), "mutant": k, "input": name, "mutation": what,
                           "outcome": outcome, "file_bytes": len(data)}
            if checkpoint and (k + 1) % checkpoint == 0:
                result = _result(k + 1, seed, outcomes, kinds, crashes, slowest, slow, peak_worst, over_memory, start,
                                 files)
                progress(result)
    finally:
        os.unlink(path)
    return _result(mutants, seed, outcomes, kinds, crashes, slowest, slow, peak_worst, over_memory, start, files)


def _result(n, seed, outcomes, kinds, crashes, slowest, slow, peak_worst, over_memory, start, files) -> dict:
    by_class: dict[str, int] = {}
    for c in crashes:
        key = f"{c['exception']} at {c['where']}"
        by_class[key] = by_class.get(key, 0) + 1
    return {
        "mutants": n,
        "seed": seed,
        "inputs": {name: len(data) for name, data in files.items()},
        "mutation_kinds": kinds,
        "outcomes": dict(sorted(outcomes.items(), key=lambda kv: -kv[1])),
        "exceptions_outside_d3error": len(crashes),
        "crash_classes": by_class,
        "crash_examples": crashes[:20],
        "slower_than_1s": slow,
        "slowest": slowest,
        "peak_python_memory": peak_worst,
        "peak_over_2x_largest_section_plus_4MiB": over_memory,
        "max_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "seconds": round(time.time() - start, 1),
    }


def write_report(result: dict, command: str) -> None:
    import d3fmt

    result = {**result, "command": command, "date": datetime.datetime.now(datetime.timezone.utc).isoformat(
        timespec="seconds"), "device": f"CPU: {_cpu()} (one process, one thread)", "python": platform.python_version(),
        "d3fmt_version": d3fmt.__version__}
    (ROOT / "benchmarks" / "fuzz.json").write_text(json.dumps(result, indent=1) + "\n")
    slowest, peak = result["slowest"], result["peak_python_memory"]
    lines = [
        "# Reader fuzz campaign",
        "",
        f"Command: `{command}`  ",
        f"Date: {result['date']}; device: {result['device']}; Python {result['python']}; "
        f"d3fmt {result['d3fmt_version']}.",
        "",
        "Each mutant of a valid file is opened, verified and loaded (tools/fuzz_reader.py explains the "
        "mutations: bytes, header edits with full fix-up of hashes, offsets, sizes and bytes_used, section "
        "payloads). Peak memory is Python-tracked (tracemalloc, numpy included) per mutant.",
        "",
        "| measure | value |",
        "|---|---|",
        f"| mutants | {result['mutants']:,} |",
        f"| mutation kinds | {', '.join(f'{k} {v:,}' for k, v in sorted(result['mutation_kinds'].items()))} |",
        f"| outcomes | {', '.join(f'{k} {v:,}' for k, v in result['outcomes'].items())} |",
        f"| exceptions outside d3fmt.errors | {result['exceptions_outside_d3error']} |",
        f"| mutants slower than 1 s | {result['slower_than_1s']} |",
        f"| slowest mutant | {slowest['seconds']} s ({slowest.get('mutation', '')}, {slowest.get('outcome', '')}, "
        f"{slowest.get('file_bytes', 0):,}-byte file) |",
        f"| peak memory of one mutant | {peak['peak_bytes'] / 2**20:.2f} MiB (largest declared section "
        f"{peak.get('largest_declared_section', 0) / 2**20:.2f} MiB; {peak.get('mutation', '')}) |",
        f"| mutants above 2x their largest section + 4 MiB | {result['peak_over_2x_largest_section_plus_4MiB']} |",
        f"| process max RSS | {result['max_rss_bytes'] / 2**20:.0f} MiB |",
        f"| wall time | {result['seconds']:,} s |",
        "",
        "Inputs: " + ", ".join(f"{k} ({v:,} B)" for k, v in result["inputs"].items()) + ".",
    ]
    if result["crash_classes"]:
        lines += ["", "Crash classes:", ""] + [f"- {k}: {v}" for k, v in result["crash_classes"].items()]
    (ROOT / "benchmarks" / "fuzz.md").write_text("\n".join(lines) + "\n")


def _cpu() -> str:
    sys.path.insert(0, str(ROOT / "tools"))
    from machine import cpu_model

    return cpu_model()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mutants", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--crash-dir", type=Path, default=Path("fuzz-crashes"))
    parser.add_argument("--checkpoint", type=int, default=5000, help="write the report every N mutants")
    parser.add_argument("--no-write", action="store_true", help="print the result, write nothing")
    args = parser.parse_args()
    command = "python tools/fuzz_reader.py " + " ".join(sys.argv[1:])

    def progress(result):
        print(f"{result['mutants']:,} mutants, {result['exceptions_outside_d3error']} crashes, "
              f"slowest {result['slowest']['seconds']} s, {result['seconds']} s", flush=True)
        if not args.no_write:
            write_report(result, command + f"  (checkpoint: {result['mutants']:,} of {args.mutants:,})")

    result = run(args.mutants, args.seed, None if args.no_write else args.crash_dir, args.checkpoint, progress)
    if args.no_write:
        print(json.dumps(result, indent=1))
    else:
        write_report(result, command)
        print(f"wrote benchmarks/fuzz.md: {result['exceptions_outside_d3error']} crashes in {result['mutants']:,}")


if __name__ == "__main__":
    main()
