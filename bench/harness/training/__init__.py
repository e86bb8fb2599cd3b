"""Training: the harness's optimiser step (optim), the loop with its budgets, batches,
checkpoints, resume, stop signals, the run folder and the recorder, and distributed data
parallelism. Imports the scoring and planning floors.
"""
