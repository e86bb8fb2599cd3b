"""The ``bench`` command line: wires plan -> harness -> sink; the only place that prints and
maps errors to exit codes."""
