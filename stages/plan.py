"""The job's plan before the run: every DVC stage's work (images, training passes and forwards, FLOPs, bytes
written) for params.yaml, and its estimated wall time on named GPU classes. On a CUDA machine a short probe of the
present GPU replaces its class's assumption (`--no-probe` to skip). Not a DVC stage: it runs nothing but the FLOP
counting (seconds on the CPU, no weights needed).

  python -m stages.plan                                  # the table: T4, L4, A10G, A100, H100
  python -m stages.plan --json --classes all             # one JSON object: stages, total
  python -m stages.plan -S train.image_size=160 --classes T4,P100
  python -m stages.plan --demo-data cifar-10.zip --classes CPU   # `make demo DATA=...`'s settings on all the data
"""

import argparse
from pathlib import Path

from pipeline import cli, plan, probe, throughput

REPO = Path(__file__).resolve().parents[1]  # where the Makefile is


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("-S", "--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a setting, as `dvc exp run -S` does (key=value, ~key); repeatable")  # fmt: skip
    parser.add_argument("--demo-data", metavar="ZIP", help="plan `make demo DATA=ZIP`'s settings (then -S)")
    parser.add_argument("--profile", choices=["kaggle-t4"], help="plan the documented Kaggle T4 profile (then -S)")
    known = ",".join(throughput.ALL_CLASSES)
    parser.add_argument("--classes", help=f"device classes, comma-separated, or all; known: {known} (default"
                        f" {','.join(throughput.DEFAULT_CLASSES)}; all with --json)")  # fmt: skip
    parser.add_argument("--probe", action=argparse.BooleanOptionalAction, default=None,
                        help="time the present device (default: on CUDA, not for --markdown)")  # fmt: skip
    output = parser.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="one JSON object: stages, total")
    output.add_argument("--markdown", action="store_true", help="the README's table")
    output.add_argument("--assumptions", action="store_true", help="the throughput table and fixed costs, markdown")
    output.add_argument("--variants", action="store_true", help="totals of the README's variants of --params")
    args = parser.parse_args(argv)

    if args.assumptions:
        print(throughput.format_assumptions())
        return
    if args.variants:
        print(plan.format_variants(args.params, throughput.select_classes(args.classes or "T4,A100,H100")))
        return
    overrides = plan.make_demo_settings(REPO, args.demo_data) if args.demo_data else []
    overrides += plan.KAGGLE_T4_PROFILE if args.profile == "kaggle-t4" else []
    overrides += args.set
    cfg = plan.load_planned_config(args.params, overrides)
    classes = throughput.select_classes(
        args.classes, tuple(throughput.ALL_CLASSES) if args.json else throughput.DEFAULT_CLASSES
    )
    if probe.probe_wanted(args.probe, args.markdown):
        from pipeline.batches import pick_device

        classes = probe.with_measured(classes, probe.measured_class(cfg, pick_device()))
    source = " ".join([str(args.params), *(f"-S {o}" for o in overrides)])
    result = plan.make_plan(cfg, classes, source)
    print(result.to_json() if args.json else result.format_markdown() if args.markdown else result.format_table())


if __name__ == "__main__":
    cli.run(main)
