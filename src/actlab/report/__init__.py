"""Reports: the HTML page of a features run (`build_report`, `actlab report`)
and of a trait run (`report.traits.build_trait_report`), and the analysis
tables written into a features run (`analyze_run`, `actlab analyze`)."""

from .build import ReportConfig, analyze_run, build_report

__all__ = ["ReportConfig", "analyze_run", "build_report"]
