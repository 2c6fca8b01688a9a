//! null-proxy: forwards every request to one upstream and sends its answer back, doing
//! nothing else (no parsing of the body, no routing, no logging). The latency it adds over
//! calling the upstream directly is what the machine charges for one extra HTTP hop (two
//! more sockets, two more wake-ups per direction), so a gateway's own cost is its added
//! latency minus this proxy's in the same run.
//!
//! Usage: null-proxy --listen 127.0.0.1:18090 --upstream http://127.0.0.1:18000
//!
//! One thread (a current-thread runtime), TCP_NODELAY on both sides, keep-alive pooled
//! upstream connections: the cheapest proxy tokio and hyper make.

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

type Upstream = Client<HttpConnector, Full<Bytes>>;

fn args() -> Result<(String, String), String> {
    let mut listen = "127.0.0.1:18090".to_owned();
    let mut upstream = "http://127.0.0.1:18000".to_owned();
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or(format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--listen" => listen = value,
            "--upstream" => upstream = value.trim_end_matches('/').to_owned(),
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    Ok((listen, upstream))
}

async fn forward(
    client: Upstream,
    upstream: &str,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let failed = |status: StatusCode| {
        let mut response = Response::new(Full::new(Bytes::new()));
        *response.status_mut() = status;
        Ok(response)
    };
    let (mut parts, body) = request.into_parts();
    let Ok(body) = body.collect().await.map(|b| b.to_bytes()) else {
        return failed(StatusCode::BAD_REQUEST);
    };
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let Ok(uri) = format!("{upstream}{path}").parse::<Uri>() else {
        return failed(StatusCode::BAD_REQUEST);
    };
    parts.uri = uri;
    parts.headers.remove(hyper::header::HOST);
    let Ok(response) = client.request(Request::from_parts(parts, Full::new(body))).await else {
        return failed(StatusCode::BAD_GATEWAY);
    };
    let (parts, body) = response.into_parts();
    let Ok(body) = body.collect().await.map(|b| b.to_bytes()) else {
        return failed(StatusCode::BAD_GATEWAY);
    };
    Ok(Response::from_parts(parts, Full::new(body)))
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let (listen, upstream) = match args() {
        Ok(parsed) => parsed,
        Err(message) => {
            eprintln!("null-proxy: {message}");
            std::process::exit(2);
        }
    };
    let upstream: &'static str = Box::leak(upstream.into_boxed_str());
    let listener = match TcpListener::bind(&listen).await {
        Ok(listener) => listener,
        Err(error) => {
            eprintln!("null-proxy: cannot listen on {listen}: {error}");
            std::process::exit(2);
        }
    };
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: Upstream = Client::builder(TokioExecutor::new()).build(connector);
    eprintln!("null-proxy: http://{listen} -> {upstream}");
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let client = client.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| forward(client.clone(), upstream, request));
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
