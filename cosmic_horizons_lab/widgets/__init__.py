"""Live notebook widgets (anywidget): job progress, job queue, GPU heatmap, timeline, staging.

Their views are ES modules bundled from ``js/src/widgets`` into
``cosmic_horizons_lab/static`` at build time; nothing is loaded from a CDN.
"""

from .heatmap import GpuHeatmap
from .live import EventFeed, LiveWidget, UpdatePump
from .progress import JobProgress
from .queue import JobQueue
from .staging import Staging
from .timeline import Timeline

__all__ = ["EventFeed", "GpuHeatmap", "JobProgress", "JobQueue", "LiveWidget", "Staging", "Timeline", "UpdatePump"]
