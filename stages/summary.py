"""What a run did, in a few lines (a command, not a DVC stage; `make demo` ends with it): the host, wall time and
peak memory per stage, OOF accuracy per backbone and of the ensemble (with its nested-CV estimate), where
submission.csv is."""

import argparse
import json
import time
from collections import defaultdict
from pathlib import Path

from pipeline import cli
from pipeline.errors import PipelineError
from pipeline.host import describe_host


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--timings", type=Path, required=True, help="the PIPELINE_TIMINGS file of the run")
    parser.add_argument("--metrics", type=Path, default=Path("artifacts/metrics/ensemble.json"))
    parser.add_argument("--submission", type=Path, default=Path("artifacts/submission.csv"))
    parser.add_argument("--since", type=float, help="when the run started (seconds since 1970): prints the total")
    args = parser.parse_args(argv)
    print("\n".join(summary_lines(args.timings, args.metrics, args.submission, args.since)))


def summary_lines(timings: Path, metrics_path: Path, submission: Path, since: float | None) -> list[str]:
    try:
        rows = [json.loads(line) for line in timings.read_text().splitlines()]
        metrics = json.loads(metrics_path.read_text())
        backbones, method = metrics["backbones"], metrics["submitted"]
        chosen = {"method": method, **metrics["methods"][method]}
    except (OSError, ValueError, KeyError) as exc:
        raise PipelineError(f"cannot summarise the run ({exc}); did it finish? Re-run `make demo`.") from exc
    per_stage: dict[str, list[dict]] = defaultdict(list)
    for row in rows:  # a backbone's folds add up: "train lite0 fold 1" -> "train lite0 (3 folds)"
        per_stage[row["stage"].split(" fold ")[0]].append(row)
    lines = [
        "",
        "── summary " + "─" * 60,
        describe_host(),
        "wall time per stage (its own work; DVC adds a few s each) and its peak resident memory:",
    ]
    for stage, runs in per_stage.items():
        label = f"{stage} ({len(runs)} folds)" if stage.startswith("train ") else stage
        peak_gb = max(run.get("peak_rss_mb", 0) for run in runs) / 1024
        lines.append(f"  {label:<34} {sum(run['seconds'] for run in runs):7.0f} s {peak_gb:6.1f} GB")
    if since is not None:
        lines.append(f"  {'total, DVC and install included':<34} {time.time() - since:7.0f} s")
    lines.append("OOF accuracy (held-out folds):")
    for name, m in backbones.items():
        lines.append(f"  {name:<34} {m['accuracy']:.4f}")
    lines.append(
        f"  {'ensemble (' + chosen['method'] + ')':<34} {chosen['accuracy']:.4f}"
        f"   nested-CV estimate {chosen['nested_cv_accuracy']:.4f}"
    )
    n_rows = sum(1 for _ in submission.open()) - 1 if submission.exists() else 0
    lines.append(f"submission: {submission} ({n_rows} rows); send it with `python -m stages.submit`")
    return lines


if __name__ == "__main__":
    cli.run(main)
