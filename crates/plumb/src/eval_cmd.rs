//! `plumb eval`: load a suite, build its providers, run it, report, and decide the gate.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use clap::{Args, ValueEnum};
use plumb_core::{ChatModel, Embedder, ModelError, SourceError};
use plumb_eval::report::{self, Style};
use plumb_eval::summary::{self, Comparison, compare_runs, is_regression};
use plumb_eval::{CacheMode, RunOptions, Suite};
use plumb_provider::{ProviderContext, ProviderOptions, models};
use plumb_registry::{ProjectConfig, Registry};
use plumb_store::{RunStatus, SqliteStore, Store};

use crate::progress::ProgressObserver;
use crate::{Outcome, StoreArgs, project, user_error};

#[derive(Args, Clone, Debug)]
pub struct EvalArgs {
    /// The suite file [default: evals/suite.yaml, then promptfooconfig.yaml]
    pub suite: Option<PathBuf>,
    /// Cases in flight at once (each provider also has its own limit; local models run one at a time)
    #[arg(short = 'j', long, value_name = "N")]
    pub concurrency: Option<usize>,
    /// Run every case N times and report the flake rate per test
    #[arg(long, value_name = "N")]
    pub repeat: Option<u32>,
    /// Response cache: read-write records and replays; read-only replays and fails on a miss (CI
    /// without API keys); off calls the model every time
    #[arg(long, value_enum, default_value_t = CacheArg::ReadWrite)]
    pub cache: CacheArg,
    /// Same as `--cache off`
    #[arg(long, conflicts_with = "cache")]
    pub no_cache: bool,
    /// Write a report; the extension picks the format: .json, .jsonl, .csv, .junit.xml, .html (repeatable)
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    pub outputs: Vec<PathBuf>,
    /// Compare with an earlier run (id, unique prefix or suffix, or `latest`), case by case
    #[arg(long, value_name = "RUN")]
    pub compare: Option<String>,
    /// Exit 1 only when this run is significantly worse than RUN on pass rate, mean score or a
    /// named metric (Holm-corrected, α 0.05)
    #[arg(long, value_name = "RUN")]
    pub fail_on_regression: Option<String>,
    /// Finish an interrupted run: cases it already has are kept, the rest run now
    #[arg(long, value_name = "RUN")]
    pub resume: Option<String>,
    /// The grader of judged assertions (llm-rubric, g-eval, factuality, …) that name none;
    /// overrides `defaultTest.options.provider` (e.g. local:smollm2-135m, openai:gpt-4.1-mini)
    #[arg(long, value_name = "PROVIDER")]
    pub grader: Option<String>,
    /// Call nothing: count the model calls, judge calls, tokens and estimated cost per provider
    #[arg(long)]
    pub dry_run: bool,
    /// Stop before the run would spend more than USD on models and judges (each case starts only
    /// if its estimated cost fits); finished results are kept and `--resume` goes on
    #[arg(long, value_name = "USD", value_parser = parse_cost)]
    pub max_cost: Option<f64>,
    /// Do not draw the progress bar
    #[arg(long)]
    pub no_progress: bool,
    #[command(flatten)]
    pub store: StoreArgs,
}

fn parse_cost(text: &str) -> Result<f64, String> {
    let value: f64 = text
        .trim_start_matches('$')
        .parse()
        .map_err(|_| format!("`{text}` is not an amount in USD (e.g. 0.50)"))?;
    if value.is_finite() && value >= 0.0 {
        Ok(value)
    } else {
        Err(format!("`{text}`: the budget must be ≥ 0"))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum CacheArg {
    ReadWrite,
    ReadOnly,
    Off,
}

impl From<CacheArg> for CacheMode {
    fn from(value: CacheArg) -> CacheMode {
        match value {
            CacheArg::ReadWrite => CacheMode::ReadWrite,
            CacheArg::ReadOnly => CacheMode::ReadOnly,
            CacheArg::Off => CacheMode::Off,
        }
    }
}

fn default_suite(cwd: &Path) -> anyhow::Result<PathBuf> {
    for candidate in [
        "evals/suite.yaml",
        "promptfooconfig.yaml",
        "promptfooconfig.yml",
    ] {
        let path = cwd.join(candidate);
        if path.is_file() {
            return Ok(PathBuf::from(candidate));
        }
    }
    Err(user_error(
        "no suite given, and neither evals/suite.yaml nor promptfooconfig.yaml exists here",
        Some("pass a suite file (`plumb eval path/to/suite.yaml`) or run `plumb init`".to_owned()),
    ))
}

pub async fn run(args: EvalArgs) -> anyhow::Result<Outcome> {
    let cwd = project::current_dir()?;
    let db_path = project::database_path(args.store.db.as_deref(), &cwd);
    let store = project::open_db(Some(&db_path), &cwd)?;
    let suite_path = match (&args.suite, &args.resume) {
        (Some(path), _) => path.clone(),
        (None, Some(run_id)) => {
            let run = store
                .find_run(run_id)
                .map_err(|e| user_error(e.to_string(), None))?;
            PathBuf::from(run.suite_path)
        }
        (None, None) => default_suite(&cwd)?,
    };
    let request = EvalRequest {
        suite_path,
        concurrency: args.concurrency,
        repeat: args.repeat,
        cache: if args.no_cache {
            CacheMode::Off
        } else {
            args.cache.into()
        },
        outputs: args.outputs,
        compare: args.compare,
        fail_on_regression: args.fail_on_regression,
        resume: args.resume,
        grader: args.grader,
        dry_run: args.dry_run,
        max_cost: args.max_cost,
        progress: !args.no_progress,
        gate: true,
        db_path,
    };
    execute(request, store)
        .await
        .map(|finished| finished.outcome)
}

pub struct EvalRequest {
    pub suite_path: PathBuf,
    pub concurrency: Option<usize>,
    pub repeat: Option<u32>,
    pub cache: CacheMode,
    pub outputs: Vec<PathBuf>,
    pub compare: Option<String>,
    pub fail_on_regression: Option<String>,
    pub resume: Option<String>,
    /// `--grader`: the default grader of judged assertions.
    pub grader: Option<String>,
    /// Estimate instead of running.
    pub dry_run: bool,
    pub max_cost: Option<f64>,
    pub progress: bool,
    /// Whether a failing gate exits 1 (the quickstart only reports it).
    pub gate: bool,
    /// Where the store lives, for messages.
    pub db_path: PathBuf,
}

pub struct Finished {
    pub outcome: Outcome,
}

/// Installs an embedded model named `local:<catalog name>` on first use.
pub(crate) fn pull_if_missing(id: &str, ctx: &ProviderContext) -> anyhow::Result<()> {
    if let Some(name) = id.strip_prefix("local:")
        && let Some(entry) = models::entry(name)
        && !models::installed_path(entry, &ctx.models_dir).exists()
    {
        eprintln!("plumb: model `{name}` is not installed; pulling it now (once)…");
        for line in models::pull(&[entry], &ctx.models_dir, false)? {
            eprintln!("  {line}");
        }
    }
    Ok(())
}

/// Builds the suite's models, pulling embedded models that are not installed yet.
fn build_models(
    suite: &Suite,
    ctx: &ProviderContext,
    check_ready: bool,
    pull: bool,
) -> anyhow::Result<Vec<Arc<dyn ChatModel>>> {
    let mut built = Vec::new();
    for spec in &suite.providers {
        let options: ProviderOptions = serde_json::from_value(serde_json::Value::Object(
            spec.options.clone(),
        ))
        .map_err(|error| {
            let mut located = spec.location.clone();
            located.message = format!("provider `{}` config: {error}", spec.id);
            located
        })?;
        if pull {
            pull_if_missing(&spec.id, ctx)?;
        }
        let model = plumb_provider::build(&spec.id, &options, ctx)
            .map_err(|error| locate(error, &spec.location))?;
        if check_ready {
            model
                .preflight()
                .map_err(|error| locate(error, &spec.location))?;
        }
        built.push(model);
    }
    Ok(built)
}

/// Builds the embedders the suite's `similar` assertions name, pulling the embedded one if
/// it is not installed yet.
pub(crate) fn build_embedders(
    suite: &Suite,
    ctx: &ProviderContext,
) -> anyhow::Result<HashMap<String, Arc<dyn Embedder>>> {
    let mut built = HashMap::new();
    for id in suite.embedders() {
        pull_if_missing(&id, ctx)?;
        let embedder = plumb_provider::build_embedder(&id, &ProviderOptions::default(), ctx)
            .map_err(|error| {
                let mut located =
                    SourceError::in_file(&suite.path, format!("`similar`: {}", error.message));
                located.hint = error.hint.clone();
                located
            })?;
        built.insert(id, embedder);
    }
    Ok(built)
}

/// Builds the graders of the suite's judged assertions (and `--grader`). A grader that cannot
/// be built is kept as its error: the assertions it grades are unmeasured with that reason and
/// the run goes on.
pub(crate) fn build_graders(
    suite: &Suite,
    cli_grader: Option<&str>,
    ctx: &ProviderContext,
    pull: bool,
) -> plumb_eval::judge::Graders {
    // `--grader` replaces the suite's default grader: no need to build that one.
    let suite_graders = suite.graders(cli_grader.is_none());
    let mut specs: Vec<(String, String, serde_json::Map<String, serde_json::Value>)> =
        suite_graders
            .iter()
            .map(|(key, grader)| {
                (
                    key.clone(),
                    grader.spec.id.clone(),
                    grader.spec.options.clone(),
                )
            })
            .collect();
    if let Some(id) = cli_grader
        && !specs.iter().any(|(key, _, _)| key == id)
    {
        specs.push((id.to_owned(), id.to_owned(), serde_json::Map::new()));
    }
    let mut graders = plumb_eval::judge::Graders {
        default: cli_grader
            .map(str::to_owned)
            .or_else(|| suite.default_grader.as_ref().map(|g| g.key.clone())),
        params: suite_graders
            .iter()
            .map(|(key, grader)| (key.clone(), grader.spec.params.clone()))
            .collect(),
        ..Default::default()
    };
    if !suite.has_judged() {
        return graders;
    }
    for (key, id, config) in specs {
        let built = (|| -> Result<Arc<dyn ChatModel>, String> {
            let options: ProviderOptions =
                serde_json::from_value(serde_json::Value::Object(config))
                    .map_err(|error| format!("config: {error}"))?;
            if pull {
                pull_if_missing(&id, ctx).map_err(|error| error.to_string())?;
            }
            plumb_provider::build(&id, &options, ctx).map_err(|error| match &error.hint {
                Some(hint) => format!("{error} ({hint})"),
                None => error.to_string(),
            })
        })();
        if let Err(error) = &built {
            eprintln!(
                "warning: grader `{id}` cannot be used: {error}; the assertions it grades are unmeasured"
            );
        }
        graders.models.insert(key, built);
    }
    graders
}

fn locate(error: ModelError, at: &SourceError) -> anyhow::Error {
    let mut located = at.clone();
    located.message = error.message.clone();
    located.hint = error.hint.clone();
    anyhow::Error::new(located)
}

pub async fn execute(request: EvalRequest, db: Arc<SqliteStore>) -> anyhow::Result<Finished> {
    // Suites may name registry prompts (`triage@production`); evaluating needs no policy.
    let registry = Registry::new(db.clone(), ProjectConfig::default());
    let suite = Suite::load_with(&request.suite_path, &registry)?;
    for prompt in &suite.prompts {
        if let Some(warning) = &prompt.warning {
            eprintln!("warning: {warning}");
        }
    }
    let store: Arc<dyn Store> = db;
    let base_dir = request
        .suite_path
        .parent()
        .map(Path::to_owned)
        .unwrap_or_default();
    let ctx = ProviderContext::new(&base_dir);
    let mut suite = suite;
    crate::rag_cmd::attach_retrieval(&mut suite, &base_dir, &ctx).await?;

    let (options, resume) = match &request.resume {
        Some(run_id) => {
            let run = store
                .find_run(run_id)
                .map_err(|e| user_error(e.to_string(), None))?;
            let config: plumb_eval::runner::RunConfig =
                serde_json::from_str(&run.config).map_err(|e| {
                    user_error(
                        format!("run {} has an unreadable config: {e}", run.id),
                        None,
                    )
                })?;
            if config.suite_hash != suite.content_hash {
                return Err(user_error(
                    format!(
                        "the suite changed since run {} started, so it cannot be resumed",
                        run.id
                    ),
                    Some("start a new run instead (drop `--resume`)".to_owned()),
                ));
            }
            if run.status == RunStatus::Completed {
                eprintln!(
                    "plumb: run {} is already complete; reporting it",
                    summary::short_id(&run.id)
                );
            }
            // The budget is this command's: a resumed run may get a new one.
            let options = RunOptions {
                max_cost: request.max_cost,
                ..config.options
            };
            (options, Some(run.id))
        }
        None => (
            RunOptions {
                concurrency: request
                    .concurrency
                    .or(suite.max_concurrency)
                    .unwrap_or(8)
                    .max(1),
                repeat: request.repeat.or(suite.repeat).unwrap_or(1).max(1),
                cache: request.cache,
                max_cost: request.max_cost,
            },
            None,
        ),
    };
    // Baselines are resolved before the run, so `latest` means the run before this one.
    let mut baselines = Vec::new();
    for reference in request
        .compare
        .iter()
        .chain(request.fail_on_regression.iter())
    {
        let baseline = store.find_run(reference).map_err(|e| {
            user_error(
                format!("baseline: {e}"),
                Some("list runs with `plumb runs list`".to_owned()),
            )
        })?;
        baselines.push(baseline);
    }
    if request.dry_run {
        return dry_run(&request, &suite, &ctx, store, &options).await;
    }
    // With a read-only cache no call is made, so missing keys are no reason to refuse.
    let models = build_models(&suite, &ctx, options.cache != CacheMode::ReadOnly, true)?;
    let embedders = build_embedders(&suite, &ctx)?;
    let graders = build_graders(&suite, request.grader.as_deref(), &ctx, true);
    let suite = Arc::new(suite);

    let cancel = Arc::new(AtomicBool::new(false));
    let interrupt = cancel.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            interrupt.store(true, Ordering::Relaxed);
            eprintln!(
                "\nplumb: interrupted; finishing the cases in flight (Ctrl-C again to quit at once)"
            );
            if tokio::signal::ctrl_c().await.is_ok() {
                std::process::exit(130);
            }
        }
    });

    // Kept for the judges' calibration after the run (the run takes its own).
    let calibration_backends = suite
        .calibration
        .as_ref()
        .filter(|c| c.min_kappa.is_some())
        .map(|_| (graders.clone(), embedders.clone()));

    let observer = Arc::new(ProgressObserver::new(request.progress));
    let outcome = plumb_eval::run(
        suite.clone(),
        plumb_eval::Backends {
            models,
            embedders,
            graders,
        },
        store.clone(),
        options,
        resume,
        observer.clone(),
        cancel,
    )
    .await;
    observer.finish();
    let outcome = match outcome {
        Ok(outcome) => outcome,
        Err(plumb_eval::RunError::Fatal { provider, error }) => {
            let hint = error.hint.clone();
            return Err(user_error(format!("{provider}: {error}"), hint));
        }
        Err(error) => return Err(anyhow::Error::new(error)),
    };

    if outcome.select_best.comparisons > 0 {
        eprintln!(
            "plumb: select-best: {} comparisons asked in both orders; {} picked differently \
             when the order was reversed (position bias: left unmeasured)",
            outcome.select_best.comparisons, outcome.select_best.position_bias
        );
    }
    let run = store.find_run(&outcome.run_id)?;
    let current = plumb_eval::summarize(store.as_ref(), &run)?;
    let mut run_comparisons: Vec<Comparison> = Vec::new();
    for baseline_run in &baselines {
        if baseline_run.id == run.id {
            continue;
        }
        let baseline = plumb_eval::summarize(store.as_ref(), baseline_run)?;
        for comparison in compare_runs(&current, &baseline) {
            if !run_comparisons
                .iter()
                .any(|c| c.a == comparison.a && c.b == comparison.b)
            {
                run_comparisons.push(comparison);
            }
        }
    }
    let summary = current.0;

    let style = Style {
        color: project::use_color(&std::io::stdout()),
    };
    print_stdout(&report::terminal(&summary, &run_comparisons, style))?;

    let mut outputs = request.outputs.clone();
    outputs.extend(suite.output_paths.iter().cloned());
    for path in &outputs {
        report::write_file(path, store.as_ref(), &run, &summary, &run_comparisons)?;
        eprintln!("plumb: wrote {}", path.display());
    }
    eprintln!(
        "plumb: {} cases in {:.1}s · run {} · database {}",
        summary.cells.iter().map(|c| c.cases).sum::<u64>(),
        outcome.elapsed.as_secs_f64(),
        summary::short_id(&outcome.run_id),
        request.db_path.display()
    );

    // `calibration.minKappa`: judged metrics may gate only when their judges agree with the
    // human labels; the labeled outputs are judged through the cache (once per judge prompt).
    let mut untrusted = Vec::new();
    if let (Some(config), Some((graders, embedders))) = (&suite.calibration, calibration_backends)
        && let Some(min_kappa) = config.min_kappa
        && !outcome.budget_reached
    {
        let calibrator = plumb_eval::calibrate::Calibrator {
            graders: Arc::new(graders),
            store: store.clone(),
            cache: request.cache,
            embedders: Arc::new(embedders),
            concurrency: 8,
        };
        let calibration = calibrator
            .calibrate(&suite, &config.labels, &config.rows, 1)
            .await;
        print_stdout(&format!(
            "\nJudge calibration ({} labeled outputs in {})\n{}",
            config.rows.len(),
            config.labels.display(),
            plumb_eval::calibrate::render(&calibration, Some(min_kappa))
        ))?;
        untrusted = calibration.untrusted(min_kappa);
    }

    if outcome.budget_reached {
        eprintln!(
            "plumb: stopped at the budget: ${:.4} spent of --max-cost ${:.4}; the next case would \
             have gone over. Finished cases are kept: raise the budget and go on with \
             `plumb eval {} --resume {} --max-cost <USD>`",
            outcome.spent,
            request.max_cost.unwrap_or(0.0),
            request.suite_path.display(),
            summary::short_id(&outcome.run_id)
        );
        return Ok(Finished {
            outcome: Outcome::GateFailed,
        });
    }
    if outcome.status == RunStatus::Interrupted {
        eprintln!(
            "plumb: the run was interrupted; finish it with `plumb eval {} --resume {}`",
            request.suite_path.display(),
            summary::short_id(&outcome.run_id)
        );
        return Ok(Finished {
            outcome: Outcome::Interrupted,
        });
    }
    if !request.gate {
        return Ok(Finished {
            outcome: Outcome::Ok,
        });
    }
    for problem in &untrusted {
        eprintln!(
            "plumb: gate failed: judged metrics may not gate: {problem} (fix the rubric or the \
             grader, then check with `plumb judge calibrate {}`)",
            request.suite_path.display()
        );
    }
    let failed_gate = if let Some(reference) = &request.fail_on_regression {
        let regressions: Vec<&Comparison> = run_comparisons
            .iter()
            .filter(|c| is_regression(c))
            .collect();
        if regressions.is_empty() {
            eprintln!("plumb: gate holds: no significant regression against run {reference}");
            false
        } else {
            for regression in regressions {
                let worse: Vec<String> = regression
                    .measures
                    .iter()
                    .filter(|m| m.significant && m.diff < 0.0)
                    .map(|m| m.describe(regression.measures.len()))
                    .collect();
                eprintln!(
                    "plumb: gate failed: significant regression of {} against {}: {}",
                    regression.b,
                    regression.a,
                    worse.join("; ")
                );
            }
            true
        }
    } else {
        match summary::gate(&summary, &suite.thresholds) {
            None => {
                eprintln!("plumb: gate holds");
                false
            }
            Some(problems) => {
                for problem in problems {
                    eprintln!("plumb: gate failed: {problem}");
                }
                true
            }
        }
    };
    let failed_gate = failed_gate || !untrusted.is_empty();
    Ok(Finished {
        outcome: if failed_gate {
            Outcome::GateFailed
        } else {
            Outcome::Ok
        },
    })
}

fn print_stdout(text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(text.as_bytes())?;
    stdout.flush()?;
    Ok(())
}

/// `--dry-run`: what the run would call and cost, without a run record or a single call.
async fn dry_run(
    request: &EvalRequest,
    suite: &Suite,
    ctx: &ProviderContext,
    store: Arc<dyn Store>,
    options: &RunOptions,
) -> anyhow::Result<Finished> {
    let models = build_models(suite, ctx, false, false)?;
    for (model, spec) in models.iter().zip(&suite.providers) {
        if options.cache != CacheMode::ReadOnly
            && let Err(error) = model.preflight()
        {
            eprintln!(
                "warning: provider `{}`: a real run would stop: {error}",
                spec.label
            );
        }
    }
    let graders = build_graders(suite, request.grader.as_deref(), ctx, false);
    let plan = plumb_eval::plan::plan(suite, &models, &graders, store, options).await;
    print_stdout(&render_plan(request, suite, options, &plan))?;
    Ok(Finished {
        outcome: Outcome::Ok,
    })
}

fn render_plan(
    request: &EvalRequest,
    suite: &Suite,
    options: &RunOptions,
    plan: &plumb_eval::plan::Plan,
) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "plumb eval --dry-run {}: {} cases ({} × {} × {} × {}); nothing was called",
        request.suite_path.display(),
        plan.cases,
        count(suite.prompts.len(), "prompt"),
        count(suite.providers.len(), "provider"),
        count(suite.tests.len(), "test"),
        count(options.repeat as usize, "repeat"),
    );
    let width = plan
        .lines
        .keys()
        .map(|k| k.chars().count())
        .max()
        .unwrap_or(5)
        .clamp(5, 48);
    let _ = writeln!(
        out,
        "  {:<width$} {:>7} {:>7} {:>14} {:>18} {:>12}",
        "calls to", "calls", "cached", "prompt tokens", "completion tokens", "cost (est.)"
    );
    let row = |out: &mut String, name: &str, line: &plumb_eval::plan::Line| {
        let cost = if line.priced || line.cost > 0.0 {
            format!("${:.4}", line.cost)
        } else {
            "no price".to_owned()
        };
        let name: String = name.chars().take(width).collect();
        let _ = writeln!(
            out,
            "  {name:<width$} {:>7} {:>7} {:>14} {:>18} {:>12}",
            line.calls, line.cached, line.prompt_tokens, line.completion_tokens, cost
        );
    };
    for (name, line) in &plan.lines {
        row(&mut out, name, line);
    }
    let total = plan.total();
    row(&mut out, "total", &total);
    let _ = writeln!(
        out,
        "Completion tokens count each call's max_tokens ({} when unset), so costs are upper \
         estimates; judge prompts hold outputs not produced yet, so their cache hits are not \
         known before the run. \"no price\": local and mock models cost nothing; an API model \
         without a known price is counted as $0.",
        plumb_eval::plan::UNSET_MAX_TOKENS
    );
    if let Some(limit) = request.max_cost {
        let verdict = if total.cost <= limit {
            "fits in"
        } else {
            "exceeds"
        };
        let _ = writeln!(
            out,
            "The estimate (${:.4}) {verdict} --max-cost ${limit:.4}.",
            total.cost
        );
    }
    out
}

fn count(n: usize, noun: &str) -> String {
    format!("{n} {noun}{}", if n == 1 { "" } else { "s" })
}
