//! The dashboard in a real browser: Debian's headless Chromium, driven through chromedriver's
//! WebDriver HTTP API, against two real nodes. `.ci/run` installs `chromium` and
//! `chromium-driver` when they are absent.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

const TOKEN: &str = "dash-token";

/// chromedriver, and one browser session in it; both ended when dropped.
struct Browser {
    driver: Child,
    addr: SocketAddr,
    session: String,
    _profile: TempDir,
}

/// One WebDriver call: JSON in, the reply's `value` out (or the error it names).
fn webdriver(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> Result<Value, String> {
    let mut s = TcpStream::connect(addr).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(60)))
        .map_err(|e| e.to_string())?;
    let body = body.map(Value::to_string).unwrap_or_default();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).map_err(|e| e.to_string())?;
    s.write_all(body.as_bytes()).map_err(|e| e.to_string())?;
    // Read the head, then exactly the body it announces (chromedriver may keep the connection).
    let mut raw = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    let (head, mut payload) = loop {
        let n = s.read(&mut buf).map_err(|e| e.to_string())?;
        if n == 0 {
            return Err(format!(
                "connection closed: {}",
                String::from_utf8_lossy(&raw)
            ));
        }
        raw.extend_from_slice(&buf[..n]);
        let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
        let body_start = end + 4;
        if let Some(len) = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse::<usize>().ok())
        {
            while raw.len() < body_start + len {
                let n = s.read(&mut buf).map_err(|e| e.to_string())?;
                if n == 0 {
                    break;
                }
                raw.extend_from_slice(&buf[..n]);
            }
            let body = String::from_utf8_lossy(&raw[body_start..]).into_owned();
            break (head, body);
        }
        // No length: chunked or close-delimited.
        let _ = s.read_to_end(&mut raw);
        break (
            head,
            String::from_utf8_lossy(&raw[body_start..]).into_owned(),
        );
    };
    if head.contains("transfer-encoding: chunked") {
        payload = dechunk(&payload);
    }
    let reply: Value = serde_json::from_str(&payload).map_err(|e| format!("{e}: {payload}"))?;
    let value = reply.get("value").cloned().unwrap_or(Value::Null);
    if value.get("error").is_some() {
        return Err(value.to_string());
    }
    Ok(value)
}

fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, after)) = rest.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || after.len() < n {
            break;
        }
        out.push_str(&after[..n]);
        rest = after[n..].trim_start_matches("\r\n");
    }
    out
}

impl Browser {
    fn start() -> Browser {
        let port = free_port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver (Debian: apt-get install chromium chromium-driver)");
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        assert!(
            eventually(Duration::from_secs(15), || webdriver(
                addr, "GET", "/status", None
            )
            .is_ok_and(|v| v["ready"] == true)),
            "chromedriver did not start"
        );
        let profile = TempDir::new("chromium-profile");
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                         "--no-first-run", "--disable-background-networking",
                         "--disable-component-update", "--disable-sync",
                         "--disable-dev-shm-usage", "--window-size=1360,1100",
                         format!("--user-data-dir={}", profile.0.display())]
            }
        }}});
        let session = webdriver(addr, "POST", "/session", Some(&caps))
            .unwrap_or_else(|e| panic!("no browser session: {e}"));
        let session = session["sessionId"]
            .as_str()
            .expect("session id")
            .to_owned();
        Browser {
            driver,
            addr,
            session,
            _profile: profile,
        }
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let path = format!("/session/{}{path}", self.session);
        webdriver(self.addr, method, &path, body.as_ref())
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    fn go(&self, url: &str) {
        self.call("POST", "/url", Some(json!({"url": url})));
    }

    /// Runs `script` in the page and returns what it returns.
    fn js(&self, script: &str) -> Value {
        self.call(
            "POST",
            "/execute/sync",
            Some(json!({"script": script, "args": []})),
        )
    }

    fn element(&self, css: &str) -> String {
        let found = self.call(
            "POST",
            "/element",
            Some(json!({"using": "css selector", "value": css})),
        );
        found
            .as_object()
            .and_then(|o| o.values().next())
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("no element {css}"))
            .to_owned()
    }

    /// Types into the field (cleared first), as a person would.
    fn type_into(&self, css: &str, text: &str) {
        let id = self.element(css);
        self.call("POST", &format!("/element/{id}/clear"), Some(json!({})));
        self.call(
            "POST",
            &format!("/element/{id}/value"),
            Some(json!({"text": text})),
        );
    }

    fn click(&self, css: &str) {
        let id = self.element(css);
        self.call("POST", &format!("/element/{id}/click"), Some(json!({})));
    }

    fn select(&self, css: &str, value: &str) {
        let script = format!(
            "const s = document.querySelector({css:?}); s.value = {value:?}; \
             s.dispatchEvent(new Event('change')); return s.value;"
        );
        assert_eq!(self.js(&script), json!(value));
    }

    fn text(&self, css: &str) -> String {
        let script =
            format!("const e = document.querySelector({css:?}); return e ? e.textContent : null;");
        self.js(&script).as_str().unwrap_or_default().to_owned()
    }

    /// Waits until `script` returns true.
    fn until(&self, what: &str, within: Duration, script: &str) {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if self.js(script) == json!(true) {
                return;
            }
            thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "the page never showed {what}; it shows: {}",
            self.text("main")
        );
    }

    fn screenshot(&self) -> Vec<u8> {
        let png = self.call("GET", "/screenshot", None);
        base64_decode(png.as_str().expect("base64 png"))
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let path = format!("/session/{}", self.session);
        let _ = webdriver(self.addr, "DELETE", &path, None);
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    };
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0);
    for v in text.bytes().filter_map(value) {
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}

/// The state cell of tunnel `name` is `state`.
fn tunnel_state_is(name: &str, state: &str) -> String {
    format!(
        "const r = document.querySelector('#tunnels tbody tr[data-name=\"{name}\"] td.state'); \
         return !!r && r.textContent === '{state}';"
    )
}

#[test]
fn the_dashboard_shows_a_node_live_and_changes_it_through_its_forms() {
    let dir = TempDir::new("dashboard");
    let mut b = Node::persistent(&dir, "b", Some((100, 600)));
    let a = Node::with_config(
        &dir,
        "a",
        &format!(
            "[admin]\ntoken = \"{TOKEN}\"\n[tunnel]\nheartbeat_interval_ms = 100\nheartbeat_timeout_ms = 600\n"
        ),
    );
    let auth = format!("Authorization: Bearer {TOKEN}\r\n");
    let browser = Browser::start();
    browser.go(&format!("http://{}/", a.admin));

    // The node has a token: the page asks for it once.
    browser.until(
        "the token form",
        Duration::from_secs(15),
        "return !document.querySelector('#token-form').hidden;",
    );
    browser.type_into("#token", TOKEN);
    browser.click("#token-form button");
    browser.until(
        "the live badge",
        Duration::from_secs(10),
        "return document.querySelector('#live').textContent === 'live';",
    );

    // A tunnel added through the form comes up; the peer dies and comes back, and the page
    // follows: connected, reconnecting, connected.
    browser.type_into("#tunnel-form input[name=name]", "t1");
    browser.type_into(
        "#tunnel-form input[name=port]",
        &b.tunnel.port().to_string(),
    );
    browser.click("#tunnel-form button");
    browser.until(
        "t1 connected",
        Duration::from_secs(10),
        &tunnel_state_is("t1", "connected"),
    );
    b.kill9();
    browser.until(
        "t1 reconnecting",
        Duration::from_secs(10),
        &tunnel_state_is("t1", "reconnecting"),
    );
    b.restart();
    browser.until(
        "t1 connected again",
        Duration::from_secs(15),
        &tunnel_state_is("t1", "connected"),
    );

    // A service added through the form exists on the node.
    let port = free_port();
    browser.type_into("#service-form input[name=name]", "web");
    browser.select("#service-form select[name=type]", "local");
    browser.type_into("#service-form input[name=port]", &port.to_string());
    browser.select("#service-form select[name=cipher]", "aes-256-gcm");
    browser.type_into("#service-form input[name=key]", "k");
    browser.click("#service-form button");
    browser.until(
        "the service row",
        Duration::from_secs(10),
        "return !!document.querySelector('#services tbody tr[data-name=\"web\"]');",
    );
    let (status, _, config) = http_with(a.admin, "GET", "/config", &auth, "");
    assert_eq!(status, 200);
    let web = &config["services"]["local"]["web"];
    assert_eq!(web["addr"], json!(["127.0.0.1", port]), "{config}");
    assert_eq!(web["cipher"], "aes-256-gcm");

    // A refused change shows the API's own error text.
    browser.type_into("#service-form input[name=name]", "bad");
    browser.type_into("#service-form input[name=port]", "70000");
    browser.click("#service-form button");
    browser.until(
        "the API's error",
        Duration::from_secs(10),
        "return document.querySelector('#message').textContent.includes('not a number in 1..65535');",
    );
    assert!(browser.text("#message").contains("refused"));
    let (_, _, config) = http_with(a.admin, "GET", "/config", &auth, "");
    assert!(config["services"]["local"].get("bad").is_none());

    // Bind it through the form, carry real traffic, and watch the connection and the rates.
    let echo = Backend::echo();
    b.ok(
        "POST",
        "/service",
        &format!(
            r#"{{"name":"web", "key":"k", "cipher":"aes-256-gcm", "type": "remote", "addr":["127.0.0.1", "{}"]}}"#,
            echo.addr.port()
        ),
    );
    b.ok(
        "POST",
        "/bind",
        r#"{"tunnel": "t1", "service":"web", "type": "remote"}"#,
    );
    browser.type_into("#bind-form input[name=service]", "web");
    browser.type_into("#bind-form input[name=tunnel]", "t1");
    browser.click("#bind-form button");
    browser.until(
        "the bind row",
        Duration::from_secs(10),
        "return document.querySelector('#binds tbody').textContent.includes('t1');",
    );
    let local = SocketAddr::from(([127, 0, 0, 1], port));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let traffic = {
        let stop = stop.clone();
        thread::spawn(move || {
            let mut s = connect(local);
            let chunk = pattern(64 * 1024, 1);
            let mut back = vec![0u8; chunk.len()];
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                s.write_all(&chunk).expect("send");
                s.read_exact(&mut back).expect("echo");
                assert_eq!(back, chunk);
                thread::sleep(Duration::from_millis(5));
            }
        })
    };
    browser.until(
        "a live connection and a rate",
        Duration::from_secs(10),
        "const c = document.querySelectorAll('#connections tbody tr').length; \
         const r = document.querySelector('#tunnels tbody tr[data-name=\"t1\"]'); \
         return c >= 1 && !!r && /[1-9]/.test(r.children[5].textContent);",
    );
    // The charts draw the traffic the page receives through GET /events (not by polling).
    browser.until(
        "charts of non-zero traffic from /events",
        Duration::from_secs(15),
        "const row = document.querySelector('#tunnels tbody tr[data-name=\"t1\"] td.chart svg'); \
         const svc = document.querySelector('#services tbody tr[data-name=\"web\"] td.chart svg'); \
         const big = document.querySelector('#big-chart'); \
         return window.menetEvents >= 5 && !!row && Number(row.dataset.peak) > 0 \
           && !!svc && Number(svc.dataset.peak) > 0 && Number(big.dataset.peak) > 0;",
    );
    let points = browser.js(
        "return document.querySelector('#big-chart polyline.out').getAttribute('points') + ' ' \
         + document.querySelector('#big-chart polyline.in').getAttribute('points');",
    );
    let heights: Vec<f64> = points
        .as_str()
        .unwrap_or("")
        .split(' ')
        .filter_map(|p| p.split(',').nth(1)?.parse().ok())
        .collect();
    assert!(
        heights.iter().any(|h| *h < 150.0),
        "the large chart rises above its baseline: {points}"
    );
    let png = browser.screenshot();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    traffic.join().expect("traffic");
    assert!(
        png.len() > 10_000 && png.starts_with(b"\x89PNG"),
        "{} bytes",
        png.len()
    );
    let shot = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    std::fs::write(&shot, &png).expect("screenshot");
    eprintln!("screenshot: {}", shot.display());

    // Delete through the page: the node forgets the tunnel.
    browser.js("document.querySelector('#tunnels tbody tr[data-name=\"t1\"] button.delete').click(); return true;");
    browser.until(
        "t1 gone",
        Duration::from_secs(10),
        "return !document.querySelector('#tunnels tbody tr[data-name=\"t1\"]');",
    );
    let (_, _, config) = http_with(a.admin, "GET", "/config", &auth, "");
    assert!(config["tunnels"].get("t1").is_none());
}
