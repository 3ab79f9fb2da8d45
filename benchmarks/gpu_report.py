"""Fused (Triton) vs eager (reference) vs torch.compile(reference): time and peak memory per op, and a
DTI-Sprites training step, at upstream's shapes. Called by benchmarks/gpu_check.sh on a GPU box.

``--tiny`` runs the same code at toy sizes (CPU with TRITON_INTERPRET=1 works) to check the script.
Times are medians over ``--reps`` runs after a warm-up; memory is the peak allocated during one run.
"""
from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable

import torch

from dtifast import ops
from dtifast.ops import reference

SHAPES = {  # name: (L, K, B, H, W, h, w)
    "clevr6": (6, 7, 128, 128, 128, 40, 40),
    "tetro": (3, 19, 128, 35, 35, 24, 24),
}
TINY = {"tiny": (2, 3, 2, 12, 12, 6, 6)}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure(fn: Callable[[], object], device: torch.device, reps: int) -> tuple[float, float]:
    """Median milliseconds and peak MiB of ``fn``."""
    fn()
    _sync(device)
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(1e3 * (time.perf_counter() - start))
    peak = float("nan")
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        _sync(device)
        peak = (torch.cuda.max_memory_allocated() - base) / 2 ** 20
    return statistics.median(times), peak


def op_cases(shape: tuple, device: torch.device) -> dict[str, tuple[Callable, tuple, bool]]:
    """name → (function(*inputs, backend), inputs, differentiable)."""
    L, K, B, H, W, h, w = shape
    g = torch.Generator(device="cpu").manual_seed(0)
    r = lambda *s: torch.rand(*s, generator=g).to(device)  # noqa: E731
    n = L * K * B
    sprites_lkb = r(n, 5, h, w)
    proj = 0.05 * torch.randn(n, 9, generator=g).to(device)
    x = r(B, 3, H, W)
    sel_sprites = r(L, B, 5, h, w)
    pos = 0.3 * torch.randn(L, B, 3, generator=g).to(device)
    occ = r(L, L, B)
    bg = r(B, 3, H, W)
    noise_k = 0.4 * (2 * r(K, 1, H, W) - 1)
    noise_lb = 0.4 * (2 * r(L, B, 1, H, W) - 1)
    cand = r(L, K, B, 5, h, w)
    return {
        "warp_projective (L·K·B sprites)": (lambda a, p, backend: ops.warp_projective(a, p, (h, w), backend=backend),
                                            (sprites_lkb, proj), True),
        "warp_position (L·B → image)": (lambda a, p, backend: ops.warp_position(a, p, (H, W), backend=backend),
                                        (sel_sprites.flatten(0, 1), pos.flatten(0, 1)), True),
        "composite_layers": (lambda lay, m, o, b, backend: ops.composite_layers(lay, m, o, b, backend=backend),
                             (r(L, B, 3, H, W), r(L, B, 1, H, W), occ, bg), True),
        "greedy_select_sprites": (lambda *a, backend: ops.greedy_select_sprites(*a[:5], 1, None, a[5], backend=backend),
                                  (x, cand, pos, occ, bg, noise_k), False),
        "render_loss": (lambda *a, backend: ops.render_loss(*a, backend=backend),
                        (x, sel_sprites, pos, occ, bg, noise_lb), True),
    }


def run_op(fn, inputs, differentiable, backend, compiled, device, reps):
    call = (lambda *a: fn(*a, backend="torch")) if backend == "compile" else (lambda *a: fn(*a, backend=backend))
    if compiled:
        call = torch.compile(call, dynamic=False)
    args = [t.detach().requires_grad_(differentiable and t.is_floating_point() and i < 4) for i, t in enumerate(inputs)]

    def step():
        out = call(*args)
        if differentiable:
            out.float().sum().backward() if out.dim() else out.backward()
            for a in args:
                a.grad = None
        return out
    return measure(step, device, reps)


def op_table(shape_names, device, reps, with_compile) -> list[str]:
    rows = []
    shapes = {**SHAPES, **TINY}
    for name in shape_names:
        for op, (fn, inputs, diff) in op_cases(shapes[name], device).items():
            cells = []
            for provider in ("triton", "torch", "compile"):
                if provider == "compile" and not with_compile:
                    cells.append("      -      ")
                    continue
                try:
                    ms, mib = run_op(fn, inputs, diff, provider, provider == "compile", device, reps)
                    cells.append(f"{ms:8.2f} ms {mib:8.1f} MiB")
                except Exception as err:  # a provider that fails (e.g. OOM) is reported, not hidden
                    cells.append(f"failed: {type(err).__name__}: {str(err)[:40]}")
                if device.type == "cuda":
                    torch.cuda.empty_cache()
            rows.append(f"{name:7s} {op:34s} " + " | ".join(cells))
    return rows


def train_step_table(device, batch, reps, tiny) -> list[str]:
    from dtifast.config import load_config
    from dtifast.model import build_model
    rows = []
    for backend in ("triton", "torch"):
        cfg = load_config("clevr6", [f"model.backend={backend}"] + (["model.n_sprites=2", "model.n_objects=2"] if tiny else []))
        size = (32, 32) if tiny else (128, 128)
        torch.manual_seed(0)
        model = build_model(cfg, size, 3, init_images=torch.rand(8, 3, *size)).to(device)
        model.set_epoch(100)   # sprites unfrozen, every curriculum module on
        opt = torch.optim.Adam(model.parameters(), lr=1e-4)
        x = torch.rand(batch, 3, *size, device=device)

        def step():
            out = model(x)
            opt.zero_grad(set_to_none=True)
            out.loss.backward()
            opt.step()
        try:
            ms, mib = measure(step, device, reps)
            rows.append(f"clevr6 train step B={batch:<4d} {backend:7s} {ms:9.1f} ms {mib:9.1f} MiB peak")
        except Exception as err:
            rows.append(f"clevr6 train step B={batch:<4d} {backend:7s} failed: {type(err).__name__}: {str(err)[:80]}")
        del model, opt
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="toy sizes, to check the script on CPU")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--no-compile", action="store_true")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    print(f"device: {torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'}; torch {torch.__version__}")
    print(f"{'shape':7s} {'op (fwd+bwd where differentiable)':34s} {'fused (triton)':22s} | {'eager (torch)':22s} | "
          "torch.compile(eager)")
    names = ["tiny"] if args.tiny else ["tetro", "clevr6"]
    for line in op_table(names, device, args.reps, not args.no_compile):
        print(line, flush=True)
    for line in train_step_table(device, 2 if args.tiny else args.batch, args.reps, args.tiny):
        print(line, flush=True)


if __name__ == "__main__":
    main()
