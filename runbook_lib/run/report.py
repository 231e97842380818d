"""A run folder's report: the sections in run order, the verdicts they recorded, each executed notebook as HTML, and
the index.html that leads with the acceptance table and the charts behind it."""

from __future__ import annotations

import html
import json
from dataclasses import dataclass
from pathlib import Path

from runbook_lib.run import verdict_table
from runbook_lib.run.audit import RESULTS_DIR
from runbook_lib.sections import plan as planning
from runbook_lib.watch.acceptance import ACCEPTANCE_FILE

NOTEBOOKS_DIR = Path(__file__).resolve().parents[2] / "notebooks"
ROLLBACK = "90_rollback"
TEMPLATES_DIR = Path(__file__).resolve().parent / "templates"


@dataclass
class SectionResult:
    """The verdict of one executed notebook."""

    name: str
    status: str
    summary: str
    seconds: float
    notebook: str
    html: str


def available(notebooks_dir: Path = NOTEBOOKS_DIR) -> list[str]:
    """Section names in run order (the file names sort in run order)."""
    return sorted(p.stem for p in notebooks_dir.glob("*.ipynb"))


def export_html(notebook_path: Path) -> Path:
    """The executed notebook as a standalone HTML page beside it: outputs shown, each code cell collapsed under
    "code" (nbconvert's lab template, extended in templates/runbook), no prompts; the .ipynb keeps everything."""
    import nbformat  # with nbconvert, seconds of start-up a kernel that seals a run by hand need not spend
    from nbconvert import HTMLExporter
    nb = nbformat.read(str(notebook_path), as_version=4)
    exporter = HTMLExporter(extra_template_basedirs=[str(TEMPLATES_DIR)], template_name="runbook",
                            exclude_input_prompt=True, exclude_output_prompt=True)
    body, _ = exporter.from_notebook_node(nb)
    out = notebook_path.with_suffix(".html")
    out.write_text(body, encoding="utf-8")
    return out


def earlier_results(run_dir: Path) -> list[SectionResult]:
    """Verdicts already recorded in the run folder (sections run by an earlier `--only` or `--from`)."""
    out = []
    for path in sorted((run_dir / RESULTS_DIR).glob("*.json")):
        v = json.loads(path.read_text())
        nb = run_dir / f"{v['section']}.ipynb"
        out.append(SectionResult(name=v["section"], status=v["status"], summary=v["summary"], seconds=v["seconds"],
                                 notebook=nb.name if nb.exists() else "",
                                 html=nb.with_suffix(".html").name if nb.with_suffix(".html").exists() else ""))
    return out


_STYLE = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1000px;color:#222}
table{border-collapse:collapse;width:100%;margin:.5em 0}td,th{border:1px solid #ccc;padding:.4em .6em;text-align:left;
vertical-align:top}caption{text-align:left;font-weight:bold;padding:.3em 0}
.pass{background:#e3f4e1}.warn{background:#fff4d6}.fail{background:#fbe0de}.pending{color:#888}
.headline{font-size:1.3em}img{max-width:100%;border:1px solid #eee;margin:.5em 0}code{background:#f4f4f4;padding:0 .2em}"""

VERDICT_CHARTS = {
    "acceptance-latency": "The latency verdict from its own numbers, as a dashboard shows it: p99 of every request per "
                          "10 s window across the migration against the control's p99 (requests in the mover's quiet "
                          "spells of the same minutes; the pre-move baseline when there was none), the budget the "
                          "verdict used (and the article's +10 % when that differs), the pooled p99 while slots moved "
                          "with its 95 % interval, and the worst window.",
    "slots-before-after": "Slots per master before and after the expansion, against the even share.",
}
CHART_CAPTIONS = {
    "slots-planned": "30_plan: slots per master now and as planned.",
    "batches": "40_migrate: slots moved and seconds taken per batch.",
    "batch-latency": "40_migrate: probe p50/p99 per batch window, gate waits and pauses included, against the budget "
                     "band. Each point holds a whole batch window's few requests; the verdict pools only the requests "
                     "while slots moved (the latency verdict chart above).",
}


def _figure(stem: str, caption: str) -> str:
    return (f'<figure><img src="charts/{html.escape(stem)}.png" alt="{html.escape(stem)}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def _verdict_source(run_dir: Path) -> str:
    """Where the acceptance table comes from, linked when the files are there."""
    if not (run_dir / f"{verdict_table.VALIDATE}.html").exists():
        return ""
    numbers = (f' (the numbers: <a href="{ACCEPTANCE_FILE}">{ACCEPTANCE_FILE}</a>)'
               if (run_dir / ACCEPTANCE_FILE).exists() else "")
    return f'<p>From <a href="{verdict_table.VALIDATE}.html">{verdict_table.VALIDATE}</a>{numbers}.</p>'


def write_index(run_dir: Path, ran: list[SectionResult], sections: list[str]) -> Path:
    """index.html: the article's acceptance table first with the charts that back it, then one line per section with
    its verdict and links (those `ran` now over those the folder recorded before), the other charts, and the run's
    artifacts."""
    done = {s.name: s for s in earlier_results(run_dir)}
    done.update({s.name: s for s in ran})
    planned = [n for n in sections if n != ROLLBACK or n in done]
    rows = []
    for name in planned:
        s = done.get(name)
        if s is None:
            rows.append(f'<tr class="pending"><td>{name}</td><td>not run</td><td></td><td></td></tr>')
            continue
        links = " · ".join(f'<a href="{html.escape(f)}">{kind}</a>' for kind, f in (("report", s.html), ("notebook", s.notebook)) if f)
        rows.append(f'<tr class="{s.status}"><td>{name}</td><td>{s.status}</td><td>{html.escape(s.summary)}</td>'
                    f'<td>{links} ({s.seconds:.1f} s)</td></tr>')
    acceptance = verdict_table.rows(*verdict_table.load(run_dir))
    headline = verdict_table.overall(acceptance)
    charts_dir = run_dir / "charts"
    backing = "".join(_figure(stem, caption) for stem, caption in VERDICT_CHARTS.items()
                      if (charts_dir / f"{stem}.png").exists())
    others = "".join(_figure(c.stem, CHART_CAPTIONS.get(c.stem, c.stem))
                     for c in sorted(charts_dir.glob("*.png")) if c.stem not in VERDICT_CHARTS)
    source = _verdict_source(run_dir)
    duration = planning.estimate_against_actual(run_dir)
    duration_html = (f"<h2>Duration</h2><p>{html.escape(planning.estimate_text_after(duration))}</p>"
                     if duration else "")
    artifacts = sorted(p for p in run_dir.glob("*") if p.suffix in (".json", ".jsonl", ".csv", ".txt", ".yml", ".yaml") or p.is_dir())
    statuses = [done[n].status for n in planned if n in done]
    overall = "FAIL" if "fail" in statuses else ("PASS" if len(statuses) == len(planned) else "INCOMPLETE")
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>Runbook run {run_dir.name}</title>
<style>{_STYLE}</style></head><body>
<h1>Redis Cluster expansion: run {html.escape(run_dir.name)}</h1>
<p class="headline">Zero downtime: <strong>{headline}</strong> &mdash; sections: <strong>{overall}</strong>, {len(done)}
of {len(planned)} run.</p>
{verdict_table.to_html(acceptance)}
{source}
{backing}
<h2>Sections</h2>
<table class="sections"><tr><th>section</th><th>verdict</th><th>summary</th><th>executed</th></tr>
{''.join(rows)}</table>
{duration_html}
<h2>Other charts</h2>{others or '<p>none</p>'}
<h2>Artifacts</h2><ul>{''.join(f'<li><a href="{html.escape(p.name)}">{html.escape(p.name)}</a></li>' for p in artifacts)}</ul>
<h2>Audit</h2><p>Who ran which code where and when: <a href="provenance.json">provenance.json</a>; the params as
validated, secrets redacted: <a href="params.redacted.yaml">params.redacted.yaml</a>. <a href="manifest.json">manifest.json</a>,
written last, holds the sha256 of every file here: <code>runbook verify-report {html.escape(str(run_dir))}</code>
shows any file changed, missing or added since.</p>
</body></html>"""
    path = run_dir / "index.html"
    path.write_text(page, encoding="utf-8")
    return path
