"""Can a new permuted-MNIST task reuse task 1's first-layer features? (CLNP, Fig. 3.)

The paper reports that after task 1 the first hidden layer barely grows (15 → 18 % of its
units over 10 tasks) while every task reaches about 98.4 %: later tasks would reuse task 1's
first-layer features. This benchmark trains two tasks of ``configs/clnp_pmnist.yaml`` once per
variant (by default the first two), side by side:

- ``clnp``: Algorithm 1 as is (task 2 may grow new first-layer units);
- ``clnp, no new dense-1 units``: task 2's free first-layer units are set to zero (weights
  and bias) and stay silent, so task 2 can only read task 1's frozen first-layer units (its
  second layer is free to grow);
- ``clnp, Adam state kept`` (``--variants keep-adam``): Algorithm 1 with one Adam optimiser
  for the whole stream instead of a fresh one per task, as a TensorFlow-1 script that builds
  its train op once would have it. A re-initialised free weight then starts task 2 with the
  second moment its unit left at the end of task 1 (about zero for a unit that stopped
  firing), so its first steps are several times the rate; this tests whether that kills most
  new first-layer units and so explains the paper's small first layer;
- ``clnp, free weights not re-initialised`` (``--variants no-reinit``): Algorithm 1 without
  its "re-initialize W_free" line, so task 2 starts its free weights where task 1 left them
  (a unit that task 1 left silent, its weights shrunk by the L1 term, may never fire again).

If the second reaches the first's accuracy, task 1's first-layer features suffice and the
paper's small first layer is a matter of pruning; if not, reaching ~98 % on a new
permutation needs new first-layer units. The last two ask whether an implementation detail
the paper leaves open makes its later tasks grow fewer first-layer units.

    python benchmarks/clnp_reuse.py --data-dir ../shared/data            # 10 epochs per task
    python benchmarks/clnp_reuse.py --quick --data-dir ../shared/data    # 150 steps per task
    python benchmarks/clnp_reuse.py --epochs 20 --variants keep-adam,no-reinit \
        --data-dir ../shared/data
    python benchmarks/clnp_reuse.py --config configs/clnp_pmnist_ft.yaml --epochs 20 \
        --variants no-new-dense1 --data-dir ../shared/data    # the CLNP + FT recipe
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from superpose import training
from superpose.config import load_yaml, resolve
from superpose.methods import METHODS
from superpose.methods.clnp import Clnp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reproduce_clnp import steps_for  # noqa: E402  (a sibling script)

CONFIG = Path(__file__).resolve().parent.parent / "configs" / "clnp_pmnist.yaml"
NO_GROWTH = "clnp-no-new-dense1"
KEEP_ADAM = "clnp-keep-adam"
NO_REINIT = "clnp-no-reinit"
VARIANTS = {"clnp": ("clnp", "clnp"),
            "no-new-dense1": ("clnp, no new dense-1 units", NO_GROWTH),
            "keep-adam": ("clnp, Adam state kept", KEEP_ADAM),
            "no-reinit": ("clnp, free weights not re-initialised", NO_REINIT)}


@METHODS.register(NO_GROWTH)
class ClnpNoNewFirstLayerUnits(Clnp):
    """CLNP whose tasks after the first may not grow first-layer units: the free units'
    incoming weights and bias are zero, so they never fire and never receive a gradient."""

    name = NO_GROWTH

    def begin_task(self, task: int) -> None:
        super().begin_task(task)
        if task == 0:
            return
        with torch.no_grad():
            m = self.net.weight_layer(0)
            free = ~self.used[0]  # (U_0,)
            m.weight[free] = 0.0
            if m.bias is not None:
                m.bias[free] = 0.0


@METHODS.register(KEEP_ADAM)
class ClnpKeepAdam(Clnp):
    """CLNP with one optimiser for the whole stream: the moments of every free weight carry
    over from one task to the next (frozen entries are still masked and restored)."""

    name = KEEP_ADAM

    def begin_task(self, task: int) -> None:
        kept = getattr(self, "optimizer", None) if task > 0 else None
        super().begin_task(task)
        if kept is not None:
            params = {id(p) for g in kept.param_groups for p in g["params"]}
            if params != {id(p) for p in self.trainable_parameters()}:
                raise RuntimeError("the network's parameters changed; cannot keep the optimiser")
            self.optimizer = kept


@METHODS.register(NO_REINIT)
class ClnpNoReinit(Clnp):
    """CLNP whose free weights keep their values from the previous task instead of being
    re-initialised (task 0 starts from the network's initialisation as usual)."""

    name = NO_REINIT

    def _reinit_free(self, task: int) -> None:
        if task == 0 or self.multi:  # a multi-head run still needs its new head initialised
            super()._reinit_free(task)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(CONFIG),
                    help="the CLNP protocol (default: the paper's, configs/clnp_pmnist.yaml; "
                         "configs/clnp_pmnist_ft.yaml for CLNP + fine-tuning)")
    ap.add_argument("--epochs", type=float, default=10.0, help="epochs per task")
    ap.add_argument("--quick", action="store_true", help="150 steps per task")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--out", default="runs/clnp-reuse")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--variants", default="clnp,no-new-dense1",
                    help=f"comma-separated, from {', '.join(VARIANTS)}")
    args = ap.parse_args(argv)
    chosen = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in chosen if v not in VARIANTS]
    if unknown or not chosen:
        ap.error(f"unknown variant(s) {unknown}; choose from {', '.join(VARIANTS)}")
    steps = 150 if args.quick else steps_for(args.epochs)
    over = {"tasks": 2, "steps_per_task": steps, "eval_every": steps, "seed": args.seed,
            "threads": args.threads}
    if args.data_dir:
        over["data_dir"] = args.data_dir
    print(f"# CLNP first-layer reuse: 2 permuted-MNIST tasks x {steps} steps "
          f"({'quick' if args.quick else f'{args.epochs:g} epochs'}), seed {args.seed}, "
          f"{Path(args.config).name}\n", flush=True)
    rows = []
    for label, method in (VARIANTS[v] for v in chosen):
        cfg = resolve(load_yaml(args.config), {**over, "method": method})
        t0 = time.time()
        s = training.run(cfg, Path(args.out) / method, progress=False, log=lambda m: None)
        cap = s["capacity"]
        used = cap["used_units"]  # per layer, per task
        rows.append([label, *(f"{100 * a:.2f}" for a in s["final_accuracy"]),
                     " / ".join(str(u) for u in used[0]), " / ".join(str(u) for u in used[1]),
                     " / ".join(f"{100 * v:.2f}" for v in cap["val_accuracy_unpruned"]),
                     f"{time.time() - t0:.0f}"])
        print(f"- {label}: done ({rows[-1][-1]} s)", flush=True)
    header = ["variant", "task 1 test %", "task 2 test %", "dense 1 used after task 1 / 2",
              "dense 2 used after task 1 / 2", "val % before pruning, task 1 / 2", "wall s"]
    print()
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for r in rows:
        print("| " + " | ".join(r) + " |")
    (Path(args.out) / "table.json").write_text(json.dumps({"header": header, "rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
