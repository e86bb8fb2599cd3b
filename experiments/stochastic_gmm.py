"""Issue 12's closed-form check: stochastic interpolants between N(0, I) and a Gaussian
mixture in d = 4 and d = 100, where the drift b and the score s of the interpolant density
are known exactly (`bench.science.si_objectives.GaussianMixturePath`).

For each dimension it trains a drift network and a score network with the quadratic losses
(linear interpolant, gamma(t) = sqrt(2 t (1 - t)), antithetic z), records the relative L2
error of each against its closed form on a fixed evaluation set of (t, x_t) at several
training steps, then samples the trained model with the probability-flow ODE limit (eps = 0)
and the forward SDE at several eps, and scores every sampler against fresh target draws with
MMD^2, the energy distance and sliced W2 (each with its standard error), beside the floor:
the same metrics between two independent target samples.

    python experiments/stochastic_gmm.py --out results/experiments/stochastic_gmm.json

Prints a markdown report on stdout; writes the numbers as JSON.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from bench.science import sample_metrics as sm
from bench.science.nets import build_net
from bench.science.sde import SDEConfig, sde_integrate
from bench.science.si_objectives import GaussianMixturePath, interpolant_losses, relative_l2
from bench.science.si_paths import build_stochastic_interpolant

T_MIN = 1e-2


def mixture(it, d: int, k: int = 3, seed: int = 4) -> GaussianMixturePath:
    """K components, means 2 N(0, I) / d^(1/4) (so the modes stay apart but the problem does
    not grow trivially easy or hard with d), per-coordinate scales in [0.3, 1.3)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.rand(k, generator=g) + 0.5
    m = 2.0 * torch.randn(k, d, generator=g) / d**0.25
    s = torch.rand(k, d, generator=g) + 0.3
    return GaussianMixturePath(it, w, m, s)


def run(d: int, steps: int, width: int, batch: int, eval_at: list[int], eps_list: list[float],
        n_samples: int, sde_steps: int, seed: int) -> dict:
    torch.manual_seed(seed)
    it = build_stochastic_interpolant("linear", "sqrt", t_min=T_MIN)
    gm = mixture(it, d)
    nets = {k: build_net(d, (width, width, width), "silu", "mlp") for k in ("b", "s")}
    opt = torch.optim.Adam([p for n in nets.values() for p in n.parameters()], lr=1e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    g = torch.Generator().manual_seed(seed + 1)
    te = T_MIN + (1 - 2 * T_MIN) * torch.rand(4000, generator=g)
    pe = it.sample(torch.randn(4000, d, generator=g), gm.sample(4000, g), te,
                   torch.randn(4000, d, generator=g))
    exact = {"b": gm.velocity, "s": gm.score}
    history = []
    t0 = time.perf_counter()
    for step in range(steps + 1):
        if step in eval_at:
            errs = {k: relative_l2(nets[k], exact[k], te, pe.x_t) for k in nets}
            history.append({"step": step, **{f"rel_l2_{k}": v for k, v in errs.items()}})
        if step == steps:
            break
        t = T_MIN + (1 - 2 * T_MIN) * torch.rand(batch, generator=g)
        x_0, z = torch.randn(batch, d, generator=g), torch.randn(batch, d, generator=g)
        losses = interpolant_losses(nets, it, x_0, gm.sample(batch, g), t, z, antithetic=True)
        opt.zero_grad()
        sum(losses.values()).backward()
        opt.step()
        sched.step()
    train_s = time.perf_counter() - t0

    def field(name):
        def f(t, x):
            return nets[name](it.clamp_time(t), x)
        return f

    target = gm.sample(n_samples, torch.Generator().manual_seed(seed + 2))
    other = gm.sample(n_samples, torch.Generator().manual_seed(seed + 3))
    bw = sm.median_bandwidth(target.double(), seed=seed)
    scores = {"floor (target vs target)": sm.two_sample_scores(other.double(), target.double(),
                                                               bw, seed=seed)}
    for eps in eps_list:
        cfg = SDEConfig(steps=sde_steps, method="heun", eps=eps)
        x0 = torch.randn(n_samples, d, generator=torch.Generator().manual_seed(seed + 5))
        x1 = sde_integrate(field("b"), field("s"), x0, 0.0, 1.0, cfg,
                           torch.Generator().manual_seed(seed + 6))
        name = f"eps={eps:g}" + (" (ODE limit)" if eps == 0 else "")
        scores[name] = sm.two_sample_scores(x1.double(), target.double(), bw, seed=seed)
    return {"d": d, "steps": steps, "width": width, "batch": batch, "train_seconds": train_s,
            "history": history, "sde_steps": sde_steps, "n_samples": n_samples,
            "bandwidth": bw,
            "samples": {k: {m: [e.value, e.se] for m, e in v.items()} for k, v in scores.items()}}


def report(results: list[dict]) -> str:
    lines = []
    for r in results:
        lines += [f"### d = {r['d']} ({r['steps']} steps, MLP 3 x {r['width']}, batch "
                  f"{r['batch']}, {r['train_seconds']:.0f} s)", "",
                  "| step | rel. L2 error of b | rel. L2 error of s |", "| --- | --- | --- |"]
        lines += [f"| {h['step']} | {h['rel_l2_b']:.3f} | {h['rel_l2_s']:.3f} |"
                  for h in r["history"]]
        lines += ["", f"Samples ({r['n_samples']} per sampler, Heun with {r['sde_steps']} "
                  f"steps) against target draws; RBF bandwidth {r['bandwidth']:.3g} "
                  "(median rule); value ± standard error:", "",
                  "| sampler | MMD^2 | energy distance | sliced W2 |", "| --- | --- | --- | --- |"]
        for k, v in r["samples"].items():
            cells = " | ".join(f"{v[m][0]:.4f} ± {v[m][1]:.4f}" for m in ("mmd2", "energy", "swd"))
            lines.append(f"| {k} | {cells} |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dims", default="4,100")
    ap.add_argument("--steps", type=int, default=4000)
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--eps", default="0,0.25,1,2")
    ap.add_argument("--n-samples", type=int, default=2000)
    ap.add_argument("--sde-steps", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    evals = sorted(s for s in {0, 100, 300, 1000, a.steps // 2, a.steps} if s <= a.steps)
    results = [run(int(d), a.steps, a.width, a.batch, evals,
                   [float(e) for e in a.eps.split(",")], a.n_samples, a.sde_steps, a.seed)
               for d in a.dims.split(",")]
    print(report(results))
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
