//! What our client puts on the wire, checked against a hand-made server (axum) that records
//! every request: Go's URL layout and headers (PROTOCOL.md 2.4), no `/info`, no waiting for
//! `o`, every server frame type, and the ways a session ends.
#![allow(clippy::unwrap_used)]

mod client_support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::Router;
use client_support::{recv, DEADLINE};
use kite_sockjs::client::{connect, ClientConfig, ClientTransport};
use tokio::sync::{mpsc, Notify};

/// One request as the server saw it.
#[derive(Debug, Clone)]
struct Seen {
    method: Method,
    server_id: String,
    session_id: String,
    route: &'static str,
    headers: HeaderMap,
    body: String,
}

#[derive(Clone, Default)]
struct Recorder {
    seen: Arc<Mutex<Vec<Seen>>>,
    info_hits: Arc<Mutex<usize>>,
}

impl Recorder {
    fn push(&self, seen: Seen) {
        self.seen.lock().unwrap().push(seen);
    }
    fn all(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

async fn serve(app: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}/kite")
}

fn check_ids(seen: &Seen) {
    let s: u16 = seen.server_id.parse().unwrap();
    assert!((100..=999).contains(&s), "server id {s}");
    assert_eq!(seen.session_id.len(), 20);
    assert!(seen
        .session_id
        .bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
}

fn info_route(rec: Recorder) -> Router {
    Router::new().route(
        "/kite/info",
        any(move || {
            let rec = rec.clone();
            async move {
                *rec.info_hits.lock().unwrap() += 1;
                StatusCode::NOT_FOUND
            }
        }),
    )
}

// ---------------------------------------------------------------------------------------
// WebSocket

/// The server side of one scripted WebSocket session.
async fn scripted_ws(mut socket: WebSocket, frames_from_client: mpsc::UnboundedSender<Message>) {
    // The client must not wait for "o": its first message arrives before we send anything.
    let first = socket.recv().await.unwrap().unwrap();
    frames_from_client.send(first.clone()).unwrap();
    for frame in [
        "o",
        "h",
        r#"a["one","two \u2028 \ud83d\ude00"]"#,
        r#"m"legacy""#,
        "h",
    ] {
        socket.send(Message::Text(frame.into())).await.unwrap();
    }
    // Echo what comes next, until the client sends "bye", then close the session.
    while let Some(Ok(message)) = socket.recv().await {
        frames_from_client.send(message.clone()).unwrap();
        if let Message::Text(text) = message {
            if text.as_str() == r#"["bye"]"# {
                socket
                    .send(Message::Text(r#"c[3000,"Go away!"]"#.into()))
                    .await
                    .unwrap();
                return;
            }
            socket
                .send(Message::Text(format!("a{}", text.as_str()).into()))
                .await
                .unwrap();
        }
    }
}

fn ws_app(rec: Recorder, frames: mpsc::UnboundedSender<Message>, script: bool) -> Router {
    let route = any(
        move |Path((s, t)): Path<(String, String)>,
              method: Method,
              headers: HeaderMap,
              ws: WebSocketUpgrade| {
            let rec = rec.clone();
            let frames = frames.clone();
            async move {
                rec.push(Seen {
                    method,
                    server_id: s,
                    session_id: t,
                    route: "websocket",
                    headers,
                    body: String::new(),
                });
                ws.on_upgrade(move |socket| async move {
                    if script {
                        scripted_ws(socket, frames).await
                    } else {
                        // Plain echo server that reports every frame (incl. close).
                        let mut socket = socket;
                        socket.send(Message::Text("o".into())).await.unwrap();
                        while let Some(Ok(message)) = socket.recv().await {
                            let _ = frames.send(message.clone());
                            if let Message::Text(text) = message {
                                let _ = socket
                                    .send(Message::Text(format!("a{}", text.as_str()).into()))
                                    .await;
                            }
                        }
                        let _ = frames.send(Message::Text("<eof>".into()));
                    }
                })
            }
        },
    );
    Router::new().route("/kite/{s}/{t}/websocket", route)
}

#[tokio::test]
async fn websocket_dial_frames_and_server_close() {
    let rec = Recorder::default();
    let (frames_tx, mut frames) = mpsc::unbounded_channel();
    let app = ws_app(rec.clone(), frames_tx, true).merge(info_route(rec.clone()));
    let url = serve(app).await;
    let origin = url.trim_end_matches("/kite").to_string();
    let session = connect(
        &url,
        &ClientConfig {
            transport: ClientTransport::WebSocket,
            ..ClientConfig::default()
        },
    )
    .await
    .unwrap();
    let (tx, mut rx) = session.split();
    tx.send(r#"{"method":"kite.ping"}"#.into()).await.unwrap();
    let first = tokio::time::timeout(DEADLINE, frames.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        first,
        Message::Text(r#"["{\"method\":\"kite.ping\"}"]"#.into())
    );
    assert_eq!(recv(&mut rx).await.as_deref(), Some("one"));
    assert_eq!(
        recv(&mut rx).await.as_deref(),
        Some("two \u{2028} \u{1F600}")
    );
    assert_eq!(recv(&mut rx).await.as_deref(), Some("legacy"));
    tx.send("echo me".into()).await.unwrap();
    assert_eq!(recv(&mut rx).await.as_deref(), Some("echo me"));
    tx.send("bye".into()).await.unwrap();
    // c[3000,"Go away!"] ends the session: the receiver ends, the sender sees it closed.
    assert_eq!(recv(&mut rx).await, None);
    tokio::time::timeout(DEADLINE, tx.closed()).await.unwrap();

    let seen = rec.all();
    assert_eq!(seen.len(), 1);
    let ws = &seen[0];
    check_ids(ws);
    assert_eq!(ws.method, Method::GET);
    assert_eq!(ws.headers["origin"], origin.as_str());
    assert_eq!(ws.headers["host"], origin.trim_start_matches("http://"));
    assert_eq!(
        *rec.info_hits.lock().unwrap(),
        0,
        "the client must not ask /info"
    );
}

/// The client's frames (each a JSON array of messages) until they hold `n` messages.
async fn frames_of(frames: &mut mpsc::UnboundedReceiver<Message>, n: usize) -> Vec<Vec<String>> {
    let mut texts: Vec<Vec<String>> = Vec::new();
    while texts.iter().map(Vec::len).sum::<usize>() < n {
        match tokio::time::timeout(DEADLINE, frames.recv())
            .await
            .unwrap()
            .unwrap()
        {
            Message::Text(t) => {
                texts.push(serde_json::from_str::<Vec<String>>(t.as_str()).unwrap())
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    texts
}

#[tokio::test]
async fn websocket_batches_and_closes_when_senders_are_dropped() {
    let rec = Recorder::default();
    let (frames_tx, mut frames) = mpsc::unbounded_channel();
    let url = serve(ws_app(rec.clone(), frames_tx, false)).await;
    let session = connect(&url, &ClientConfig::default()).await.unwrap();
    let (tx, mut rx) = session.split();
    // Queue several messages before the I/O task runs: they travel in one frame (or a few).
    for i in 0..10 {
        tx.try_send(format!("m{i}")).unwrap();
    }
    for i in 0..10 {
        assert_eq!(recv(&mut rx).await, Some(format!("m{i}")));
    }
    let texts = frames_of(&mut frames, 10).await;
    assert!(texts.len() < 10, "messages were not batched: {texts:?}");
    drop(tx);
    // The client says goodbye with a WebSocket close frame, then the connection ends.
    let next = tokio::time::timeout(DEADLINE, frames.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(next, Message::Close(_)), "{next:?}");
    assert_eq!(recv(&mut rx).await, None);
}

/// A burst larger than `websocket_batch` goes out as several frames, in order.
#[tokio::test]
async fn websocket_splits_a_burst_into_frames_of_websocket_batch_messages() {
    let rec = Recorder::default();
    let (frames_tx, mut frames) = mpsc::unbounded_channel();
    let url = serve(ws_app(rec.clone(), frames_tx, false)).await;
    let config = ClientConfig {
        websocket_batch: 4,
        ..ClientConfig::default()
    };
    let session = connect(&url, &config).await.unwrap();
    let (tx, _rx) = session.split();
    // Queued before the I/O task runs (this runtime has one thread).
    for i in 0..10 {
        tx.try_send(format!("m{i}")).unwrap();
    }
    let texts = frames_of(&mut frames, 10).await;
    let sizes: Vec<usize> = texts.iter().map(Vec::len).collect();
    assert_eq!(sizes, [4, 4, 2], "{texts:?}");
    let all: Vec<String> = texts.concat();
    let expected: Vec<String> = (0..10).map(|i| format!("m{i}")).collect();
    assert_eq!(all, expected);
}

// ---------------------------------------------------------------------------------------
// XHR polling

/// One scripted poll answer (`None`: never answer).
type PollAnswer = Option<(StatusCode, &'static str)>;

/// Scripted XHR server: answers the n-th poll from `polls` (a `None` entry never answers),
/// after the script runs out it echoes what xhr_send received; `send_status` answers
/// xhr_send.
#[derive(Clone)]
struct XhrScript {
    rec: Recorder,
    polls: Arc<Mutex<std::collections::VecDeque<PollAnswer>>>,
    sent: Arc<Mutex<Vec<String>>>,
    sent_notify: Arc<Notify>,
    send_status: StatusCode,
}

async fn xhr_handler(
    State(script): State<XhrScript>,
    Path((s, t)): Path<(String, String)>,
    method: Method,
    headers: HeaderMap,
    body: String,
) -> Response {
    script.rec.push(Seen {
        method,
        server_id: s,
        session_id: t,
        route: "xhr",
        headers,
        body,
    });
    let next = script.polls.lock().unwrap().pop_front();
    match next {
        Some(Some((status, body))) => (status, body).into_response(),
        Some(None) => {
            // Never answer (until the client gives up on this request).
            std::future::pending::<()>().await;
            unreachable!()
        }
        None => loop {
            let notified = script.sent_notify.notified();
            let batch: Vec<String> = std::mem::take(&mut *script.sent.lock().unwrap());
            if !batch.is_empty() {
                let mut frame = String::from("a");
                frame.push_str(&serde_json::to_string(&batch).unwrap());
                frame.push('\n');
                return (StatusCode::OK, frame).into_response();
            }
            notified.await;
        },
    }
}

async fn xhr_send_handler(
    State(script): State<XhrScript>,
    Path((s, t)): Path<(String, String)>,
    method: Method,
    headers: HeaderMap,
    body: String,
) -> Response {
    script.rec.push(Seen {
        method,
        server_id: s,
        session_id: t,
        route: "xhr_send",
        headers,
        body: body.clone(),
    });
    if let Ok(messages) = serde_json::from_str::<Vec<String>>(&body) {
        script.sent.lock().unwrap().extend(messages);
        script.sent_notify.notify_waiters();
    }
    script.send_status.into_response()
}

async fn xhr_server(polls: Vec<PollAnswer>, send_status: StatusCode) -> (String, XhrScript) {
    let script = XhrScript {
        rec: Recorder::default(),
        polls: Arc::new(Mutex::new(polls.into())),
        sent: Arc::default(),
        sent_notify: Arc::new(Notify::new()),
        send_status,
    };
    let app = Router::new()
        .route("/kite/{s}/{t}/xhr", post(xhr_handler))
        .route("/kite/{s}/{t}/xhr_send", post(xhr_send_handler))
        .route(
            "/kite/{s}/{t}/websocket",
            get(|| async { StatusCode::NOT_FOUND }),
        )
        .with_state(script.clone())
        .merge(info_route(script.rec.clone()));
    (serve(app).await, script)
}

fn xhr_config() -> ClientConfig {
    ClientConfig {
        transport: ClientTransport::XhrPolling,
        poll_timeout: Duration::from_millis(400),
        ..ClientConfig::default()
    }
}

#[tokio::test]
async fn xhr_polling_requests_look_like_go() {
    let ok = StatusCode::OK;
    let (url, script) = xhr_server(
        vec![
            Some((ok, "o\n")),
            None, // a poll that gets no answer: the client polls again after poll_timeout
            Some((ok, "h\n")),
            Some((ok, "a[\"x\",\"y \\u2028\"]\n")),
            Some((ok, "m\"legacy\"\n")),
        ],
        StatusCode::NO_CONTENT,
    )
    .await;
    let (tx, mut rx) = connect(&url, &xhr_config()).await.unwrap().split();
    assert_eq!(recv(&mut rx).await.as_deref(), Some("x"));
    assert_eq!(recv(&mut rx).await.as_deref(), Some("y \u{2028}"));
    assert_eq!(recv(&mut rx).await.as_deref(), Some("legacy"));
    for i in 0..5 {
        tx.try_send(format!("q{i}")).unwrap();
    }
    for i in 0..5 {
        assert_eq!(recv(&mut rx).await, Some(format!("q{i}")));
    }
    let seen = script.rec.all();
    let (first_s, first_t) = (seen[0].server_id.clone(), seen[0].session_id.clone());
    check_ids(&seen[0]);
    let polls: Vec<_> = seen.iter().filter(|s| s.route == "xhr").collect();
    let sends: Vec<_> = seen.iter().filter(|s| s.route == "xhr_send").collect();
    assert!(polls.len() >= 6, "{polls:?}");
    assert!(
        !sends.is_empty() && sends.len() < 5,
        "not batched: {sends:?}"
    );
    for s in &seen {
        assert_eq!(s.method, Method::POST);
        assert_eq!((&s.server_id, &s.session_id), (&first_s, &first_t));
        assert_eq!(s.headers["content-type"], "text/plain");
        assert!(s.headers.get("origin").is_none());
    }
    for p in &polls {
        assert_eq!(p.headers["content-length"], "0");
        assert_eq!(p.body, "");
    }
    let all_sent: Vec<String> = sends
        .iter()
        .flat_map(|s| serde_json::from_str::<Vec<String>>(&s.body).unwrap())
        .collect();
    assert_eq!(all_sent, ["q0", "q1", "q2", "q3", "q4"]);
    assert_eq!(*script.rec.info_hits.lock().unwrap(), 0);
}

#[tokio::test]
async fn xhr_close_frame_ends_session() {
    let ok = StatusCode::OK;
    let (url, _script) = xhr_server(
        vec![
            Some((ok, "o\n")),
            Some((ok, "a[\"last\"]\n")),
            Some((ok, "c[3000,\"Go away!\"]\n")),
        ],
        StatusCode::NO_CONTENT,
    )
    .await;
    let (tx, mut rx) = connect(&url, &xhr_config()).await.unwrap().split();
    assert_eq!(recv(&mut rx).await.as_deref(), Some("last"));
    assert_eq!(recv(&mut rx).await, None);
    tokio::time::timeout(DEADLINE, tx.closed()).await.unwrap();
}

#[tokio::test]
async fn xhr_poll_404_ends_session() {
    let (url, _script) = xhr_server(
        vec![
            Some((StatusCode::OK, "o\n")),
            Some((StatusCode::NOT_FOUND, "")),
        ],
        StatusCode::NO_CONTENT,
    )
    .await;
    let (tx, mut rx) = connect(&url, &xhr_config()).await.unwrap().split();
    assert_eq!(recv(&mut rx).await, None);
    tokio::time::timeout(DEADLINE, tx.closed()).await.unwrap();
}

#[tokio::test]
async fn xhr_send_404_ends_session() {
    let (url, script) = xhr_server(
        vec![Some((StatusCode::OK, "o\n")), Some((StatusCode::OK, "h\n"))],
        StatusCode::NOT_FOUND,
    )
    .await;
    let (tx, mut rx) = connect(&url, &xhr_config()).await.unwrap().split();
    tx.send("lost".into()).await.unwrap();
    assert_eq!(recv(&mut rx).await, None);
    tokio::time::timeout(DEADLINE, tx.closed()).await.unwrap();
    assert!(script.rec.all().iter().any(|s| s.route == "xhr_send"));
}

#[tokio::test]
async fn xhr_open_requires_o_and_200() {
    let (url, _) = xhr_server(vec![Some((StatusCode::OK, "h\n"))], StatusCode::NO_CONTENT).await;
    let err = connect(&url, &xhr_config()).await.unwrap_err();
    assert!(
        matches!(err, kite_sockjs::client::ConnectError::XhrOpen(_)),
        "{err:?}"
    );
    let (url, _) = xhr_server(
        vec![Some((StatusCode::FORBIDDEN, "no"))],
        StatusCode::NO_CONTENT,
    )
    .await;
    let err = connect(&url, &xhr_config()).await.unwrap_err();
    assert!(
        matches!(err, kite_sockjs::client::ConnectError::XhrStatus { status } if status == 403),
        "{err:?}"
    );
    // An open that never answers hits the handshake timeout.
    let (url, _) = xhr_server(vec![None], StatusCode::NO_CONTENT).await;
    let cfg = ClientConfig {
        handshake_timeout: Duration::from_millis(300),
        ..xhr_config()
    };
    let err = connect(&url, &cfg).await.unwrap_err();
    assert!(
        matches!(err, kite_sockjs::client::ConnectError::Timeout { .. }),
        "{err:?}"
    );
}

#[tokio::test]
async fn auto_falls_back_on_http_status() {
    let ok = StatusCode::OK;
    let (url, script) = xhr_server(vec![Some((ok, "o\n"))], StatusCode::NO_CONTENT).await;
    let session = connect(
        &url,
        &ClientConfig {
            transport: ClientTransport::Auto,
            ..xhr_config()
        },
    )
    .await
    .unwrap();
    assert_eq!(
        session.info().transport(),
        kite_sockjs::Transport::XhrPolling
    );
    let (tx, mut rx) = session.split();
    tx.send("fallback".into()).await.unwrap();
    assert_eq!(recv(&mut rx).await.as_deref(), Some("fallback"));
    assert!(script.rec.all().iter().all(|s| s.route != "websocket"));
}

#[tokio::test]
async fn dropping_the_receiver_closes_the_session() {
    let rec = Recorder::default();
    let (frames_tx, mut frames) = mpsc::unbounded_channel();
    let url = serve(ws_app(rec.clone(), frames_tx, false)).await;
    let (tx, rx) = connect(&url, &ClientConfig::default())
        .await
        .unwrap()
        .split();
    drop(rx);
    tokio::time::timeout(DEADLINE, tx.closed()).await.unwrap();
    assert!(tx.send("late".into()).await.is_err());
    // The server sees a clean WebSocket close (1000) before the connection ends, although
    // the sending half is still alive.
    expect_clean_close(&mut frames).await;

    // Same over XHR polling: the client stops polling and sending.
    let ok = StatusCode::OK;
    let (url, _script) = xhr_server(vec![Some((ok, "o\n"))], StatusCode::NO_CONTENT).await;
    let (tx, rx) = connect(&url, &xhr_config()).await.unwrap().split();
    drop(rx);
    tokio::time::timeout(DEADLINE, tx.closed()).await.unwrap();
}

/// The next frames the echo server reports are a close frame with code 1000, then the end
/// of the stream.
async fn expect_clean_close(frames: &mut mpsc::UnboundedReceiver<Message>) {
    let next = tokio::time::timeout(DEADLINE, frames.recv())
        .await
        .unwrap()
        .unwrap();
    match &next {
        Message::Close(Some(frame)) => assert_eq!(frame.code, 1000, "{next:?}"),
        other => panic!("expected a close frame with code 1000, got {other:?}"),
    }
    let eof = tokio::time::timeout(DEADLINE, frames.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(eof, Message::Text("<eof>".into()));
}

#[tokio::test]
async fn dropping_a_session_completes_the_closing_handshake() {
    // Both halves dropped at once, after some traffic: the read and the write side of the
    // client end together; whichever wins, the close frame must go out.
    for _ in 0..20 {
        let rec = Recorder::default();
        let (frames_tx, mut frames) = mpsc::unbounded_channel();
        let url = serve(ws_app(rec.clone(), frames_tx, false)).await;
        let session = connect(&url, &ClientConfig::default()).await.unwrap();
        let (tx, mut rx) = session.split();
        tx.send("hi".into()).await.unwrap();
        assert_eq!(recv(&mut rx).await.as_deref(), Some("hi"));
        let hi = tokio::time::timeout(DEADLINE, frames.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(hi, Message::Text(r#"["hi"]"#.into()));
        drop((tx, rx));
        expect_clean_close(&mut frames).await;
    }
}

#[tokio::test]
async fn go_servers_empty_frame_ends_the_session() {
    // What a Go server writes before dropping TCP: an empty text frame. The connection
    // stays open here, so only the frame itself can end the session.
    let app = Router::new().route(
        "/kite/{s}/{t}/websocket",
        any(|ws: WebSocketUpgrade| async move {
            ws.on_upgrade(|mut socket| async move {
                for frame in ["o", r#"a["x"]"#, ""] {
                    socket.send(Message::Text(frame.into())).await.unwrap();
                }
                while let Some(Ok(_)) = socket.recv().await {}
            })
        }),
    );
    let url = serve(app).await;
    let (tx, mut rx) = connect(&url, &ClientConfig::default())
        .await
        .unwrap()
        .split();
    assert_eq!(recv(&mut rx).await.as_deref(), Some("x"));
    assert_eq!(recv(&mut rx).await, None);
    tokio::time::timeout(DEADLINE, tx.closed()).await.unwrap();
}
