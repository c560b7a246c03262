"""The HTML report of a features run: `build_report(run)` / `actlab report RUN`."""

from .build import ReportConfig, build_report

__all__ = ["ReportConfig", "build_report"]
