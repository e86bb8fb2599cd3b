"""The record: sinks (MLflow, in memory), tables, the speed-up analysis and its plots.

Reads and writes `bench.api.RunRecord`s; imports only `bench.api` (mlflow only in
`bench.record.mlflow_sink`).
"""
