//! Reports of a run: the terminal summary, and files chosen by extension (`.json`, `.jsonl`,
//! `.csv`, `.junit.xml`, `.html`). File reports stream results from the store, so their memory
//! does not grow with the number of cases.

mod html;
mod terminal;

use std::io::{BufWriter, Write};
use std::path::Path;

use plumb_store::{RunRecord, Store, StoreError};

use crate::runner::CaseResult;
use crate::summary::{Comparison, Summary, cell_label};

pub use terminal::{Style, render as terminal};

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("cannot write {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("unknown report format for `{0}`")]
    UnknownFormat(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub const FORMATS: &str = ".json, .jsonl, .csv, .junit.xml (or .xml), .html";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Json,
    Jsonl,
    Csv,
    Junit,
    Html,
}

impl Format {
    pub fn from_path(path: &Path) -> Option<Format> {
        let name = path.file_name()?.to_string_lossy().to_lowercase();
        Some(if name.ends_with(".junit.xml") || name.ends_with(".xml") {
            Format::Junit
        } else if name.ends_with(".jsonl") {
            Format::Jsonl
        } else if name.ends_with(".json") {
            Format::Json
        } else if name.ends_with(".csv") {
            Format::Csv
        } else if name.ends_with(".html") || name.ends_with(".htm") {
            Format::Html
        } else {
            return None;
        })
    }
}

/// Writes the report for `run` to `path`, in the format its extension names.
pub fn write_file(
    path: &Path,
    store: &dyn Store,
    run: &RunRecord,
    summary: &Summary,
    extra_comparisons: &[Comparison],
) -> Result<(), ReportError> {
    let format = Format::from_path(path)
        .ok_or_else(|| ReportError::UnknownFormat(path.display().to_string()))?;
    let io = |source| ReportError::Io {
        path: path.display().to_string(),
        source,
    };
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(io)?;
    }
    // Write to a temporary sibling and rename, so a failed write never leaves half a report.
    let partial = path.with_extension("partial");
    let file = std::fs::File::create(&partial).map_err(io)?;
    let mut out = BufWriter::new(file);
    let result = match format {
        Format::Json => write_json(&mut out, store, run, summary, extra_comparisons),
        Format::Jsonl => each_result(store, run, |result| {
            serde_json::to_writer(&mut out, result).map_err(std::io::Error::other)?;
            out.write_all(b"\n")
        }),
        Format::Csv => write_csv(&mut out, store, run),
        Format::Junit => write_junit(&mut out, store, run, summary),
        Format::Html => html::write(&mut out, store, run, summary, extra_comparisons),
    };
    let finished = result.and_then(|()| {
        out.flush().map_err(|e| ReportError::Io {
            path: path.display().to_string(),
            source: e,
        })
    });
    if let Err(error) = finished {
        let _ = std::fs::remove_file(&partial);
        // The format writers do not know the file; name it here, once.
        return Err(match error {
            ReportError::Io { source, .. } => ReportError::Io {
                path: path.display().to_string(),
                source,
            },
            other => other,
        });
    }
    drop(out);
    std::fs::rename(&partial, path).map_err(io)
}

/// Calls `write` with each result of the run, in case order.
fn each_result(
    store: &dyn Store,
    run: &RunRecord,
    mut write: impl FnMut(&CaseResult) -> std::io::Result<()>,
) -> Result<(), ReportError> {
    let mut io_error = None;
    let result = store.for_each_result(&run.id, &mut |record| {
        let result: CaseResult = serde_json::from_str(&record.payload)
            .map_err(|e| StoreError::Internal(format!("bad result payload: {e}")))?;
        if let Err(error) = write(&result) {
            io_error = Some(error);
            return Err(StoreError::Internal("write failed".into()));
        }
        Ok(())
    });
    match (result, io_error) {
        (Ok(()), _) => Ok(()),
        (Err(_), Some(source)) => Err(ReportError::Io {
            path: "report".into(),
            source,
        }),
        (Err(error), None) => Err(ReportError::Store(error)),
    }
}

fn write_json(
    out: &mut impl Write,
    store: &dyn Store,
    run: &RunRecord,
    summary: &Summary,
    extra_comparisons: &[Comparison],
) -> Result<(), ReportError> {
    let io = |source| ReportError::Io {
        path: "report".into(),
        source,
    };
    out.write_all(b"{\"summary\":").map_err(io)?;
    serde_json::to_writer(&mut *out, summary).map_err(|e| io(std::io::Error::other(e)))?;
    out.write_all(b",\"run_comparisons\":").map_err(io)?;
    serde_json::to_writer(&mut *out, extra_comparisons)
        .map_err(|e| io(std::io::Error::other(e)))?;
    out.write_all(b",\"results\":[").map_err(io)?;
    let mut first = true;
    each_result(store, run, |result| {
        if !first {
            out.write_all(b",")?;
        }
        first = false;
        serde_json::to_writer(&mut *out, result).map_err(std::io::Error::other)
    })?;
    out.write_all(b"]}\n").map_err(io)
}

fn write_csv(out: &mut impl Write, store: &dyn Store, run: &RunRecord) -> Result<(), ReportError> {
    let mut writer = csv::Writer::from_writer(out);
    let io = |e: csv::Error| ReportError::Io {
        path: "report".into(),
        source: std::io::Error::other(e),
    };
    writer
        .write_record([
            "prompt",
            "provider",
            "test",
            "repeat",
            "pass",
            "score",
            "latency_ms",
            "prompt_tokens",
            "completion_tokens",
            "cost",
            "cached",
            "output",
            "error",
            "failed_assertions",
        ])
        .map_err(io)?;
    each_result(store, run, |r| {
        let pass = match r.pass {
            Some(true) => "pass",
            Some(false) => "fail",
            None => "unmeasured",
        };
        let failed: Vec<String> = r
            .assertions
            .iter()
            .filter(|a| !a.pass)
            .map(|a| format!("{}: {}", a.label, a.reason))
            .collect();
        writer
            .write_record([
                r.prompt.as_str(),
                &r.provider,
                &r.test,
                &r.repeat_idx.to_string(),
                pass,
                &format!("{:.4}", r.score),
                &format!("{:.1}", r.latency_ms),
                &r.usage.prompt_tokens.to_string(),
                &r.usage.completion_tokens.to_string(),
                &format!("{:.8}", r.cost),
                if r.cached { "true" } else { "false" },
                &r.output,
                r.error.as_deref().unwrap_or(""),
                &failed.join(" | "),
            ])
            .map_err(std::io::Error::other)
    })?;
    writer.flush().map_err(|e| ReportError::Io {
        path: "report".into(),
        source: e,
    })
}

pub(crate) fn xml_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            // XML 1.0 forbids most control characters even escaped.
            c if (c as u32) < 0x20 && !matches!(c, '\n' | '\r' | '\t') => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

fn write_junit(
    out: &mut impl Write,
    store: &dyn Store,
    run: &RunRecord,
    summary: &Summary,
) -> Result<(), ReportError> {
    let io = |source| ReportError::Io {
        path: "report".into(),
        source,
    };
    let total: u64 = summary.cells.iter().map(|c| c.cases).sum();
    let failures: u64 = summary.cells.iter().map(|c| c.failed).sum();
    let errors: u64 = summary.cells.iter().map(|c| c.unmeasured).sum();
    writeln!(out, "<?xml version=\"1.0\" encoding=\"UTF-8\"?>").map_err(io)?;
    writeln!(
        out,
        "<testsuites name=\"{}\" tests=\"{total}\" failures=\"{failures}\" errors=\"{errors}\">",
        xml_escape(&format!("plumb eval {}", run.suite_path))
    )
    .map_err(io)?;
    let mut current: Option<(u32, u32)> = None;
    // Results stream in (prompt, provider, test) order; cells of the summary are looked up
    // as each new (prompt, provider) pair starts.
    let mut ordered: Vec<&crate::summary::Cell> = summary.cells.iter().collect();
    ordered.sort_by_key(|c| (c.prompt_idx, c.provider_idx));
    each_result(store, run, |r| {
        let cell_key = (r.prompt_idx, r.provider_idx);
        if current != Some(cell_key) {
            if current.is_some() {
                writeln!(out, "  </testsuite>")?;
            }
            current = Some(cell_key);
            let cell = ordered
                .iter()
                .find(|c| (c.prompt_idx, c.provider_idx) == cell_key);
            let (tests, failed, unmeasured) = cell
                .map(|c| (c.cases, c.failed, c.unmeasured))
                .unwrap_or_default();
            let name = cell.map(|c| cell_label(c)).unwrap_or_default();
            writeln!(
                out,
                "  <testsuite name=\"{}\" tests=\"{tests}\" failures=\"{failed}\" errors=\"{unmeasured}\">",
                xml_escape(&name)
            )?;
        }
        let name = if r.repeat_idx > 0 {
            format!("{} (repeat {})", r.test, r.repeat_idx + 1)
        } else {
            r.test.clone()
        };
        write!(
            out,
            "    <testcase name=\"{}\" classname=\"{}\" time=\"{:.3}\"",
            xml_escape(&name),
            xml_escape(&format!("{} · {}", r.prompt, r.provider)),
            r.latency_ms / 1000.0
        )?;
        match (r.pass, &r.error) {
            (Some(true), _) => writeln!(out, "/>")?,
            (None, error) => writeln!(
                out,
                ">\n      <error message=\"{}\"/>\n    </testcase>",
                xml_escape(error.as_deref().unwrap_or("unmeasured"))
            )?,
            (Some(false), _) => {
                let reasons: Vec<String> = r
                    .assertions
                    .iter()
                    .filter(|a| !a.pass)
                    .map(|a| format!("{}: {}", a.label, a.reason))
                    .collect();
                writeln!(
                    out,
                    ">\n      <failure message=\"{}\">{}</failure>\n    </testcase>",
                    xml_escape(&reasons.join("; ")),
                    xml_escape(&format!("score {:.3}\noutput: {}", r.score, r.output))
                )?;
            }
        }
        Ok(())
    })?;
    if current.is_some() {
        writeln!(out, "  </testsuite>").map_err(io)?;
    }
    writeln!(out, "</testsuites>").map_err(io)
}
