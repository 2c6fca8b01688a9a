//! The self-contained HTML report: no network, no external files. A summary table, the
//! comparisons, and every case with its rendered prompt, output and assertion reasons; columns
//! sort on click and a filter shows failures only.

use std::io::Write;

use plumb_store::{RunRecord, Store};

use super::{ReportError, each_result, xml_escape as escape};
use crate::summary::{Comparison, Summary, short_id};

const STYLE: &str = r#"
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,sans-serif;margin:24px;color:#1c1c1c;background:#fafafa}
h1{font-size:20px;margin:0 0 4px}h2{font-size:16px;margin:28px 0 8px}
.muted{color:#666}table{border-collapse:collapse;width:100%;background:#fff}
th,td{border-bottom:1px solid #e4e4e4;padding:6px 8px;text-align:left;vertical-align:top}
th{background:#f0f0f0;cursor:pointer;user-select:none;white-space:nowrap}th.sorted-asc:after{content:" ▲"}th.sorted-desc:after{content:" ▼"}
.pass{color:#1a7f37;font-weight:600}.fail{color:#cf222e;font-weight:600}.unmeasured{color:#9a6700;font-weight:600}
.num{text-align:right;font-variant-numeric:tabular-nums}pre{white-space:pre-wrap;margin:4px 0;font:12px/1.4 ui-monospace,monospace;background:#f6f8fa;padding:6px;border-radius:4px}
details summary{cursor:pointer}.verdict{margin:4px 0 12px}.sig{font-weight:600}.controls{margin:8px 0}
"#;

const SCRIPT: &str = r#"
document.querySelectorAll('table.sortable').forEach(function(table){
  table.querySelectorAll('th').forEach(function(th, index){
    th.addEventListener('click', function(){
      var body = table.tBodies[0]; var rows = Array.prototype.slice.call(body.rows);
      var asc = !th.classList.contains('sorted-asc');
      table.querySelectorAll('th').forEach(function(h){h.classList.remove('sorted-asc','sorted-desc')});
      th.classList.add(asc ? 'sorted-asc' : 'sorted-desc');
      rows.sort(function(a, b){
        var x = a.cells[index].getAttribute('data-sort') || a.cells[index].textContent;
        var y = b.cells[index].getAttribute('data-sort') || b.cells[index].textContent;
        var nx = parseFloat(x), ny = parseFloat(y);
        var c = (!isNaN(nx) && !isNaN(ny)) ? nx - ny : x.localeCompare(y);
        return asc ? c : -c;
      });
      rows.forEach(function(r){body.appendChild(r)});
    });
  });
});
var only = document.getElementById('failures-only');
if (only) only.addEventListener('change', function(){
  document.querySelectorAll('#cases tbody tr').forEach(function(r){
    r.style.display = (only.checked && r.getAttribute('data-pass') === 'pass') ? 'none' : '';
  });
});
"#;

pub(super) fn write(
    out: &mut impl Write,
    store: &dyn Store,
    run: &RunRecord,
    summary: &Summary,
    run_comparisons: &[Comparison],
) -> Result<(), ReportError> {
    let io = |source| ReportError::Io {
        path: "report".into(),
        source,
    };
    let title = format!("plumb eval · {}", summary.suite_path);
    write!(
        out,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width\">\
         <title>{}</title><style>{STYLE}</style></head><body>",
        escape(&title)
    )
    .map_err(io)?;
    write!(
        out,
        "<h1>{}</h1><div class=\"muted\">run <code>{}</code> ({}) · {}</div>",
        escape(&title),
        escape(&run.id),
        escape(&summary.status),
        escape(&summary.description)
    )
    .map_err(io)?;

    write!(
        out,
        "<h2>Summary</h2><table class=\"sortable\"><thead><tr><th>prompt</th><th>provider</th><th>passed</th>\
         <th>pass rate</th><th>95% CI</th><th>unmeasured</th><th>mean score</th><th>tokens</th><th>cost (USD)</th>\
         <th>p50 latency</th><th>p95 latency</th></tr></thead><tbody>"
    )
    .map_err(io)?;
    for cell in &summary.cells {
        let rate = cell
            .pass_rate
            .map(|r| format!("{:.1}%", r * 100.0))
            .unwrap_or_else(|| "–".into());
        write!(
            out,
            "<tr><td>{}</td><td>{}</td><td class=\"num\">{}/{}</td><td class=\"num\" data-sort=\"{}\">{}</td>\
             <td class=\"num\">{:.1}–{:.1}%</td><td class=\"num\">{}</td><td class=\"num\">{:.3}</td><td class=\"num\">{}</td>\
             <td class=\"num\">{:.6}</td><td class=\"num\">{:.0} ms</td><td class=\"num\">{:.0} ms</td></tr>",
            escape(&cell.prompt),
            escape(&cell.provider),
            cell.passed,
            cell.passed + cell.failed,
            cell.pass_rate.unwrap_or(-1.0),
            rate,
            cell.pass_rate_ci.0 * 100.0,
            cell.pass_rate_ci.1 * 100.0,
            cell.unmeasured,
            cell.mean_score,
            cell.prompt_tokens + cell.completion_tokens,
            cell.cost,
            if cell.latency_p50_ms.is_nan() { 0.0 } else { cell.latency_p50_ms },
            if cell.latency_p95_ms.is_nan() { 0.0 } else { cell.latency_p95_ms },
        )
        .map_err(io)?;
    }
    write!(out, "</tbody></table>").map_err(io)?;

    let comparisons: Vec<&Comparison> = summary.comparisons.iter().chain(run_comparisons).collect();
    if !comparisons.is_empty() {
        write!(out, "<h2>Comparisons</h2>").map_err(io)?;
        for c in comparisons {
            write!(
                out,
                "<div><b>{}</b> vs <b>{}</b><div class=\"verdict{}\">{}{}<br><span class=\"muted\">per case: {} better, {} worse, {} tied</span></div></div>",
                escape(&c.b),
                escape(&c.a),
                if c.significant { " sig" } else { "" },
                escape(&c.verdict),
                c.measures
                    .iter()
                    .skip(1)
                    .map(|m| format!("<br>{}", escape(&m.describe(c.measures.len()))))
                    .collect::<String>(),
                c.b_wins,
                c.b_losses,
                c.ties,
            )
            .map_err(io)?;
        }
    }

    write!(
        out,
        "<h2>Cases</h2><div class=\"controls\"><label><input type=\"checkbox\" id=\"failures-only\"> failures only</label></div>\
         <table id=\"cases\" class=\"sortable\"><thead><tr><th>prompt</th><th>provider</th><th>test</th><th>result</th>\
         <th>score</th><th>latency</th><th>output and details</th></tr></thead><tbody>"
    )
    .map_err(io)?;
    each_result(store, run, |r| {
        let (class, label) = match r.pass {
            Some(true) => ("pass", "pass"),
            Some(false) => ("fail", "fail"),
            None => ("unmeasured", "unmeasured"),
        };
        let test = if r.repeat_idx > 0 {
            format!("{} (repeat {})", r.test, r.repeat_idx + 1)
        } else {
            r.test.clone()
        };
        write!(
            out,
            "<tr data-pass=\"{class}\"><td>{}</td><td>{}</td><td>{}</td><td class=\"{class}\">{label}</td>\
             <td class=\"num\">{:.3}</td><td class=\"num\" data-sort=\"{:.3}\">{:.0} ms{}</td><td>",
            escape(&r.prompt),
            escape(&r.provider),
            escape(&test),
            r.score,
            r.latency_ms,
            r.latency_ms,
            if r.cached { " (cached)" } else { "" },
        )?;
        match &r.error {
            Some(error) => write!(out, "<pre>{}</pre>", escape(error))?,
            None => write!(out, "<pre>{}</pre>", escape(&r.output))?,
        }
        write!(
            out,
            "<details><summary>prompt, vars and assertions</summary>"
        )?;
        for message in &r.messages {
            write!(
                out,
                "<div class=\"muted\">{}</div><pre>{}</pre>",
                message.role.as_str(),
                escape(&message.content)
            )?;
        }
        // Retrieved chunks read better as a list than as JSON; `context` and `contexts` are
        // the same chunks again.
        let retrieved = r.vars.get("retrieved").and_then(|v| v.as_array());
        let mut vars = r.vars.clone();
        if retrieved.is_some() {
            for key in crate::retrieval::FILLED_VARS {
                vars.remove(key);
            }
        }
        write!(
            out,
            "<div class=\"muted\">vars</div><pre>{}</pre>",
            escape(&serde_json::to_string_pretty(&vars).unwrap_or_default())
        )?;
        if let Some(chunks) = retrieved {
            write!(out, "<div class=\"muted\">retrieved chunks</div><ol>")?;
            for chunk in chunks {
                let text = |key: &str| chunk.get(key).and_then(|v| v.as_str()).unwrap_or("");
                let place = match text("place") {
                    "" => text("source"),
                    place => place,
                };
                write!(
                    out,
                    "<li><code>{}</code><pre>{}</pre></li>",
                    escape(place),
                    escape(text("text"))
                )?;
            }
            write!(out, "</ol>")?;
        }
        write!(out, "<ul>")?;
        for assertion in &r.assertions {
            write!(
                out,
                "<li><span class=\"{}\">{}</span> <code>{}</code> score {:.3}{} — {}</li>",
                if assertion.pass { "pass" } else { "fail" },
                if assertion.pass { "✓" } else { "✗" },
                escape(&assertion.label),
                assertion.score,
                if assertion.weight == 0.0 {
                    " (weight 0: not gating)"
                } else {
                    ""
                },
                escape(&assertion.reason)
            )?;
        }
        write!(out, "</ul></details></td></tr>")
    })?;
    write!(
        out,
        "</tbody></table><p class=\"muted\">plumb · run {}</p><script>{SCRIPT}</script></body></html>",
        escape(short_id(&run.id))
    )
    .map_err(io)
}
