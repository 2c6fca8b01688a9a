//! The trace durability contract, on the real binary: a trace the query API has shown
//! (acknowledged: its batch committed) survives `kill -9`; a graceful stop writes every trace
//! still queued.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::{Project, code, free_port, stderr, stdout};

/// One HTTP/1.1 request with `Connection: close`; returns the status and the body.
fn http(port: u16, method: &str, path: &str, key: &str, body: Option<&str>) -> (u16, String) {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return (0, String::new());
    };
    let body = body.unwrap_or("");
    let request = format!(
        "{method} {path} HTTP/1.1\r\nhost: 127.0.0.1\r\nauthorization: Bearer {key}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    if stream.write_all(request.as_bytes()).is_err() {
        return (0, String::new());
    }
    let mut response = String::new();
    if stream.read_to_string(&mut response).is_err() {
        return (0, String::new());
    }
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

fn project_with(traces: &str) -> (Project, String) {
    let project = Project::new();
    project.write(
        "plumb.yaml",
        &format!("gateway:\n  models:\n    fast:\n      targets: [{{provider: echo}}]\n  traces: {traces}\n"),
    );
    let out = project.plumb(&["keys", "create", "--role", "viewer", "--name", "load"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    (project, stdout(&out).trim().to_owned())
}

const ASK: &str = r#"{"model": "fast", "messages": [{"role": "user", "content": "hello"}]}"#;

fn exported_ids(project: &Project) -> HashSet<String> {
    let out = project.plumb(&["traces", "export"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    stdout(&out)
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["trace_id"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect()
}

#[test]
fn acknowledged_traces_survive_kill_9() {
    let (project, key) = project_with("{flush_ms: 20}");
    let port = free_port();
    let mut server = project.serve(port).detach();
    let stop = Arc::new(AtomicBool::new(false));
    let load: Vec<_> = (0..2)
        .map(|_| {
            let stop = stop.clone();
            let key = key.clone();
            std::thread::spawn(move || {
                let mut ok = 0;
                while !stop.load(Ordering::Relaxed) {
                    if http(port, "POST", "/v1/chat/completions", &key, Some(ASK)).0 == 200 {
                        ok += 1;
                    }
                }
                ok
            })
        })
        .collect();
    // Read what the API acknowledges while the load runs, then kill the server mid-load.
    let mut acknowledged = HashSet::new();
    for _ in 0..5 {
        std::thread::sleep(Duration::from_millis(200));
        let (status, body) = http(port, "GET", "/api/v1/traces?limit=1000", &key, None);
        assert_eq!(status, 200, "{body}");
        let listed: serde_json::Value = serde_json::from_str(&body).unwrap();
        for trace in listed["traces"].as_array().unwrap() {
            acknowledged.insert(trace["trace_id"].as_str().unwrap().to_owned());
        }
    }
    server.kill().unwrap(); // SIGKILL
    server.wait().unwrap();
    stop.store(true, Ordering::Relaxed);
    let answered: u32 = load.into_iter().map(|t| t.join().unwrap()).sum();
    assert!(
        acknowledged.len() >= 20,
        "only {} acknowledged",
        acknowledged.len()
    );

    // After the crash: every acknowledged trace is there, and the database opens cleanly.
    let stored = exported_ids(&project);
    let missing: Vec<_> = acknowledged.difference(&stored).collect();
    assert!(missing.is_empty(), "lost acknowledged traces: {missing:?}");
    assert!(
        stored.len() as u32 <= answered,
        "{} traces for {answered} answers",
        stored.len()
    );
    let restarted = project.serve(port).detach();
    let (status, _) = http(port, "POST", "/v1/chat/completions", &key, Some(ASK));
    assert_eq!(status, 200);
    let mut restarted = restarted;
    restarted.kill().unwrap();
    restarted.wait().unwrap();
}

#[test]
fn a_graceful_stop_writes_every_queued_trace() {
    // Batches that never fill and never time out: only the shutdown drain writes them.
    let (project, key) = project_with("{flush_ms: 600000, batch: 100000}");
    let port = free_port();
    let server = project.serve(port).detach();
    for _ in 0..40 {
        assert_eq!(
            http(port, "POST", "/v1/chat/completions", &key, Some(ASK)).0,
            200
        );
    }
    let (_, body) = http(port, "GET", "/api/v1/traces", &key, None);
    assert_eq!(
        body, r#"{"traces":[]}"#,
        "nothing is acknowledged before the drain"
    );
    let status = Command::new("kill")
        .args(["-TERM", &server.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let mut server = server;
    assert!(server.wait().unwrap().success());
    assert_eq!(exported_ids(&project).len(), 40);
}
