"""Dataset staging end to end: real multi-megabyte files, a real server, real events and checksums."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import time
from pathlib import Path

import pytest

from .services import LabServer

DEMO = Path(__file__).resolve().parent.parent / "cosmic_horizons_lab" / "data" / "day2_TDEM0003_10s_norx_1src_1spw.uvfits"
DEMO_ID = "VLA.TDEM0003.1src"
MB = 1024 * 1024


@pytest.fixture
def lab_config():
    return {"staging_chunk_bytes": 256 * 1024, "staging_progress_interval": 0.05}


def _blob(path: Path, size: int) -> Path:
    path.write_bytes(os.urandom(size))
    return path


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


async def _events(lab, types: tuple[str, ...] = ("staging.",)) -> list[dict]:
    return [e for e in await lab.store.events_after("astro", 0, limit=10_000) if e["type"].startswith(types)]


async def _wait_event(lab, kind: str, transfer_id: str, timeout: float = 30.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for ev in await _events(lab):
            if ev["type"] == kind and ev["payload"]["transfer_id"] == transfer_id:
                return ev
        await asyncio.sleep(0.05)
    raise AssertionError(f"no {kind} for {transfer_id} in {timeout}s")


async def test_stage_copies_verifies_and_jobs_read_the_staged_copy(api, lab, datasets_dir, work_dir, script):
    shutil.copy(DEMO, datasets_dir / f"{DEMO_ID}.uvfits")
    lab.staging.max_bytes_per_second = 8 * MB  # ~0.5 s: several progress events
    code, st, _ = await api.post("jobs/dataset/stage", {"dataset_id": DEMO_ID, "target_resource": "tacc_scratch"})
    assert code == 202 and st["status"] in ("queued", "running") and st["total_bytes"] == DEMO.stat().st_size
    done = await _wait_event(lab, "staging.completed", st["transfer_id"])
    assert done["payload"]["sha256"] == _sha(DEMO) and done["job_id"] is None and done["user"] == "astro"

    kinds = [e["type"] for e in await _events(lab)]
    assert kinds[0] == "staging.queued" and kinds[1] == "staging.started" and kinds[-1] == "staging.completed"
    progress = [e["payload"] for e in await _events(lab) if e["type"] == "staging.progress" and e["payload"].get("phase") == "copying"]
    assert len(progress) >= 2
    assert [p["bytes_transferred"] for p in progress] == sorted(p["bytes_transferred"] for p in progress)
    assert all(p["rate_bytes_per_second"] > 0 and p["eta_seconds"] is not None for p in progress)

    code, status, _ = await api.get(f"jobs/dataset/{DEMO_ID}/staging-status")
    assert code == 200 and status["status"] == "completed" and status["progress"] == 1.0 and not status["stale"]
    staged = Path(status["staged_path"])
    assert staged.read_bytes() == DEMO.read_bytes() and not Path(str(staged) + ".part").exists()
    assert staged.is_relative_to(work_dir)

    # Staging again while a fresh copy exists copies nothing.
    code, again, _ = await api.post("jobs/dataset/stage", {"dataset_id": DEMO_ID})
    assert code == 200 and again["transfer_id"] == st["transfer_id"]

    # Estimates now come from the measured transfer.
    code, est, _ = await api.post("jobs/dataset/estimate-transfer", {"dataset_id": DEMO_ID})
    assert code == 200 and est["basis"] == "measured" and est["samples"] == 1
    assert est["estimated_seconds"] == pytest.approx(DEMO.stat().st_size / est["throughput_bytes_per_second"], rel=1e-3)

    # A job on this dataset is given the staged copy.
    path = script("print('ok')\n")
    _, job, _ = await api.post("jobs/submit", {"agent": "Script", "dataset_id": DEMO_ID, "params": {"path": path}})
    await api.wait_for(job["id"])
    spec = json.loads((work_dir / "astro" / job["id"] / "job.json").read_text())
    assert spec["dataset"]["path"] == str(staged) and spec["dataset"]["staged"]["target"] == "tacc_scratch"


async def test_a_stale_copy_is_reported_and_restaged_on_use(api, lab, datasets_dir, work_dir, script):
    shutil.copy(DEMO, datasets_dir / f"{DEMO_ID}.uvfits")
    _, st, _ = await api.post("jobs/dataset/stage", {"dataset_id": DEMO_ID})
    await _wait_event(lab, "staging.completed", st["transfer_id"])
    _, status, _ = await api.get(f"jobs/dataset/{DEMO_ID}/staging-status")
    old = time.time() - 11 * 86400  # TACC purges after 10 days untouched
    os.utime(status["staged_path"], (old, old))
    _, status, _ = await api.get(f"jobs/dataset/{DEMO_ID}/staging-status")
    assert status["stale"] is True
    _, job, _ = await api.post("jobs/submit", {"agent": "Script", "dataset_id": DEMO_ID, "params": {"path": script("pass\n")}})
    await api.wait_for(job["id"])
    spec = json.loads((work_dir / "astro" / job["id"] / "job.json").read_text())
    assert spec["dataset"]["path"] == str(datasets_dir / f"{DEMO_ID}.uvfits")  # not the stale copy
    deadline = time.monotonic() + 20
    while True:
        _, status, _ = await api.get(f"jobs/dataset/{DEMO_ID}/staging-status")
        if status["transfer_id"] != st["transfer_id"] and status["status"] == "completed":
            break
        assert time.monotonic() < deadline, status
        await asyncio.sleep(0.1)
    assert status["stale"] is False


async def test_corruption_during_the_transfer_fails_it_and_leaves_no_file(api, lab, datasets_dir):
    src = _blob(datasets_dir / "big.h5", 8 * MB)
    lab.staging.max_bytes_per_second = 4 * MB
    _, st, _ = await api.post("jobs/dataset/stage", {"dataset_id": "big"})
    await _wait_event(lab, "staging.progress", st["transfer_id"])
    dest = Path(lab.staging.targets["tacc_scratch"].root) / "astro" / "big.h5"
    part = Path(str(dest) + ".part")
    with open(part, "r+b") as fh:  # a bad disk, a bad network: bytes change under us
        fh.write(b"\x00" * 4096)
    failed = await _wait_event(lab, "staging.failed", st["transfer_id"])
    assert "SHA-256" in failed["payload"]["error"]
    assert not dest.exists() and not part.exists()
    _, status, _ = await api.get("jobs/dataset/big/staging-status")
    assert status["status"] == "failed" and src.exists()


async def test_cancel_stops_the_copy_and_removes_the_part_file(api, lab, datasets_dir):
    _blob(datasets_dir / "big.h5", 8 * MB)
    lab.staging.max_bytes_per_second = 2 * MB
    _, st, _ = await api.post("jobs/dataset/stage", {"dataset_id": "big"})
    await _wait_event(lab, "staging.progress", st["transfer_id"])
    code, cancelled, _ = await api.delete("jobs/dataset/big/staging-status")
    assert code == 200 and cancelled["status"] == "cancelled"
    assert (await _events(lab))[-1]["type"] == "staging.cancelled"
    root = Path(lab.staging.targets["tacc_scratch"].root) / "astro"
    assert list(root.iterdir()) == []
    code, err, _ = await api.delete("jobs/dataset/big/staging-status")
    assert code == 409 and err["error"] == "conflict"


async def test_high_priority_goes_before_normal_within_the_concurrency_limit(api, lab, datasets_dir):
    for name in ("a", "b", "c"):
        _blob(datasets_dir / f"{name}.h5", 2 * MB)
    lab.staging.concurrency = 1
    lab.staging.max_bytes_per_second = 4 * MB
    _, first, _ = await api.post("jobs/dataset/stage", {"dataset_id": "a"})
    await _wait_event(lab, "staging.started", first["transfer_id"])
    await api.post("jobs/dataset/stage", {"dataset_id": "b", "priority": "normal"})
    _, last, _ = await api.post("jobs/dataset/stage", {"dataset_id": "c", "priority": "high"})
    await asyncio.sleep(0.1)
    _, b_status, _ = await api.get("jobs/dataset/b/staging-status")
    assert b_status["status"] == "queued"  # one at a time
    b_done = await _wait_event(lab, "staging.completed", b_status["transfer_id"], timeout=30)
    assert b_done
    started = [e["payload"]["dataset_id"] for e in await _events(lab) if e["type"] == "staging.started"]
    assert started == ["a", "c", "b"]


async def test_paths_from_the_request_are_never_trusted(api, lab, datasets_dir, tmp_path):
    outside = _blob(tmp_path / "secret.h5", 1024)
    (datasets_dir / "leak.h5").symlink_to(outside)  # a symlink out of the archive is no dataset
    _blob(datasets_dir / "ok.h5", 1024)
    for dataset_id in ("../secret", "/etc/passwd", "leak", "..", "ok/../../secret"):
        code, err, _ = await api.post("jobs/dataset/stage", {"dataset_id": dataset_id})
        assert code == 404 and err["field"] == "dataset_id", dataset_id
    for target in ("../../tmp", "/tmp", "tacc_scratch/../x"):
        code, err, _ = await api.post("jobs/dataset/stage", {"dataset_id": "ok", "target_resource": target})
        assert code == 422 and err["field"] == "target_resource", target
    code, err, _ = await api.post("jobs/dataset/stage", {"dataset_id": "ok", "path": "/etc"})
    assert code == 400 and err["field"] == "path"
    code, _, _ = await api.get("jobs/dataset/..%2F..%2Fetc%2Fpasswd/validate")
    assert code == 404
    # Scratch with a symlink planted where the user's folder goes: refused, nothing written outside.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (Path(lab.staging.targets["tacc_scratch"].root) / "astro").symlink_to(elsewhere)
    code, err, _ = await api.post("jobs/dataset/stage", {"dataset_id": "ok"})
    assert code == 403 and err["error"] == "forbidden"
    assert list(elsewhere.iterdir()) == []
    assert await _events(lab) == []  # refused requests wrote nothing


async def test_validation_and_layout_advice_read_the_real_data(api, datasets_dir):
    shutil.copy(DEMO, datasets_dir / f"{DEMO_ID}.uvfits")
    code, report, _ = await api.get(f"jobs/dataset/{DEMO_ID}/validate")
    assert code == 200 and report["valid"] and report["format"] == "uvfits" and not report["cached"]
    assert report["shape"]["visibilities"] > 0 and 0 <= report["flagged_fraction"] < 1
    code, again, _ = await api.get(f"jobs/dataset/{DEMO_ID}/validate")
    assert again["cached"] and again["flagged_fraction"] == report["flagged_fraction"]
    code, layout, _ = await api.get(f"jobs/dataset/{DEMO_ID}/optimize")
    ids = {r["id"] for r in layout["recommendations"]}
    assert code == 200 and {"convert_uvh5", "channel_chunking"} <= ids
    assert layout["staging_request"]["convert"] == "uvh5"
    (datasets_dir / "notes.csv").write_text("a,b\n1,2\n")
    _, bad, _ = await api.get("jobs/dataset/notes/validate")
    assert bad["valid"] is False and bad["problems"]


async def test_staging_can_convert_to_baseline_time_uvh5(api, lab, datasets_dir):
    shutil.copy(DEMO, datasets_dir / f"{DEMO_ID}.uvfits")
    _, st, _ = await api.post("jobs/dataset/stage", {"dataset_id": DEMO_ID, "convert": "uvh5"})
    done = await _wait_event(lab, "staging.completed", st["transfer_id"], timeout=60)
    _, status, _ = await api.get(f"jobs/dataset/{DEMO_ID}/staging-status")
    staged = Path(status["staged_path"])
    assert staged.suffix == ".uvh5" and _sha(staged) == done["payload"]["sha256"]
    from pyuvdata import UVData

    uv = UVData.from_file(str(staged), read_data=False)
    assert (uv.baseline_array[:-1] <= uv.baseline_array[1:]).all()  # baseline-time order


def _restart_until_staged(root: Path, config: dict, dataset_id: str) -> dict:
    """Start the server again (unpaced) and wait for the transfer it resumes to complete."""
    again = LabServer(root, config={**config, "staging_max_bytes_per_second": 0}).start()
    try:
        client = again.client()
        deadline = time.monotonic() + 30
        while (status := client.request("GET", f"jobs/dataset/{dataset_id}/staging-status"))["status"] != "completed":
            assert status["status"] in ("queued", "running", "verifying") and time.monotonic() < deadline, status
            time.sleep(0.1)
    finally:
        again.stop()
    return status


def test_a_transfer_resumes_after_a_server_crash(tmp_path):
    root = tmp_path / "root"
    (root / "datasets").mkdir(parents=True)
    src = _blob(root / "datasets" / "big.h5", 12 * MB)
    config = {"staging_max_bytes_per_second": 3 * MB, "staging_chunk_bytes": 256 * 1024, "owner": "astro"}
    server = LabServer(root, config=config).start()
    try:
        client = server.client()
        st = client.request("POST", "jobs/dataset/stage", {"dataset_id": "big"})
        deadline = time.monotonic() + 20
        while client.request("GET", "jobs/dataset/big/staging-status")["bytes_transferred"] < 3 * MB:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        server.kill()  # SIGKILL mid-copy
    finally:
        server.stop()
    part = root / "jobs" / "staging" / "tacc_scratch" / "astro" / "big.h5.part"
    part_size = part.stat().st_size
    assert 0 < part_size < src.stat().st_size
    status = _restart_until_staged(root, config, "big")
    assert status["transfer_id"] == st["transfer_id"]
    assert status["resumed_from"] >= part_size - 256 * 1024 and status["resumed_from"] > 0
    final = root / "jobs" / "staging" / "tacc_scratch" / "astro" / "big.h5"
    assert status["sha256"] == _sha(src) == _sha(final) and not part.exists()


# -- Measurement Sets: a folder of casacore tables is a dataset too ------------------------

MS_ID = "TDEM0003"


def _write_ms(folder: Path) -> Path:
    """The demo observation as a real Measurement Set (pyuvdata + python-casacore)."""
    from pyuvdata import UVData

    from cosmic_horizons_lab.science.visibilities import quiet

    ms = folder / f"{MS_ID}.ms"
    with quiet():
        UVData.from_file(str(DEMO)).write_ms(str(ms))
    return ms


def _tree(root: Path) -> dict[str, bytes]:
    return {f.relative_to(root).as_posix(): f.read_bytes() for f in sorted(root.rglob("*")) if f.is_file()}


def _manifest_sha(root: Path) -> str:
    """The documented folder checksum, computed here independently: sha256 of
    '<sha256>  <size>  <relative path>' lines sorted by path."""
    lines = "".join(f"{hashlib.sha256(data).hexdigest()}  {len(data)}  {rel}\n"
                    for rel, data in sorted(_tree(root).items()))
    return hashlib.sha256(lines.encode()).hexdigest()


async def test_a_measurement_set_is_validated_staged_verified_and_read_by_jobs(api, lab, datasets_dir, work_dir, script):
    ms = _write_ms(datasets_dir)
    code, listing, _ = await api.get("datasets")
    entry = next(d for d in listing["datasets"] if d["id"] == MS_ID)
    assert entry["format"] == "measurement_set" and entry["size_bytes"] == sum(map(len, _tree(ms).values()))
    code, report, _ = await api.get(f"jobs/dataset/{MS_ID}/validate")
    assert code == 200 and report["valid"], report
    assert report["shape"]["visibilities"] == 1360 * 64 * 4

    lab.staging.max_bytes_per_second = 8 * MB  # under a second: progress events across files
    code, st, _ = await api.post("jobs/dataset/stage", {"dataset_id": MS_ID})
    assert code == 202 and st["total_bytes"] == entry["size_bytes"]
    done = await _wait_event(lab, "staging.completed", st["transfer_id"])
    assert done["payload"]["sha256"] == _manifest_sha(ms)
    progress = [e["payload"]["bytes_transferred"] for e in await _events(lab) if e["type"] == "staging.progress"]
    assert len(progress) >= 2 and progress == sorted(progress)
    _, status, _ = await api.get(f"jobs/dataset/{MS_ID}/staging-status")
    staged = Path(status["staged_path"])
    assert staged.name == f"{MS_ID}.ms" and _tree(staged) == _tree(ms)
    assert not Path(str(staged) + ".part").exists()

    # A job is given the staged folder, and pyuvdata opens it there.
    check = script(
        "import json, sys\nfrom pyuvdata import UVData\n"
        "spec = json.load(open('job.json'))\n"
        "uv = UVData.from_file(spec['dataset']['path'], read_data=False)\n"
        "print('NBLTS', uv.Nblts, spec['dataset']['path'])\n"
    )
    _, job, _ = await api.post("jobs/submit", {"agent": "Script", "dataset_id": MS_ID, "params": {"path": check}})
    finished = await api.wait_for(job["id"], timeout=60)
    _, logs, _ = await api.get(f"jobs/{job['id']}/logs")
    assert finished["status"] == "COMPLETED", logs
    assert f"NBLTS 1360 {staged}" in logs["data"]

    # Forced again: the new folder replaces the old one whole.
    code, again, _ = await api.post("jobs/dataset/stage", {"dataset_id": MS_ID, "force": True})
    assert code == 202 and again["transfer_id"] != st["transfer_id"]
    await _wait_event(lab, "staging.completed", again["transfer_id"])
    assert _tree(staged) == _tree(ms) and not Path(str(staged) + ".old").exists()


async def test_a_corrupted_file_in_a_measurement_set_fails_the_transfer(api, lab, datasets_dir):
    ms = _write_ms(datasets_dir)
    lab.staging.max_bytes_per_second = 3 * MB
    _, st, _ = await api.post("jobs/dataset/stage", {"dataset_id": MS_ID})
    part = Path(lab.staging.targets["tacc_scratch"].root) / "astro" / f"{MS_ID}.ms.part"
    deadline = time.monotonic() + 20
    data = part / "table.f21_TSM1"  # the main table's visibilities, the largest file
    while not data.exists() or data.stat().st_size < 4096:
        assert time.monotonic() < deadline, "the main table's data file was never started"
        await asyncio.sleep(0.02)
    with open(data, "r+b") as fh:  # bytes change under us, in one file of many
        fh.write(b"\xff" * 4096)
    failed = await _wait_event(lab, "staging.failed", st["transfer_id"])
    assert "SHA-256" in failed["payload"]["error"]
    assert not part.exists() and not (part.parent / f"{MS_ID}.ms").exists()
    assert (ms / "table.f21_TSM1").exists()


async def test_a_measurement_set_with_a_link_inside_is_refused(api, lab, datasets_dir, tmp_path):
    ms = _write_ms(datasets_dir)
    secret = _blob(tmp_path / "secret", 1024)
    (ms / "ANTENNA" / "table.f9").symlink_to(secret)  # would copy a file from outside the archive
    code, err, _ = await api.post("jobs/dataset/stage", {"dataset_id": MS_ID})
    assert code == 403 and err["field"] == "dataset_id" and "link" in err["message"]
    assert await _events(lab) == []


async def test_a_measurement_set_can_be_converted_to_uvh5(api, lab, datasets_dir):
    _write_ms(datasets_dir)
    _, st, _ = await api.post("jobs/dataset/stage", {"dataset_id": MS_ID, "convert": "uvh5"})
    done = await _wait_event(lab, "staging.completed", st["transfer_id"], timeout=60)
    _, status, _ = await api.get(f"jobs/dataset/{MS_ID}/staging-status")
    staged = Path(status["staged_path"])
    assert staged.name == f"{MS_ID}.uvh5" and _sha(staged) == done["payload"]["sha256"]
    from pyuvdata import UVData

    uv = UVData.from_file(str(staged), read_data=False)
    assert uv.Nblts == 1360 and (uv.baseline_array[:-1] <= uv.baseline_array[1:]).all()


def test_a_measurement_set_transfer_resumes_after_a_server_crash(tmp_path):
    root = tmp_path / "root"
    (root / "datasets").mkdir(parents=True)
    ms = _write_ms(root / "datasets")
    total = sum(map(len, _tree(ms).values()))
    config = {"staging_max_bytes_per_second": 1 * MB, "staging_chunk_bytes": 64 * 1024, "owner": "astro"}
    server = LabServer(root, config=config).start()
    try:
        client = server.client()
        st = client.request("POST", "jobs/dataset/stage", {"dataset_id": MS_ID})
        deadline = time.monotonic() + 30
        while client.request("GET", f"jobs/dataset/{MS_ID}/staging-status")["bytes_transferred"] < total // 3:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        server.kill()  # SIGKILL mid-copy, some files whole, one partly written
    finally:
        server.stop()
    part = root / "jobs" / "staging" / "tacc_scratch" / "astro" / f"{MS_ID}.ms.part"
    left = sum(map(len, _tree(part).values()))
    assert 0 < left < total
    status = _restart_until_staged(root, config, MS_ID)
    assert status["transfer_id"] == st["transfer_id"]
    assert status["resumed_from"] >= left - 64 * 1024 and status["resumed_from"] > 0
    final = root / "jobs" / "staging" / "tacc_scratch" / "astro" / f"{MS_ID}.ms"
    assert status["sha256"] == _manifest_sha(ms) and _tree(final) == _tree(ms) and not part.exists()


def test_the_readme_staging_example_stages_the_demo(tmp_path):
    """``lab.stage("VLA.TDEM0003.1src")`` as the README shows it: the shipped demo, not an archive file."""
    from cosmic_horizons_lab import Lab

    root = tmp_path / "root"
    root.mkdir()
    server = LabServer(root).start()
    try:
        lab = Lab(url=server.url, token=server.token)
        assert DEMO_ID in [d["id"] for d in lab.datasets()]
        panel = lab.stage(DEMO_ID)
        deadline = time.monotonic() + 60
        while panel.transfer["status"] not in ("completed", "failed") and time.monotonic() < deadline:
            time.sleep(0.2)  # the panel follows the transfer's events
        assert panel.transfer["status"] == "completed", panel.transfer
        status = lab.client.request("GET", f"jobs/dataset/{DEMO_ID}/staging-status")
        assert status["sha256"] == _sha(DEMO) and Path(status["staged_path"]).read_bytes() == DEMO.read_bytes()
        watch = lab.staging(DEMO_ID)  # the README's second line: the newest transfer, not a new one
        deadline = time.monotonic() + 10
        while watch.transfer["status"] != "completed" and time.monotonic() < deadline:
            time.sleep(0.1)
        assert watch.transfer["status"] == "completed" and watch.transfer["transfer_id"] == status["transfer_id"]
        panel.close()
    finally:
        server.stop()


@pytest.mark.timeout(600)
async def test_a_simulated_preset_is_generated_then_staged(api, lab):
    """A ``SIM.*`` preset no job has generated yet is generated by the staging itself, then copied."""
    code, st, _ = await api.post("jobs/dataset/stage", {"dataset_id": "SIM.small"})
    assert code == 202, st
    # Generating the preset takes ~5 s of CPU: minutes on a loaded two-core machine.
    done = await _wait_event(lab, "staging.completed", st["transfer_id"], timeout=540)
    code, status, _ = await api.get("jobs/dataset/SIM.small/staging-status")
    staged = Path(status["staged_path"])
    generated = lab.datasets.get("SIM.small").path
    assert generated.exists() and staged.read_bytes() == generated.read_bytes()
    assert done["payload"]["sha256"] == _sha(generated)
    phases = [e["payload"].get("phase") for e in await _events(lab) if e["type"] == "staging.progress"]
    assert "generating" in phases
    # What was generated is what pyuvdata reads as the preset's shape (19 antennas, 32 channels).
    from pyuvdata import UVData

    uv = UVData.from_file(str(staged))
    assert uv.Nants_data == 19 and uv.Nfreqs == 32
