//! The control API under misuse (issue 12, point 3): connections that never send a request are
//! closed after the header timeout, connections over the limit are closed unanswered, a body
//! over `limits.api_body` gets 413, the `Bearer` scheme is matched case-insensitively, and a
//! message names at most `limits.api_candidates` explicit destinations.
//! Legitimate requests are served throughout.

#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use integration_tests::{EXAMPLE, TestNode, plugin_dir};
use serde_json::json;

/// Whether the server closed `stream` (its read ends, after whatever it sent) within `within`.
fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    stream.set_read_timeout(Some(within)).unwrap();
    let mut buffer = [0u8; 256];
    loop {
        match stream.read(&mut buffer) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) => {
                return !matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_excess_connections_are_closed_and_requests_still_served() {
    let plugins = plugin_dir(&[]);
    let node = TestNode::start(plugins.path(), |c| {
        c.limits.api_connections = 4;
        c.limits.api_header_timeout_ms = 300;
    })
    .await;
    let api = node.client.address();
    // Four connections that never send a request take every slot.
    let idle: Vec<TcpStream> = (0..4).map(|_| TcpStream::connect(api).unwrap()).collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    // A fifth is closed at once, unanswered.
    let mut fifth = TcpStream::connect(api).unwrap();
    let started = Instant::now();
    assert!(closed_within(&mut fifth, Duration::from_secs(5)));
    assert!(
        started.elapsed() < Duration::from_millis(250),
        "not at once"
    );
    // The idle ones are closed once their header timeout passes.
    for mut stream in idle {
        assert!(closed_within(&mut stream, Duration::from_secs(5)));
    }
    // A half-sent request is closed too.
    let mut half = TcpStream::connect(api).unwrap();
    half.write_all(b"GET /v1/node HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    assert!(closed_within(&mut half, Duration::from_secs(5)));
    // Then requests are served as before.
    let info = node.get("/v1/node").await;
    assert!(info["member"].is_string(), "{info}");
    // A body over the limit: 413.
    let big = format!("{{\"path\": \"{}\"}}", "x".repeat(70 << 10));
    let (status, text) = node
        .client
        .raw("POST", "/v1/plugins", Some(big), Some(node.client.token()))
        .await
        .unwrap();
    assert_eq!(status, 413, "{text}");
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bearer_scheme_is_case_insensitive_and_explicit_destinations_are_bounded() {
    let plugins = plugin_dir(&["example_community"]);
    let node = TestNode::start(plugins.path(), |_| {}).await;
    let token = node.client.token().to_owned();
    for scheme in ["Bearer", "bearer", "BEARER"] {
        let mut stream = TcpStream::connect(node.client.address()).unwrap();
        write!(
            stream,
            "GET /v1/node HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: {scheme} {token}\r\n\r\n"
        )
        .unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{scheme}: {answer}");
    }
    let mut stream = TcpStream::connect(node.client.address()).unwrap();
    write!(
        stream,
        "GET /v1/node HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Basic {token}\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    // A message may name at most limits.api_candidates (16) explicit destinations.
    let candidates: Vec<String> = (1..=17).map(|i| format!("198.18.0.{i}:7000")).collect();
    let (code, answer) = node
        .call(
            "POST",
            &format!("/v1/communities/{EXAMPLE}/messages"),
            Some(
                json!({"meta": "example", "payload": {"text": "hi", "amount": 1},
                        "candidates": candidates}),
            ),
        )
        .await;
    assert_eq!(code, 400, "{answer}");
    assert!(answer.to_string().contains("at most 16"), "{answer}");
    node.stop().await;
}
