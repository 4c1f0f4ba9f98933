"""The report stage: one self-contained HTML page with plots, plus the same content as JSON.

    from tunewise.report import build_report
    html_path, json_path = build_report(state, "reports/")

`state` is `tunewise.outputs.ReportState` as JSON, which the pipeline assembles from what each stage recorded:
generated_at, tunewise_version, project, task, data (the data check report), training, evaluation (the
evaluation summary), economics (cost options and break-even volumes), verdict (with the bars it applied and its
best prompted arm, which the page uses), examples (every held-out example, all arms, scored; an older state's
disagreements is read in its place) and stage_times. Any section may be missing or None; the
page then says which stage has not run.
"""

from tunewise.report.build import build_report, load_state, render_html

__all__ = ["build_report", "load_state", "render_html"]
