"""``python -m bench`` and ``torchrun ... -m bench``: the ``bench`` command
(`bench.cli.main.main`)."""

from __future__ import annotations

from bench.cli.main import main

if __name__ == "__main__":
    main(prog_name="bench")
