"""Job logging for workflow scripts: everything into the rule's log, one clear error line last."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator


@contextlib.contextmanager
def job_log(path: str | os.PathLike | None) -> Iterator[logging.Logger]:
    """Send logging, warnings and stderr (progress bars) of a job to its log file.

    An exception is logged with its traceback, followed by one last line
    ``ERROR: <message>`` naming what failed; the job then exits non-zero with that line.
    """
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    stream = None
    if path is not None:
        os.makedirs(os.path.dirname(os.fspath(path)) or ".", exist_ok=True)
        stream = open(path, "a", buffering=1)  # noqa: SIM115 - closed below
        handlers = [logging.StreamHandler(stream)]
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        handlers=handlers,
        force=True,
    )
    logging.captureWarnings(True)
    logger = logging.getLogger("vlprobe")
    saved_stderr = sys.stderr
    try:
        if stream is not None:
            sys.stderr = stream
        yield logger
    except Exception as err:  # noqa: BLE001 - every failure becomes one named line
        logger.exception("job failed")
        logger.error("ERROR: %s", err)
        sys.stderr = saved_stderr
        raise SystemExit(f"ERROR: {err}") from err
    finally:
        sys.stderr = saved_stderr
        if stream is not None:
            stream.close()
