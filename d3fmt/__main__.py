"""``python -m d3fmt ...`` is the ``d3`` command (also under torchrun)."""

from d3fmt.cli import main

if __name__ == "__main__":
    main()
