//! The `plumb` command line: glue between the crates, the only place that knows exit codes
//! (0 ok, 1 a gate failed, 2 bad input or an error, 130 interrupted).

mod audit_cmd;
mod eval_cmd;
mod judge_cmd;
mod keys_cmd;
mod models_cmd;
mod progress;
mod project;
mod prompt_cmd;
mod quickstart;
mod rag_cmd;
mod runs_cmd;
mod serve_cmd;
mod traces_cmd;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

// mimalloc keeps freed memory for reuse: the embedded embedder's tensors (tens of MB per
// forward pass) otherwise come fresh from the kernel each time, zeroed page by page.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "plumb",
    version,
    about = "The workbench for engineering LLM behaviour: evaluate prompts against models, with honest statistics",
    long_about = None,
    after_help = "Start with `plumb quickstart` (no API key needed), or `plumb init` in your project."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run an eval suite and report pass rates, comparisons and failures
    Eval(eval_cmd::EvalArgs),
    /// Calibrate the suite's judges against human labels (agreement, Cohen's κ, TPR/TNR, flips)
    Judge {
        #[command(subcommand)]
        command: judge_cmd::JudgeCommand,
    },
    /// Pull the embedded model and run the demo eval (two prompt versions on a local model)
    Quickstart(quickstart::QuickstartArgs),
    /// Scaffold a new plumb project (prompt file, suite, .gitignore) that runs as it is
    Init(quickstart::InitArgs),
    /// Manage the embedded local models
    Models {
        #[command(subcommand)]
        command: models_cmd::ModelsCommand,
    },
    /// List and inspect stored eval runs
    Runs {
        #[command(subcommand)]
        command: runs_cmd::RunsCommand,
    },
    /// The prompt registry: push versions, diff, label, promote under policy, roll back
    Prompt {
        #[command(subcommand)]
        command: prompt_cmd::PromptCommand,
    },
    /// The append-only audit log of registry changes
    Audit(audit_cmd::AuditArgs),
    /// API keys for `plumb serve` (roles: viewer < editor < releaser < admin)
    Keys {
        #[command(subcommand)]
        command: keys_cmd::KeysCommand,
    },
    /// Serve the gateway (/v1), the registry and trace API (/api/v1) and /metrics
    Serve(serve_cmd::ServeArgs),
    /// Retrieval: ingest documents into collections, search them (BM25 + vectors), debug hits
    Rag(rag_cmd::RagArgs),
    /// The gateway's request log: follow it, show one request, export JSONL
    Traces {
        #[command(subcommand)]
        command: traces_cmd::TracesCommand,
    },
}

/// Options shared by commands that use the project database.
#[derive(Args, Clone, Debug)]
pub struct StoreArgs {
    /// The SQLite database [default: .plumb/plumb.db in the project]
    #[arg(long, env = "PLUMB_DB", global = true)]
    pub db: Option<PathBuf>,
}

/// Exit codes, decided here and nowhere else.
pub enum Outcome {
    Ok,
    GateFailed,
    Interrupted,
}

/// An error that is the user's to fix: printed with its hint, exit 2.
#[derive(Debug)]
pub struct UserError {
    pub message: String,
    pub hint: Option<String>,
}

impl std::fmt::Display for UserError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for UserError {}

pub fn user_error(message: impl Into<String>, hint: Option<String>) -> anyhow::Error {
    anyhow::Error::new(UserError {
        message: message.into(),
        hint,
    })
}

/// Output piped into `head` and closed is not an error: `println!` panics when stdout is gone,
/// so a panic about printing to a broken pipe ends the process quietly (exit 0, as the
/// error path in `report_error` does), and any other panic is reported as before.
fn quiet_broken_pipe() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        if message.starts_with("failed printing to stdout") && message.contains("Broken pipe") {
            std::process::exit(0);
        }
        default(info);
    }));
}

fn main() -> ExitCode {
    quiet_broken_pipe();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::from(2);
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Eval(args) => eval_cmd::run(args).await,
            Command::Judge { command } => judge_cmd::run(command).await,
            Command::Quickstart(args) => quickstart::quickstart(args).await,
            Command::Init(args) => quickstart::init(args),
            Command::Models { command } => models_cmd::run(command),
            Command::Runs { command } => runs_cmd::run(command),
            Command::Prompt { command } => prompt_cmd::run(command),
            Command::Audit(args) => audit_cmd::run(args),
            Command::Keys { command } => keys_cmd::run(command),
            Command::Serve(args) => serve_cmd::run(args).await,
            Command::Traces { command } => traces_cmd::run(command).await,
            Command::Rag(args) => rag_cmd::run(args).await,
        }
    });
    // Do not wait for stuck provider calls once the command is done.
    runtime.shutdown_background();
    match result {
        Ok(Outcome::Ok) => ExitCode::SUCCESS,
        Ok(Outcome::GateFailed) => ExitCode::from(1),
        Ok(Outcome::Interrupted) => ExitCode::from(130),
        Err(error) => report_error(&error),
    }
}

fn report_error(error: &anyhow::Error) -> ExitCode {
    // Output piped into `head` and closed is not an error.
    if let Some(io) = error.downcast_ref::<std::io::Error>()
        && io.kind() == std::io::ErrorKind::BrokenPipe
    {
        return ExitCode::SUCCESS;
    }
    let mut stderr = std::io::stderr().lock();
    let color = project::use_color(&std::io::stderr());
    let label = if color {
        "\x1b[1;31merror\x1b[0m"
    } else {
        "error"
    };
    let hint_label = if color {
        "\x1b[1;36mhint\x1b[0m"
    } else {
        "hint"
    };
    if let Some(source) = error.downcast_ref::<plumb_core::SourceError>() {
        let mut plain = source.clone();
        plain.hint = None;
        let _ = writeln!(stderr, "{label}: {plain}");
        if let Some(hint) = &source.hint {
            let _ = writeln!(stderr, "{hint_label}: {hint}");
        }
    } else if let Some(model) = error.downcast_ref::<plumb_core::ModelError>() {
        let _ = writeln!(stderr, "{label}: {model}");
        if let Some(hint) = &model.hint {
            let _ = writeln!(stderr, "{hint_label}: {hint}");
        }
    } else if let Some(user) = error.downcast_ref::<UserError>() {
        let _ = writeln!(stderr, "{label}: {user}");
        if let Some(hint) = &user.hint {
            let _ = writeln!(stderr, "{hint_label}: {hint}");
        }
    } else {
        let _ = writeln!(stderr, "{label}: {error:#}");
    }
    ExitCode::from(2)
}
