//! The progress bar of a run: cases done, rate, ETA, pass/fail so far and cost so far.

use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use plumb_eval::{CaseResult, Observer};

#[derive(Default)]
struct Tally {
    passed: u64,
    failed: u64,
    unmeasured: u64,
    cost: f64,
}

pub struct ProgressObserver {
    bar: ProgressBar,
    tally: Mutex<Tally>,
}

impl ProgressObserver {
    pub fn new(enabled: bool) -> ProgressObserver {
        let bar = ProgressBar::hidden();
        if enabled && std::io::stderr().is_terminal() {
            bar.set_draw_target(ProgressDrawTarget::stderr_with_hz(8));
            let style = ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} cases · {per_sec} · ETA {eta} · {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
            bar.set_style(style);
            bar.enable_steady_tick(Duration::from_millis(200));
        }
        ProgressObserver {
            bar,
            tally: Mutex::new(Tally::default()),
        }
    }

    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

impl Observer for ProgressObserver {
    fn started(&self, total: u64, done: u64) {
        self.bar.set_length(total + done);
        self.bar.set_position(done);
    }

    fn finished(&self, result: &CaseResult) {
        let Ok(mut tally) = self.tally.lock() else {
            return;
        };
        match result.pass {
            Some(true) => tally.passed += 1,
            Some(false) => tally.failed += 1,
            None => tally.unmeasured += 1,
        }
        tally.cost += result.cost;
        let mut message = format!("{} pass · {} fail", tally.passed, tally.failed);
        if tally.unmeasured > 0 {
            message.push_str(&format!(" · {} unmeasured", tally.unmeasured));
        }
        message.push_str(&format!(" · ${:.4}", tally.cost));
        self.bar.set_message(message);
        self.bar.inc(1);
    }
}
