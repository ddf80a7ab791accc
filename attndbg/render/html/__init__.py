"""The interactive HTML report: one self-contained file, offline, with every head's heatmap.

``collect_maps(case)`` pools a case's attention maps (torch, through the core's heatmap module);
``render_html(report, maps)`` writes the page from plain data (no torch).
"""

from attndbg.render.html.maps import REPORT_CELL_BUDGET, CaseMaps, collect_all, collect_maps
from attndbg.render.html.page import render_html

__all__ = ["REPORT_CELL_BUDGET", "CaseMaps", "collect_all", "collect_maps", "render_html"]
