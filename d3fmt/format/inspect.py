"""`d3 inspect`: what a .d3 file holds and where its bytes go.

summarize() builds one JSON-able dict (the `--json` output, a stable interface for
scripts and benchmarks); render_text() turns it into a short human summary. Bytes are
attributed to four kinds so that the budget can be read at a glance: priors (mu,
logvar), decoders, labels (soft labels, the labelling teacher) and header (preamble, header, padding);
sections no subtask names count as "other".
"""

from __future__ import annotations

from math import prod

from d3fmt.format.constants import FORMAT_MAJOR
from d3fmt.format.container import D3Reader

KINDS = ("priors", "decoders", "anchors", "labels", "header", "other")


def _section_kinds(header: dict) -> dict[str, str]:
    kinds: dict[str, str] = {}
    for sub in header["subtasks"]:
        t = sub["tensors"]
        kinds[t["mu"]] = kinds[t["logvar"]] = "priors"
        if "soft" in t:
            kinds[t["soft"]] = "labels"
        for name in t["decoder"].values():
            kinds[name] = "decoders"
    for name in (header.get("teacher") or {}).get("tensors", {}).values():
        kinds[name] = "labels"  # the labelling teacher
    anchors = header.get("anchors") or {}
    for key in ("values", "stream"):
        if key in anchors:
            kinds[anchors[key]] = "anchors"
    return kinds


def _teacher_summary(teacher) -> dict | None:
    if not isinstance(teacher, dict):
        return None
    config = teacher.get("config") or {}
    return {"model": teacher.get("model"), "width": config.get("width"), "temperature": teacher.get("temperature")}


def _labels_text(summary: dict) -> str:
    t = summary.get("teacher")
    if not t:
        return summary["labels"]
    return f"teacher ({t['model']}, width {t['width']}, temperature {t['temperature']:g}) on every sample"


def summarize(path, verify: bool = False) -> dict:
    """The inspect summary of ``path``; with verify=True the file is first checked whole
    (D3Reader.verify: hashes, every section decoded, decoders buildable), torch-free."""
    reader = D3Reader(path)
    if verify:
        reader.verify()
    h = reader.header
    kinds = _section_kinds(h)
    by_name = {s.name: s for s in reader.sections}
    bytes_by_kind = dict.fromkeys(KINDS, 0)
    for s in reader.sections:
        bytes_by_kind[kinds.get(s.name, "other")] += s.stored_bytes
    bytes_by_kind["header"] = reader.file_bytes - sum(s.stored_bytes for s in reader.sections)
    subtasks = []
    for sub in h["subtasks"]:
        dec = sub["tensors"]["decoder"].values()
        subtasks.append({
            "id": sub["id"],
            "classes": sub["classes"],
            "latents_per_class": sub["latents_per_class"],
            "z_dim": sub["z_dim"],
            "decoder_family": sub["decoder"]["family"],
            "decoder": sub["decoder"],
            "decoder_params": sum(prod(by_name[n].shape) for n in dec),
            "soft_labels": "soft" in sub["tensors"],
        })
    b = h["budget"]
    return {
        "path": str(path),
        "format_version": f"{FORMAT_MAJOR}.{reader.preamble.minor}",
        "file_bytes": reader.file_bytes,
        "num_classes": h["num_classes"],
        "class_names": h["class_names"],
        "image_shape": h["image_shape"],
        "normalization": h["normalization"],
        "labels": h["labels"],
        "teacher": _teacher_summary(h.get("teacher")),
        "partial": bool(h.get("partial", False)),
        "samples_per_class": h["samples_per_class"],
        "budget": {k: b[k] for k in ("ipc", "max_bytes", "bytes_used", "ipc_equivalent_fp32", "ipc_equivalent_uint8")},
        "bytes_by_kind": bytes_by_kind,
        "sections": [
            {"name": s.name, "dtype": s.dtype, "shape": list(s.shape), "stored_bytes": s.stored_bytes,
             "raw_bytes": s.raw_bytes, "codec": s.codec, "kind": kinds.get(s.name, "other")}
            for s in reader.sections
        ],
        "subtasks": subtasks,
        "anchors": ({k: h["anchors"][k] for k in ("levels", "lanes", "counts")} if h.get("anchors") else None),
        "evals": [
            {**{k: e[k] for k in ("model", "protocol", "test_set", "accuracy", "std", "runs", "epochs", "date")},
             **{k: e[k] for k in ("steps", "compare", "recipe") if k in e}}
            for e in h["evals"]
        ],
        "provenance": h["provenance"],
        "verified": verify,
    }


def _class_ranges(classes: list[int]) -> str:
    """[0,1,2,5,7,8] -> '0-2,5,7-8' (compact for hundreds of classes)."""
    parts, start, prev = [], None, None
    for c in sorted(classes) + [None]:
        if start is not None and c is not None and c == prev + 1:
            prev = c
            continue
        if start is not None:
            parts.append(str(start) if start == prev else f"{start}-{prev}")
        start = prev = c
    return ",".join(parts)


def _names(names: list[str], limit: int = 12) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... (+{len(names) - limit})" if len(names) > limit else "")


def compare_margin(record: dict) -> str:
    """'+x.x points over the best same-bytes codec, <codec>, n images/class (its accuracy)'."""
    c = record["compare"]
    points = 100 * (record["accuracy"] - c["accuracy"])
    return (f"{points:+.1f} points over the best same-bytes codec, {c['codec']}, {c['images_per_class']} "
            f"images/class ({100 * c['accuracy']:.2f}% +- {100 * c['std']:.2f}, {c['bytes']:,} bytes, {c['runs']} runs)")


def best_recipe_margins(evals: list[dict]) -> list[str]:
    """Per (test set, model, steps), each side at its better training recipe: the file's best
    record against the best codec's best record (records that carry ``compare``)."""
    groups: dict[tuple, list[dict]] = {}
    for e in evals:
        if "compare" in e:
            groups.setdefault((e["test_set"], e["model"], e.get("steps")), []).append(e)
    lines = []
    for (test_set, model, steps), recs in groups.items():
        if len({r.get("recipe") for r in recs}) < 2:
            continue  # one recipe only: its margin is printed with the record
        mine = max(recs, key=lambda r: r["accuracy"])
        theirs = max(recs, key=lambda r: r["compare"]["accuracy"])
        points = 100 * (mine["accuracy"] - theirs["compare"]["accuracy"])
        lines.append(f"  best recipe, {model}{f' {steps} steps' if steps else ''} on {test_set}: "
                     f"{100 * mine['accuracy']:.2f}% ({mine.get('recipe', '?')}) vs the best codec "
                     f"{theirs['compare']['codec']} {100 * theirs['compare']['accuracy']:.2f}% "
                     f"({theirs.get('recipe', '?')}): {points:+.1f} points")
    return lines


def render_text(summary: dict) -> str:
    """A short, human-readable summary (what `d3 inspect FILE` prints)."""
    s, b, kb = summary, summary["budget"], summary["bytes_by_kind"]
    used_pct = f" ({100 * b['bytes_used'] / b['max_bytes']:.1f}% of cap)" if b["max_bytes"] else ""
    c, hh, ww = s["image_shape"]
    lines = [
        f"file       {s['path']}  {s['file_bytes']:,} bytes, format {s['format_version']}"
        + ("  [verified]" if s["verified"] else ""),
        f"budget     ipc {b['ipc']}: cap {b['max_bytes']:,} bytes, used {b['bytes_used']:,}{used_pct}",
        f"           = {b['ipc_equivalent_fp32']:.3f} images/class as float32, "
        f"{b['ipc_equivalent_uint8']:.3f} as uint8",
        f"classes    {s['num_classes']}{' (partial)' if s['partial'] else ''}: {_names(s['class_names'])}",
        f"images     {c} x {hh} x {ww}; labels {_labels_text(s)}; {s['samples_per_class']} samples/class by default",
        "bytes      " + "  ".join(f"{k} {kb[k]:,}" for k in ("priors", "decoders", "anchors", "labels", "header")
                                  if kb[k] or k != "anchors")
        + (f"  other {kb['other']:,}" if kb["other"] else ""),
        f"subtasks   {len(s['subtasks'])}",
    ]
    if s.get("anchors"):
        a = s["anchors"]
        lines.insert(-1, f"anchors    {sum(a['counts']):,} real images at {a['levels']} levels "
                         f"({min(a['counts'])}-{max(a['counts'])} per class), {kb['anchors']:,} bytes")
    for t in s["subtasks"]:
        lines.append(
            f"  #{t['id']}: classes {_class_ranges(t['classes'])} ({len(t['classes'])}), "
            f"{t['latents_per_class']} latents/class, z {t['z_dim']}, "
            f"decoder {t['decoder_family']} {t['decoder_params']:,} params"
        )
    if s["evals"]:
        lines.append(f"evals      {len(s['evals'])}")
        for e in s["evals"]:
            length = f"{e['steps']} steps" if "steps" in e else f"{e['epochs']} epochs"
            lines.append(
                f"  {e['model']} on {e['test_set']} ({e['protocol']}): "
                f"{100 * e['accuracy']:.2f}% +- {100 * e['std']:.2f}  ({e['runs']} runs, {length}, {e['date']})"
            )
            if "compare" in e:
                lines.append(f"    {compare_margin(e)}")
        lines.extend(best_recipe_margins(s["evals"]))
    else:
        lines.append("evals      none (run `d3 eval FILE --test SRC`)")
    p = s["provenance"]
    lines.append(f"source     {p['source']} (hash {p['source_hash'][:16]}), d3fmt {p['d3fmt_version']}, {p['created']}")
    return "\n".join(lines)
