#!/usr/bin/env python
"""Generate an ImageFolder of coloured shapes (train/ + val/) for tests and benchmarks.

    python tools/make_shapes.py data/shapes64 --classes 1000 --per-class 100 \
        --val-per-class 20 --size 64 --workers 2

Same output for any --workers (every class is drawn from its own seeded generator).
The layout of classes is documented in d3fmt/sources/synthetic.py.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from d3fmt.errors import D3Error
from d3fmt.sources.synthetic import MAX_CLASSES, make_shapes_folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", help="output directory (created; existing files are overwritten)")
    parser.add_argument("--classes", type=int, default=10, help=f"number of classes, 2..{MAX_CLASSES}")
    parser.add_argument("--per-class", type=int, default=30, help="train images per class")
    parser.add_argument("--val-per-class", type=int, default=10,
                        help="val images per class (0: no val/)")
    parser.add_argument("--size", type=int, default=32, help="image side in pixels")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--grey", action="store_true", help="write grey (L) images instead of RGB")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="parallel writer processes (default: all cores)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        root = make_shapes_folder(args.root, num_classes=args.classes, per_class=args.per_class,
                                  image_size=args.size, val_per_class=args.val_per_class,
                                  seed=args.seed, rgb=not args.grey, workers=max(1, args.workers))
    except D3Error as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    count = args.classes * (args.per_class + args.val_per_class)
    seconds = time.perf_counter() - start
    print(f"wrote {count} images ({args.classes} classes, {args.size}x{args.size}) to {root} "
          f"in {seconds:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
