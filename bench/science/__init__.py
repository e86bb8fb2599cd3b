"""The science: interpolants, the one ODE/likelihood engine, diffusion, networks, metrics.

Knows no runs, no tracking, no command line; imports only `bench.api`.
"""
