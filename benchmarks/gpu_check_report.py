"""The GPU check's results as a page: ``gpu_check.md`` beside ``gpu_check.json``.

Separate from the measuring (``bench_gpu.py``) so that a results file from a
card can be rendered again, here, after the machine has gone back::

    python benchmarks/gpu_check_report.py RESULTS/gpu_check.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

GOAL_RATE = 2e9  # vis/s, gridding and flagging (issue 17)
GOAL_BANDWIDTH = 0.20  # of the card's memory bandwidth


def tests_summary(junit: Path, rc: int | None) -> dict:
    """Counts from pytest's JUnit XML: what ran, what failed, what was skipped."""
    import xml.etree.ElementTree as ET

    out: dict[str, Any] = {"exit_status": rc, "junit": str(junit)}
    try:
        root = ET.parse(junit).getroot()
    except (OSError, ET.ParseError) as exc:
        return {**out, "error": f"no JUnit XML: {exc}"}
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    for key in ("tests", "failures", "errors", "skipped"):
        out[key] = int(suite.get(key, 0)) if suite is not None else 0
    out["failed"] = [f"{c.get('classname')}::{c.get('name')}" for c in root.iter("testcase")
                     if c.find("failure") is not None or c.find("error") is not None]
    return out


def markdown(res: dict) -> str:
    lines = [f"# GPU check ({res['mode']})", "",
             (f"{res['device']}; torch {res['torch']}; {res['started']}; load at start "
              f"{res['load_start']}"), ""]
    tests = res.get("tests")
    if tests:
        failed = f"; failed: {', '.join(tests['failed'])}" if tests.get("failed") else ""
        lines += [(f"CUDA tests (tests/science/test_gpu_paths.py): {tests.get('tests', '?')} "
                   f"collected, {tests.get('failures', '?')} failed, {tests.get('errors', '?')} "
                   f"errors, {tests.get('skipped', '?')} skipped; exit status "
                   f"{tests.get('exit_status')}{failed}"), ""]
    bw = res.get("bandwidth")
    if bw:
        vendor = (f"{bw['vendor_bytes_per_s'] / 1e12:.2f} TB/s" if bw.get("vendor_bytes_per_s")
                  else "n/a")
        lines += [(f"Memory bandwidth: measured {bw['measured_bytes_per_s'] / 1e12:.3f} TB/s "
                   f"(copy of {bw['copy_bytes'] / 2**20:.0f} MiB, read + write); vendor {vendor}."),
                  ""]
    if res.get("stages"):
        lines += [("| stage | vis | vis/s | B/vis min | B/vis model | % bw (min) | % bw (model) | "
                   "goal | load |"), "|---|---|---|---|---|---|---|---|---|"]
        for r in res["stages"]:
            # issue 17's goals: 2e9 vis/s for flagging and gridding, 20 % of the bandwidth
            goal = ("bw met" if r["bandwidth_frac_model"] >= GOAL_BANDWIDTH
                    else f"bw < {100 * GOAL_BANDWIDTH:.0f} %")
            if "flagging" in r["stage"] or "gridding" in r["stage"]:
                goal = ("rate met" if r["vis_per_s"] >= GOAL_RATE
                        else f"rate < {GOAL_RATE:.0e}") + "; " + goal
            lines.append(f"| {r['stage']} | {r['n_vis']:.2e} | {r['vis_per_s']:.3e} | "
                         f"{r['bytes_per_vis_min']:.1f} | {r['bytes_per_vis_model']:.0f} | "
                         f"{100 * r['bandwidth_frac_min']:.2f} | "
                         f"{100 * r['bandwidth_frac_model']:.2f} | "
                         f"{goal} | {r['load']} |")
        lines.append("")
    if res.get("streaming"):
        lines += ["| streaming host→device | vis | vis/s | host GB/s | chunks | load |",
                  "|---|---|---|---|---|---|"]
        for r in res["streaming"]:
            lines.append(f"| {r['storage']} | {r['n_vis']:.2e} | {r['vis_per_s']:.3e} | "
                         f"{r['host_bytes_per_s'] / 1e9:.2f} | {r['chunks']} | {r['load']} |")
        lines.append("")
    if res.get("precision"):
        p0 = res["precision"][0]
        lines += [(f"Precision (float32 arithmetic; image reference: {p0['image_reference']}; "
                   f"{p0['n_vis']:.1e} visibilities):"), "",
                  ("| storage | unit roundoff | per-sample rel. rms | uv-grid sum rel. rms | "
                   "dirty image rel. rms | flags differing |"), "|---|---|---|---|---|---|"]
        for r in res["precision"]:
            lines.append(f"| {r['storage']} | {r['unit_roundoff']:.1e} | "
                         f"{r['per_sample_rel_rms']:.1e} | {r['grid_accumulation_rel_rms']:.1e} | "
                         f"{r['dirty_image_rel_rms']:.1e} | "
                         f"{r['flags_differing_frac']:.1e} |")
        lines.append("")
    big = res.get("big")
    if big:
        mem = big["memory"]
        lines += [f"Limited memory ({mem['how']}, {mem['limit_bytes'] / 2**30:.2f} GiB):", ""]
        for key in ("flagging_agent", "flagging_streamed", "gridding"):
            m = big.get(key)
            if not m:
                continue
            n = big["gridding_vis"] if key == "gridding" else big["flagging_vis"]
            target = big["gridding_target_vis"] if key == "gridding" else big["flagging_target_vis"]
            peak = (f"{m['peak_device_bytes'] / 2**30:.2f} GiB peak of "
                    f"{mem['limit_bytes'] / 2**30:.2f} GiB" if m.get("peak_device_bytes")
                    else "peak n/a on the CPU")
            rate = f"{m['vis_per_s']:.3e} vis/s" if m.get("vis_per_s") else m.get("error")
            cut = f" (cut from {target:.2e} to fit the time)" if n < target else ""
            lines.append(f"- {key}: {n:.2e} visibilities{cut}, {'ok' if m['ok'] else 'FAILED'}, "
                         f"{m['seconds']:.1f} s, {rate}, {peak}, load {m['load']}")
        plan = big.get("flagging_streamed_plan")
        if plan:
            peak = (big.get("flagging_streamed") or {}).get("peak_device_bytes")
            ratio = f", measured peak / plan = {peak / plan['planned_working_set_bytes']:.2f}" \
                if peak else ""
            lines.append(f"- streamed plan: {plan['baselines_per_chunk']} baselines a chunk, "
                         f"{plan['chunks']} chunks, planned working set "
                         f"{plan['planned_working_set_bytes'] / 2**30:.3f} GiB of a "
                         f"{plan['budget_bytes'] / 2**30:.3f} GiB chunk budget{ratio}")
        if "flagging_streamed_equals_agent" in big:
            lines.append("- streamed flags equal the agent's: "
                         f"{big['flagging_streamed_equals_agent']} "
                         f"({big.get('flagging_streamed_differing_frac', 0):.1e} differ); "
                         f"recall of the injected RFI (first baselines) "
                         f"{big['flagging_recall_first_baselines']:.3f}")
        lines.append("")
    if res.get("errors"):
        lines += ["Errors:", ""] + [f"- {e}" for e in res["errors"]] + [""]
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown(json.loads(Path(sys.argv[1]).read_text())))
