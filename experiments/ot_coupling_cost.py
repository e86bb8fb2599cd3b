"""What minibatch optimal transport (InterFlow ``coupling=ot``) costs per training step.

Times POT's exact solver ``ot.emd`` on the squared-distance matrix of two batches (the work
`bench.science.couplings.ot_plan` adds to every step) for batches of 512 and 1024 rows of
2-D and 43-D (MINIBOONE-sized) data, beside one forward, backward and Adam update of
InterFlow's default velocity MLP (3 x 512, SiLU) on a batch of 512 43-D rows. The figures are
the median CPU time over rounds of this single-threaded process (on a shared machine the CPU
clock moves far less than the wall clock as other processes take turns on the cores).

    python experiments/ot_coupling_cost.py [--rounds 7]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable


def cpu_ms(fn: Callable[[], object], rounds: int) -> float:
    """Median CPU milliseconds of ``fn()`` over ``rounds`` calls, after one warm-up call."""
    fn()
    times = []
    for _ in range(rounds):
        start = time.process_time()
        fn()
        times.append(time.process_time() - start)
    return 1e3 * statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args(argv)

    import ot
    import torch

    from bench.science.couplings import MAX_ITER, squared_costs
    from bench.science.nets import build_net

    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    for n in (512, 1024):
        for d in (2, 43):
            x_0 = torch.randn(n, d, generator=g)
            x_1 = 0.5 * torch.randn(n, d, generator=g) + 1.0
            cost, w = squared_costs(x_0, x_1).numpy(), ot.unif(n)
            ms = cpu_ms(lambda c=cost, w=w: ot.emd(w, w, c, numItermax=MAX_ITER), args.rounds)
            print(f"ot.emd  batch {n:4d}  dim {d:2d}: {ms:7.1f} ms")
    net = build_net(43, (512, 512, 512), "silu", "mlp")
    opt = torch.optim.Adam(net.parameters())
    x, t = torch.randn(512, 43, generator=g), torch.rand(512, generator=g)

    def step() -> None:
        opt.zero_grad()
        v = net(t, x)
        ((v * v).sum(1) - 2 * (x * v).sum(1)).mean().backward()
        opt.step()

    print(f"interflow MLP step, batch  512  dim 43: {cpu_ms(step, args.rounds):7.1f} ms")


if __name__ == "__main__":
    main()
