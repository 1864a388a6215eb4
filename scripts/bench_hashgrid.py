"""Benchmark the multi-bone hash grid (torch twin, fused C kernels): ms/iteration of forward + backward, Adam.

Variants (all compute the same function, tests/test_hashgrid.py checks it):
  naive          plain autograd through gathers (``hashgrid_naive``)
  custom         custom autograd Function, corners saved for backward (the default)
  custom-recomp  custom Function, corners recomputed in backward (less memory held)
  custom+x       custom, also d/dx (pose refinement)
  custom-inplace custom with ``inplace_grad``: adds into an existing ``.grad`` (zeroed each step)
  custom-inplace-recomp  the same, corners recomputed in backward
  cpu, cpu+x, cpu-inplace  the same through the fused C kernels (``hashgrid_cpu``), when they build
Then one ``torch.optim.Adam`` step on the full ``[n_bones, n_params]`` table for each implementation.

    python scripts/bench_hashgrid.py --n-points 65536 --out bench_hashgrid.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from fast_anerf.config import load_preset
from fast_anerf.encoding.hashgrid import HashGridConfig, hashgrid_naive, hashgrid_torch
from fast_anerf.encoding.hashgrid_cpu import cpu_kernels_available, hashgrid_cpu
from fast_anerf.run_setup import device_model


def device_name(device: torch.device) -> str:
    return f"{device_model(device)} ({torch.get_num_threads()} threads)"


def timeit(fn, iters: int, device: torch.device) -> float:
    """Best-of-`iters` ms per call after one warm-up call."""
    fn()
    times = []
    for _ in range(iters):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) * 1e3)
    return min(times)  # min: other processes share these cores; noise only adds time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-points", type=int, default=65536)
    ap.add_argument("--n-bones", type=int, default=24)
    ap.add_argument("--log2-hashmap-size", type=int, default=19)
    ap.add_argument(
        "--preset",
        choices=["default", "demo"],
        default="default",
        help="default: L16 F2 base 16 x2 (tcnn's); demo: configs/demo.toml's grid (L8 T14 base 4 x1.49999)",
    )
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip-naive", action="store_true", help="the naive variant needs ~3x more memory")
    ap.add_argument("--skip-adam", action="store_true", help="Adam needs 4 table copies (5.5 GB at 24 x 2^19)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)

    if args.preset == "demo":
        cfg = load_preset("demo").fast.hashgrid
    else:
        cfg = HashGridConfig(log2_hashmap_size=args.log2_hashmap_size)
    params = torch.nn.Parameter(torch.empty(args.n_bones, cfg.n_params, device=device).uniform_(-1e-4, 1e-4))
    x = torch.rand(args.n_points, 3, device=device)
    bone_ids = torch.randint(0, args.n_bones, (args.n_points,), device=device)
    x_req = x.clone().requires_grad_(True)
    grad_out = torch.randn(args.n_points, cfg.n_output_dims, device=device)

    def step(fn, xin):
        params.grad = None
        fn(xin).backward(grad_out)

    variants = {
        "naive": lambda: step(lambda xi: hashgrid_naive(xi, bone_ids, params, cfg), x),
        "custom": lambda: step(lambda xi: hashgrid_torch(xi, bone_ids, params, cfg), x),
        "custom-recomp": lambda: step(lambda xi: hashgrid_torch(xi, bone_ids, params, cfg, save_corners=False), x),
        "custom+x": lambda: step(lambda xi: hashgrid_torch(xi, bone_ids, params, cfg), x_req),
    }
    kernels = device.type == "cpu" and cpu_kernels_available()
    if kernels:
        variants["cpu"] = lambda: step(lambda xi: hashgrid_cpu(xi, bone_ids, params, cfg), x)
        variants["cpu+x"] = lambda: step(lambda xi: hashgrid_cpu(xi, bone_ids, params, cfg), x_req)
    if args.skip_naive:
        del variants["naive"]
    results: dict = {
        "device": device_name(device),
        "torch": torch.__version__,
        "n_points": args.n_points,
        "n_bones": args.n_bones,
        "config": cfg.tcnn_config(),
        "n_params_per_bone": cfg.n_params,
        "ms": {},
    }
    with torch.no_grad():
        results["ms"]["custom forward only"] = timeit(
            lambda: hashgrid_torch(x, bone_ids, params, cfg), args.iters, device
        )
        if kernels:
            forward_cpu = lambda: hashgrid_cpu(x, bone_ids, params, cfg)  # noqa: E731
            results["ms"]["cpu forward only"] = timeit(forward_cpu, args.iters, device)
    for name, fn in variants.items():
        results["ms"][name] = timeit(fn, args.iters, device)

    def inplace_step(save_corners: bool):
        params.grad.zero_()  # what optimizer.zero_grad(set_to_none=False) does
        y = hashgrid_torch(x, bone_ids, params, cfg, save_corners=save_corners, inplace_grad=True)
        y.backward(grad_out)

    params.grad = torch.zeros_like(params)
    results["ms"]["custom-inplace (incl. zero_)"] = timeit(lambda: inplace_step(True), args.iters, device)
    results["ms"]["custom-inplace-recomp"] = timeit(lambda: inplace_step(False), args.iters, device)
    if kernels:

        def cpu_inplace_step():
            params.grad.zero_()
            hashgrid_cpu(x, bone_ids, params, cfg, inplace_grad=True).backward(grad_out)

        results["ms"]["cpu-inplace (incl. zero_)"] = timeit(cpu_inplace_step, args.iters, device)

    if not args.skip_adam:
        params.grad = torch.randn_like(params) * 1e-3
        for label, kw in [
            ("adam default", {}),
            ("adam foreach", {"foreach": True}),
            ("adam fused", {"fused": True}),
        ]:
            opt = torch.optim.Adam([params], lr=1e-2, eps=1e-15, **kw)
            results["ms"][label] = timeit(opt.step, max(2, args.iters // 2), device)
            del opt  # frees its two state copies before the next one
        results["ms"]["alloc dense grad"] = timeit(lambda: torch.zeros_like(params).fill_(0), 3, device)

    print(f"device: {results['device']}, torch {results['torch']}")
    c = cfg
    print(
        f"{args.n_points} points, {args.n_bones} bones x {c.n_params:,} params "
        f"(L{c.n_levels} F{c.n_features_per_level} T{c.log2_hashmap_size} base {c.base_resolution})"
    )
    print(f"{'variant':<32}{'ms/iter':>10}")
    for name, ms in results["ms"].items():
        print(f"{name:<32}{ms:>10.1f}")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.out.with_suffix(args.out.suffix + ".tmp")
        tmp.write_text(json.dumps(results, indent=2))
        tmp.replace(args.out)


if __name__ == "__main__":
    main()
