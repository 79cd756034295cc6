import logging

import pytest

from vlprobe.joblog import job_log


def test_failure_ends_the_log_with_one_named_error_line(tmp_path):
    log_path = tmp_path / "logs" / "job.log"
    error = pytest.raises(SystemExit, match=r"^ERROR: .*instances\.json: not found$")
    with error, job_log(log_path):
        logging.getLogger("vlprobe.data").info("reading")
        raise ValueError("resources/instances.json: not found")
    lines = log_path.read_text().splitlines()
    assert "reading" in lines[0]
    assert "Traceback" in log_path.read_text()
    assert lines[-1].endswith("ERROR: resources/instances.json: not found")


def test_progress_on_stderr_goes_to_the_log(tmp_path, capsys):
    import sys

    log_path = tmp_path / "job.log"
    with job_log(log_path):
        print("50%|#####     | 5/10", file=sys.stderr)
    assert "5/10" in log_path.read_text()
    assert "5/10" not in capsys.readouterr().err
