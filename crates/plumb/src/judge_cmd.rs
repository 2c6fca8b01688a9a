//! `plumb judge calibrate`: how far the suite's judges agree with human labels.

use std::path::PathBuf;
use std::sync::Arc;

use clap::{Args, Subcommand};
use plumb_eval::calibrate::{self, Calibrator};
use plumb_eval::{CacheMode, Suite};
use plumb_provider::ProviderContext;
use plumb_registry::{ProjectConfig, Registry};

use crate::eval_cmd::{CacheArg, build_embedders, build_graders};
use crate::{Outcome, StoreArgs, project, user_error};

#[derive(Subcommand, Debug)]
pub enum JudgeCommand {
    /// Judge human-labeled outputs with the suite's judges and report agreement, Cohen's κ,
    /// TPR/TNR per criterion and self-consistency (verdict flips over repeated judgements)
    Calibrate(CalibrateArgs),
}

#[derive(Args, Debug)]
pub struct CalibrateArgs {
    /// The suite whose judged assertions are calibrated
    pub suite: PathBuf,
    /// The labels CSV (test, criterion, output, label) [default: the suite's `calibration.labels`]
    #[arg(long, value_name = "FILE")]
    pub labels: Option<PathBuf>,
    /// Judgements per labeled output, for the flip rate [default: `calibration.repeats`, else 3]
    #[arg(long, value_name = "K", value_parser = clap::value_parser!(u32).range(1..))]
    pub repeats: Option<u32>,
    /// Exit 1 when any criterion's κ is below this [default: `calibration.minKappa`]
    #[arg(long, value_name = "KAPPA", allow_negative_numbers = true)]
    pub min_kappa: Option<f64>,
    /// The grader of judged assertions that name none (overrides `defaultTest.options.provider`)
    #[arg(long, value_name = "PROVIDER")]
    pub grader: Option<String>,
    /// Response cache for the judge calls (each repeat has its own entries)
    #[arg(long, value_enum, default_value_t = CacheArg::ReadWrite)]
    pub cache: CacheArg,
    /// Judge calls in flight at once
    #[arg(short = 'j', long, value_name = "N", default_value_t = 8)]
    pub concurrency: usize,
    /// Write the calibration as JSON
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    pub output: Option<PathBuf>,
    #[command(flatten)]
    pub store: StoreArgs,
}

pub async fn run(command: JudgeCommand) -> anyhow::Result<Outcome> {
    match command {
        JudgeCommand::Calibrate(args) => calibrate_cmd(args).await,
    }
}

async fn calibrate_cmd(args: CalibrateArgs) -> anyhow::Result<Outcome> {
    let cwd = project::current_dir()?;
    let db_path = project::database_path(args.store.db.as_deref(), &cwd);
    let db = project::open_db(Some(&db_path), &cwd)?;
    let registry = Registry::new(db.clone(), ProjectConfig::default());
    let suite = Suite::load_with(&args.suite, &registry)?;
    if !suite.has_judged() {
        return Err(user_error(
            format!(
                "{} has no judged assertions to calibrate",
                args.suite.display()
            ),
            Some(
                "calibration compares llm-rubric, g-eval, factuality, … verdicts with human labels"
                    .into(),
            ),
        ));
    }
    let (labels_path, rows) = match (&args.labels, &suite.calibration) {
        (Some(path), _) => (path.clone(), calibrate::load_labels(path, &suite)?),
        (None, Some(config)) => (config.labels.clone(), config.rows.clone()),
        (None, None) => {
            return Err(user_error(
                "no labels: pass `--labels human.csv` or set `calibration.labels` in the suite",
                Some("a CSV with the columns test, criterion, output, label".into()),
            ));
        }
    };
    let config = suite.calibration.as_ref();
    let repeats = args
        .repeats
        .or(config.and_then(|c| c.repeats))
        .unwrap_or(3)
        .max(1);
    let min_kappa = args.min_kappa.or(config.and_then(|c| c.min_kappa));
    if let Some(kappa) = min_kappa
        && !(-1.0..=1.0).contains(&kappa)
    {
        return Err(user_error(
            format!("--min-kappa {kappa}: Cohen's κ is in [-1, 1]"),
            None,
        ));
    }
    let base_dir = args
        .suite
        .parent()
        .map(std::path::Path::to_owned)
        .unwrap_or_default();
    let ctx = ProviderContext::new(&base_dir);
    let embedders = build_embedders(&suite, &ctx)?;
    let graders = build_graders(&suite, args.grader.as_deref(), &ctx, true);
    eprintln!(
        "plumb: judging {} labeled outputs from {} × {repeats}…",
        rows.len(),
        labels_path.display()
    );
    let calibrator = Calibrator {
        graders: Arc::new(graders),
        store: db,
        cache: CacheMode::from(args.cache),
        embedders: Arc::new(embedders),
        concurrency: args.concurrency,
    };
    let calibration = calibrator
        .calibrate(&suite, &labels_path, &rows, repeats)
        .await;
    println!(
        "plumb judge calibrate {} · {} labeled outputs · {repeats} judgement{} each",
        args.suite.display(),
        rows.len(),
        if repeats == 1 { "" } else { "s" }
    );
    print!("{}", calibrate::render(&calibration, min_kappa));
    if let Some(path) = &args.output {
        let text = serde_json::to_string_pretty(&calibration)?;
        std::fs::write(path, text)
            .map_err(|e| user_error(format!("cannot write {}: {e}", path.display()), None))?;
        eprintln!("plumb: wrote {}", path.display());
    }
    if let Some(min) = min_kappa {
        let untrusted = calibration.untrusted(min);
        if !untrusted.is_empty() {
            for problem in untrusted {
                eprintln!("plumb: below the minimum κ: {problem}");
            }
            return Ok(Outcome::GateFailed);
        }
        eprintln!("plumb: every criterion reaches κ ≥ {min}");
    }
    Ok(Outcome::Ok)
}
