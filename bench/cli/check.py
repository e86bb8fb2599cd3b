"""``bench check FILE_OR_NAME``: the contract checks on a plug-in author's file (or on a
registered plug-in), one line per property: ``PASS name`` or ``FAIL name: detail``.

Registered in `bench.cli.main` with ``main.add_command(check)``. Exit status 0 when every
property holds, 1 otherwise.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from bench.api.errors import ConfigError

__all__ = ["check", "check_target"]


def _targets(target: str, extra_dirs: list[str]) -> list:
    """The `Plugin` records to check: those defined in a file, or the registered ones named
    ``target`` (a method and a dataset may share a name)."""
    from bench.harness.planning.registry import Plugin, Registry, load_plugin_file

    path = Path(target)
    if path.suffix == ".py" or path.is_file():
        if not path.is_file():
            raise ConfigError(f"no plug-in file {target}")
        return load_plugin_file(path, prefix="bench_checked") or [Plugin(
            path.stem, "method", str(path.resolve()),
            error=f"no Method or Dataset subclass with a `name` in {path.name}")]
    registry = Registry(extra_dirs=extra_dirs)
    found = [registry.plugins[kind][target] for kind in ("method", "dataset")
             if target in registry.plugins[kind]]
    if not found:
        from bench.harness.planning.selection import closest

        names = registry.names("method") + registry.names("dataset")
        raise ConfigError(f"no plug-in file or registered name {target!r}"
                          f"{closest(target, names)}; methods: "
                          f"{', '.join(registry.names('method'))}; datasets: "
                          f"{', '.join(registry.names('dataset'))}")
    return found


def check_target(target: str, extra_dirs: list[str] | None = None,
                 data_dir: Path | None = None) -> list[dict]:
    """Run the contract checks on a file or registered name: one entry per plug-in with
    ``name``, ``kind``, ``source``, ``version``, ``ok`` and ``checks`` (name, ok, detail)."""
    from bench.harness.running.check import Check, check_dataset, check_method

    reports = []
    for plugin in _targets(target, list(extra_dirs or [])):
        if plugin.available:
            checks = (check_method(plugin.cls) if plugin.kind == "method"
                      else check_dataset(plugin.cls, data_dir=data_dir))
        else:
            checks = [Check("import", False, plugin.error or "unavailable")]
        reports.append({"name": plugin.name, "kind": plugin.kind, "source": plugin.source,
                        "version": plugin.version, "ok": all(c.ok for c in checks),
                        "checks": [{"name": c.name, "ok": c.ok, "detail": c.detail}
                                   for c in checks]})
    return reports


@click.command("check")
@click.argument("target", metavar="FILE_OR_NAME")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Data root for datasets (default: BENCH_DATA_DIR or the user cache).")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
@click.pass_context
def check(ctx, target, data_dir, as_json):
    """Check a plug-in file (or a registered method/dataset) against the contract.

    Prints one line per property, PASS or FAIL with what failed; exits 1 if any failed.
    """
    extra = list((ctx.find_root().obj or {}).get("plugins", ()))
    reports = check_target(target, extra, data_dir)
    if as_json:
        click.echo(json.dumps(reports, indent=1))
    else:
        for rep in reports:
            click.echo(f"{rep['kind']} {rep['name']!r} ({rep['source']})")
            for c in rep["checks"]:
                click.echo(f"PASS {c['name']}" if c["ok"] else f"FAIL {c['name']}: {c['detail']}")
        failed = sum(not c["ok"] for rep in reports for c in rep["checks"])
        total = sum(len(rep["checks"]) for rep in reports)
        click.echo(f"{total - failed} of {total} checks passed" if failed else
                   f"all {total} checks passed")
    ctx.exit(0 if all(rep["ok"] for rep in reports) else 1)
