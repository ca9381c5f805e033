//! Running a seller as a service (issue 16): fixed addresses per `[[sell]]`.

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::time::Duration;

use dazaar::config::{self, ConfigError};
use dazaar_tests::{dazaar, dazaar_cmd, json_lines, make_text_feed, s, Proc};

/// A loopback port that was free a moment ago (bound to port 0, then released).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

const TWO_FIXED: &str = r#"listen = "127.0.0.1:0"

[[sell]]
feed = "one"
name = "one"
listen = "127.0.0.1:4101"

[[sell]]
feed = "two"
name = "two"
listen = "[::1]:4102"

[[sell]]
feed = "three"
name = "three"
"#;

#[test]
fn a_sell_table_has_its_own_listen_address() {
    let file = Path::new("/etc/dazaar/dazaar.toml");
    let s = config::parse(TWO_FIXED, file).expect("parses");
    let own: Vec<_> = s.sell.iter().map(|p| p.listen).collect();
    assert_eq!(
        own,
        [
            Some("127.0.0.1:4101".parse().unwrap()),
            Some("[::1]:4102".parse().unwrap()),
            None
        ]
    );
    // The first product without its own address takes the default; later ones a free
    // port on the default's IP.
    let default: SocketAddr = "127.0.0.1:4000".parse().unwrap();
    assert_eq!(
        dazaar::market::shop::listen_addrs(&[None, own[0], None], default),
        [
            default,
            "127.0.0.1:4101".parse().unwrap(),
            "127.0.0.1:0".parse().unwrap()
        ]
    );

    let bad = TWO_FIXED.replace("[::1]:4102", "localhost:4102");
    match config::parse(&bad, file).expect_err("a host name is not an address") {
        ConfigError::Invalid { line, key, .. } => {
            assert_eq!((line, key.as_str()), (11, "sell[1].listen"))
        }
        other => panic!("unexpected {other:?}"),
    }
    let twice = TWO_FIXED.replace("[::1]:4102", "127.0.0.1:4101");
    let e = config::parse(&twice, file).expect_err("two products on one address");
    assert_eq!((e.line(), e.key()), (11, Some("sell[1].listen")));
    assert!(e.to_string().contains("sell[0]"), "{e}");
    // Port 0 twice is fine: each gets a free port.
    let zeros = TWO_FIXED
        .replace("4101", "0")
        .replace("[::1]:4102", "127.0.0.1:0");
    config::parse(&zeros, file).expect("port 0 twice");
}

/// Two `[[sell]]` products with fixed loopback ports listen where configured (one
/// `listening` line each, in file order), and a buyer buys from each at its port.
#[test]
fn sell_products_listen_on_their_fixed_ports() {
    let dir = tempfile::tempdir().unwrap();
    let (f1, f2) = (dir.path().join("f1"), dir.path().join("f2"));
    make_text_feed(&f1, 3);
    make_text_feed(&f2, 4);
    let ports = [free_port(), free_port()];
    let config = dir.path().join("dazaar.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = {:?}\nlisten = \"127.0.0.1:0\"\n\n[[sell]]\nfeed = {:?}\nname = \"one\"\nlisten = \"127.0.0.1:{}\"\n\n[[sell]]\nfeed = {:?}\nname = \"two\"\nlisten = \"127.0.0.1:{}\"\n",
            s(&dir.path().join("seller")),
            s(&f1),
            ports[0],
            s(&f2),
            ports[1],
        ),
    )
    .unwrap();
    let seller = Proc::spawn(dazaar_cmd(&["--config", s(&config), "sell", "--json"]));
    let listening = [
        seller.event("listening", Duration::from_secs(10)),
        seller.event("listening", Duration::from_secs(10)),
    ];
    for (n, (l, (port, want))) in listening.iter().zip(ports.iter().zip([3, 4])).enumerate() {
        let addr = format!("127.0.0.1:{port}");
        assert_eq!(l["addr"], addr.as_str());
        let out = dir.path().join(format!("bought{n}"));
        let o = dazaar(&[
            "--data-dir",
            s(&dir.path().join("buyer")),
            "buy",
            l["sellerKey"].as_str().unwrap(),
            "--connect",
            &addr,
            "--out",
            s(&out),
            "--json",
        ]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert_eq!(json_lines(&o.stdout).last().unwrap()["length"], want);
    }
}

/// `GET http://addr/path`: the status and the body.
fn http_get(addr: &str, path: &str) -> (u16, String) {
    match ureq::get(&format!("http://{addr}{path}"))
        .timeout(Duration::from_secs(5))
        .call()
    {
        Ok(r) => (r.status(), r.into_string().unwrap()),
        Err(ureq::Error::Status(code, r)) => (code, r.into_string().unwrap()),
        Err(e) => panic!("GET {path}: {e}"),
    }
}

/// `/metrics`, parsed by a Prometheus text-format parser.
fn scrape(addr: &str) -> prometheus_parse::Scrape {
    let (status, body) = http_get(addr, "/metrics");
    assert_eq!(status, 200, "{body}");
    prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_owned()))).unwrap()
}

/// The value of the sample `name` whose labels include `labels` (summed over the
/// others), or 0 when there is none; histograms give their count.
fn value(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    use prometheus_parse::Value;
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match &s.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
            Value::Histogram(buckets) => buckets.last().map_or(0.0, |b| b.count),
            Value::Summary(_) => 0.0,
        })
        .sum()
}

/// Starts `dazaar sell FEED --payment PLUGIN ... --metrics 127.0.0.1:0 --json` with the
/// plugin copied into `dir/plugins`; returns the seller, its `listening` line and the
/// metrics address.
fn sell_with_metrics(
    dir: &Path,
    feed: &Path,
    plugin: &str,
    plugin_config: &str,
) -> (Proc, serde_json::Value, String) {
    let plugins = dir.join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    dazaar_tests::copy_plugin(plugin, &plugins, None);
    let (seller, info) = dazaar_tests::sell(&[
        "--data-dir",
        s(&dir.join("seller")),
        s(feed),
        "--listen",
        "127.0.0.1:0",
        "--payment",
        plugin,
        "--plugin-dir",
        s(&plugins),
        "--plugin-config",
        plugin_config,
        "--revalidate-ms",
        "200",
        "--metrics",
        "127.0.0.1:0",
    ]);
    let metrics = seller.event("metrics", Duration::from_secs(10));
    let addr = metrics["addr"].as_str().unwrap().to_owned();
    (seller, info, addr)
}

/// A seller with `--metrics`: one paying buyer buys live; `/metrics` (parsed as
/// Prometheus text) counts the buyer connected and valid, the plugin's valid answers and
/// their latency, and the bytes uploaded; `/healthz` says ok. When the buyer goes, the
/// gauges go back to zero.
#[test]
fn metrics_count_a_paying_buyer_and_health_is_ok() {
    let dir = tempfile::tempdir().unwrap();
    let feed = dir.path().join("feed");
    make_text_feed(&feed, 30);
    let ledger = dir.path().join("ledger.jsonl");
    let config = format!("file = {:?}\nreload_ms = 0", s(&ledger));
    let (_seller, info, metrics) = sell_with_metrics(dir.path(), &feed, "ledger", &config);
    let product = info["sellerKey"].as_str().unwrap().to_owned();
    let by_product = [("product", product.as_str())];

    let (status, body) = http_get(&metrics, "/healthz");
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    // The product's series are there, at zero, before any buyer.
    let before = scrape(&metrics);
    for name in ["dazaar_buyers_connected", "dazaar_bytes_uploaded_total"] {
        assert!(
            before
                .samples
                .iter()
                .any(|s| s.metric == name && s.labels.get("product") == Some(product.as_str())),
            "{name} before any buyer: {:?}",
            before.samples
        );
    }

    let buyer_data = dir.path().join("buyer");
    let o = dazaar(&[
        "ledger",
        "add",
        "--file",
        s(&ledger),
        "--buyer",
        &dazaar_tests::buyer_key(&buyer_data),
        "--amount",
        "600",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let mut buyer = Proc::spawn(dazaar_cmd(&[
        "--data-dir",
        s(&buyer_data),
        "buy",
        &product,
        "--connect",
        info["addr"].as_str().unwrap(),
        "--out",
        s(&dir.path().join("bought")),
        "--live",
        "--json",
    ]));
    buyer.json_where(Duration::from_secs(10), "all 30 blocks", |v| {
        v["event"] == "synced" && v["length"] == 30
    });

    let m = scrape(&metrics);
    assert_eq!(value(&m, "dazaar_buyers_connected", &by_product), 1.0);
    assert_eq!(value(&m, "dazaar_buyers_valid", &by_product), 1.0);
    let valid = [("plugin", "ledger"), ("result", "valid")];
    assert!(value(&m, "dazaar_validations_total", &valid) >= 1.0);
    let uploaded = value(&m, "dazaar_bytes_uploaded_total", &by_product);
    assert!(uploaded > 30.0 * 8.0, "{uploaded} bytes for 30 blocks");
    let calls = [("plugin", "ledger"), ("call", "validate")];
    assert!(value(&m, "dazaar_plugin_call_seconds", &calls) >= 1.0);
    assert_eq!(
        value(&m, "dazaar_handshakes_failed_total", &by_product),
        0.0
    );
    let (status, body) = http_get(&metrics, "/healthz");
    assert_eq!((status, body.as_str()), (200, "ok\n"));

    buyer.stop();
    dazaar_tests::wait_until(Duration::from_secs(10), "the gauges to drop", || {
        let m = scrape(&metrics);
        value(&m, "dazaar_buyers_connected", &by_product) == 0.0
            && value(&m, "dazaar_buyers_valid", &by_product) == 0.0
    });
    // A peer that never finishes the handshake is counted as such.
    drop(std::net::TcpStream::connect(info["addr"].as_str().unwrap()).unwrap());
    dazaar_tests::wait_until(Duration::from_secs(10), "a failed handshake", || {
        value(
            &scrape(&metrics),
            "dazaar_handshakes_failed_total",
            &by_product,
        ) == 1.0
    });
    let (status, _) = http_get(&metrics, "/nothing");
    assert_eq!(status, 404);
}

/// A payment plugin whose backend is down: the buyer is refused, the validation is
/// counted as an error, and `/healthz` answers 503 naming the plugin.
#[test]
fn health_is_503_while_a_plugin_fails() {
    let dir = tempfile::tempdir().unwrap();
    let feed = dir.path().join("feed");
    make_text_feed(&feed, 3);
    let (_seller, info, metrics) =
        sell_with_metrics(dir.path(), &feed, "faulty", "mode = \"unavailable\"");
    let o = dazaar(&[
        "--data-dir",
        s(&dir.path().join("buyer")),
        "buy",
        info["sellerKey"].as_str().unwrap(),
        "--connect",
        info["addr"].as_str().unwrap(),
        "--out",
        s(&dir.path().join("bought")),
        "--json",
    ]);
    assert!(!o.status.success());
    let (status, body) = http_get(&metrics, "/healthz");
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("plugin faulty") && body.contains("unavailable"),
        "{body}"
    );
    let errors = [("plugin", "faulty"), ("result", "error")];
    assert!(value(&scrape(&metrics), "dazaar_validations_total", &errors) >= 1.0);
}

/// The non-empty lines of `text`, each parsed as JSON (panics on one that is not).
fn json_log(text: &str) -> Vec<serde_json::Value> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

/// `--log-format json`: every stderr line is a JSON object, the final error included,
/// and a seller's warning about a failing plugin carries the plugin and (with `-v`) the
/// buyer's span.
#[test]
fn log_format_json_writes_one_object_per_line() {
    let o = dazaar(&[
        "--log-format",
        "json",
        "config",
        "check",
        "/nonexistent/dazaar.toml",
    ]);
    assert!(!o.status.success());
    let lines = json_log(&String::from_utf8_lossy(&o.stderr));
    assert!(
        lines.iter().any(|l| l["level"] == "ERROR"
            && l["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("cannot read"))),
        "{lines:?}"
    );
    // The default stays human.
    let o = dazaar(&["config", "check", "/nonexistent/dazaar.toml"]);
    assert!(String::from_utf8_lossy(&o.stderr).starts_with("dazaar: /nonexistent"));

    let dir = tempfile::tempdir().unwrap();
    let feed = dir.path().join("feed");
    make_text_feed(&feed, 3);
    let plugins = dir.path().join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    dazaar_tests::copy_plugin("faulty", &plugins, None);
    let log = dir.path().join("seller.log");
    let mut seller = Proc::spawn_with_stderr(
        dazaar_cmd(&[
            "--log-format",
            "json",
            // Spans are at info level: shown from -v on.
            "-v",
            "--data-dir",
            s(&dir.path().join("seller")),
            "sell",
            s(&feed),
            "--listen",
            "127.0.0.1:0",
            "--payment",
            "faulty",
            "--plugin-dir",
            s(&plugins),
            "--plugin-config",
            "mode = \"unavailable\"",
            "--json",
        ]),
        std::fs::File::create(&log).unwrap(),
    );
    let info = seller.event("listening", Duration::from_secs(10));
    let o = dazaar(&[
        "--data-dir",
        s(&dir.path().join("buyer")),
        "buy",
        info["sellerKey"].as_str().unwrap(),
        "--connect",
        info["addr"].as_str().unwrap(),
        "--out",
        s(&dir.path().join("bought")),
    ]);
    assert!(!o.status.success());
    seller.stop();
    let lines = json_log(&std::fs::read_to_string(&log).unwrap());
    let warning = lines
        .iter()
        .find(|l| l["level"] == "WARN" && l["fields"]["plugin"] == "faulty")
        .unwrap_or_else(|| panic!("no warning about the plugin: {lines:?}"));
    assert_eq!(warning["span"]["name"], "buyer", "{warning}");
    assert!(warning["span"]["peer"].is_string(), "{warning}");
}

/// `dazaar completions bash|zsh|fish` prints a script naming the commands; `dazaar man`
/// prints the man page (and `--dir` one page per command); `--version` names the plugin
/// API this host accepts.
#[test]
fn completions_man_page_and_version() {
    for shell in ["bash", "zsh", "fish"] {
        let o = dazaar(&["completions", shell]);
        assert!(
            o.status.success(),
            "{shell}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let script = String::from_utf8_lossy(&o.stdout);
        assert!(
            script.len() > 1000 && script.contains("sell"),
            "{shell}: {script}"
        );
    }
    assert!(!dazaar(&["completions", "tcsh"]).status.success());

    let o = dazaar(&["man"]);
    assert!(o.status.success());
    let page = String::from_utf8_lossy(&o.stdout);
    assert!(
        page.contains(".TH dazaar 1") && page.contains("completions"),
        "{page}"
    );
    let dir = tempfile::tempdir().unwrap();
    let o = dazaar(&["man", "--dir", s(dir.path())]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let sell = std::fs::read_to_string(dir.path().join("dazaar-sell.1")).unwrap();
    assert!(sell.contains("\\-\\-metrics"), "{sell}");

    let api = dazaar_plugin_api::API_VERSION;
    let o = dazaar(&["--version"]);
    assert!(o.status.success());
    let version = String::from_utf8_lossy(&o.stdout);
    assert!(
        version.contains(&format!("plugin API {}.{}", api.major, api.minor)),
        "{version}"
    );
}

/// Under systemd (`NOTIFY_SOCKET`), `dazaar sell` sends READY=1 once it listens, and
/// STOPPING=1 when it is told to stop.
#[test]
fn sell_tells_systemd_when_it_is_ready() {
    use std::os::unix::net::UnixDatagram;
    let dir = tempfile::tempdir().unwrap();
    let feed = dir.path().join("feed");
    make_text_feed(&feed, 2);
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut cmd = dazaar_cmd(&[
        "--data-dir",
        s(&dir.path().join("seller")),
        "sell",
        s(&feed),
        "--listen",
        "127.0.0.1:0",
        "--json",
    ]);
    cmd.env("NOTIFY_SOCKET", &socket_path);
    let mut seller = Proc::spawn(cmd);
    let listening = seller.event("listening", Duration::from_secs(10));
    let mut buf = [0u8; 512];
    let n = socket.recv(&mut buf).expect("a notification");
    let ready = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(ready.lines().any(|l| l == "READY=1"), "{ready}");
    assert!(ready.contains("STATUS=selling 1 products"), "{ready}");
    // Ready means listening: a buyer can connect now.
    std::net::TcpStream::connect(listening["addr"].as_str().unwrap()).unwrap();
    seller.stop();
    let n = socket.recv(&mut buf).expect("a notification");
    assert_eq!(String::from_utf8_lossy(&buf[..n]), "STOPPING=1\n");
}

/// `contrib/dazaar-seller.service` passes `systemd-analyze verify` (with ExecStart
/// pointing at the binary built here: verify checks that it exists).
#[test]
fn the_systemd_unit_verifies() {
    let unit =
        std::fs::read_to_string(dazaar_tests::repo_root().join("contrib/dazaar-seller.service"))
            .unwrap();
    assert!(unit.contains("Type=notify") && unit.contains("ExecReload=/bin/kill -HUP $MAINPID"));
    if dazaar_tests::need(
        "systemd-analyze",
        dazaar_tests::skip::runs("systemd-analyze"),
    )
    .is_none()
    {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("dazaar-seller.service");
    let bin = dazaar_tests::dazaar_bin();
    std::fs::write(&file, unit.replace("/usr/bin/dazaar", s(&bin))).unwrap();
    let o = std::process::Command::new("systemd-analyze")
        .args(["verify", s(&file)])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success() && stderr.trim().is_empty(), "{stderr}");
}

/// `dazaar config init PATH` writes the commented example, which `config check` passes;
/// it never overwrites a file without `--force`.
#[test]
fn config_init_writes_an_example_that_checks() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("etc/dazaar.toml");
    let o = dazaar(&["config", "init", s(&file)]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(std::fs::read_to_string(&file).unwrap(), config::EXAMPLE);
    let o = dazaar(&["config", "check", s(&file)]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains(": ok (1 products"));
    // --config is honoured by `config check`.
    let o = dazaar(&["--config", s(&file), "config", "check"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    std::fs::write(&file, "mine = 1\n").unwrap();
    let o = dazaar(&["config", "init", s(&file)]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("already exists"));
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "mine = 1\n");
    let o = dazaar(&["config", "init", s(&file), "--force"]);
    assert!(o.status.success());
    assert_eq!(std::fs::read_to_string(&file).unwrap(), config::EXAMPLE);
    let o = dazaar(&["config", "init", "-"]);
    assert_eq!(String::from_utf8_lossy(&o.stdout), config::EXAMPLE);
}

/// Which file `dazaar config check` (like every command) uses: `--config`, else
/// `$DAZAAR_CONFIG`, else `./dazaar.toml`, else `$XDG_CONFIG_HOME/dazaar/dazaar.toml`.
#[test]
fn the_config_file_is_searched_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let write = |rel: &str| {
        let p = dir.path().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, "listen = \"127.0.0.1:0\"\n").unwrap();
        p
    };
    let cwd = dir.path().join("cwd");
    std::fs::create_dir_all(&cwd).unwrap();
    let xdg = dir.path().join("xdg");
    let checked = |flag: Option<&Path>, env: Option<&Path>| -> String {
        let mut args = vec![];
        if let Some(f) = flag {
            args.extend(["--config", s(f)]);
        }
        args.extend(["config", "check"]);
        let mut cmd = dazaar_cmd(&args);
        cmd.current_dir(&cwd)
            .env("XDG_CONFIG_HOME", &xdg)
            .env("HOME", dir.path().join("home"))
            .env_remove("DAZAAR_CONFIG");
        if let Some(e) = env {
            cmd.env("DAZAAR_CONFIG", e);
        }
        let o = cmd.output().unwrap();
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    };
    // Nothing in these places (a machine's /etc/dazaar may have one: then it is used).
    if !Path::new("/etc/dazaar/dazaar.toml").exists() {
        assert!(checked(None, None).contains("no configuration file"));
    }
    let in_xdg = write("xdg/dazaar/dazaar.toml");
    assert!(checked(None, None).starts_with(&format!("{}: ok", in_xdg.display())));
    write("cwd/dazaar.toml");
    assert!(checked(None, None).starts_with("dazaar.toml: ok"));
    let env = write("env.toml");
    assert!(checked(None, Some(&env)).starts_with(&format!("{}: ok", env.display())));
    let flag = write("flag.toml");
    assert!(checked(Some(&flag), Some(&env)).starts_with(&format!("{}: ok", flag.display())));
    // A named file that is missing is an error, not a reason to look further.
    let missing = dir.path().join("missing.toml");
    assert!(checked(None, Some(&missing)).contains("cannot read"));
}

/// `dazaar_dht_announced` is 1 for a product once its DHT announcement succeeded (a
/// private DHT on loopback).
#[test]
fn metrics_show_the_dht_announcement() {
    let dir = tempfile::tempdir().unwrap();
    let feed = dir.path().join("feed");
    make_text_feed(&feed, 1);
    let node = Proc::spawn(dazaar_cmd(&[
        "dht-node",
        "--listen",
        "127.0.0.1:0",
        "--json",
    ]));
    let boot = node.event("listening", Duration::from_secs(10))["addr"]
        .as_str()
        .unwrap()
        .to_owned();
    let seller = Proc::spawn(dazaar_cmd(&[
        "--data-dir",
        s(&dir.path().join("seller")),
        "sell",
        s(&feed),
        "--json",
        "--bootstrap",
        &boot,
        "--no-mdns",
        "--metrics",
        "127.0.0.1:0",
    ]));
    let key = seller.event("listening", Duration::from_secs(10))["sellerKey"]
        .as_str()
        .unwrap()
        .to_owned();
    let metrics = seller.event("metrics", Duration::from_secs(10))["addr"]
        .as_str()
        .unwrap()
        .to_owned();
    seller.event("announced", Duration::from_secs(20));
    let m = scrape(&metrics);
    assert_eq!(value(&m, "dazaar_dht_announced", &[("product", &key)]), 1.0);
}

// ---- reload on SIGHUP ---------------------------------------------------------------

/// The head of a seller's `dazaar.toml` in `dir` (no discovery; plugins in `dir/plugins`).
fn config_head(dir: &Path) -> String {
    format!(
        "data_dir = {:?}\nlisten = \"127.0.0.1:0\"\nplugin_dir = {:?}\n\n[discovery]\ndht = false\nmdns = false\n",
        s(&dir.join("seller")),
        s(&dir.join("plugins")),
    )
}

/// A `[[sell]]` table of `feed` on `127.0.0.1:port`, paid through `plugin` at `amount`
/// credits a second, revalidated every 200 ms; `plugin_config` is the plugin's table.
fn sell_table(
    feed: &Path,
    name: &str,
    port: u16,
    plugin: &str,
    amount: u32,
    plugin_config: &str,
) -> String {
    format!(
        "\n[[sell]]\nfeed = {:?}\nname = {name:?}\nlisten = \"127.0.0.1:{port}\"\nrevalidate_ms = 200\n\n[[sell.payment]]\nplugin = {plugin:?}\ncurrency = \"credits\"\namount = \"{amount}\"\nunit = \"seconds\"\ninterval = \"1\"\n[sell.payment.config]\n{plugin_config}\n",
        s(feed)
    )
}

/// Sends SIGHUP to `seller` and returns its next `reloaded` or `reload-failed` line.
fn hangup(seller: &Proc) -> serde_json::Value {
    let pid = i32::try_from(seller.id()).expect("pid");
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGHUP) }, 0);
    seller.json_where(Duration::from_secs(20), "the reload", |v| {
        v["event"] == "reloaded" || v["event"] == "reload-failed"
    })
}

/// A seller of two feeds set up for reload tests: `f1` (3 blocks), `f2` (4 blocks), the
/// `free` and `ledger` plugins, a ledger file, two free ports.
struct ReloadSetup {
    dir: tempfile::TempDir,
    f1: std::path::PathBuf,
    f2: std::path::PathBuf,
    ledger: std::path::PathBuf,
    config: std::path::PathBuf,
    ports: [u16; 2],
}

impl ReloadSetup {
    fn new() -> ReloadSetup {
        let dir = tempfile::tempdir().unwrap();
        let (f1, f2) = (dir.path().join("f1"), dir.path().join("f2"));
        make_text_feed(&f1, 3);
        make_text_feed(&f2, 4);
        let plugins = dir.path().join("plugins");
        std::fs::create_dir_all(&plugins).unwrap();
        dazaar_tests::copy_plugin("free", &plugins, None);
        dazaar_tests::copy_plugin("ledger", &plugins, None);
        let ledger = dir.path().join("ledger.jsonl");
        let config = dir.path().join("dazaar.toml");
        ReloadSetup {
            f1,
            f2,
            ledger,
            config,
            ports: [free_port(), free_port()],
            dir,
        }
    }

    fn path(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(name)
    }

    /// Product one: `f1` through the free plugin.
    fn one(&self) -> String {
        sell_table(&self.f1, "one", self.ports[0], "free", 1, "")
    }

    /// Product two: `f2` through the ledger at `amount` credits a second.
    fn two(&self, amount: u32) -> String {
        let ledger = format!("file = {:?}\nreload_ms = 0", s(&self.ledger));
        sell_table(&self.f2, "two", self.ports[1], "ledger", amount, &ledger)
    }

    fn write(&self, tables: &[String]) {
        let text = config_head(self.dir.path()) + &tables.concat();
        std::fs::write(&self.config, text).unwrap();
    }

    /// `dazaar sell --json` from the config; its `listening` lines.
    fn sell(&self, products: usize) -> (Proc, Vec<serde_json::Value>) {
        self.sell_with(products, &[])
    }

    /// [`ReloadSetup::sell`] with more arguments.
    fn sell_with(&self, products: usize, more: &[&str]) -> (Proc, Vec<serde_json::Value>) {
        let mut args = vec!["--config", s(&self.config), "sell", "--json"];
        args.extend_from_slice(more);
        let seller = Proc::spawn(dazaar_cmd(&args));
        let listening = (0..products)
            .map(|_| seller.event("listening", Duration::from_secs(20)))
            .collect();
        (seller, listening)
    }

    /// Records a payment of `amount` credits by the buyer of `data`.
    fn pay(&self, data: &Path, amount: &str) {
        let o = dazaar(&[
            "ledger",
            "add",
            "--file",
            s(&self.ledger),
            "--buyer",
            &dazaar_tests::buyer_key(data),
            "--amount",
            amount,
        ]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }

    /// A live buyer (no reconnecting) of the product at `port`.
    fn live_buyer(&self, data: &str, key: &str, port: u16, out: &str) -> Proc {
        Proc::spawn(dazaar_cmd(&[
            "--data-dir",
            s(&self.path(data)),
            "buy",
            key,
            "--connect",
            &format!("127.0.0.1:{port}"),
            "--out",
            s(&self.path(out)),
            "--live",
            "--no-reconnect",
            "--json",
        ]))
    }

    /// Appends two blocks to `feed` from another process.
    fn append(&self, feed: &Path) {
        let extra = self.path("extra.txt");
        std::fs::write(&extra, "fresh 1\nfresh 2\n").unwrap();
        assert!(dazaar(&["feed", "append", s(feed), s(&extra)])
            .status
            .success());
    }
}

/// A live buyer's next `synced` line with `length`, failing on `done` (the buyer was
/// dropped) or after 20 s.
fn synced(buyer: &Proc, length: u64) {
    let v = buyer.json_where(Duration::from_secs(20), "synced", |v| {
        (v["event"] == "synced" && v["length"] == length) || v["event"] == "done"
    });
    assert_eq!(v["event"], "synced", "the live buyer was dropped: {v}");
}

/// The done-when of issue 16's reload: a live buyer of product one (free plugin) keeps
/// receiving appended blocks while product two (ledger plugin, not loaded before) is added
/// by editing the file and sending SIGHUP; product two then serves on its fixed port.
#[test]
fn sighup_adds_a_product_while_a_live_buyer_of_another_keeps_receiving() {
    let t = ReloadSetup::new();
    t.write(&[t.one()]);
    let (seller, listening) = t.sell(1);
    let one = listening[0]["sellerKey"].as_str().unwrap().to_owned();
    assert_eq!(listening[0]["addr"], format!("127.0.0.1:{}", t.ports[0]));
    let live = t.live_buyer("buyer1", &one, t.ports[0], "out1");
    synced(&live, 3);

    t.write(&[t.one(), t.two(1)]);
    let reloaded = hangup(&seller);
    assert_eq!(reloaded["event"], "reloaded", "{reloaded}");
    let added = reloaded["added"].as_array().unwrap();
    assert_eq!(added.len(), 1, "{reloaded}");
    assert_eq!(added[0]["addr"], format!("127.0.0.1:{}", t.ports[1]));
    assert_eq!(reloaded["removed"], serde_json::json!([]));
    assert_eq!(reloaded["changed"], serde_json::json!([]));
    assert_eq!(reloaded["pluginsLoaded"][0]["name"], "ledger", "{reloaded}");

    // Product one's live buyer was not disconnected: it receives what is appended now.
    t.append(&t.f1);
    synced(&live, 5);

    // Product two serves on its fixed port, through the ledger.
    let two = added[0]["sellerKey"].as_str().unwrap();
    assert_ne!(two, one);
    t.pay(&t.path("buyer2"), "600");
    let o = dazaar_tests::buy_once(
        &t.path("buyer2"),
        two,
        &format!("127.0.0.1:{}", t.ports[1]),
        &t.path("out2"),
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(json_lines(&o.stdout).last().unwrap()["length"], 4);
    // A buyer who did not pay for product two is refused there.
    let o = dazaar_tests::buy_once(
        &t.path("buyer3"),
        two,
        &format!("127.0.0.1:{}", t.ports[1]),
        &t.path("out3"),
    );
    assert!(!o.status.success(), "an unpaid buyer got product two");
    t.append(&t.f1);
    synced(&live, 7);
}

/// A broken configuration on SIGHUP is refused with its file and line; product one keeps
/// serving (its live buyer stays, a new buyer is served) and nothing was added.
#[test]
fn sighup_with_a_broken_config_keeps_the_running_one() {
    let t = ReloadSetup::new();
    t.write(&[t.one()]);
    let (seller, listening) = t.sell(1);
    let one = listening[0]["sellerKey"].as_str().unwrap().to_owned();
    let live = t.live_buyer("buyer1", &one, t.ports[0], "out1");
    synced(&live, 3);

    // A syntax error on line 2.
    let broken =
        config_head(t.dir.path()).replacen("listen = ", "listen = = ", 1) + &t.one() + &t.two(1);
    std::fs::write(&t.config, broken).unwrap();
    let failed = hangup(&seller);
    assert_eq!(failed["event"], "reload-failed", "{failed}");
    let error = failed["error"].as_str().unwrap();
    assert!(
        error.starts_with(&format!("{}:2:", t.config.display())),
        "{error}"
    );

    // A plugin that does not exist: refused with the line of its entry.
    let text = config_head(t.dir.path()) + &t.one() + &t.two(1).replace("\"ledger\"", "\"nope\"");
    std::fs::write(&t.config, &text).unwrap();
    let failed = hangup(&seller);
    assert_eq!(failed["event"], "reload-failed", "{failed}");
    // The second [[sell.payment]] table.
    let line = text
        .lines()
        .enumerate()
        .filter(|(_, l)| *l == "[[sell.payment]]")
        .nth(1)
        .map(|(i, _)| i + 1)
        .unwrap();
    let error = failed["error"].as_str().unwrap();
    assert!(
        error.starts_with(&format!("{}:{line}: plugin `nope`", t.config.display())),
        "{error}"
    );

    // Product two was not started; product one serves on, its live buyer included.
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", t.ports[1])).is_err(),
        "product two listens after a refused reload"
    );
    t.append(&t.f1);
    synced(&live, 5);
    let o = dazaar_tests::buy_once(
        &t.path("buyer2"),
        &one,
        &format!("127.0.0.1:{}", t.ports[0]),
        &t.path("out2"),
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

/// A product removed from the file stops on reload (`dazaar reload --pid-file`, which
/// sends SIGHUP): its port closes and its live buyer is disconnected, while the other
/// product's live buyer stays.
#[test]
fn sighup_stops_a_removed_product() {
    let t = ReloadSetup::new();
    t.write(&[t.one(), t.two(1)]);
    let pid_file = t.path("seller.pid");
    let (seller, listening) = t.sell_with(2, &["--pid-file", s(&pid_file)]);
    assert_eq!(
        std::fs::read_to_string(&pid_file).unwrap().trim(),
        seller.id().to_string()
    );
    let (one, two) = (
        listening[0]["sellerKey"].as_str().unwrap().to_owned(),
        listening[1]["sellerKey"].as_str().unwrap().to_owned(),
    );
    t.pay(&t.path("buyer2"), "600");
    let live1 = t.live_buyer("buyer1", &one, t.ports[0], "out1");
    let live2 = t.live_buyer("buyer2", &two, t.ports[1], "out2");
    synced(&live1, 3);
    synced(&live2, 4);

    t.write(&[t.one()]);
    let o = dazaar(&["reload", "--pid-file", s(&pid_file)]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let reloaded = seller.json_where(Duration::from_secs(20), "the reload", |v| {
        v["event"] == "reloaded" || v["event"] == "reload-failed"
    });
    assert_eq!(reloaded["event"], "reloaded", "{reloaded}");
    assert_eq!(
        reloaded["removed"][0]["sellerKey"],
        two.as_str(),
        "{reloaded}"
    );
    assert_eq!(reloaded["added"], serde_json::json!([]));
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", t.ports[1])).is_err(),
        "the removed product's port is still open"
    );
    // Its live buyer (which does not reconnect) was disconnected and exits.
    live2.wait(Duration::from_secs(20));
    t.append(&t.f1);
    synced(&live1, 5);
}

/// A price change applies at the next revalidation, to a buyer who stays connected: the
/// ledger-paid buyer of product two becomes invalid when the price rises past what it
/// paid, and product one's live buyer is not touched.
#[test]
fn sighup_applies_a_new_price_at_the_next_revalidation() {
    let t = ReloadSetup::new();
    t.write(&[t.one(), t.two(1)]);
    let (seller, listening) = t.sell(2);
    let (one, two) = (
        listening[0]["sellerKey"].as_str().unwrap().to_owned(),
        listening[1]["sellerKey"].as_str().unwrap().to_owned(),
    );
    // 600 credits at 1 a second: ten minutes.
    t.pay(&t.path("buyer2"), "600");
    let live1 = t.live_buyer("buyer1", &one, t.ports[0], "out1");
    let live2 = t.live_buyer("buyer2", &two, t.ports[1], "out2");
    synced(&live1, 3);
    synced(&live2, 4);

    // 1000000 credits a second: the 600 paid buy less than a millisecond, long gone.
    t.write(&[t.one(), t.two(1_000_000)]);
    let reloaded = hangup(&seller);
    assert_eq!(reloaded["event"], "reloaded", "{reloaded}");
    assert_eq!(
        reloaded["changed"][0]["sellerKey"],
        two.as_str(),
        "{reloaded}"
    );
    assert_eq!(reloaded["added"], serde_json::json!([]));
    assert_eq!(reloaded["removed"], serde_json::json!([]));
    let invalid = live2.json_where(Duration::from_secs(20), "invalid", |v| {
        v["event"] == "invalid" || v["event"] == "done"
    });
    assert_eq!(invalid["event"], "invalid", "{invalid}");

    // Back to 1 a second: valid again at the next revalidation, on the same connection.
    t.write(&[t.one(), t.two(1)]);
    let reloaded = hangup(&seller);
    assert_eq!(
        reloaded["changed"][0]["sellerKey"],
        two.as_str(),
        "{reloaded}"
    );
    let valid = live2.json_where(Duration::from_secs(20), "valid again", |v| {
        v["event"] == "valid" || v["event"] == "done"
    });
    assert_eq!(valid["event"], "valid", "{valid}");
    t.append(&t.f2);
    synced(&live2, 6);
    t.append(&t.f1);
    synced(&live1, 5);
}

/// A plugin whose library file is replaced (a new file, as `install` does) is loaded again
/// on SIGHUP, beside the old version: the product using it is changed in place (its
/// paying buyer stays connected and valid), the new version is mapped from its private
/// copy, and a product whose plugin did not change is not touched.
#[test]
fn sighup_loads_a_replaced_plugin_file_beside_the_old_one() {
    let t = ReloadSetup::new();
    t.write(&[t.one(), t.two(1)]);
    let (seller, listening) = t.sell(2);
    let two = listening[1]["sellerKey"].as_str().unwrap().to_owned();
    t.pay(&t.path("buyer2"), "600");
    let live2 = t.live_buyer("buyer2", &two, t.ports[1], "out2");
    synced(&live2, 4);

    // Nothing changed: nothing is reloaded.
    let reloaded = hangup(&seller);
    for list in ["added", "removed", "changed", "moved", "pluginsLoaded"] {
        assert_eq!(reloaded[list], serde_json::json!([]), "{list}: {reloaded}");
    }

    // A new file in place of the ledger library.
    let plugins = t.path("plugins");
    let fresh = dazaar_tests::copy_plugin("ledger", &t.path("."), Some("ledger_new"));
    let installed = plugins.join(dazaar::payments::plugin_file_name("ledger"));
    std::fs::rename(&fresh, &installed).unwrap();
    let reloaded = hangup(&seller);
    assert_eq!(reloaded["event"], "reloaded", "{reloaded}");
    assert_eq!(
        reloaded["changed"].as_array().unwrap().len(),
        1,
        "{reloaded}"
    );
    assert_eq!(reloaded["changed"][0]["sellerKey"], two.as_str());
    assert_eq!(reloaded["pluginsLoaded"][0]["name"], "ledger");
    assert_eq!(
        reloaded["pluginsLoaded"][0]["path"],
        installed.display().to_string()
    );
    // The new version is mapped from its own (deleted) copy, beside the first one.
    let maps = std::fs::read_to_string(format!("/proc/{}/maps", seller.id())).unwrap();
    let copy = format!("dazaar-{}-", seller.id());
    assert!(
        maps.lines()
            .any(|l| l.contains(&copy) && l.contains("libdazaar_ledger.so")),
        "no mapping of the ledger library's new version"
    );
    // The buyer stays, valid through the new version.
    t.append(&t.f2);
    synced(&live2, 6);
}

/// A plugin the config names is looked for in the config's `plugin_dir`, then
/// `--plugin-dir`, then next to the `dazaar` binary, then /usr/lib/dazaar/plugins;
/// `plugins list` shows where each was found, and the seller loads them from there.
#[test]
fn plugins_are_searched_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let (cfg_dir, flag_dir) = (
        dir.path().join("cfg-plugins"),
        dir.path().join("flag-plugins"),
    );
    for d in [&cfg_dir, &flag_dir] {
        std::fs::create_dir_all(d).unwrap();
    }
    // The config's directory wins over the flag's for ledger; free is only in the flag's.
    dazaar_tests::copy_plugin("ledger", &cfg_dir, None);
    dazaar_tests::copy_plugin("ledger", &flag_dir, None);
    dazaar_tests::copy_plugin("free", &flag_dir, None);
    let feed = dir.path().join("feed");
    make_text_feed(&feed, 2);
    let config = dir.path().join("dazaar.toml");
    let ledger = format!("file = {:?}", s(&dir.path().join("ledger.jsonl")));
    let text = format!(
        "data_dir = {:?}\nplugin_dir = {:?}\n\n[discovery]\ndht = false\nmdns = false\n{}\n[[sell.payment]]\nplugin = \"free\"\ncurrency = \"credits\"\namount = \"1\"\nunit = \"seconds\"\ninterval = \"1\"\n\n[[buy.payment]]\nplugin = \"lnd\"\n\n[[buy.payment]]\nplugin = \"nope\"\n",
        s(&dir.path().join("seller")),
        s(&cfg_dir),
        sell_table(&feed, "one", 0, "ledger", 1, &ledger),
    );
    std::fs::write(&config, text).unwrap();
    let o = dazaar(&[
        "--config",
        s(&config),
        "plugins",
        "list",
        "--json",
        "--plugin-dir",
        s(&flag_dir),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let bin_dir = dazaar_tests::dazaar_binary().parent().unwrap().to_owned();
    let file = |d: &Path, name: &str| {
        d.join(dazaar::payments::plugin_file_name(name))
            .display()
            .to_string()
    };
    assert_eq!(
        v["search"],
        serde_json::json!([
            s(&cfg_dir),
            s(&flag_dir),
            s(&bin_dir),
            "/usr/lib/dazaar/plugins"
        ])
    );
    assert_eq!(
        v["named"],
        serde_json::json!([
            {"name": "ledger", "path": file(&cfg_dir, "ledger")},
            {"name": "free", "path": file(&flag_dir, "free")},
            {"name": "lnd", "path": file(&bin_dir, "lnd")},
            {"name": "nope", "path": null},
        ])
    );

    // The seller finds free in the flag's directory, and without the flag next to the
    // binary.
    for flag in [Some(&flag_dir), None] {
        let mut args = vec!["--config", s(&config), "sell", "--json"];
        if let Some(d) = flag {
            args.extend(["--plugin-dir", s(d)]);
        }
        let mut seller = Proc::spawn(dazaar_cmd(&args));
        seller.event("listening", Duration::from_secs(20));
        seller.stop();
    }
    // Gone from both directories, ledger is found next to the binary.
    std::fs::remove_file(file(&cfg_dir, "ledger")).unwrap();
    std::fs::remove_file(file(&flag_dir, "ledger")).unwrap();
    let o = dazaar(&["--config", s(&config), "plugins", "list", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["named"][0]["path"], file(&bin_dir, "ledger"));
}
