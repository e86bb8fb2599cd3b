"""``bench suite plan|run|status|export|report NAME``: a benchmark suite (a TOML file in
``suites/``) planned with its data and compute, run resumably into its own store
(``results/suites/NAME/``), exported to ``records.jsonl`` and published as
``docs/results/NAME.md`` from those records (`bench.record.suite_page`)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from bench.cli.common import registry_of

__all__ = ["suite"]

_root = click.option("--root", type=click.Path(file_okay=False), default=".",
                     show_default=True,
                     help="The project folder: its suites/, results/suites/ and docs/.")
_data = click.option("--data-dir", type=click.Path(file_okay=False), default=None,
                     help="Data root (default BENCH_DATA_DIR or ~/.cache/bench/data).")


@click.group()
def suite():
    """Benchmark suites: a grid, budget, protocol and device class in suites/NAME.toml."""


def _load(ctx, name: str, root: str, data_dir: str | None, device: str | None = None):
    from bench.harness.planning.suites import load_suite
    from bench.launch.suites import planned

    s = load_suite(name, Path(root))
    entries = planned(registry_of(ctx), s, Path(root), data_dir=_path(data_dir),
                      device=device)
    return s, entries


def _path(p: str | None) -> Path | None:
    return Path(p) if p else None


def _data_status(entries) -> dict[str, str]:
    """Dataset selection -> "synthetic", "present: <provenance>" or "missing: <what
    bench run says: where to place which files>" (data read, never downloaded)."""
    from bench.api import BenchError

    out: dict[str, str] = {}
    for e in entries:
        j = e.job
        key = j.label.rsplit(" seed ", 1)[0].rsplit(" on ", 1)[1]
        if key in out:
            continue
        if getattr(j.dataset_cls, "synthetic", False):
            out[key] = "synthetic (no files)"
            continue
        try:
            splits = j.dataset_cls(j.dataset_params, data_dir=j.data_dir).load()
            out[key] = f"present: {splits.provenance}"
        except (BenchError, OSError) as exc:
            out[key] = "missing: " + " ".join(str(exc).split())
        except Exception as exc:  # noqa: BLE001 - a plug-in's own failure, said in one line
            out[key] = f"unreadable: {type(exc).__name__}: " + " ".join(str(exc).split())
    return out


def _estimates(entries, s, root: Path, probe: bool):
    """Each job's estimate: from a probe here, or from the runs of the suite's store and
    of every export measured on the suite's device class."""
    from bench.launch.estimate import estimate, measured, probe_records
    from bench.launch.suites import store_records

    if probe:
        recs, basis = probe_records([e.job for e in entries]), "probed on this machine"
    else:
        recs = {r.run_id: r for r in store_records(root, s) + measured(root, s.device_class)
                if r.tags.get("suite.device_class") == s.device_class}.values()
        basis = f"measured on {s.device_class}"
    return [estimate(e.job, recs, basis) for e in entries]


@suite.command()
@click.argument("name")
@click.option("--probe", is_flag=True,
              help="Estimate from a short probe of each configuration on this machine "
                   "(a few steps, one validation, a few test rows; lower bounds).")
@click.option("--json", "as_json", is_flag=True, help="The plan as JSON.")
@_root
@_data
@click.pass_context
def plan(ctx, name, probe, as_json, root, data_dir):
    """Validate suite NAME like a --dry-run: its jobs, the data each needs, and the compute
    (measured on its device class, or --probe; otherwise unknown, never guessed)."""
    from bench.harness.planning.suites import skipped
    from bench.launch.estimate import fmt_seconds, total

    s, entries = _load(ctx, name, root, data_dir)
    data = _data_status(entries)
    est = _estimates(entries, s, Path(root), probe)
    rows = [{"#": i, "method": e.label, "dataset": e.job.dataset, "seed": e.job.seed,
             "budget": _budget(e.job), "estimate": x.text(), "basis": x.basis,
             "job key": e.key} for i, (e, x) in enumerate(zip(entries, est, strict=True), 1)]
    tot = total(est)
    if as_json:
        click.echo(json.dumps({"suite": s.name, "device_class": s.device_class,
                               "jobs": [{**r, "seconds": x.seconds, "s_per_step": x.s_per_step,
                                         "s_per_nfe": x.s_per_nfe}
                                        for r, x in zip(rows, est, strict=True)],
                               "data": data, "skipped": skipped(registry_of(ctx), s),
                               "total_seconds": tot}, indent=1))
        return
    from tabulate import tabulate

    click.echo(f"suite {s.name} ({s.device_class}): {s.description}")
    click.echo(tabulate([{k: v for k, v in r.items() if k != "job key"} for r in rows],
                        headers="keys", tablefmt="github"))
    for label, reason in skipped(registry_of(ctx), s).items():
        click.echo(f"skipped (optional, unavailable here): {label}: {reason}")
    for ds, status in data.items():
        click.echo(f"data {ds}: {status}")
    click.echo(f"{len(entries)} job(s); compute: "
               + (fmt_seconds(tot) if tot is not None else "unknown (no measurement of "
                  f"{sum(x.seconds is None for x in est)} job(s) on {s.device_class}: "
                  "run some, or --probe)"))


def _budget(job) -> str:
    b = job.budget
    return " ".join(x for x in (f"{b.steps} steps" if b.steps else "",
                                f"{b.max_seconds:g} s" if b.max_seconds else "") if x)


@suite.command()
@click.argument("name")
@click.option("--launcher", type=click.Choice(["local", "ray"]), default="local",
              show_default=True, help="Where the jobs run.")
@click.option("--jobs", "parallel", type=int, default=1, show_default=True,
              help="Local jobs run at once, each in its own process with one thread.")
@click.option("--retry-failed", is_flag=True, help="Run the failed jobs again too.")
@click.option("-q", "--quiet", is_flag=True, help="No progress display.")
@_root
@_data
@click.pass_context
def run(ctx, name, launcher, parallel, retry_failed, quiet, root, data_dir):
    """Run suite NAME into results/suites/NAME/: finished jobs are skipped, killed ones
    resume from their checkpoints, failed ones rerun only with --retry-failed; then export
    its records. Exit 1 when a job did not finish."""
    from bench.api import ConfigError
    from bench.launch.suites import run_suite, store_records, with_states

    if launcher == "ray" and parallel != 1:
        raise ConfigError("--jobs is for the local launcher (Ray schedules its own tasks)")
    s, entries = _load(ctx, name, root, data_dir)
    if entries and entries[0].job.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise ConfigError(f"suite {s.name} is for {s.device_class}: no CUDA device here")
    entries = with_states(entries, store_records(Path(root), s))
    plugins = list((ctx.find_root().obj or {}).get("plugins", ()))
    counts = {st: sum(e.state == st for e in entries) for st in ("done", "failed")}
    click.echo(f"suite {s.name}: {len(entries)} job(s), {counts['done']} done"
               + (f", {counts['failed']} failed (not rerun without --retry-failed)"
                  if counts["failed"] and not retry_failed else ""), err=True)

    def said(entry, record) -> None:
        if record.status == "FINISHED":
            from bench.cli.run import result_line

            click.echo(f"{entry.label}: {result_line(record)}")
        else:
            click.echo(f"error: {entry.job.label}: {record.status}: {record.failure}",
                       err=True)

    if launcher == "ray":
        _run_ray(s, entries, Path(root), plugins, retry_failed, said)
    else:
        from bench.cli.common import progress_factory
        from bench.harness.training.signals import RunInterrupted, catch_stops

        with catch_stops():
            try:
                run_suite(s, entries, Path(root), plugins=plugins, registry=registry_of(ctx),
                          parallel=parallel, retry_failed=retry_failed, on_record=said,
                          progress=progress_factory(quiet or parallel > 1))
            except RunInterrupted as exc:
                click.echo(f"error: suite {s.name} stopped ({exc}): run it again to resume",
                           err=True)
                sys.exit(exc.exit_code)
    sys.exit(_export(ctx, s, root, data_dir))


def _run_ray(s, entries, root: Path, plugins, retry_failed: bool, said) -> None:
    from bench.launch.ray import RayLauncher, import_ray
    from bench.launch.specs import specs_of
    from bench.launch.suites import store_uri
    from bench.record.suite_records import suite_dir

    import_ray()
    wanted = ("killed", "left", "failed") if retry_failed else ("killed", "left")
    todo = [e for e in entries if e.state in wanted]
    launcher = RayLauncher({"uri": store_uri(root, s), "experiment": s.name,
                            "results": str(suite_dir(root, s.name).resolve())},
                           echo=lambda line: click.echo(line, err=True))
    for e, rec in zip(todo, launcher.submit(specs_of([e.job for e in todo], plugins)),
                      strict=True):
        said(e, rec)


def _export(ctx, s, root: str, data_dir: str | None) -> int:
    """Write the export; 1 when some job is not done (0 otherwise)."""
    from bench.launch.suites import finished_records, history_of, store_records, with_states
    from bench.record.suite_records import export_path, write_records

    _, entries = _load(ctx, s.name, root, data_dir)
    entries = with_states(entries, store_records(Path(root), s))
    records = finished_records(entries, s)
    path = write_records(export_path(Path(root), s.name), records, history_of(s))
    left = [e for e in entries if e.state != "done"]
    click.echo(f"{len(records)} finished run(s) of {len(entries)} exported to {path}"
               + (f"; {len(left)} not done" if left else ""), err=True)
    return 1 if left else 0


@suite.command()
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Each job's state as JSON.")
@_root
@_data
@click.pass_context
def status(ctx, name, as_json, root, data_dir):
    """Done / running / failed / killed / left jobs of suite NAME, with failure reasons."""
    from bench.launch.suites import STATES, store_records, with_states

    s, entries = _load(ctx, name, root, data_dir)
    entries = with_states(entries, store_records(Path(root), s))
    if as_json:
        click.echo(json.dumps([{"job": e.job.label, "job key": e.key, "state": e.state,
                                "run_id": e.run_id, "reason": e.reason} for e in entries],
                              indent=1))
        return
    counts = {st: sum(e.state == st for e in entries) for st in STATES}
    click.echo(f"suite {s.name}: " + ", ".join(f"{n} {st}" for st, n in counts.items()))
    for e in entries:
        if e.state in ("failed", "killed", "running"):
            click.echo(f"{e.state}: {e.job.label}" + (f": {e.reason}" if e.reason else ""))


@suite.command()
@click.argument("name")
@_root
@_data
@click.pass_context
def export(ctx, name, root, data_dir):
    """Write results/suites/NAME/records.jsonl from the suite's store (its finished runs:
    final metrics, parameters, tags, validation histories; no per-step loss)."""
    from bench.harness.planning.suites import load_suite

    _export(ctx, load_suite(name, Path(root)), root, data_dir)


@suite.command()
@click.argument("name")
@_root
def report(name, root):
    """Write docs/results/NAME.md and its plots from results/suites/NAME/records.jsonl
    (never rerunning anything)."""
    from bench.harness.planning.suites import load_suite
    from bench.record.suite_page import write_suite_page
    from bench.record.suite_records import export_path, read_records

    s = load_suite(name, Path(root))
    records = read_records(export_path(Path(root), s.name))
    for path in write_suite_page(s, records, Path(root)):
        click.echo(str(path))
