"""Would a preconditioner cut the curvature products of an implicit solve on the benchmark CNN?

Usage: python benchmarks/preconditioning.py --out DIR [--batch B] [--steps N] [--dampings 0.01,0.1,1,30]

At the iterate reached after ``--steps`` training steps of the program of ``hypergrad_cost.py`` (float64),
the linear system of the ``cg`` hop, ``(G + δI) x = ∂f/∂θ`` with ``G`` the Gauss-Newton matrix of the lower
loss, is solved by preconditioned CG with ``M`` =

* ``none``;
* ``Adam diagonal`` — the lower Adam's second moments ``v̂`` (what a preconditioner refreshed for free
  every step could use), rescaled to the mean of ``diag(G)``, plus δ;
* ``exact diagonal`` — ``diag(G)`` itself (from the explicit Jacobian of the logits: ``batch × classes``
  backward passes), plus δ: the best any diagonal estimate (Hutchinson, Adam) could do;
* ``deflation k`` — the exact top-``k`` eigenpairs of ``G`` removed (``M⁻¹ = I/δ + Σ (1/(λ_i+δ) − 1/δ) u_i u_iᵀ``):
  what a low-rank preconditioner from eigenvectors could do at best;

and the products each needs to reach relative residual 1e-2 are printed (``-``: not within 40).
Writes DIR/preconditioning.json.
"""

from __future__ import annotations

import argparse
import json
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from hypergrad_cost import build  # the benchmark CNN (this folder is on sys.path)

from engines import Runner
from engines.hypergrad.curvature import curvature_model

Flat = torch.Tensor


def pcg(
    matvec: Callable[[Flat], Flat], b: Flat, minv: Callable[[Flat], Flat], damping: float, maxiter: int
) -> list[float]:
    """Relative residuals of preconditioned CG on ``(A + δI) x = b`` after each product."""
    x, r = torch.zeros_like(b), b.clone()
    z = minv(r)
    p, rz, history = z.clone(), r @ z, []
    for _ in range(maxiter):
        ap = matvec(p) + damping * p
        alpha = rz / (p @ ap)
        x, r = x + alpha * p, r - alpha * ap
        history.append(float(r.norm() / b.norm()))
        z = minv(r)
        rz_new = r @ z
        p, rz = z + (rz_new / rz) * p, rz_new
    return history


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for preconditioning.json")
    parser.add_argument("--batch", type=int, default=32, help="images per batch")
    parser.add_argument("--steps", type=int, default=5, help="training steps before the solve")
    parser.add_argument("--dampings", default="0.01,0.1,1,30", help="comma-separated δ")
    parser.add_argument("--maxiter", type=int, default=40, help="products per solve")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    graph = build("cg", 1, {"maxiter": 5}, args.batch)
    runner = Runner(graph, 10**6, device="cpu", progress=False, precision="fp64")
    for _ in range(args.steps):
        runner.step()
    net, upper = graph["net"], graph["weights"]
    params = net.trainable_parameters()
    sizes = [p.numel() for p in params]

    def unflat(v: Flat) -> list[torch.Tensor]:
        return [c.view_as(p) for c, p in zip(torch.split(v, sizes), params)]

    def flat(ts: list[torch.Tensor]) -> Flat:
        return torch.cat([t.detach().flatten() for t in ts])

    b = flat(torch.autograd.grad(upper.training_step_exec(None), params))
    model = curvature_model(net, "gauss_newton")

    def matvec(v: Flat) -> Flat:
        return flat(model.product(unflat(v)))

    # the explicit Gauss-Newton matrix through the logits (rank <= batch x classes): G = A Aᵀ
    with net.capturing_outputs() as outputs, net.recomputation():
        loss = net.training_step(net.cur_batch)
    z = outputs[0]
    (grad_z,) = torch.autograd.grad(loss, z, create_graph=True)
    rows = z.numel()
    eye = torch.eye(rows, dtype=z.dtype).view(rows, *z.shape)
    jac = torch.cat(
        [j.reshape(rows, -1) for j in torch.autograd.grad(z, params, eye, is_grads_batched=True, retain_graph=True)], 1
    )
    hz = torch.stack([torch.autograd.grad(grad_z, z, e, retain_graph=True)[0].flatten() for e in eye])
    evals, evecs = torch.linalg.eigh((hz + hz.T) / 2)
    factor = jac.T @ (evecs * evals.clamp_min(0).sqrt())  # P x rows, G = factor factorᵀ
    lam, w = torch.linalg.eigh(factor.T @ factor)
    order = lam.argsort(descending=True)
    lam, w = lam[order], w[:, order]
    eigvecs = factor @ w / lam.clamp_min(1e-300).sqrt()
    diag = (factor * factor).sum(1)
    state = net.optimizer.state
    bias = 1 - net.optimizer.param_groups[0]["betas"][1] ** float(state[params[0]]["step"])
    adam = flat([state[p]["exp_avg_sq"] / bias for p in params])
    adam = adam * (diag.mean() / adam.mean())

    results = []
    print(
        f"G: {b.numel()} parameters, rank {int((lam > 1e-10 * lam[0]).sum())}, largest eigenvalue {float(lam[0]):.3g}"
    )
    print(
        f"{'damping':>8} "
        + " ".join(
            f"{n:>14}"
            for n in ("none", "Adam diagonal", "exact diagonal", "deflation 10", "deflation 30", "deflation 100")
        )
    )
    for damping in [float(d) for d in args.dampings.split(",")]:

        def deflation(k: int, damping: float = damping) -> Callable[[Flat], Flat]:
            u, lk = eigvecs[:, :k], lam[:k]
            return lambda r: r / damping + u @ ((u.T @ r) * (1 / (lk + damping) - 1 / damping))

        preconditioners = {
            "none": lambda r: r,
            "Adam diagonal": lambda r, d=damping: r / (adam + d),
            "exact diagonal": lambda r, d=damping: r / (diag + d),
            "deflation 10": deflation(10),
            "deflation 30": deflation(30),
            "deflation 100": deflation(100),
        }
        row = {"damping": damping}
        for name, minv in preconditioners.items():
            history = pcg(matvec, b, minv, damping, args.maxiter)
            reached = next((i + 1 for i, h in enumerate(history) if h <= 1e-2), None)
            row[name] = {"products_to_1e-2": reached, "residuals": history}
        results.append(row)
        cells = " ".join(f"{row[n]['products_to_1e-2'] or '-':>14}" for n in preconditioners)
        print(f"{damping:>8g} {cells}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "preconditioning.json").write_text(json.dumps(results, indent=1))
    print(f"wrote {args.out / 'preconditioning.json'}")


if __name__ == "__main__":
    main()
