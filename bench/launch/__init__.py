"""Launchers: run a planned grid somewhere other than this process.

`bench.launch.ray_grid.launch_ray` runs each job of the grid as a Ray task (``bench run
--launcher ray``). Importing this package is cheap: Ray is an optional extra (``pip install
bench[ray]``), imported only inside the functions that use it.
"""
