"""Write submission.csv (id,label) in sampleSubmission.csv's order, checked against it before it lands, and its
record beside it (the ensemble output it was made from, its digest, the data source)."""

import argparse
from pathlib import Path

from pipeline import cli, scores, submission
from pipeline.provenance import Record, expect


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--probs", type=Path, required=True, help=".npz of test ids and ensemble probabilities")
    parser.add_argument("--sample-submission", type=Path, required=True, help="in the download stage's folder")
    parser.add_argument("--out", type=Path, required=True, help="submission.csv; its record beside it")
    args = parser.parse_args(argv)

    probs = expect(args.probs, "ensemble")
    raw = expect(args.sample_submission.parent, "download")
    test_ids, test_probs = scores.load_scores(args.probs)
    facts = {**probs.record.facts, "data_source": raw.record.settings["data.source"]}
    record = Record("submission", inputs={"probs": probs.digest, "raw": raw.digest}, facts=facts)
    submission.write_submission(args.out, test_ids, test_probs, args.sample_submission, record)


if __name__ == "__main__":
    cli.run(main)
