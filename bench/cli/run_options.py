"""``bench run``'s options in groups (selection, budget, scoring, execution, checkpoints,
launcher, output), each a decorator; `run_options` applies them all, with the shared
solver and store options of `bench.cli.common` and ``--config FILE``."""

from __future__ import annotations

import click

from bench.cli.common import solver_options, store_options
from bench.cli.config import config_option
from bench.harness.planning.defaults import DEFAULTS

__all__ = ["option_group", "selection_options", "budget_options", "scoring_options",
           "execution_options", "checkpoint_options", "launcher_options", "output_options",
           "run_options"]


def option_group(*options):
    """One decorator applying ``options`` in the order given (as they appear in --help)."""
    def apply(f):
        for opt in reversed(options):
            f = opt(f)
        return f
    return apply


selection_options = option_group(
    click.option("-m", "--method", "methods", multiple=True, required=True,
                 help='Method selection, e.g. "interflow[lr=3e-4,interpolant=linear]" '
                      "(repeatable)."),
    click.option("-d", "--dataset", "datasets", multiple=True, required=True,
                 help="Dataset selection, e.g. miniboone or \"gaussian[dim=8]\" "
                      "(repeatable)."),
    click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
                 help="Override a parameter of the selected methods/datasets or of the "
                      "shared optimisation (lr, schedule, grad_clip, ema, ...); prefix "
                      "method. or dataset. to disambiguate."),
    click.option("--seeds", default="0", show_default=True, help="Comma-separated seeds."),
    config_option,
)

budget_options = option_group(
    click.option("--steps", type=int, default=None,
                 help="Training steps [default: the dataset's kind's, "
                      f"{DEFAULTS.budget_help('steps')}]."),
    click.option("--max-seconds", type=float, default=None, help="Training wall-clock budget."),
    click.option("--eval-every", type=int, default=None,
                 help="Validation NLL every N steps [default: the dataset's kind's, "
                      f"{DEFAULTS.budget_help('eval_every')}]."),
    click.option("--patience", type=int, default=DEFAULTS.patience, show_default=True,
                 help="Early stop after N evaluations without improvement."),
    click.option("--val-rows", type=int, default=None,
                 help="Validate on the first N validation rows only [default: all]."),
    click.option("--test-rows", type=int, default=None,
                 help="Score the first N test rows only (recorded in the split tag) "
                      "[default: all]."),
    click.option("--explosion-factor", type=float, default=DEFAULTS.explosion_factor,
                 show_default=True,
                 help="Stop a run as exploded when a step's |loss| exceeds this factor x "
                      "max(1, |loss| of the first step); a non-finite loss always stops it "
                      "(0: only that)."),
)

scoring_options = option_group(
    click.option("--n-samples", type=int, default=DEFAULTS.n_samples, show_default=True,
                 help="Samples drawn for the 2-D samples PNG."),
    click.option("--fid-samples", type=int, default=None,
                 help="Generated images scored by FID/KID (0: off) [default: 1000 on "
                      "images]."),
    click.option("--fid-ref", type=click.Choice(["train", "val", "test"]), default="test",
                 show_default=True, help="Split whose Inception features are FID's reference."),
    click.option("--fid-ref-rows", type=int, default=None,
                 help="Use the first N images of the reference split [default: all]."),
    click.option("--fid-resize", default="tf1", show_default=True,
                 help="Resize to the Inception input: tf1 (TF1 bilinear, the published "
                      "FIDs) or clean (clean-fid's PIL bicubic)."),
    click.option("--fid-train-rows", type=int, default=None,
                 help="Training images the memorisation check compares samples with "
                      "(0: off) [default: min(5000, the reference images)]."),
    solver_options,
    click.option("--val-tol", type=float, default=DEFAULTS.val_tol, show_default=True,
                 help="rtol = atol of the validation solves (the early-stopping signal); the "
                      "test NLL uses --rtol/--atol."),
)

execution_options = option_group(
    click.option("--device", default="cpu", show_default=True),
    click.option("--precision", type=click.Choice(["fp32", "bf16"]), default="fp32",
                 show_default=True, help="Training autocast precision (evaluation is fp32)."),
    click.option("--channels-last", is_flag=True, help="NHWC memory format for image training."),
    click.option("--compile", "compile_", is_flag=True,
                 help="torch.compile the method's modules for training."),
)

checkpoint_options = option_group(
    click.option("--resume", "resume", flag_value="require", default=None,
                 help="Continue each job from its checkpoint in <results-dir>/runs/<job key>/ "
                      "(an error if a job has none) [default: resume a job left KILLED or "
                      "RUNNING, else start afresh]."),
    click.option("--fresh", "resume", flag_value="never",
                 help="Start new runs, ignoring any checkpoint."),
    click.option("--checkpoint-every", type=int, default=None,
                 help="Write the resumable checkpoint every N steps [default: at every "
                      "validation]."),
    click.option("--checkpoint-minutes", type=float, default=DEFAULTS.checkpoint_minutes,
                 show_default=True, help="Also write it every M minutes (0: off)."),
)

launcher_options = option_group(
    click.option("--launcher", type=click.Choice(["local", "ray"]), default="local",
                 show_default=True,
                 help="Where the jobs run: in this process, or as Ray tasks (pip install "
                      "'ctgen-bench[ray]')."),
    click.option("--address", default=None,
                 help="With --launcher ray: the cluster's address (auto, host:port) "
                      "[default: a new local cluster]."),
)

output_options = option_group(
    click.option("--dry-run", is_flag=True, help="Print the validated plan and stop."),
    click.option("-q", "--quiet", is_flag=True, help="No progress display."),
    click.option("--json", "as_json", is_flag=True, help="Print the records (or plan) as JSON."),
)

run_options = option_group(selection_options, budget_options, scoring_options,
                           execution_options, store_options, checkpoint_options,
                           launcher_options, output_options)
