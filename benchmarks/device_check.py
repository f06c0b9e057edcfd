"""Check that every method trains on a device (a GPU) as it does on the CPU.

Each method trains a few tasks of permuted 8x8 digits (offline data) twice with the same seed,
once on the CPU and once on --device, and the table gives both average accuracies, their
difference and the wall time. Two devices run different kernels (and TF32 on recent GPUs), so
the runs agree within a tolerance, not bit for bit; CLNP's guarantee is checked bit for bit on
each device (every earlier task's logit digest is the same after every later task). Exit status
1 if a run fails, leaves the tolerance or breaks CLNP's guarantee.

    python benchmarks/device_check.py --device cuda
    python benchmarks/device_check.py --device cuda --methods psp-complex,clnp --steps 300
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reproduce_clnp import digests_unchanged as clnp_exact  # noqa: E402  (a sibling script)

#: name in the table -> overrides of the base run (every method, and learned contexts).
CHECKS: dict[str, dict[str, Any]] = {
    **{m: {"method": m} for m in ("standard", "multihead", "single-task", "joint", "ewc", "si",
                                  "psp-binary", "psp-complex", "psp-onepower", "psp-rotation")},
    "psp-complex-learned": {"method": "psp-complex", "learn_context": True},
    "clnp": {"method": "clnp", "validation": 0.1},
}
BASE: dict[str, Any] = dict(benchmark="permuted-digits", tasks=3, batch_size=64, width=64,
                            depth=2, optimizer="adam", lr=1e-3, eval_every=50, threads=1, seed=0)


def train(over: dict[str, Any], device: str, steps: int, folder: Path) -> dict[str, Any]:
    """One run; its summary with the wall time."""
    from superpose import training
    from superpose.config import resolve

    cfg = resolve(BASE, {"steps_per_task": steps, "device": device, **over})
    t0 = time.perf_counter()
    summary = training.run(cfg, folder, progress=False, log=lambda m: None)
    return {**summary, "seconds": time.perf_counter() - t0}


def check(names: list[str], device: str, steps: int, tolerance: float,
          reference: str = "cpu") -> tuple[list[str], bool]:
    """The table's rows and whether every check passed."""
    rows = [f"| check | {reference} avg % | {device} avg % | difference | {reference} s | "
            f"{device} s | status |", "|---|---|---|---|---|---|---|"]
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            over = CHECKS[name]
            try:
                ref, dev = (train(over, d, steps, Path(tmp) / f"{i}-{name}")
                            for i, d in enumerate((reference, device)))
            except Exception as e:  # noqa: BLE001 - report every failing method, then exit 1
                traceback.print_exc()
                rows.append(f"| {name} | – | – | – | – | – | FAILED: {type(e).__name__} |")
                ok = False
                continue
            diff = 100 * (dev["average_accuracy"] - ref["average_accuracy"])
            status = "ok" if abs(diff) <= tolerance else f"off by more than {tolerance:g}"
            if over["method"] == "clnp" and not (clnp_exact(ref) and clnp_exact(dev)):
                status = "CLNP digests changed"
            ok &= status == "ok"
            rows.append(f"| {name} | {100 * ref['average_accuracy']:.2f} | "
                        f"{100 * dev['average_accuracy']:.2f} | {diff:+.2f} | "
                        f"{ref['seconds']:.1f} | {dev['seconds']:.1f} | {status} |")
    return rows, ok


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda", help="the device to check (cuda, cuda:1, ...)")
    ap.add_argument("--reference", default="cpu", help="the device to compare with")
    ap.add_argument("--methods", default=",".join(CHECKS),
                    help=f"comma list of checks (default: all: {', '.join(CHECKS)})")
    ap.add_argument("--steps", type=int, default=150, help="training steps per task (3 tasks)")
    ap.add_argument("--tolerance", type=float, default=3.0,
                    help="largest accepted difference of the average accuracies, in points")
    args = ap.parse_args()
    names = [n.strip() for n in args.methods.split(",") if n.strip()]
    unknown = [n for n in names if n not in CHECKS]
    if unknown:
        raise SystemExit(f"unknown check(s) {', '.join(unknown)}; choose from "
                         f"{', '.join(CHECKS)}")
    rows, ok = check(names, args.device, args.steps, args.tolerance, args.reference)
    print("\n".join(rows))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
