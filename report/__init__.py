"""Self-contained HTML reports and trace views of logged runs (see ``report.html``)."""

from report.html import render_report, render_run_page, write_report

__all__ = ["render_report", "render_run_page", "write_report"]
