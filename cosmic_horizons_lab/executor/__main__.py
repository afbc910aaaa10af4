"""Entry point: ``python -m cosmic_horizons_lab.executor <job-dir>``.

Exit status is the contract with the backend: 0 when the agent returned, 1
when it raised (the error and traceback are in ``events.jsonl`` and the log),
2 when the job directory itself is unusable.

``python -m cosmic_horizons_lab.executor --materialize <SIM id> <path>`` generates a
synthetic preset at ``path`` (whole or not at all), as a job does on first use: staging runs
it for a preset no job has generated yet.
"""

from __future__ import annotations

import os
import socket
import sys
import traceback
from pathlib import Path

from cosmic_horizons_lab.executor.context import JobContext, append_record
from cosmic_horizons_lab.protocol.jobdir import JOB_DIR_ENV
from cosmic_horizons_lab.protocol.tracecontext import TRACEPARENT_ENV


def materialize_preset(dataset_id: str, path: Path) -> None:
    """Generate the synthetic preset ``dataset_id`` at ``path``, atomically (a temporary file, then a rename)."""
    from cosmic_horizons_lab.science.simulate import materialize

    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    materialize(dataset_id, tmp)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) == 3 and argv[0] == "--materialize":
        materialize_preset(argv[1], Path(argv[2]))
        return 0
    if len(argv) != 1:
        print("usage: python -m cosmic_horizons_lab.executor <job-dir>", file=sys.stderr)
        return 2
    job_dir = Path(argv[0]).resolve()
    try:
        job = JobContext.load(job_dir)
    except (OSError, ValueError, KeyError) as exc:
        print(f"cannot load {job_dir}/job.json: {exc}", file=sys.stderr)
        return 2
    os.environ[JOB_DIR_ENV] = str(job_dir)
    job.outputs.mkdir(parents=True, exist_ok=True)
    if job.dataset is not None and job.simulate and not job.dataset.path.exists():
        # A synthetic dataset is generated where it is first needed: here, not in the server.
        materialize_preset(job.simulate, job.dataset.path)
    append_record(job_dir, {"type": "started", "pid": os.getpid(), "host": socket.gethostname()})
    print(f"{job.agent} job {job.job_id} on {socket.gethostname()}"
          + (f", dataset {job.dataset.id}" if job.dataset is not None else ""), flush=True)

    from cosmic_horizons_lab.executor.registry import get_agent

    agent_cls = get_agent(job.agent)
    if agent_cls is None:
        append_record(job_dir, {"type": "error", "error": f"unknown agent {job.agent!r}"})
        return 1
    from cosmic_horizons_lab.executor.sampler import ResourceSampler

    # Samples the job's own GPUs (or CPU) until the agent returns; stopped in ``finally``
    # below, so its last sample is written before the result record that ends the job.
    sampler = ResourceSampler(job_dir, job.sample_interval).start()
    # The job's own span, a child of its submission's; the agents' stages are its children.
    run_span = job.spans.begin("executor.run", **{"host.name": socket.gethostname(), "process.pid": os.getpid()})
    if run_span is not None:
        os.environ[TRACEPARENT_ENV] = run_span.traceparent  # what the job starts joins the trace
    try:
        import cosmic_horizons_lab.executor as package

        package.args = dict(job.params.get("args") or {})
        result = agent_cls().run(job)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if code == 0:
            append_record(job_dir, {"type": "result", "result": None})
            return 0
        append_record(job_dir, {"type": "error", "error": f"exited with status {code}"})
        if run_span is not None:
            run_span.end(f"exited with status {code}")
        return code
    except BaseException as exc:  # the job's failure, whatever it is, is reported not lost
        tb = traceback.format_exc()
        print(tb, file=sys.stderr, flush=True)
        job.spans.end_all(exc)  # the stage it failed in, then the run
        append_record(
            job_dir,
            {"type": "error", "error": f"{type(exc).__name__}: {exc}", "traceback": tb[-4000:]},
        )
        return 1
    finally:
        sampler.stop()
        if run_span is not None:
            run_span.end()
        sys.stdout.flush()
        sys.stderr.flush()
    append_record(job_dir, {"type": "result", "result": result})
    return 0


if __name__ == "__main__":
    code = main()
    # Skip the interpreter's final garbage collections over every object torch and numba
    # made: 2-10 s of teardown after a science job on a loaded 2-core host (seen in
    # Py_FinalizeEx), during which the job looks RUNNING. Everything is written and flushed.
    import gc

    gc.freeze()
    sys.exit(code)
