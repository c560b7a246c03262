"""Reports render data they are given and compute nothing: the HTML page of
a features run (`html.render` of `data.ReportData`), of a trait run
(`traits.render_trait_report`) and of a contrast run
(`contrast.render_contrast_report`, with `contrast.contrast_figures`). What
the pages show is gathered by actlab.pipelines (`build_report`,
`analyze_run`, `build_trait_report`, `build_contrast_report`)."""

from .page import write_page

__all__ = ["write_page"]
