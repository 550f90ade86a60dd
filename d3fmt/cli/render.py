"""What the commands print: results as lines of text (pack and merge share theirs)."""

from __future__ import annotations


def budget_use(result) -> str:
    """``N bytes = x% of the M-byte budget`` of a PackResult."""
    return f"{result.file_bytes} bytes = {result.file_bytes / result.max_bytes:.1%} of the {result.max_bytes}-byte budget"


def plan_line(plan) -> str:
    return (f"  decoder {plan.family} width {plan.width} ({plan.weight_encoding}), z_dim {plan.z_dim}, "
            f"{plan.latents_per_class} latent(s) per class, {plan.decode_mflop:g} MFLOP per decoded image")


def content_line(result) -> str:
    """What the file holds: the fitter's decoder plan, or the anchors (--representation anchors)."""
    if getattr(result, "plan", None) is not None:
        return plan_line(result.plan)
    teacher = f", a ConvNet-{result.teacher_width} labelling teacher" if result.teacher_width else ""
    return f"  {result.per_class} real anchors per class at {result.bits} bit(s), context-coded{teacher}"


def final_accuracy_line(ev) -> str:
    """The evaluation a pack or merge ends with."""
    return (f"  accuracy {ev.mean:.2%} +- {ev.std:.2%} ({ev.model}, {len(ev.accuracies)} run(s), "
            f"{ev.epochs} epochs, final model on the held-out split)")


def pack_lines(result, output: str, subtask: int | None, subtasks: int) -> list[str]:
    """What `d3 pack` prints for a PackResult (a whole file, a part, or a torchrun rank's share)."""
    if result.path is None:  # a torchrun rank other than 0
        return [f"sent subtasks {result.subtasks} ({result.file_bytes} bytes) to rank 0, which writes {output}"]
    if result.partial:
        return [f"wrote part {result.path} (subtask {subtask} of {subtasks}): {result.file_bytes} bytes; "
                f"merge all parts with `d3 merge PARTS... -o OUT --source SRC`"]
    lines = [f"wrote {result.path}: {budget_use(result)}", content_line(result)]
    return lines + ([final_accuracy_line(result.evaluation)] if result.evaluation is not None else [])


def merge_lines(result, parts: int) -> list[str]:
    lines = [f"merged {parts} part(s), {len(result.subtasks)} subtasks, into {result.path}: {budget_use(result)}"]
    return lines + ([final_accuracy_line(result.evaluation)] if result.evaluation is not None else [])


def schedule(ev) -> str:
    return f"{ev.epochs} epochs" if ev.steps is None else f"{ev.steps} steps ({ev.epochs} passes)"


def accuracy_line(ev) -> str:
    return f"{ev.model}: {ev.mean:.2%} +- {ev.std:.2%} over {len(ev.accuracies)} run(s), {schedule(ev)}, final model"


def codec_table(family) -> str:
    """One line per codec: n per class, bytes, accuracy; the best marked."""
    best = family.best.codec
    lines = [f"  {'codec':<12} {'images/class':>12} {'bytes':>12}  {'accuracy':>17}  description"]
    for r in family.results:
        acc = "does not fit" if r.evaluation is None else f"{r.evaluation.mean:.2%} +- {r.evaluation.std:.2%}"
        mark = "  <- best" if r.codec == best else ""
        lines.append(f"  {r.codec:<12} {r.images_per_class:>12,} {r.bytes:>12,}  {acc:>17}  {r.description}{mark}")
    return "\n".join(lines)


def baseline_lines(kind: str, result, out) -> list[str]:
    ev = result.evaluation
    if kind == "random":
        head = (f"random subset: {result.images_per_class} PNG images per class, {result.bytes:,} of "
                f"{result.max_bytes:,} bytes (one more per class: {result.next_bytes or 'n/a'} bytes)")
    else:
        head = f"full training set: {result.train_images:,} images ({result.bytes:,} bytes as PNG)"
    lines = [head, f"{accuracy_line(ev)} on {result.test_set}", f"  {ev.protocol}"]
    return lines + ([f"  chosen PNGs saved under {out}/"] if out else [])


def codecs_lines(result) -> list[str]:
    ev, best = result.best.evaluation, result.best
    return [f"codecs at {result.max_bytes:,} bytes, {ev.model}, {schedule(ev)}, {len(ev.accuracies)} run(s), "
            f"final model on {result.test_set}:", codec_table(result),
            f"best: {best.codec} ({best.images_per_class} images/class, {best.bytes:,} bytes), "
            f"{best.evaluation.mean:.2%} +- {best.evaluation.std:.2%}", f"  {ev.protocol}"]


def compare_lines(file: str, result, recorded: bool) -> list[str]:
    ev, best = result.evaluation, result.codecs.best
    lines = [f"{accuracy_line(ev)} on {result.test_set}", f"  {ev.protocol}",
             f"same {result.file_bytes:,} bytes as real images:", codec_table(result.codecs),
             f"{result.margin:+.1f} points over the best same-bytes codec, {best.codec}, "
             f"{best.images_per_class} images/class"]
    return lines + ([f"  recorded in {file} (see `d3 inspect {file}`)"] if recorded else [])


def eval_lines(file: str, ev, test_name: str, recorded: bool) -> list[str]:
    lines = [f"{accuracy_line(ev)} on {test_name}", f"  {ev.protocol}"]
    return lines + ([f"  recorded in {file} (see `d3 inspect {file}`)"] if recorded else [])


def echo(lines: list[str], err: bool = False) -> None:
    import click

    for line in lines:
        click.echo(line, err=err)


def recipe_header(recipe: str | None) -> list[str]:
    """A line naming the recipe a result was trained under (none without --recipe)."""
    return [] if recipe is None else [f"recipe {recipe}:"]


def best_recipe_lines(best: str, results: dict) -> list[str]:
    others = ", ".join(f"{name} {ev.mean:.2%}" for name, ev in results.items() if name != best)
    return [f"best recipe: {best} ({results[best].mean:.2%}; {others})"]
