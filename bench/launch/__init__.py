"""Launchers: where the jobs of a planned grid run (`bench.api.Launcher`).

`bench.launch.specs` turns planned jobs into `JobSpec`s (with their job keys) and a spec
back into its job; `bench.launch.local.LocalLauncher` runs specs in this process,
`bench.launch.ray.RayLauncher` as Ray tasks (``bench run --launcher ray``). Importing this
package is cheap: Ray is an optional extra, imported only inside the functions that use it.
"""
