"""Running: ``run_job(job, sink)`` from plan to record, the run context, the contract check
of ``bench check``, and the regression figures of ``bench regress``. The top floor of the
harness.
"""
