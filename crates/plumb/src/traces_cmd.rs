//! `plumb traces`: the gateway's request log, read from the project database: follow it,
//! look at one request, export a slice as JSONL.

use std::io::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};
use plumb_store::{SqliteStore, TraceFilter, TraceRecord, TraceStore};
use serde_json::{Value, json};

use crate::{Outcome, StoreArgs, project, user_error};

#[derive(Subcommand, Clone, Debug)]
pub enum TracesCommand {
    /// Print the newest traces, then follow new ones as the gateway writes them
    Tail(TailArgs),
    /// One request in full: attempts, parameters, input, output, feedback
    Show(ShowArgs),
    /// Write traces as JSON Lines (one trace with its feedback per line)
    Export(ExportArgs),
}

#[derive(Args, Clone, Debug)]
pub struct FilterArgs {
    /// Only requests for this model alias (or `prompt:name@label`)
    #[arg(long)]
    model: Option<String>,
    /// Only requests that rendered this registered prompt
    #[arg(long)]
    prompt: Option<String>,
    /// Only requests made with this API key id
    #[arg(long)]
    key: Option<String>,
    /// Only failed requests
    #[arg(long)]
    errors: bool,
    /// Only requests since this long ago (`30m`, `2h`, `7d`) or this time (`2026-11-22T10:00:00Z`)
    #[arg(long)]
    since: Option<String>,
}

#[derive(Args, Clone, Debug)]
pub struct TailArgs {
    /// How many of the newest traces to print first
    #[arg(short = 'n', long, default_value_t = 20)]
    lines: usize,
    /// Print and exit instead of following
    #[arg(long)]
    no_follow: bool,
    /// One JSON object per line
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    filter: FilterArgs,
    #[command(flatten)]
    store: StoreArgs,
}

#[derive(Args, Clone, Debug)]
pub struct ShowArgs {
    /// A trace id (the `x-plumb-trace-id` header) or a response id (`chatcmpl-…`)
    id: String,
    /// The trace as JSON
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    store: StoreArgs,
}

#[derive(Args, Clone, Debug)]
pub struct ExportArgs {
    /// Write here instead of standard output
    #[arg(long, short)]
    output: Option<PathBuf>,
    /// At most this many traces, the newest (0: all)
    #[arg(long, default_value_t = 0)]
    limit: usize,
    #[command(flatten)]
    filter: FilterArgs,
    #[command(flatten)]
    store: StoreArgs,
}

pub async fn run(command: TracesCommand) -> anyhow::Result<Outcome> {
    match command {
        TracesCommand::Tail(args) => tail(args).await,
        TracesCommand::Show(args) => show(args),
        TracesCommand::Export(args) => export(args),
    }
}

fn open(store: &StoreArgs) -> anyhow::Result<std::sync::Arc<SqliteStore>> {
    let cwd = project::current_dir()?;
    project::open_db(store.db.as_deref(), &cwd)
}

/// `30m`, `2h`, `7d`, `45s` ago, or an RFC 3339 time, as Unix milliseconds.
fn parse_since(text: &str) -> anyhow::Result<i64> {
    let bad = || {
        user_error(
            format!("--since `{text}` is neither a duration nor a time"),
            Some("use e.g. `30m`, `2h`, `7d`, or `2026-11-22T10:00:00Z`".into()),
        )
    };
    if let Ok(time) = text.parse::<jiff::Timestamp>() {
        return Ok(time.as_millisecond());
    }
    let split = text.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (number, unit) = text.split_at(split);
    let number: i64 = number.parse().map_err(|_| bad())?;
    let unit_ms = match unit {
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(bad()),
    };
    Ok(plumb_core::now_ms() - number.saturating_mul(unit_ms))
}

fn filter_of(args: &FilterArgs, limit: usize) -> anyhow::Result<TraceFilter> {
    Ok(TraceFilter {
        after_seq: None,
        since: args.since.as_deref().map(parse_since).transpose()?,
        model: args.model.clone(),
        prompt: args.prompt.clone(),
        key_id: args.key.clone(),
        errors_only: args.errors,
        limit,
    })
}

async fn tail(args: TailArgs) -> anyhow::Result<Outcome> {
    let store = open(&args.store)?;
    let mut filter = filter_of(&args.filter, args.lines.max(1))?;
    let color = project::use_color(&std::io::stdout());
    let mut last_seq = None;
    loop {
        let traces = store.list_traces(&filter)?;
        let mut out = std::io::stdout().lock();
        for trace in &traces {
            if args.json {
                writeln!(out, "{}", serde_json::to_string(trace)?)?;
            } else {
                writeln!(out, "{}", line(trace, color))?;
            }
            last_seq = Some(trace.seq);
        }
        out.flush()?;
        drop(out);
        if args.no_follow {
            if last_seq.is_none() && !args.json {
                eprintln!(
                    "plumb: no traces yet; `plumb serve` writes one for every gateway request"
                );
            }
            return Ok(Outcome::Ok);
        }
        // From here on: everything after the last one printed, in pages.
        filter.after_seq = last_seq.or(Some(0));
        filter.limit = 0;
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = tokio::signal::ctrl_c() => return Ok(Outcome::Ok),
        }
    }
}

fn paint(text: &str, code: &str, color: bool) -> String {
    if color {
        format!("\x1b[{code}m{text}\x1b[0m")
    } else {
        text.to_owned()
    }
}

/// One trace on one line: time, status, model → target, latency, tokens, cost, cache, id.
fn line(trace: &TraceRecord, color: bool) -> String {
    let time = project::utc_time(trace.started_at, "%H:%M:%S%.3f");
    let status = if trace.error.is_some() {
        paint(&trace.status.to_string(), "31", color)
    } else {
        paint(&trace.status.to_string(), "32", color)
    };
    let mut text = format!(
        "{time}  {status}  {} → {}  {:.1} ms",
        trace.model,
        trace.target.as_deref().unwrap_or("-"),
        trace.latency_ms
    );
    if let Some(ttft) = trace.ttft_ms {
        text.push_str(&format!(" (ttft {ttft:.1} ms)"));
    }
    if trace.prompt_tokens + trace.completion_tokens > 0 {
        text.push_str(&format!(
            "  {}→{} tok",
            trace.prompt_tokens, trace.completion_tokens
        ));
    }
    if let Some(cost) = trace.cost_usd.filter(|c| *c > 0.0) {
        text.push_str(&format!("  ${cost:.6}"));
    }
    if trace.cache != "off" {
        text.push_str(&format!("  cache:{}", trace.cache));
    }
    let attempts = trace
        .detail
        .get("attempts")
        .and_then(Value::as_array)
        .map_or(0, Vec::len);
    if attempts > 1 {
        text.push_str(&format!("  attempts:{attempts}"));
    }
    if let Some(error) = &trace.error {
        text.push_str(&format!("  {}", paint(error, "31", color)));
    }
    text.push_str(&format!("  {}", paint(&trace.trace_id, "2", color)));
    text
}

fn with_feedback(store: &SqliteStore, trace: &TraceRecord) -> anyhow::Result<Value> {
    let mut value = serde_json::to_value(trace)?;
    if let Some(object) = value.as_object_mut() {
        object.insert("feedback".into(), json!(store.feedback(&trace.trace_id)?));
    }
    Ok(value)
}

fn show(args: ShowArgs) -> anyhow::Result<Outcome> {
    let store = open(&args.store)?;
    let Some(trace) = store.trace(&args.id)? else {
        return Err(user_error(
            format!("no trace `{}`", args.id),
            Some("pass a trace id (x-plumb-trace-id) or a response id; `plumb traces tail --no-follow` lists the newest".into()),
        ));
    };
    let value = with_feedback(&store, &trace)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(Outcome::Ok);
    }
    let mut out = std::io::stdout().lock();
    let row = |out: &mut std::io::StdoutLock<'_>, name: &str, value: String| {
        writeln!(out, "{name:<12} {value}")
    };
    row(&mut out, "trace", trace.trace_id.clone())?;
    row(&mut out, "span", trace.span_id.clone())?;
    if let Some(parent) = &trace.parent_span_id {
        row(&mut out, "parent span", parent.clone())?;
    }
    row(&mut out, "request", trace.request_id.clone())?;
    row(
        &mut out,
        "time",
        project::utc_time(trace.started_at, "%Y-%m-%d %H:%M:%S%.3f UTC"),
    )?;
    row(&mut out, "key", trace.key_id.clone().unwrap_or("-".into()))?;
    row(&mut out, "model", trace.model.clone())?;
    if let Some(prompt) = &trace.prompt {
        let version = trace
            .prompt_version
            .map(|v| format!(" v{v}"))
            .unwrap_or_default();
        row(&mut out, "prompt", format!("{prompt}{version}"))?;
    }
    row(
        &mut out,
        "status",
        match &trace.error {
            Some(error) => format!("{} {error}", trace.status),
            None => trace.status.to_string(),
        },
    )?;
    row(
        &mut out,
        "latency",
        match trace.ttft_ms {
            Some(ttft) => format!("{:.1} ms (first token {ttft:.1} ms)", trace.latency_ms),
            None => format!("{:.1} ms", trace.latency_ms),
        },
    )?;
    row(
        &mut out,
        "tokens",
        format!(
            "{} prompt + {} completion",
            trace.prompt_tokens, trace.completion_tokens
        ),
    )?;
    if let Some(cost) = trace.cost_usd {
        row(&mut out, "cost", format!("${cost:.6}"))?;
    }
    row(&mut out, "cache", trace.cache.clone())?;
    row(&mut out, "stream", trace.stream.to_string())?;
    if let Some(attempts) = trace.detail.get("attempts").and_then(Value::as_array) {
        writeln!(out, "attempts")?;
        for (index, attempt) in attempts.iter().enumerate() {
            let target = attempt.get("target").and_then(Value::as_str).unwrap_or("?");
            let outcome = attempt
                .get("outcome")
                .and_then(Value::as_str)
                .unwrap_or("?");
            let ms = attempt
                .get("ms")
                .and_then(Value::as_f64)
                .map(|ms| format!(" {ms:.1} ms"))
                .unwrap_or_default();
            let message = attempt
                .get("message")
                .or_else(|| attempt.get("reason"))
                .and_then(Value::as_str)
                .map(|m| format!(": {m}"))
                .unwrap_or_default();
            writeln!(out, "  {}. {target} {outcome}{ms}{message}", index + 1)?;
        }
    }
    for key in ["params", "input", "output", "headers", "error_message"] {
        if let Some(part) = trace.detail.get(key).filter(|v| !v.is_null()) {
            writeln!(out, "{key}")?;
            for text_line in serde_json::to_string_pretty(part)?.lines() {
                writeln!(out, "  {text_line}")?;
            }
        }
    }
    if let Some(feedback) = value.get("feedback").and_then(Value::as_array)
        && !feedback.is_empty()
    {
        writeln!(out, "feedback")?;
        for item in feedback {
            writeln!(out, "  {item}")?;
        }
    }
    Ok(Outcome::Ok)
}

fn export(args: ExportArgs) -> anyhow::Result<Outcome> {
    let store = open(&args.store)?;
    let filter = filter_of(&args.filter, args.limit)?;
    let traces = store.list_traces(&filter)?;
    let mut sink: Box<dyn std::io::Write> = match &args.output {
        Some(path) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(path).map_err(|error| {
                user_error(format!("cannot create {}: {error}", path.display()), None)
            })?,
        )),
        None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
    };
    for trace in &traces {
        writeln!(
            sink,
            "{}",
            serde_json::to_string(&with_feedback(&store, trace)?)?
        )?;
    }
    sink.flush()?;
    if let Some(path) = &args.output {
        eprintln!("plumb: wrote {} traces to {}", traces.len(), path.display());
    }
    Ok(Outcome::Ok)
}
