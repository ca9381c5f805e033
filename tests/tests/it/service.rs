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
        ConfigError::Invalid { line, key, .. } => assert_eq!((line, key.as_str()), (11, "sell[1].listen")),
        other => panic!("unexpected {other:?}"),
    }
    let twice = TWO_FIXED.replace("[::1]:4102", "127.0.0.1:4101");
    let e = config::parse(&twice, file).expect_err("two products on one address");
    assert_eq!((e.line(), e.key()), (11, Some("sell[1].listen")));
    assert!(e.to_string().contains("sell[0]"), "{e}");
    // Port 0 twice is fine: each gets a free port.
    let zeros = TWO_FIXED.replace("4101", "0").replace("[::1]:4102", "127.0.0.1:0");
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
