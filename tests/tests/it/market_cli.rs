//! The market's command-line contract: `dazaar sell` / `buy` / `card` / `revoke` / `burn`
//! between processes on loopback.

use std::process::Stdio;
use std::time::Duration;

use dazaar_tests::*;

#[test]
fn free_sale_deny_and_wrong_seller_between_processes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let feed = dir.path().join("feed");
    make_text_feed(&feed, 200);
    let seller_data = dir.path().join("seller");
    let (_seller, info) = sell(&[
        "--data-dir",
        s(&seller_data),
        s(&feed),
        "--listen",
        "127.0.0.1:0",
    ]);
    let (key, addr) = (
        info["sellerKey"].as_str().expect("key"),
        info["addr"].as_str().expect("addr"),
    );
    assert_eq!(info["feedKey"].as_str().expect("feed").len(), 64);

    let out = dir.path().join("bought");
    let o = dazaar(&[
        "--data-dir",
        s(&dir.path().join("buyer")),
        "buy",
        key,
        "--connect",
        addr,
        "--out",
        s(&out),
        "--json",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let lines = json_lines(&o.stdout);
    assert_eq!(lines.first().expect("feed")["event"], "feed");
    assert!(lines
        .iter()
        .any(|l| l["event"] == "valid" && l["info"]["type"] == "free"));
    let done = lines.last().expect("done");
    assert_eq!(done["event"], "done");
    assert_eq!(done["length"], 200);
    let cat = dazaar(&["feed", "cat", s(&out), "--lines"]);
    let expected: String = (0..200).map(|i| format!("line {i}\n")).collect();
    assert_eq!(String::from_utf8_lossy(&cat.stdout), expected);

    // A seller key that is not this seller's: the handshake is refused, nothing stored.
    let wrong = "ab".repeat(32);
    let o = dazaar(&[
        "--data-dir",
        s(&dir.path().join("buyer")),
        "buy",
        &wrong,
        "--connect",
        addr,
        "--out",
        s(&dir.path().join("w")),
    ]);
    assert!(!o.status.success());
    assert!(!dir.path().join("w/key").exists());

    // --deny: every buyer is rejected with the reason.
    let (_denier, info) = sell(&[
        "--data-dir",
        s(&seller_data),
        s(&feed),
        "--listen",
        "127.0.0.1:0",
        "--deny",
    ]);
    let o = dazaar(&[
        "--data-dir",
        s(&dir.path().join("buyer")),
        "buy",
        info["sellerKey"].as_str().expect("key"),
        "--connect",
        info["addr"].as_str().expect("addr"),
        "--out",
        s(&dir.path().join("denied")),
        "--json",
    ]);
    assert!(!o.status.success());
    let lines = json_lines(&o.stdout);
    assert!(
        lines
            .iter()
            .any(|l| l["event"] == "invalid" && l["error"] == "Access denied by the seller"),
        "{lines:?}"
    );
    assert!(String::from_utf8_lossy(&o.stderr).contains("rejected by the seller"));
}

/// A paid sale with the ledger plugin loaded from the plugin dir; blocks appended by
/// `dazaar feed append` in another process reach a live buyer; revoke cuts it off;
/// burn publishes its key in the card.
#[test]
fn paid_sale_live_appends_revoke_and_burn() {
    let dir = tempfile::tempdir().expect("tempdir");
    let feed = dir.path().join("feed");
    make_text_feed(&feed, 50);
    let plugins = dir.path().join("plugins");
    std::fs::create_dir_all(&plugins).expect("mkdir");
    copy_plugin("ledger", &plugins, None);
    let ledger = dir.path().join("ledger.jsonl");
    let seller_data = dir.path().join("seller");
    let buyer_data = dir.path().join("buyer");
    let plugin_config = format!("file = {:?}\nreload_ms = 0", s(&ledger));
    let (_seller, info) = sell(&[
        "--data-dir",
        s(&seller_data),
        s(&feed),
        "--listen",
        "127.0.0.1:0",
        "--payment",
        "ledger",
        "--plugin-dir",
        s(&plugins),
        "--plugin-config",
        &plugin_config,
        "--amount",
        "1",
        "--unit",
        "seconds",
        "--interval",
        "1",
        "--revalidate-ms",
        "200",
    ]);
    let (key, addr) = (
        info["sellerKey"].as_str().expect("key").to_owned(),
        info["addr"].as_str().expect("addr").to_owned(),
    );
    let buyer_key = buyer_key(&buyer_data);

    // Unpaid: rejected, nothing downloaded.
    let out = dir.path().join("bought");
    let o = dazaar(&[
        "--data-dir",
        s(&buyer_data),
        "buy",
        &key,
        "--connect",
        &addr,
        "--out",
        s(&out),
        "--json",
    ]);
    assert!(!o.status.success());
    assert!(json_lines(&o.stdout)
        .iter()
        .any(|l| l["event"] == "invalid"));
    assert!(!out.join("key").exists(), "no feed before paying");

    // Pay (a ledger entry) and buy live.
    let o = dazaar(&[
        "ledger",
        "add",
        "--file",
        s(&ledger),
        "--buyer",
        &buyer_key,
        "--amount",
        "600",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let buyer = Proc::spawn(dazaar_cmd(&[
        "--data-dir",
        s(&buyer_data),
        "buy",
        &key,
        "--connect",
        &addr,
        "--out",
        s(&out),
        "--live",
        "--json",
    ]));
    let wait_for = |pred: &dyn Fn(&serde_json::Value) -> bool, what: &str| {
        buyer.json_where(Duration::from_secs(10), what, pred)
    };
    let feed_ev = wait_for(&|v| v["event"] == "feed", "the feed");
    assert_ne!(
        feed_ev["key"], info["feedKey"],
        "a paid buyer gets its own rekeyed feed"
    );
    wait_for(
        &|v| v["event"] == "valid" && v["info"]["type"] == "time",
        "valid",
    );
    wait_for(
        &|v| v["event"] == "synced" && v["length"] == 50,
        "the first 50 blocks",
    );
    // Another process appends while `dazaar sell` runs: the live buyer receives it.
    let extra = dir.path().join("extra.txt");
    std::fs::write(&extra, "fresh 1\nfresh 2\n").expect("write");
    assert!(dazaar(&["feed", "append", s(&feed), s(&extra)])
        .status
        .success());
    wait_for(
        &|v| v["event"] == "synced" && v["length"] == 52,
        "the live appends",
    );

    // Revoke: invalid at the next revalidation.
    let o = dazaar(&[
        "--data-dir",
        s(&seller_data),
        "revoke",
        &buyer_key,
        "--feed",
        s(&feed),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let inv = wait_for(&|v| v["event"] == "invalid", "the revocation");
    assert_eq!(inv["error"], "Access revoked by the seller");
    drop(buyer);

    // The sales log has the one sale: this buyer, through the ledger, a time grant.
    let sales = dazaar(&["--data-dir", s(&seller_data), "sales", "--json"]);
    assert!(
        sales.status.success(),
        "{}",
        String::from_utf8_lossy(&sales.stderr)
    );
    let sales = json_lines(&sales.stdout);
    assert_eq!(sales.len(), 1, "{sales:?}");
    assert_eq!(sales[0]["buyer"], buyer_key.as_str());
    assert_eq!(sales[0]["seller"], key.as_str());
    assert_eq!(sales[0]["method"], "ledger");
    assert_eq!(sales[0]["grant"], "time");
    assert!(sales[0]["remaining"].as_u64().is_some_and(|ms| ms > 0));

    // Burn: the card publishes the buyer's rekeyed key pair.
    let o = dazaar(&[
        "--data-dir",
        s(&seller_data),
        "burn",
        &buyer_key,
        "--feed",
        s(&feed),
        "--json",
    ]);
    assert!(o.status.success());
    let burnt = &json_lines(&o.stdout)[0];
    assert_eq!(burnt["feedKey"], feed_ev["key"]);
    let card = dazaar(&[
        "--data-dir",
        s(&seller_data),
        "card",
        "--feed",
        s(&feed),
        "--name",
        "ticks",
    ]);
    assert!(
        card.status.success(),
        "{}",
        String::from_utf8_lossy(&card.stderr)
    );
    let card_json = &json_lines(&card.stdout)[0];
    assert_eq!(card_json["id"], key.as_str());
    assert_eq!(card_json["sellerKey"], key.as_str());
    assert_eq!(card_json["burnt"][0]["feedKey"], feed_ev["key"]);
    assert_eq!(card_json["burnt"][0]["secretKey"], burnt["secretKey"]);
    let card_file = dir.path().join("card.json");
    std::fs::write(&card_file, serde_json::to_vec(card_json).expect("json")).expect("write");
    let v = dazaar(&["card", "validate", s(&card_file)]);
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stderr));
    std::fs::write(&card_file, b"{\"name\": 3}").expect("write");
    let v = dazaar(&["card", "validate", s(&card_file)]);
    assert!(!v.status.success());
    assert!(String::from_utf8_lossy(&v.stderr).contains("id: missing"));
}

#[test]
fn pay_and_quote_from_a_card() {
    let dir = tempfile::tempdir().expect("tempdir");
    let feed = dir.path().join("feed");
    make_text_feed(&feed, 3);
    let plugins = dir.path().join("plugins");
    std::fs::create_dir_all(&plugins).expect("mkdir");
    copy_plugin("ledger", &plugins, None);
    let seller_data = dir.path().join("seller");
    let id = dazaar(&[
        "--data-dir",
        s(&seller_data),
        "id",
        "--feed",
        s(&feed),
        "--json",
    ]);
    let seller_key = json_lines(&id.stdout)[0]["sellerKey"]
        .as_str()
        .expect("seller")
        .to_owned();
    let card = serde_json::json!({
        "id": seller_key, "name": "ticks",
        "payment": [{"method": "ledger", "currency": "credits", "amount": "2", "unit": "minutes", "interval": "1", "minSeconds": 30}]
    });
    let card_file = dir.path().join("card.json");
    std::fs::write(&card_file, card.to_string()).expect("write");

    let q = dazaar(&["quote", s(&card_file), "--seconds", "120", "--json"]);
    assert!(q.status.success(), "{}", String::from_utf8_lossy(&q.stderr));
    let q = &json_lines(&q.stdout)[0];
    assert_eq!(q["currency"], "credits");
    assert!(
        (q["amount"].as_f64().expect("amount") - 4.0).abs() < 1e-9,
        "{q}"
    );
    let q = dazaar(&["quote", s(&card_file), "--seconds", "10", "--json"]);
    assert!(
        (json_lines(&q.stdout)[0]["amount"].as_f64().expect("amount") - 1.0).abs() < 1e-9,
        "minSeconds applies"
    );

    let buyer_data = dir.path().join("buyer");
    let p = dazaar(&[
        "--data-dir",
        s(&buyer_data),
        "pay",
        &seller_key,
        "--plugin",
        "ledger",
        "--plugin-dir",
        s(&plugins),
        "--plugin-config",
        "file = \"/dev/null\"",
        "--card",
        s(&card_file),
        "--amount",
        "5",
        "--json",
    ]);
    assert!(p.status.success(), "{}", String::from_utf8_lossy(&p.stderr));
    let how = &json_lines(&p.stdout)[0];
    let buyer_key = buyer_key(&buyer_data);
    assert_eq!(how["memo"], format!("dazaar: {seller_key} {buyer_key}"));
    assert_eq!(how["amount"], "5");
    // A card for another seller is refused.
    let p = dazaar(&[
        "pay",
        &"cd".repeat(32),
        "--plugin",
        "ledger",
        "--plugin-dir",
        s(&plugins),
        "--card",
        s(&card_file),
    ]);
    assert!(!p.status.success());
    assert!(String::from_utf8_lossy(&p.stderr).contains("the card is for seller"));
}

/// One process sells every `[[sell]]` of the config (a listener each); the master key is
/// encrypted at rest and its passphrase comes from the variable the config names.
#[test]
fn config_sells_several_feeds_with_an_encrypted_identity() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (f1, f2) = (dir.path().join("one"), dir.path().join("two"));
    make_text_feed(&f1, 5);
    make_text_feed(&f2, 7);
    let seller_data = dir.path().join("seller");
    let master = "5a".repeat(32);
    let o = dazaar_cmd(&[
        "--data-dir",
        s(&seller_data),
        "id",
        "--import-master-key",
        &master,
        "--encrypt",
        "--json",
    ])
    .env("DAZAAR_PASSPHRASE", "open sesame")
    .output()
    .expect("id");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let key_file = std::fs::read_to_string(seller_data.join("master-key")).expect("key file");
    assert!(
        key_file.contains("argon2id") && !key_file.contains(&master),
        "encrypted at rest"
    );
    let config = dir.path().join("dazaar.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = {:?}\nlisten = \"127.0.0.1:0\"\npassphrase_env = \"SELLER_PASS\"\n\n[[sell]]\nfeed = {:?}\nname = \"one\"\n\n[[sell]]\nfeed = {:?}\nname = \"two\"\n",
            s(&seller_data),
            s(&f1),
            s(&f2)
        ),
    )
    .expect("config");

    // Without the passphrase (and no terminal): a clear error.
    let o = dazaar_cmd(&["--config", s(&config), "sell", "--json"])
        .env_remove("SELLER_PASS")
        .stdin(Stdio::null())
        .output()
        .expect("sell");
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("passphrase"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );

    let mut cmd = dazaar_cmd(&["--config", s(&config), "sell", "--json"]);
    cmd.env("SELLER_PASS", "open sesame");
    let seller = Proc::spawn(cmd);
    let listening = [
        seller.event("listening", Duration::from_secs(10)),
        seller.event("listening", Duration::from_secs(10)),
    ];
    assert_ne!(listening[0]["addr"], listening[1]["addr"]);
    for (n, (l, want)) in listening.iter().zip([5, 7]).enumerate() {
        let out = dir.path().join(format!("bought{n}"));
        let o = dazaar(&[
            "--data-dir",
            s(&dir.path().join("buyer")),
            "buy",
            l["sellerKey"].as_str().expect("key"),
            "--connect",
            l["addr"].as_str().expect("addr"),
            "--out",
            s(&out),
            "--json",
        ]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert_eq!(json_lines(&o.stdout).last().expect("done")["length"], want);
    }
    // The seller keys are the ones the (decrypted) master key derives.
    let o = dazaar_cmd(&[
        "--data-dir",
        s(&seller_data),
        "id",
        "--feed",
        s(&f1),
        "--json",
    ])
    .env("DAZAAR_PASSPHRASE", "open sesame")
    .output()
    .expect("id");
    assert_eq!(
        json_lines(&o.stdout)[0]["sellerKey"],
        listening[0]["sellerKey"]
    );
}

/// A Lightning sale end to end through the `dazaar` binary, the LND plugin loaded from
/// the plugin dir on both sides, against the local LND gRPC/TLS node of
/// `dazaar_tests::lnd_mock` (it checks the macaroon's permissions): the seller's node
/// with an invoice macaroon, the buyer's own node (a peer of the seller's: LND does not
/// pay itself) with an admin macaroon. Before paying the buyer gets zero blocks; `dazaar
/// pay` asks the seller for an invoice (`lnd-pay-request` → AddInvoice → `lnd-invoice`),
/// checks it (locally and with DecodePayReq) and pays it (the Router's SendPaymentV2 on
/// the buyer's node, settling the invoice on the seller's), reporting `lnd-paid`; the
/// seller sees it settle (SubscribeInvoices) and `dazaar buy` receives the feed.
#[test]
fn lightning_sale_end_to_end_through_the_binary() {
    let invoice_macaroon = b"\x02\x01\x03e2e-invoice-macaroon";
    let admin_macaroon = b"\x02\x01\x03e2e-admin-macaroon";
    let node = dazaar_tests::lnd_mock::MockLnd::start_with_invoice_and_admin(
        &hex::encode(invoice_macaroon),
        &hex::encode(admin_macaroon),
    );
    let buyer_node = node.start_peer();
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("tls.cert"), &node.cert_pem).expect("cert");
    std::fs::write(dir.path().join("buyer-tls.cert"), &buyer_node.cert_pem).expect("cert");
    std::fs::write(dir.path().join("invoice.macaroon"), invoice_macaroon).expect("macaroon");
    std::fs::write(dir.path().join("admin.macaroon"), admin_macaroon).expect("macaroon");
    let config = |node: &dazaar_tests::lnd_mock::MockLnd, cert: &str, macaroon: &str| {
        format!(
            "address = \"{}\"\ntls_cert = {:?}\ntls_domain = \"localhost\"\nmacaroon = {:?}\nnetwork = \"regtest\"\ntimeout_ms = 2000\nmax_backoff_ms = 200\n",
            node.addr,
            s(&dir.path().join(cert)),
            s(&dir.path().join(macaroon))
        )
    };
    let lnd_config = config(&node, "tls.cert", "invoice.macaroon");
    let buyer_config = format!(
        "{}pay = true\n",
        config(&buyer_node, "buyer-tls.cert", "admin.macaroon")
    );
    let feed = dir.path().join("feed");
    make_text_feed(&feed, 30);
    let plugins = dir.path().join("plugins");
    std::fs::create_dir_all(&plugins).expect("mkdir");
    copy_plugin("lnd", &plugins, None);
    let (_seller, info) = sell(&[
        "--data-dir",
        s(&dir.path().join("seller")),
        s(&feed),
        "--listen",
        "127.0.0.1:0",
        "--payment",
        "lnd",
        "--plugin-dir",
        s(&plugins),
        "--plugin-config",
        &lnd_config,
        "--method",
        "Lightning",
        "--currency",
        "SATS",
        "--amount",
        "1",
        "--unit",
        "seconds",
        "--interval",
        "1",
        "--revalidate-ms",
        "200",
    ]);
    let (key, addr) = (
        info["sellerKey"].as_str().expect("key").to_owned(),
        info["addr"].as_str().expect("addr").to_owned(),
    );
    let buyer_data = dir.path().join("buyer");
    let out = dir.path().join("bought");

    // Before paying: rejected, zero blocks.
    let o = dazaar(&[
        "--data-dir",
        s(&buyer_data),
        "buy",
        &key,
        "--connect",
        &addr,
        "--out",
        s(&out),
        "--json",
    ]);
    assert!(!o.status.success());
    assert!(!out.join("key").exists());

    // Pay 300 sats (300 seconds) for the card's Lightning entry.
    let card = serde_json::json!({"id": key, "name": "ticks",
        "payment": [{"method": "Lightning", "currency": "SATS", "amount": "1", "unit": "seconds", "interval": "1"}]});
    let card_file = dir.path().join("card.json");
    std::fs::write(&card_file, card.to_string()).expect("card");
    let p = dazaar(&[
        "--data-dir",
        s(&buyer_data),
        "pay",
        &key,
        "--plugin",
        "lnd",
        "--plugin-dir",
        s(&plugins),
        "--plugin-config",
        &buyer_config,
        "--card",
        s(&card_file),
        "--amount",
        "300",
        "--connect",
        &addr,
        "--json",
    ]);
    assert!(p.status.success(), "{}", String::from_utf8_lossy(&p.stderr));
    let how = &json_lines(&p.stdout)[0];
    assert_eq!(how["sellerReply"]["name"], "lnd-invoice", "{how}");
    assert_eq!(how["sellerReply"]["message"]["amount"], 300);
    // The plugin paid from LND and told the host so (no preimage).
    assert_eq!(how["result"]["name"], "lnd-paid", "{how}");
    assert_eq!(how["result"]["message"]["amount"], 300, "{how}");
    let hash = how["result"]["message"]["payment_hash"]
        .as_str()
        .expect("payment_hash")
        .to_owned();
    assert_eq!(hash.len(), 64, "{how}");
    assert!(how["result"]["message"]["fee_sat"].is_i64(), "{how}");
    assert!(how["result"]["message"].get("preimage").is_none(), "{how}");
    {
        assert_eq!(
            buyer_node.state.lock().expect("state").payment_calls.len(),
            1,
            "one SendPaymentV2, from the buyer's node"
        );
        let state = node.state.lock().expect("state");
        assert!(
            state.payment_calls.is_empty(),
            "the seller's node paid nothing"
        );
        let paid = state
            .invoices
            .iter()
            .find(|i| hex::encode(&i.r_hash) == hash)
            .expect("the paid invoice");
        assert_eq!(paid.state, dazaar_tests::lnd_mock::INVOICE_SETTLED);
        assert_eq!(paid.value, 300);
    }
    // The human form says it was paid (and draws no QR code).
    let human = dazaar(&[
        "--data-dir",
        s(&buyer_data),
        "pay",
        &key,
        "--plugin",
        "lnd",
        "--plugin-dir",
        s(&plugins),
        "--plugin-config",
        &buyer_config,
        "--card",
        s(&card_file),
        "--amount",
        "10",
        "--connect",
        &addr,
    ]);
    assert!(
        human.status.success(),
        "{}",
        String::from_utf8_lossy(&human.stderr)
    );
    let text = String::from_utf8_lossy(&human.stdout);
    assert!(text.contains("the seller answered: lnd-invoice"), "{text}");
    assert!(text.contains("  paid: {"), "{text}");
    assert!(text.contains("\"amount\":10"), "{text}");
    let buyer_key = buyer_key(&buyer_data);
    let memo = format!("dazaar: {key} {buyer_key}");
    {
        let state = node.state.lock().expect("state");
        assert!(
            format!("{:?}", state.invoices).contains(&memo),
            "the invoice carries the binding memo"
        );
    }

    // Now the buyer is valid (within a revalidation period of the settlement).
    let lines = buy_until_valid(&buyer_data, &key, &addr, &out, Duration::from_secs(10));
    assert!(lines
        .iter()
        .any(|l| l["event"] == "valid" && l["info"]["type"] == "time"));
    assert_eq!(lines.last().expect("done")["length"], 30);
    assert_eq!(feed_lines(&out).len(), 30);
}

/// A seller's terms of use reach the buyer's terminal with their control characters
/// escaped: a hostile seller cannot clear the screen or reorder the text.
#[test]
fn terms_from_a_seller_are_printed_with_controls_escaped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let feed = dir.path().join("feed");
    make_text_feed(&feed, 3);
    let terms = dir.path().join("terms.txt");
    std::fs::write(
        &terms,
        "Be nice.\x1b[2J\x1b]0;pwned\x07\n\tNo resale: \u{202e}0001\u{202c} sat\n",
    )
    .expect("terms");
    let (_seller, info) = sell(&[
        "--data-dir",
        s(&dir.path().join("seller")),
        s(&feed),
        "--listen",
        "127.0.0.1:0",
        "--terms",
        s(&terms),
    ]);
    let o = dazaar(&[
        "--data-dir",
        s(&dir.path().join("buyer")),
        "buy",
        info["sellerKey"].as_str().expect("key"),
        "--connect",
        info["addr"].as_str().expect("addr"),
        "--out",
        s(&dir.path().join("bought")),
        "--accept-terms",
    ]);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
    );
    assert!(o.status.success(), "{stderr}");
    assert!(stdout.contains("terms of use (accepted):\n"), "{stdout}");
    // Shown, escaped, with its line break and tab kept.
    assert!(
        stdout.contains(
            "Be nice.\\x1b[2J\\x1b]0;pwned\\x07\n\tNo resale: \\u{202e}0001\\u{202c} sat"
        ),
        "{stdout}"
    );
    for out in [&o.stdout, &o.stderr] {
        assert!(!out.contains(&0x1b), "an ESC reached the terminal");
        assert!(!String::from_utf8_lossy(out).contains('\u{202e}'));
    }
}

/// `dazaar card` writes, for an entry with no method, the method the seller validates:
/// the plugin's first method (it once wrote the plugin's *name*, so a card for the
/// fiat-stripe or LND plugin named a method no plugin serves and `dazaar pay --card`
/// failed). `config check` and `sell` agree with it.
#[test]
fn card_names_the_method_the_seller_validates() {
    let dir = tempfile::tempdir().expect("tempdir");
    let feed = dir.path().join("feed");
    make_text_feed(&feed, 3);
    let plugins = dir.path().join("plugins");
    std::fs::create_dir_all(&plugins).expect("mkdir");
    let mut first = Vec::new();
    for name in ["fiat_stripe", "lnd"] {
        let file = copy_plugin(name, &plugins, None);
        let o = dazaar(&["plugins", "check", s(&file), "--json"]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let info: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
        first.push(info["methods"][0].as_str().expect("a method").to_owned());
    }
    assert_ne!(
        first[0], "fiat_stripe",
        "the regression needs a plugin whose first method is not its name"
    );
    let config = dir.path().join("dazaar.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = {:?}\nplugin_dir = {:?}\n\n[[sell]]\nfeed = {:?}\nname = \"ticks\"\n\n\
             [[sell.payment]]\nplugin = \"fiat_stripe\"\ncurrency = \"USD\"\namount = \"1\"\nunit = \"hours\"\ninterval = \"1\"\n\n\
             [[sell.payment]]\nplugin = \"lnd\"\ncurrency = \"SATS\"\namount = \"10\"\nunit = \"minutes\"\ninterval = \"1\"\n",
            s(&dir.path().join("seller")),
            s(&plugins),
            s(&feed)
        ),
    )
    .expect("config");
    let card = dazaar(&["--config", s(&config), "card"]);
    assert!(
        card.status.success(),
        "{}",
        String::from_utf8_lossy(&card.stderr)
    );
    let card = &json_lines(&card.stdout)[0];
    let methods: Vec<&str> = card["payment"]
        .as_array()
        .expect("payment")
        .iter()
        .map(|p| p["method"].as_str().expect("method"))
        .collect();
    assert_eq!(methods, [first[0].as_str(), first[1].as_str()]);
    // The card is a valid card, and the buyer side picks the stripe entry from it.
    let card_file = dir.path().join("card.json");
    std::fs::write(&card_file, card.to_string()).expect("write");
    let v = dazaar(&["card", "validate", s(&card_file), "--json"]);
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stderr));

    // `config check` settles the method the same way: a currency the plugin does not
    // serve is caught there, not at the first buyer.
    let check = dazaar(&["config", "check", s(&config)]);
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    let text = std::fs::read_to_string(&config).expect("read");
    std::fs::write(&config, text.replace("\"SATS\"", "\"XYZ\"")).expect("write");
    let check = dazaar(&["config", "check", s(&config)]);
    assert!(!check.status.success());
    let err = String::from_utf8_lossy(&check.stderr);
    assert!(
        err.contains(&format!(
            "plugin `lnd`: does not serve method `{}` with currency `XYZ`",
            first[1]
        )),
        "{err}"
    );
    let card = dazaar(&["--config", s(&config), "card"]);
    assert!(
        !card.status.success(),
        "a card the seller would not honour is not written"
    );
}

/// A live buyer outlives its seller: the seller is killed (SIGKILL), the feed grows while
/// it is down, the seller comes back on the same address, and the buyer reconnects by
/// itself (`disconnected`, `reconnected`), resumes and receives the new blocks.
#[test]
fn a_live_buyer_reconnects_when_the_seller_restarts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let feed = dir.path().join("feed");
    make_text_feed(&feed, 5);
    let seller_data = dir.path().join("seller");
    // A fixed port for both runs of the seller.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let listen = format!("127.0.0.1:{port}");
    let start_seller = || sell(&["--data-dir", s(&seller_data), s(&feed), "--listen", &listen]);
    let (mut seller, info) = start_seller();
    let key = info["sellerKey"].as_str().expect("key").to_owned();
    let out = dir.path().join("out");
    let buyer = Proc::spawn(dazaar_cmd(&[
        "--data-dir",
        s(&dir.path().join("buyer")),
        "buy",
        &key,
        "--connect",
        &listen,
        "--out",
        s(&out),
        "--live",
        "--json",
    ]));
    let synced = |n: u64| {
        buyer.json_where(Duration::from_secs(30), &format!("{n} blocks"), |v| {
            v["event"] == "synced" && v["length"] == n
        })
    };
    synced(5);
    seller.kill9();
    buyer.event("disconnected", Duration::from_secs(20));
    let more = dir.path().join("more.txt");
    std::fs::write(&more, "line 5\nline 6\nline 7\n").expect("write");
    assert!(dazaar(&["feed", "append", s(&feed), s(&more)])
        .status
        .success());
    let (_seller, again) = start_seller();
    assert_eq!(again["sellerKey"], key.as_str());
    buyer.event("reconnected", Duration::from_secs(60));
    synced(8);
    drop(buyer);
    let lines = feed_lines(&out);
    assert_eq!(lines.len(), 8, "{lines:?}");
    assert_eq!(lines[7], "line 7");
}

/// `dazaar buy`'s documented exit codes: 3 not paid, 4 unreachable, 5 terms not accepted.
#[test]
fn buy_exit_codes_say_why() {
    let dir = tempfile::tempdir().expect("tempdir");
    let feed = dir.path().join("feed");
    make_text_feed(&feed, 3);
    let buyer_data = dir.path().join("buyer");
    let code = |addr: &str, key: &str, out: &str| {
        let o = buy_once(&buyer_data, key, addr, &dir.path().join(out));
        assert!(!o.status.success());
        o.status.code()
    };
    // Nothing listens there.
    let refused = dazaar_tests::pg::refused_port().to_string();
    assert_eq!(code(&refused, &"ab".repeat(32), "o1"), Some(4));

    // A paid product and a buyer who has not paid.
    let plugins = dir.path().join("plugins");
    std::fs::create_dir_all(&plugins).expect("mkdir");
    copy_plugin("ledger", &plugins, None);
    let ledger = dir.path().join("ledger.jsonl");
    let (_paid, info) = sell(&[
        "--data-dir",
        s(&dir.path().join("seller1")),
        s(&feed),
        "--listen",
        "127.0.0.1:0",
        "--payment",
        "ledger",
        "--plugin-dir",
        s(&plugins),
        "--plugin-config",
        &format!("file = {:?}", s(&ledger)),
        "--amount",
        "1",
        "--unit",
        "seconds",
        "--interval",
        "1",
    ]);
    let (key, addr) = (
        info["sellerKey"].as_str().unwrap(),
        info["addr"].as_str().unwrap(),
    );
    assert_eq!(code(addr, key, "o2"), Some(3));

    // Terms the buyer has not accepted.
    let terms = dir.path().join("terms.txt");
    std::fs::write(&terms, "be nice\n").expect("write");
    let (_with_terms, info) = sell(&[
        "--data-dir",
        s(&dir.path().join("seller2")),
        s(&feed),
        "--listen",
        "127.0.0.1:0",
        "--terms",
        s(&terms),
    ]);
    let (key, addr) = (
        info["sellerKey"].as_str().unwrap(),
        info["addr"].as_str().unwrap(),
    );
    assert_eq!(code(addr, key, "o3"), Some(5));
}

/// A seller of a feed given on the command line has no configuration to reload: SIGHUP
/// (systemd's `ExecReload`) neither stops it nor drops its live buyer. (Reloading a
/// config's `[[sell]]` tables is tested in `service`.)
#[test]
fn sighup_keeps_the_seller_and_its_buyers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let feed = dir.path().join("feed");
    make_text_feed(&feed, 3);
    let (seller, info) = sell(&[
        "--data-dir",
        s(&dir.path().join("seller")),
        s(&feed),
        "--listen",
        "127.0.0.1:0",
    ]);
    let (key, addr) = (
        info["sellerKey"].as_str().unwrap(),
        info["addr"].as_str().unwrap(),
    );
    let buyer = Proc::spawn(dazaar_cmd(&[
        "--data-dir",
        s(&dir.path().join("buyer")),
        "buy",
        key,
        "--connect",
        addr,
        "--out",
        s(&dir.path().join("out")),
        "--live",
        "--no-reconnect",
        "--json",
    ]));
    buyer.event("synced", Duration::from_secs(20));
    let pid = i32::try_from(seller.id()).expect("pid");
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGHUP) }, 0);
    // Still selling after the signal: a new buyer is served...
    let o = buy_once(
        &dir.path().join("buyer2"),
        key,
        addr,
        &dir.path().join("out2"),
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // ... and the live one was not disconnected.
    assert!(
        buyer
            .try_json(Duration::from_millis(500))
            .is_none_or(|v| v["event"] != "done"),
        "the live buyer was dropped"
    );
}
