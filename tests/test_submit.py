"""`python -m stages.submit`: only the submission the current ensemble output made, sent once, scores kept."""

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from kagglesdk.competitions.types.competition_api_service import ApiSubmission
from kagglesdk.competitions.types.submission_status import SubmissionStatus

from pipeline import cli, leaderboard
from pipeline.config import load_config
from pipeline.provenance import file_digest, record_of
from pipeline.scores import save_scores
from pipeline.submission import digest_tag
from stages import submit
from tests.artifacts import SUMMARY, finished_run
from tests.test_download import http_error, install_fake_kaggle, use_fake_credentials

MESSAGE = "fitted softmax ensemble of a, b; nested-CV accuracy 0.9123"


def scored(description: str, public="0.9512", private="0.9488", status=SubmissionStatus.COMPLETE) -> ApiSubmission:
    submission = ApiSubmission()
    submission.description, submission.public_score, submission.private_score = description, public, private
    submission.status, submission.ref = status, 7
    return submission


def what_was_submitted(calls) -> list[ApiSubmission]:
    """Kaggle's listing: every submission created so far, scored."""
    return [scored(call[2]) for call in calls if isinstance(call, tuple) and call[0] == "submit"]


@pytest.fixture
def run(tmp_path, monkeypatch):
    use_fake_credentials(monkeypatch, tmp_path / "home")
    return finished_run(tmp_path)


def fails(capsys, argv) -> str:
    with pytest.raises(SystemExit) as excinfo:
        cli.run(submit.main, argv)
    err = capsys.readouterr().err
    assert excinfo.value.code == 1 and err.count("\n") == 1 and err.startswith("error: "), err
    return err


def test_a_dry_run_checks_the_file_and_its_record_and_sends_nothing(run, monkeypatch, capsys):
    calls = install_fake_kaggle(monkeypatch)
    submit.main([*run, "--dry-run"])
    out = capsys.readouterr().out
    digest = file_digest(Path(run[1]))
    assert f"2 rows match {run[3]}, made from {run[5]}; message: '{MESSAGE} {digest_tag(digest)}'" in out
    assert "dry run: nothing uploaded" in out and calls == []


def test_a_submission_is_sent_once_with_its_digest_and_its_scores_land_beside_the_cv_score(run, monkeypatch, capsys):
    calls = install_fake_kaggle(monkeypatch, submissions=what_was_submitted)
    submit.main(run)
    tag = digest_tag(file_digest(Path(run[1])))
    assert [c[:3] for c in calls if isinstance(c, tuple)] == [
        ("submissions", "cifar-10"), ("submit", "submission.csv", f"{MESSAGE} {tag}"), ("submissions", "cifar-10"),
    ]  # fmt: skip
    scores = json.loads(Path(run[-1]).read_text())
    assert scores == {"cv_accuracy": 0.91234, "public_score": 0.9512, "private_score": 0.9488, "status": "COMPLETE",
                      "submitted": None, "csv": tag}  # fmt: skip
    out = capsys.readouterr().out
    assert "Kaggle says: Successfully submitted" in out and "COMPLETE: public 0.9512, private 0.9488" in out

    # the same file again: refused, nothing spent; --again sends it; --scores fetches them without sending
    assert "went to Kaggle already" in fails(capsys, run)
    assert sum(1 for c in calls if isinstance(c, tuple) and c[0] == "submit") == 1
    submit.main([*run, "--again"])
    assert sum(1 for c in calls if isinstance(c, tuple) and c[0] == "submit") == 2
    Path(run[-1]).unlink()
    submit.main([*run, "--scores"])
    assert sum(1 for c in calls if isinstance(c, tuple) and c[0] == "submit") == 2
    assert json.loads(Path(run[-1]).read_text())["public_score"] == 0.9512


def test_submit_waits_while_kaggle_scores_the_new_submission(run, monkeypatch, capsys):
    listed = []

    def pending_twice(calls):
        sent = [c[2] for c in calls if isinstance(c, tuple) and c[0] == "submit"]
        listed.append(sent)
        if not sent:
            return []
        pending = len(listed) <= 3
        return [scored(sent[0], public=None if pending else "0.95",
                       status=SubmissionStatus.PENDING if pending else SubmissionStatus.COMPLETE)]  # fmt: skip

    install_fake_kaggle(monkeypatch, submissions=pending_twice)
    waits = []
    monkeypatch.setattr(leaderboard, "_sleep", waits.append)
    submit.main(run)
    assert waits == [5, 5] and json.loads(Path(run[-1]).read_text())["public_score"] == 0.95


def test_a_listing_that_fails_after_the_upload_is_a_warning_not_a_failure(run, monkeypatch, capsys, caplog):
    def listing(calls):
        if any(isinstance(c, tuple) and c[0] == "submit" for c in calls):
            raise http_error(503)
        return []

    calls = install_fake_kaggle(monkeypatch, submissions=listing)
    submit.main(run)  # exit 0: Kaggle has the file
    assert "submitted" in capsys.readouterr().out
    assert "fetch the scores later with `python -m stages.submit --scores`" in caplog.text
    assert sum(1 for c in calls if isinstance(c, tuple) and c[0] == "submit") == 1 and not Path(run[-1]).exists()


def test_a_submission_not_made_from_the_ensemble_output_now_in_artifacts_is_refused(run, monkeypatch, capsys):
    calls = install_fake_kaggle(monkeypatch)
    # `dvc repro -s -f ensemble` with another method: new test probabilities, the old submission.csv
    cfg = load_config(Path(run[7]))
    save_scores(Path(run[5]), np.arange(1, 3), np.eye(10)[[1, 2]],
                record=record_of(cfg, "ensemble", {**SUMMARY, "method": "equal"}))  # fmt: skip
    error = fails(capsys, run)
    assert "submission.csv: made from another probs than the one this stage reads now" in error
    assert "run `dvc repro submission`" in error and calls == []


def test_artifacts_of_other_settings_than_params_yaml_are_refused(run, monkeypatch, capsys):
    calls = install_fake_kaggle(monkeypatch)
    params = Path(run[7])  # `git checkout` of another experiment's params.yaml, without `dvc checkout`
    params.write_text(yaml.safe_dump({**yaml.safe_load(params.read_text()), "ensemble": {"method": "caruana"}}))
    error = fails(capsys, [*run, "--dry-run"])
    assert "test_probs.npz: made with ensemble.method='fitted', but params.yaml now gives" in error
    assert "ensemble.method='caruana'; run `dvc repro ensemble`" in error
    assert calls == []


def test_a_file_that_was_never_submitted_has_no_scores_to_fetch(run, monkeypatch, capsys):
    install_fake_kaggle(monkeypatch, submissions=[scored("another file [csv 000000000000]")])
    assert "is not among your submissions; send it with `python -m stages.submit`" in fails(capsys, [*run, "--scores"])
