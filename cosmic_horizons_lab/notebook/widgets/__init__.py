"""Live notebook widgets (anywidget): job progress, job queue, GPU heatmap, timeline, staging, sky map.

Their views are ES modules bundled from ``js/src/widgets`` into
``cosmic_horizons_lab/static`` at build time; nothing is loaded from a CDN.
"""

from cosmic_horizons_lab.notebook.widgets.heatmap import GpuHeatmap
from cosmic_horizons_lab.notebook.widgets.live import EventFeed, LiveWidget, UpdatePump
from cosmic_horizons_lab.notebook.widgets.progress import JobProgress
from cosmic_horizons_lab.notebook.widgets.queue import JobQueue
from cosmic_horizons_lab.notebook.widgets.sky import Sky
from cosmic_horizons_lab.notebook.widgets.staging import Staging
from cosmic_horizons_lab.notebook.widgets.timeline import Timeline

__all__ = ["EventFeed", "GpuHeatmap", "JobProgress", "JobQueue", "LiveWidget", "Sky", "Staging", "Timeline", "UpdatePump"]
