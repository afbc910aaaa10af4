"""The Script path is checked again at run time, on what is actually run.

Submission checks the path; the file may be replaced afterwards. Here it is replaced, while
the job waits in the queue, by a symlink to a script outside the server root: the executor
must refuse it (a clear ``error``) and the outside script must not run.
"""

from __future__ import annotations

from pathlib import Path


async def _held_then_released(api, lab, body: dict, between) -> dict:
    lab.orchestrator._backend_retry_at = float("inf")  # hold dispatch: the job stays QUEUED
    code, job, _ = await api.post("jobs/submit", body)
    assert code == 201, job
    between()
    lab.orchestrator._backend_retry_at = 0.0
    lab.orchestrator.wake()
    return await api.wait_for(job["id"], timeout=60)


async def test_a_script_replaced_by_a_symlink_out_of_the_root_is_refused_at_run_time(api, lab, script, jp_root_dir,
                                                                                    tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    marker = outside / "ran"
    (outside / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    path = script("result = 'inside'\n", "swap.py")

    def swap() -> None:
        target = Path(jp_root_dir) / path
        target.unlink()
        target.symlink_to(outside / "evil.py")

    done = await _held_then_released(api, lab, {"agent": "Script", "params": {"path": path}}, swap)
    assert done["status"] == "FAILED", done
    assert "outside the server root" in done["error"] and "refused at run time" in done["error"], done["error"]
    assert not marker.exists(), "the outside script ran"


async def test_a_symlink_that_stays_inside_the_root_still_runs(api, lab, script, jp_root_dir):
    real = script("result = 'through a link'\n", "real.py")
    link = script("result = 'original'\n", "link.py")

    def relink() -> None:
        target = Path(jp_root_dir) / link
        target.unlink()
        target.symlink_to(Path(jp_root_dir) / real)

    done = await _held_then_released(api, lab, {"agent": "Script", "params": {"path": link}}, relink)
    assert done["status"] == "COMPLETED", done
    assert done["result"]["result"] == "through a link"
