"""The run directory: the only contract between training jobs and analyses (see README).

Writes are crash-safe: JSON and checkpoints go to a temp file, are fsynced and renamed over the
target; the metrics log is append-only with one fsynced line per epoch. Every file follows the
user's umask. While a run trains, its trainer holds an exclusive lock on `train.lock` in the run
folder (released by the kernel when the process dies), so two trainers never write one folder.

layout: every file name of run and sweep folders; io: atomic writes and bounded reads of regular
files; schema: result.json and the entries of launches.json; metrics: metrics.jsonl; checkpoint:
checkpoint.pt; run: a run folder as a whole; lock: train.lock. This face hands their names on:
`from analysis import rundir; rundir.RESULT`.
"""

from analysis.rundir.layout import (  # noqa: F401
    CONFIG,
    METRICS,
    CHECKPOINT,
    RESULT,
    LOG,
    LOCK,
    JOB,
    METRIC_KEYS,
    WRITTEN,
    SPEC,
    RUN_TABLE,
    RUN_TABLE_CSV,
    RUNS,
    CODE,
    SUBMITIT,
    LAUNCHES,
    LAUNCH_LOCK,
    COLLECT_CACHE,
    REPORT,
)
from analysis.rundir.io import (  # noqa: F401
    umask,
    write_atomic,
    write_output,
    write_json,
    MAX_JSON_BYTES,
    NotRegularFile,
    open_regular,
    read_capped,
    read_tail,
    read_json,
    unshare,
    file_key,
    loads_finite,
    log_line,
)
from analysis.rundir.schema import (  # noqa: F401
    number_in,
    failure_reason,
    STATUSES,
    MAX_RESULT_BYTES,
    result_problem,
    read_result,
    is_final,
    is_complete,
    completed_result,
    diverged_result,
    failed_result,
    record_failure,
    LAUNCH_CLUSTERS,
    launch_record,
    launch_problem,
)
from analysis.rundir.metrics import (  # noqa: F401
    append_metrics,
    metric_rows,
    metric_row_ok,
    MAX_METRICS_BYTES,
    MAX_LINE_BYTES,
    read_metrics,
    truncate_metrics,
)
from analysis.rundir.checkpoint import (  # noqa: F401
    save_checkpoint,
    CHECKPOINT_FACTOR,
    checkpoint_limit,
    load_checkpoint,
)
from analysis.rundir.run import (  # noqa: F401
    check_out,
    remove_temp_files,
    clear_run,
)
from analysis.rundir.lock import (  # noqa: F401
    RunLock,
    open_lock_file,
    lock_holder,
)
from analysis.errors import CheckpointError, RunLocked  # noqa: F401,E402  (raised by this package)
