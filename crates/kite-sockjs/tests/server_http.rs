//! Static routes and the HTTP transports (xhr, xhr_send, xhr_streaming, eventsource,
//! htmlfile, jsonp) over real sockets.

#[path = "server_support.rs"]
mod support;

use std::time::Duration;

use kite_sockjs::server::ServerConfig;
use kite_sockjs::Transport;
use support::*;

#[tokio::test]
async fn greeting_info_and_not_found() {
    let addr = start(config(), echo).await;
    for path in ["/echo", "/echo/"] {
        let r = get(addr, path).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), "Welcome to SockJS!\n");
        assert_eq!(r.header("content-type"), Some("text/plain;charset=UTF-8"));
    }
    for path in [
        "/echo/a",
        "/echo/a.html",
        "/echo//",
        "/echo/a/a",
        "/echo/a/a/",
        "/echox",
    ] {
        assert_eq!(get(addr, path).await.status, 404, "{path}");
    }
    let r = request(addr, "GET", "/echo/info", &[("Origin", "test")], b"").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("access-control-allow-origin"), Some("test"));
    assert_eq!(r.header("access-control-allow-credentials"), Some("true"));
    assert_eq!(
        r.header("cache-control"),
        Some("no-store, no-cache, no-transform, must-revalidate, max-age=0")
    );
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["websocket"], true);
    assert_eq!(v["cookie_needed"], false);
    assert_eq!(v["origins"], serde_json::json!(["*:*"]));
    let e1 = v["entropy"].as_u64().unwrap();
    let v2: serde_json::Value =
        serde_json::from_slice(&get(addr, "/echo/info").await.body).unwrap();
    assert_ne!(e1, v2["entropy"].as_u64().unwrap());
    assert_eq!(
        get(addr, "/echo/info")
            .await
            .header("access-control-allow-origin"),
        Some("*")
    );
}

#[tokio::test]
async fn options_and_method_not_allowed() {
    let addr = start(config(), echo).await;
    let r = request(
        addr,
        "OPTIONS",
        "/echo/abc/abc/xhr",
        &[
            ("Origin", "null"),
            ("Access-Control-Request-Method", "POST"),
            ("Access-Control-Request-Headers", "a, b"),
        ],
        b"",
    )
    .await;
    assert_eq!(r.status, 204);
    assert_eq!(r.header("cache-control"), Some("public, max-age=31536000"));
    assert!(r.header("expires").is_some());
    assert_eq!(r.header("access-control-max-age"), Some("31536000"));
    assert_eq!(
        r.header("access-control-allow-methods"),
        Some("OPTIONS, POST")
    );
    assert_eq!(r.header("access-control-allow-origin"), Some("null"));
    assert_eq!(r.header("access-control-allow-headers"), Some("a, b"));
    assert!(r.body.is_empty());
    let r = request(addr, "OPTIONS", "/echo/info", &[], b"").await;
    assert_eq!(
        r.header("access-control-allow-methods"),
        Some("OPTIONS, GET")
    );

    let r = get(addr, "/echo/abc/abc/xhr").await;
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("OPTIONS, POST"));
    assert!(r.header("content-type").is_none());
    assert!(r.body.is_empty());
    let r = post(addr, "/echo/abc/abc/websocket", "").await;
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("GET"));
}

#[tokio::test]
async fn iframe_page_is_cacheable() {
    let addr = start(config(), echo).await;
    let r = get(addr, "/echo/iframe.html").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("text/html; charset=UTF-8"));
    assert!(r.text().contains("SockJS.bootstrap_iframe();"));
    assert!(r.header("last-modified").is_none());
    let etag = r.header("etag").unwrap().to_string();
    let r2 = get(addr, "/echo/iframe-0.1.2abc-dirty.2144.html?t=1").await;
    assert_eq!(r2.status, 200);
    assert_eq!(r2.header("etag"), Some(etag.as_str()));
    assert_eq!(r.body, r2.body);
    let r = request(
        addr,
        "GET",
        "/echo/iframe.html",
        &[("If-None-Match", &etag)],
        b"",
    )
    .await;
    assert_eq!(r.status, 304);
    assert!(r.body.is_empty());
    assert!(r.header("content-type").is_none());
    for bad in [
        "/echo/iframe.htm",
        "/echo/IFRAME.HTML",
        "/echo/iframe-/.html",
    ] {
        assert_eq!(get(addr, bad).await.status, 404, "{bad}");
    }
}

#[tokio::test]
async fn xhr_polling_round_trip_and_session_id_only() {
    let addr = start(config(), echo).await;
    let id = sid();
    let r = post(addr, &format!("/echo/000/{id}/xhr"), "").await;
    assert_eq!((r.status, r.text().as_str()), (200, "o\n"));
    assert_eq!(
        r.header("content-type"),
        Some("application/javascript; charset=UTF-8")
    );
    let r = post(
        addr,
        &format!("/echo/000/{id}/xhr_send"),
        r#"["a","b\u2028"]"#,
    )
    .await;
    assert_eq!(r.status, 204);
    assert_eq!(r.header("content-type"), Some("text/plain; charset=UTF-8"));
    assert!(r.body.is_empty());
    // The server id is ignored; both echoed messages come in one frame.
    let r = post(addr, &format!("/echo/999/{id}/xhr"), "").await;
    assert_eq!(r.text(), "a[\"a\",\"b\\u2028\"]\n");
}

#[tokio::test]
async fn xhr_batches_everything_queued_into_one_frame() {
    let (on_session, mut sessions) = capture();
    let addr = start(config(), on_session).await;
    let id = sid();
    assert_eq!(
        post(addr, &format!("/echo/0/{id}/xhr"), "").await.text(),
        "o\n"
    );
    let session = next_session(&mut sessions).await;
    assert_eq!(session.info().transport(), Transport::XhrPolling);
    assert_eq!(session.info().id(), id);
    assert!(session.info().remote_addr().is_some());
    let (tx, _rx) = session.split();
    for m in ["one", "two", "{\"three\":3}"] {
        tx.send(m.to_string()).await.unwrap();
    }
    let r = post(addr, &format!("/echo/0/{id}/xhr"), "").await;
    assert_eq!(r.text(), "a[\"one\",\"two\",\"{\\\"three\\\":3}\"]\n");
}

#[tokio::test]
async fn xhr_send_errors() {
    let addr = start(config(), echo).await;
    let id = sid();
    let r = post(addr, &format!("/echo/000/{id}/xhr_send"), r#"["x"]"#).await;
    assert_eq!(r.status, 404);
    assert_eq!(
        r.header("cache-control"),
        Some("no-store, no-cache, no-transform, must-revalidate, max-age=0")
    );
    post(addr, &format!("/echo/000/{id}/xhr"), "").await;
    for (body, text) in [
        ("", "Payload expected."),
        ("[\"x", "Broken JSON encoding."),
        ("{}", "Broken JSON encoding."),
        ("[1]", "Broken JSON encoding."),
        ("junk", "Broken JSON encoding."),
    ] {
        let r = post(addr, &format!("/echo/000/{id}/xhr_send"), body).await;
        assert_eq!((r.status, r.text().as_str()), (500, text), "{body:?}");
    }
    // Non-UTF-8 junk.
    let r = request(
        addr,
        "POST",
        &format!("/echo/000/{id}/xhr_send"),
        &[],
        &[0xff, 0xfe],
    )
    .await;
    assert_eq!(r.status, 500);
    // The session still works, and empty frames are fine.
    assert_eq!(
        post(addr, &format!("/echo/000/{id}/xhr_send"), "[]")
            .await
            .status,
        204
    );
    assert_eq!(
        post(addr, &format!("/echo/000/{id}/xhr_send"), "\"s\"")
            .await
            .status,
        204
    );
    assert_eq!(
        post(addr, &format!("/echo/000/{id}/xhr"), "").await.text(),
        "a[\"s\"]\n"
    );
}

#[tokio::test]
async fn xhr_send_body_limit() {
    let addr = start(
        ServerConfig {
            max_message_bytes: 64,
            ..config()
        },
        echo,
    )
    .await;
    let id = sid();
    post(addr, &format!("/echo/000/{id}/xhr"), "").await;
    let big = format!("[\"{}\"]", "x".repeat(100));
    let r = post(addr, &format!("/echo/000/{id}/xhr_send"), &big).await;
    assert_eq!(r.status, 413);
    assert_eq!(
        post(addr, &format!("/echo/000/{id}/xhr_send"), "[\"ok\"]")
            .await
            .status,
        204
    );
}

#[tokio::test]
async fn second_receiver_gets_2010_and_abort_destroys_the_session() {
    let (on_session, mut sessions) = capture();
    let addr = start(config(), on_session).await;
    let id = sid();
    post(addr, &format!("/echo/000/{id}/xhr"), "").await;
    let first = next_session(&mut sessions).await;
    let (_tx, mut rx) = first.split();
    let pending = stream(addr, "POST", &format!("/echo/000/{id}/xhr_streaming"), &[]).await;
    let mut pending = pending;
    assert_eq!(pending.chunk().await.unwrap().len(), 2049);
    let r = post(addr, &format!("/echo/000/{id}/xhr"), "").await;
    assert_eq!(r.text(), "c[2010,\"Another connection still open\"]\n");
    // The client aborts the attached request: the session is destroyed.
    pending.abort();
    assert_eq!(
        tokio::time::timeout(DEADLINE, rx.recv()).await.unwrap(),
        None
    );
    // The same id now opens a new session.
    assert_eq!(
        post(addr, &format!("/echo/000/{id}/xhr"), "").await.text(),
        "o\n"
    );
    next_session(&mut sessions).await;
}

#[tokio::test]
async fn close_is_served_until_the_session_expires() {
    let addr = start(
        ServerConfig {
            disconnect_delay: Duration::from_millis(200),
            ..config()
        },
        |session: kite_sockjs::Session| {
            tokio::spawn(async move {
                let (tx, _rx) = session.split();
                let _ = tx.close(3000, "Go away!").await;
            });
        },
    )
    .await;
    let id = sid();
    assert_eq!(
        post(addr, &format!("/echo/0/{id}/xhr"), "").await.text(),
        "o\n"
    );
    for _ in 0..2 {
        let r = post(addr, &format!("/echo/0/{id}/xhr"), "").await;
        assert_eq!(r.text(), "c[3000,\"Go away!\"]\n");
    }
    let r = request(addr, "GET", &format!("/echo/0/{id}/jsonp?c=cb"), &[], b"").await;
    assert_eq!(r.text(), "/**/cb(\"c[3000,\\\"Go away!\\\"]\");\r\n");
    // After the disconnect delay the closed session is gone: a new one opens.
    let deadline = tokio::time::Instant::now() + DEADLINE;
    assert_eq!(
        post(addr, &format!("/echo/0/{id}/xhr_send"), "[\"x\"]")
            .await
            .status,
        404
    );
    loop {
        let r = post(addr, &format!("/echo/0/{id}/xhr"), "").await.text();
        if r == "o\n" {
            break;
        }
        assert_eq!(r, "c[3000,\"Go away!\"]\n");
        assert!(
            tokio::time::Instant::now() < deadline,
            "session never expired"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn custom_close_code_after_messages() {
    let addr = start(config(), |session: kite_sockjs::Session| {
        let (tx, _rx) = session.split();
        tx.try_send("bye".into()).unwrap();
        tokio::spawn(async move {
            let _ = tx.close(4001, "custom").await;
        });
    })
    .await;
    let id = sid();
    assert_eq!(
        post(addr, &format!("/echo/0/{id}/xhr"), "").await.text(),
        "o\n"
    );
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let mut frames = Vec::new();
    while frames.len() < 2 {
        let t = post(addr, &format!("/echo/0/{id}/xhr"), "").await.text();
        frames.push(t);
        assert!(tokio::time::Instant::now() < deadline);
    }
    // Either both came in separate polls, or the close came after the messages.
    assert_eq!(frames[0], "a[\"bye\"]\n");
    assert_eq!(frames[1], "c[4001,\"custom\"]\n");
}

#[tokio::test]
async fn idle_poll_gets_a_heartbeat() {
    let addr = start(
        ServerConfig {
            heartbeat_interval: Duration::from_millis(100),
            ..config()
        },
        echo,
    )
    .await;
    let id = sid();
    post(addr, &format!("/echo/0/{id}/xhr"), "").await;
    assert_eq!(
        post(addr, &format!("/echo/0/{id}/xhr"), "").await.text(),
        "h\n"
    );
}

#[tokio::test]
async fn abandoned_session_is_collected() {
    let (on_session, mut sessions) = capture();
    let addr = start(
        ServerConfig {
            disconnect_delay: Duration::from_millis(100),
            ..config()
        },
        on_session,
    )
    .await;
    let id = sid();
    post(addr, &format!("/echo/0/{id}/xhr"), "").await;
    let session = next_session(&mut sessions).await;
    let (tx, mut rx) = session.split();
    // Nobody polls: the session is destroyed and the user's halves see it.
    assert_eq!(
        tokio::time::timeout(DEADLINE, rx.recv()).await.unwrap(),
        None
    );
    tokio::time::timeout(DEADLINE, tx.closed()).await.unwrap();
    assert_eq!(
        post(addr, &format!("/echo/0/{id}/xhr_send"), "[\"x\"]")
            .await
            .status,
        404
    );
}

#[tokio::test]
async fn xhr_send_waits_for_a_slow_consumer() {
    let (on_session, mut sessions) = capture();
    let addr = start(
        ServerConfig {
            incoming_queue: 1,
            ..config()
        },
        on_session,
    )
    .await;
    let id = sid();
    post(addr, &format!("/echo/0/{id}/xhr"), "").await;
    let (_tx, mut rx) = next_session(&mut sessions).await.split();
    let path = format!("/echo/0/{id}/xhr_send");
    let send = tokio::spawn(async move { post(addr, &path, r#"["1","2","3"]"#).await });
    // The consumer does not read: the reply is held back (backpressure).
    assert_eq!(rx.recv().await.as_deref(), Some("1"));
    let send = {
        let mut send = send;
        tokio::select! {
            _ = &mut send => panic!("xhr_send answered while the consumer was full"),
            _ = tokio::time::sleep(Duration::from_millis(200)) => send,
        }
    };
    assert_eq!(rx.recv().await.as_deref(), Some("2"));
    assert_eq!(rx.recv().await.as_deref(), Some("3"));
    assert_eq!(send.await.unwrap().status, 204);
}

#[tokio::test]
async fn xhr_streaming_respects_the_response_limit() {
    let addr = start(
        ServerConfig {
            response_limit: 4096,
            ..config()
        },
        echo,
    )
    .await;
    let id = sid();
    let mut r = stream(
        addr,
        "POST",
        &format!("/echo/0/{id}/xhr_streaming"),
        &[("Origin", "test")],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("access-control-allow-origin"), Some("test"));
    assert_eq!(r.chunk().await.unwrap(), format!("{}\n", "h".repeat(2048)));
    assert_eq!(r.chunk().await.unwrap(), "o\n");
    let msg = format!("\"{}\"", "x".repeat(128));
    for _ in 0..31 {
        let s = post(addr, &format!("/echo/0/{id}/xhr_send"), &format!("[{msg}]")).await;
        assert_eq!(s.status, 204);
        assert_eq!(r.chunk().await.unwrap(), format!("a[{msg}]\n"));
    }
    assert_eq!(r.chunk().await, None);
    // The session survives the end of the response.
    let mut r = stream(addr, "POST", &format!("/echo/0/{id}/xhr_streaming"), &[]).await;
    r.chunk().await.unwrap();
    post(addr, &format!("/echo/0/{id}/xhr_send"), "[\"again\"]").await;
    assert_eq!(r.chunk().await.unwrap(), "a[\"again\"]\n");
}

#[tokio::test]
async fn streaming_heartbeats() {
    let addr = start(
        ServerConfig {
            heartbeat_interval: Duration::from_millis(50),
            ..config()
        },
        echo,
    )
    .await;
    let id = sid();
    let mut r = stream(addr, "POST", &format!("/echo/0/{id}/xhr_streaming"), &[]).await;
    r.chunk().await.unwrap();
    assert_eq!(r.chunk().await.unwrap(), "o\n");
    assert_eq!(r.chunk().await.unwrap(), "h\n");
    assert_eq!(r.chunk().await.unwrap(), "h\n");
}

#[tokio::test]
async fn eventsource_and_htmlfile() {
    let addr = start(config(), echo).await;
    let id = sid();
    let mut r = stream(addr, "GET", &format!("/echo/0/{id}/eventsource"), &[]).await;
    assert_eq!(r.header("content-type"), Some("text/event-stream"));
    assert_eq!(r.chunk().await.unwrap(), "\r\n");
    assert_eq!(r.chunk().await.unwrap(), "data: o\r\n\r\n");
    post(
        addr,
        &format!("/echo/0/{id}/xhr_send"),
        r#"["  \u0000\n\r "]"#,
    )
    .await;
    assert_eq!(
        r.chunk().await.unwrap(),
        "data: a[\"  \\u0000\\n\\r \"]\r\n\r\n"
    );

    let id = sid();
    let mut r = stream(
        addr,
        "GET",
        &format!("/echo/0/{id}/htmlfile?c=%63allback"),
        &[],
    )
    .await;
    assert_eq!(r.header("content-type"), Some("text/html; charset=UTF-8"));
    let head = r.chunk().await.unwrap();
    assert!(head.len() > 1024);
    assert!(head.contains("var c = parent.callback;"));
    assert_eq!(
        r.chunk().await.unwrap(),
        "<script>\np(\"o\");\n</script>\r\n"
    );
    post(addr, &format!("/echo/0/{id}/xhr_send"), "[\"x\"]").await;
    assert_eq!(
        r.chunk().await.unwrap(),
        "<script>\np(\"a[\\\"x\\\"]\");\n</script>\r\n"
    );
    let r = get(addr, "/echo/a/a/htmlfile").await;
    assert_eq!(
        (r.status, r.text().as_str()),
        (500, "\"callback\" parameter required")
    );
    let r = get(addr, "/echo/a/a/htmlfile?c=abc%28").await;
    assert_eq!(
        (r.status, r.text().as_str()),
        (500, "invalid \"callback\" parameter")
    );
}

#[tokio::test]
async fn jsonp_polling_and_send() {
    let addr = start(config(), echo).await;
    let id = sid();
    let base = format!("/echo/0/{id}");
    let r = get(addr, &format!("{base}/jsonp?c=x")).await;
    assert_eq!(r.text(), "/**/x(\"o\");\r\n");
    let form = [("Content-Type", "application/x-www-form-urlencoded")];
    let r = request(
        addr,
        "POST",
        &format!("{base}/jsonp_send"),
        &form,
        b"d=%5B%22x%22%5D",
    )
    .await;
    assert_eq!((r.status, r.text().as_str()), (200, "ok"));
    for body in ["", "d=", "p=p"] {
        let r = request(
            addr,
            "POST",
            &format!("{base}/jsonp_send"),
            &form,
            body.as_bytes(),
        )
        .await;
        assert_eq!(
            (r.status, r.text().as_str()),
            (500, "Payload expected."),
            "{body}"
        );
    }
    let r = request(
        addr,
        "POST",
        &format!("{base}/jsonp_send"),
        &form,
        b"d=%5B%22x",
    )
    .await;
    assert_eq!(
        (r.status, r.text().as_str()),
        (500, "Broken JSON encoding.")
    );
    let r = request(
        addr,
        "POST",
        &format!("{base}/jsonp_send"),
        &[("Content-Type", "text/plain")],
        b"[\"%61bc\"]",
    )
    .await;
    assert_eq!(r.text(), "ok");
    let r = get(addr, &format!("{base}/jsonp?c=x")).await;
    assert_eq!(r.text(), "/**/x(\"a[\\\"x\\\",\\\"%61bc\\\"]\");\r\n");
    assert_eq!(get(addr, "/echo/a/a/jsonp?c=*").await.status, 500);
}

#[tokio::test]
async fn jsessionid_cookie_when_needed() {
    let addr = start(
        ServerConfig {
            cookie_needed: true,
            ..config()
        },
        echo,
    )
    .await;
    let info: serde_json::Value =
        serde_json::from_slice(&get(addr, "/echo/info").await.body).unwrap();
    assert_eq!(info["cookie_needed"], true);
    assert!(get(addr, "/echo/info").await.header("set-cookie").is_none());
    let r = post(addr, &format!("/echo/0/{}/xhr", sid()), "").await;
    assert_eq!(r.header("set-cookie"), Some("JSESSIONID=dummy; path=/"));
    let r = request(
        addr,
        "POST",
        &format!("/echo/0/{}/xhr", sid()),
        &[("Cookie", "a=b; JSESSIONID=abcdef")],
        b"",
    )
    .await;
    assert_eq!(r.header("set-cookie"), Some("JSESSIONID=abcdef; path=/"));
    // Off by default.
    let addr = start(config(), echo).await;
    assert!(post(addr, &format!("/echo/0/{}/xhr", sid()), "")
        .await
        .header("set-cookie")
        .is_none());
}

#[tokio::test]
async fn session_limit() {
    let addr = start(
        ServerConfig {
            max_sessions: 1,
            ..config()
        },
        echo,
    )
    .await;
    assert_eq!(
        post(addr, &format!("/echo/0/{}/xhr", sid()), "")
            .await
            .status,
        200
    );
    let r = post(addr, &format!("/echo/0/{}/xhr", sid()), "").await;
    assert_eq!(r.status, 503);
}

#[tokio::test]
async fn invalid_session_paths() {
    let addr = start(config(), echo).await;
    for p in [
        "//xhr",
        "/a./a/xhr",
        "/a/a./xhr",
        "/./a/xhr",
        "////xhr",
        "/a/a/nope",
    ] {
        assert_eq!(
            post(addr, &format!("/echo{p}"), "").await.status,
            404,
            "{p}"
        );
        assert_eq!(get(addr, &format!("/echo{p}")).await.status, 404, "{p}");
    }
}

#[tokio::test]
async fn dropping_the_receiver_closes_an_xhr_session() {
    let (on_session, mut sessions) = capture();
    let addr = start(config(), on_session).await;
    let id = sid();
    post(addr, &format!("/echo/0/{id}/xhr"), "").await;
    let (tx, rx) = next_session(&mut sessions).await.split();
    drop(rx);
    let r = post(addr, &format!("/echo/0/{id}/xhr"), "").await;
    assert_eq!(r.text(), "c[3000,\"Go away!\"]\n");
    tokio::time::timeout(DEADLINE, tx.closed()).await.unwrap();
    assert_eq!(
        post(addr, &format!("/echo/0/{id}/xhr_send"), "[\"x\"]")
            .await
            .status,
        404
    );
}
