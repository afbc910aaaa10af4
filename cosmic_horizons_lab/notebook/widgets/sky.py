"""Sky: the user's results on an interactive Aladin Lite map (images, sources, footprints, coverage,
annotations, snapshots), live.

``job.sky()`` shows one job, ``pipeline.sky()`` the jobs of a pipeline (the image of its imaging
stage, the sources of its detection stage), ``lab.sky()`` every job of the user with the coverage
of their processed sky; there, a job that completes later appears when it does. The view draws
(``js/src/widgets/sky.ts``); the kernel reads the API and the jobs' outputs, and answers the view's
actions (annotate, snapshot, open a footprint's job).
"""

from __future__ import annotations

import math
import threading
import urllib.parse
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import traitlets

from cosmic_horizons_lab.notebook.widgets.live import LiveWidget
from cosmic_horizons_lab.notebook.widgets.static import CSS, view

if TYPE_CHECKING:
    from cosmic_horizons_lab.notebook.jobs import Job
    from cosmic_horizons_lab.notebook.lab import Lab

#: The image outputs a job's layer is chosen from, in this order (as ``job.image()`` does).
IMAGE_NAMES = ("restored.fits", "image.fits", "dirty.fits")
#: The columns of a source's row the view shows when it is clicked.
ROW_COLUMNS = ("ra_deg", "dec_deg", "flux_jy", "peak_jy_beam", "snr", "anomaly_score", "npix", "id")
#: How close (degrees) an anomaly's position must be to a source's to be that source's.
SAME_POSITION_DEG = 1e-6


def _plain(value: Any) -> Any:
    """A catalogue value as JSON: numpy scalars as Python numbers, NaN as None."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value if isinstance(value, (int, float, str, bool)) or value is None else str(value)


def source_rows(sources: Iterable[dict[str, Any]], anomalies: Iterable[dict[str, Any]] = (),
                job_id: str | None = None) -> list[dict[str, Any]]:
    """Rows the map shows: position, flux, SNR, anomaly score (AnomalyDetection's per-source column), and
    the anomaly found at the same position, if any."""
    flagged = [(float(a["ra_deg"]), float(a["dec_deg"]), a) for a in anomalies
               if a.get("ra_deg") is not None and a.get("dec_deg") is not None]
    rows = []
    for s in sources:
        ra, dec = s.get("ra_deg", s.get("ra")), s.get("dec_deg", s.get("dec"))
        if ra is None or dec is None:
            continue
        row = {k: _plain(s[k]) for k in ROW_COLUMNS if k in s}
        row.update(ra_deg=float(ra), dec_deg=float(dec), job_id=job_id)
        for ara, adec, a in flagged:
            if abs(ara - row["ra_deg"]) < SAME_POSITION_DEG and abs(adec - row["dec_deg"]) < SAME_POSITION_DEG:
                row["anomaly"] = _plain(a.get("kind"))
                row["anomaly_detail"] = _plain(a.get("detail"))
                score = a.get("score", a.get("anomaly_score"))  # the source's own column comes first
                if score is not None and row.get("anomaly_score") is None:
                    row["anomaly_score"] = _plain(score)
        rows.append(row)
    return rows


def initial_view(footprints: list[dict[str, Any]], sources: list[dict[str, Any]]) -> dict[str, Any]:
    """Centred on the first footprint with a field of view a little wider than it; else on the sources."""
    for f in footprints:
        if f.get("ra_deg") is not None:
            return {"ra": f["ra_deg"], "dec": f["dec_deg"], "fov": max(2.4 * f["radius_deg"], 1e-3), "projection": "TAN"}
    if sources:
        ra = [s["ra_deg"] for s in sources]
        dec = [s["dec_deg"] for s in sources]
        return {"ra": (min(ra) + max(ra)) / 2, "dec": (min(dec) + max(dec)) / 2,
                "fov": max(1.3 * max(max(ra) - min(ra), max(dec) - min(dec)), 0.05), "projection": "TAN"}
    return {"ra": 0.0, "dec": 0.0, "fov": 180.0, "projection": "TAN"}


class Sky(LiveWidget):
    """An Aladin Lite sky map of some jobs (or all of the user's), kept current."""

    _esm = view("sky")
    _css = CSS

    view = traitlets.Dict(help="Centre (ra, dec, degrees), field of view (degrees across), projection.").tag(sync=True)
    survey = traitlets.Unicode("", help="The HiPS survey behind our layers; empty: a blank sky.").tag(sync=True)
    images = traitlets.List(help="Image layers: {job_id, url (the FITS, served by the extension), name}.").tag(sync=True)
    sources = traitlets.List(help="Catalogue rows: ra_deg, dec_deg, flux_jy, snr, anomaly…, job_id.").tag(sync=True)
    footprints = traitlets.List(help="Each job's pointing and radius (GET sky/footprints).").tag(sync=True)
    coverage = traitlets.Dict(help="The user's processed sky as an IVOA MOC (lab.sky() only).").tag(sync=True)
    annotations = traitlets.List(help="The shown jobs' annotations.").tag(sync=True)
    snapshots = traitlets.List(help="The user's saved views: {id, name, created_at}.").tag(sync=True)
    export_url = traitlets.Unicode("", help="The DS9 region file of the shown annotations.").tag(sync=True)
    height = traitlets.Int(480, help="The map's height in pixels.").tag(sync=True)
    selected = traitlets.Dict(help="The row of the source last clicked on the map (set by the view).").tag(sync=True)
    first_frame_ms = traitlets.Float(None, allow_none=True,
                                     help="Milliseconds from display to the first frame with images and sources.").tag(sync=True)
    opened_job = traitlets.Unicode("", help="The job whose footprint was last clicked.").tag(sync=True)

    def __init__(self, lab: Lab, jobs: Iterable[Job] | None = None, *, coverage: bool | None = None,
                 height: int = 480, **kwargs: Any) -> None:
        self._lab = lab
        self._all = jobs is None
        self._jobs: dict[str, Job] = {j.id: j for j in (jobs or [])}
        self._want_coverage = self._all if coverage is None else coverage
        self._layers: dict[str, dict[str, Any]] = {}  # job id → {"images": [...], "sources": [...]}
        self._load_lock = threading.Lock()
        self._opened = 0
        super().__init__(pump=lab.pump, height=height, **kwargs)
        for job in self._jobs.values():
            job.add_listener(self._on_job)
        if self._all:
            lab.on_new_job(self._on_new_job)
        try:
            lab.follow()
        except Exception:  # no event stream: the map is still drawn, only not live
            pass
        self._load_all()

    def summary(self) -> list[str]:
        """What the map holds, counted, and where it looks."""
        v = self.view or {}
        centre = (f", centred on RA {v['ra']:.4f}°, Dec {v['dec']:.4f}°, {v.get('fov', 0):.3g}° across"
                  if isinstance(v.get("ra"), (int, float)) and isinstance(v.get("dec"), (int, float)) else "")
        return [f"Sky map of {len(self._jobs) if not self._all else 'all your'} jobs",
                f"{len(self.images)} images, {len(self.sources)} sources, {len(self.footprints)} footprints{centre}"]

    # -- what the map shows ------------------------------------------------------------
    @property
    def jobs(self) -> list[Job]:
        return list(self._jobs.values())

    @property
    def opened(self) -> Job | None:
        """The job of the footprint last clicked on the map."""
        return self._lab.job(self.opened_job) if self.opened_job else None

    def _api_path(self, path: str) -> str:
        """An API URL as the page asks for it: the server's path, no host and no token (the page's login
        cookie authenticates, and a token must not be saved with the notebook)."""
        base = urllib.parse.urlparse(str(self._lab.client.api_url)).path
        return base.rstrip("/") + "/" + path.lstrip("/")

    def _load_all(self) -> None:
        client = self._lab.client
        settings = client.request("GET", "sky/settings")
        footprints = client.request("GET", "sky/footprints")["items"]
        if self._all:
            for f in footprints:
                if f["job_id"] not in self._jobs:
                    self._add(self._lab._jobs.handle({"id": f["job_id"], "status": f["status"], "agent": f["agent"]}))
        shown = [f for f in footprints if f["job_id"] in self._jobs]
        for job in self.jobs:
            self._layers[job.id] = self._job_layers(job)
        sources = [s for layer in self._layers.values() for s in layer["sources"]]
        values: dict[str, Any] = {"survey": settings.get("survey") or "", "footprints": shown,
                                  "view": initial_view(shown, sources)}
        if self._want_coverage:
            values["coverage"] = client.request("GET", "sky/coverage")
        values.update(self._layer_values(), **self._annotation_values(), snapshots=self._snapshot_list())
        for name, value in values.items():
            setattr(self, name, value)

    def _job_layers(self, job: Job) -> dict[str, Any]:
        """A completed job's image layer (its FITS, served by the extension) and its sources."""
        layers: dict[str, Any] = {"images": [], "sources": []}
        if job.status != "COMPLETED":
            return layers
        outputs = job.outputs()
        names = {o.name.rsplit("/", 1)[-1].lower(): o for o in outputs}
        image = next((names[n] for n in IMAGE_NAMES if n in names), None)
        if image is not None:
            quoted = urllib.parse.quote(image.name)
            layers["images"].append({"job_id": job.id, "name": f"{job.record.get('agent', '')} {job.id[:8]}",
                                     "url": self._api_path(f"jobs/{job.id}/outputs/{quoted}")})
        if "sources.ecsv" in names:
            anomalies = names["anomalies.ecsv"].load() if "anomalies.ecsv" in names else []
            table = names["sources.ecsv"].load()
            layers["sources"] = source_rows(_dicts(table), _dicts(anomalies), job.id)
        return layers

    def _layer_values(self) -> dict[str, Any]:
        return {"images": [i for layer in self._layers.values() for i in layer["images"]],
                "sources": [s for layer in self._layers.values() for s in layer["sources"]]}

    def _annotation_values(self) -> dict[str, Any]:
        items = self._lab.client.request("GET", "sky/annotations")["items"]
        return {"annotations": [a for a in items if a["job_id"] in self._jobs],
                "export_url": self._api_path("sky/annotations/export?format=ds9"
                                             + (f"&job_id={next(iter(self._jobs))}" if len(self._jobs) == 1 else ""))}

    def _snapshot_list(self) -> list[dict[str, Any]]:
        return [{"id": s["id"], "name": s["name"], "created_at": s["created_at"]}
                for s in self._lab.client.request("GET", "sky/snapshots")["items"]]

    # -- live: a job of the map completes, or (lab.sky()) a new job appears ---------------
    def _add(self, job: Job) -> None:
        self._jobs[job.id] = job
        job.add_listener(self._on_job)

    def _on_new_job(self, job: Job) -> None:
        if job.id not in self._jobs:
            self._add(job)

    def _on_job(self, job: Job) -> None:
        if job.status == "COMPLETED" and not self._layers.get(job.id, {}).get("done"):
            self._layers.setdefault(job.id, {"images": [], "sources": []})["done"] = True
            threading.Thread(target=self._refresh_job, args=(job,), daemon=True).start()

    def _refresh_job(self, job: Job) -> None:
        try:
            with self._load_lock:
                self._layers[job.id] = {**self._job_layers(job), "done": True}
                footprints = self._lab.client.request("GET", "sky/footprints")["items"]
                values = {**self._layer_values(), "footprints": [f for f in footprints if f["job_id"] in self._jobs]}
                if self._want_coverage:
                    values["coverage"] = self._lab.client.request("GET", "sky/coverage")
            self.stage(**values)
        except Exception as exc:
            self.report_error(exc)

    # -- the view's actions --------------------------------------------------------------
    def annotate(self, shape: dict[str, Any], note: str = "", job_id: str | None = None) -> dict[str, Any]:
        """Mark a point, circle or polygon (degrees) on a job's sky, with a note; stored by the server."""
        job_id = job_id or self._job_at(shape)
        answer = self._lab.client.request("POST", "sky/annotations", {"job_id": job_id, "shape": shape, "note": note})
        self.stage(**self._annotation_values())
        return answer

    def snapshot(self, name: str, png: str | None = None, view: dict[str, Any] | None = None) -> dict[str, Any]:
        """Save the current view (centre, FoV, layers, annotations) under ``name``, with the view's PNG."""
        where = {k: v for k, v in (view or self.view).items() if k in ("ra", "dec", "fov", "projection")}
        where["ra"] = where["ra"] % 360.0
        body: dict[str, Any] = {"name": name, "view": {
            **where, "layers": self.images, "annotations": list(self.annotations),
            "job_ids": list(self._jobs)}}
        if png:
            body["png"] = png
        answer = self._lab.client.request("POST", "sky/snapshots", body)
        self.stage(snapshots=self._snapshot_list())
        return answer

    def open_snapshot(self, snapshot_id: str) -> None:
        """Show a saved view again: its centre and field of view, its jobs' layers and annotations."""
        saved = self._lab.client.request("GET", f"sky/snapshots/{urllib.parse.quote(snapshot_id)}")
        for job_id in saved["view"].get("job_ids", []):
            if job_id not in self._jobs:
                job = self._lab.job(job_id)
                self._add(job)
                self._layers[job.id] = self._job_layers(job)
        view_values = {k: saved["view"][k] for k in ("ra", "dec", "fov", "projection") if k in saved["view"]}
        # Sent even when equal to the last view the kernel knew: the map may have been panned since.
        self._opened += 1
        view_values["opened"] = self._opened
        self.stage(view=view_values, **self._layer_values(), **self._annotation_values())

    def _job_at(self, shape: dict[str, Any]) -> str:
        """The job an annotation belongs to: the only one shown, else the smallest footprint holding it."""
        if len(self._jobs) == 1:
            return next(iter(self._jobs))
        ra, dec = (shape["vertices"][0] if shape.get("type") == "polygon" else (shape["ra"], shape["dec"]))
        best = None
        for f in self.footprints:
            if f.get("ra_deg") is None:
                continue
            if _separation(ra, dec, f["ra_deg"], f["dec_deg"]) <= f["radius_deg"]:
                if best is None or f["radius_deg"] < best["radius_deg"]:
                    best = f
        if best is None:
            raise ValueError("the annotation lies on no job's footprint: say which job it belongs to")
        return best["job_id"]

    def action_annotate(self, content: dict[str, Any]) -> None:
        self.annotate(content["shape"], content.get("note", ""), content.get("job_id"))

    def action_delete_annotation(self, content: dict[str, Any]) -> None:
        self._lab.client.request("DELETE", f"sky/annotations/{urllib.parse.quote(str(content['id']))}")
        self.stage(**self._annotation_values())

    def action_snapshot(self, content: dict[str, Any]) -> None:
        self.snapshot(str(content.get("name") or "snapshot"), content.get("png"), content.get("view"))

    def action_open_snapshot(self, content: dict[str, Any]) -> None:
        self.open_snapshot(str(content["id"]))

    def action_open_job(self, content: dict[str, Any]) -> None:
        job_id = str(content["job_id"])
        job = self._lab.job(job_id)
        if job_id not in self._jobs:
            self._add(job)
        self._layers[job_id] = self._job_layers(job)
        fp = next((f for f in self.footprints if f["job_id"] == job_id), None)
        values: dict[str, Any] = {"opened_job": job_id, **self._layer_values()}
        if fp and fp.get("ra_deg") is not None:
            values["view"] = {"ra": fp["ra_deg"], "dec": fp["dec_deg"], "fov": 2.4 * fp["radius_deg"], "projection": "TAN"}
        self.stage(**values)


def _dicts(table: Any) -> list[dict[str, Any]]:
    if hasattr(table, "colnames"):
        return [dict(zip(table.colnames, row)) for row in table]
    return list(table or [])


def _separation(ra1: float, dec1: float, ra2: float, dec2: float) -> float:
    r = math.radians
    h = math.sin(r(dec2 - dec1) / 2) ** 2 + math.cos(r(dec1)) * math.cos(r(dec2)) * math.sin(r(ra2 - ra1) / 2) ** 2
    return math.degrees(2 * math.asin(min(1.0, math.sqrt(h))))
